use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use super::{
    AdmissionPolicy, ContextName, Decision, FieldError, IpAddress, IpPrefix, Key, KeyKind,
    Networks, Reason, Rule, SessionPolicy, Subject, TotpParams, UserId, Verdict, Window,
};

/// The pseudo-context that holds the allow list's own counter, so attempts by
/// users who are not on the list are counted apart from every real context.
pub const ALLOW_LIST_CONTEXT: &str = "allow_list";

/// The pseudo-context of every user's TOTP failure counter: apart from the
/// login context's, so strangers failing a login form cannot lock a user out
/// of two-factor sign-in, and the reverse.
pub const TOTP_CONTEXT: &str = "totp";

/// The pseudo-contexts' names, for the slots that count in them.
static ALLOW_LIST_NAME: LazyLock<ContextName> =
    LazyLock::new(|| ContextName::builtin(ALLOW_LIST_CONTEXT));
static TOTP_NAME: LazyLock<ContextName> = LazyLock::new(|| ContextName::builtin(TOTP_CONTEXT));

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("admin_user_ids must all be in allowed_user_ids; not there: {}", join(.0))]
    AdminsNotAllowed(Vec<UserId>),
}

fn join(ids: &[UserId]) -> String {
    ids.iter()
        .map(UserId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Who may use the caller at all (an allow list; empty allows everyone), and
/// who may administer authgate.
#[derive(Debug, Clone)]
pub struct AccessList {
    /// Empty means everyone is allowed.
    allowed: BTreeSet<UserId>,
    admins: BTreeSet<UserId>,
    /// Counts attempts by users not on the list (a USER-keyed rule).
    rule: Rule,
}

impl AccessList {
    pub fn new(
        allowed: BTreeSet<UserId>,
        admins: BTreeSet<UserId>,
        rule: Rule,
    ) -> Result<Self, PolicyError> {
        if !allowed.is_empty() {
            let strays: Vec<_> = admins.difference(&allowed).cloned().collect();
            if !strays.is_empty() {
                return Err(PolicyError::AdminsNotAllowed(strays));
            }
        }
        Ok(AccessList {
            allowed,
            admins,
            rule,
        })
    }

    pub fn is_allowed(&self, user: &UserId) -> bool {
        self.allowed.is_empty() || self.allowed.contains(user)
    }

    pub fn is_admin(&self, user: &UserId) -> bool {
        self.admins.contains(user)
    }

    /// A stranger is denied; once their attempts block them, the block
    /// (with its end) is what they are told.
    pub fn judge(&self, verdict: Verdict) -> Verdict {
        self.refuse(verdict, Reason::NotOnAllowList)
    }

    /// An address outside a context's allowed networks is counted by the
    /// same rule as a stranger, on the address.
    pub fn network_slot(&self, ip: IpAddress) -> Slot<'_> {
        Slot {
            context: &ALLOW_LIST_NAME,
            rule: &self.rule,
            key: Key::Ip(ip.into()),
        }
    }

    /// An outsider is denied as a stranger is, until their attempts block
    /// them.
    pub fn judge_outsider(&self, verdict: Verdict) -> Verdict {
        self.refuse(verdict, Reason::NetworkNotAllowed)
    }

    fn refuse(&self, verdict: Verdict, reason: Reason) -> Verdict {
        if verdict.decision == Decision::Blocked {
            return verdict;
        }
        Verdict {
            decision: Decision::Deny,
            reason,
            ..verdict
        }
    }

    /// What a fail-open context answers while the store is unreachable: the
    /// allow list needs no store, so strangers are still denied.
    pub fn unchecked(&self, subject: &Subject) -> Verdict {
        let verdict = Verdict {
            reason: Reason::StoreUnavailable,
            ..Verdict::allow()
        };
        if self.slot(subject).is_some() {
            self.judge(verdict)
        } else {
            verdict
        }
    }

    /// The allow list's counter for this subject, when the subject names a
    /// user who is not allowed. Requests without a user id are judged by the
    /// context's rules alone: the list is a list of users.
    pub fn slot(&self, subject: &Subject) -> Option<Slot<'_>> {
        let user = subject.user.as_ref().filter(|u| !self.is_allowed(u))?;
        Some(Slot {
            context: &ALLOW_LIST_NAME,
            rule: &self.rule,
            key: Key::User(user.clone()),
        })
    }
}

/// One rule of one context applied to one key of a request, for the length
/// of a call; the store names its row with a `StateId`.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot<'a> {
    pub context: &'a ContextName,
    pub rule: &'a Rule,
    pub key: Key,
}

#[derive(Debug, Clone)]
pub struct ContextPolicy {
    pub name: ContextName,
    pub rules: Vec<Rule>,
    /// Requests here need a second factor.
    pub totp: bool,
    /// CheckAccess answers ALLOW (reason store_unavailable) while the store
    /// is unreachable, instead of UNAVAILABLE.
    pub fail_open: bool,
    pub session: SessionPolicy,
    /// Anti-spam admission; `None` where Admit is not offered.
    pub admission: Option<AdmissionPolicy>,
    /// Addresses no rule on the address (`ip`, `user+ip`) counts or judges.
    pub trusted: Networks,
    /// The only addresses admitted; empty admits every one.
    pub allowed: Networks,
}

/// Two-factor sign-in settings shared by every context.
#[derive(Debug, Clone)]
pub struct TotpPolicy {
    /// The issuer authenticator apps show.
    pub issuer: String,
    /// What new enrollments get.
    pub defaults: TotpParams,
    pub window: Window,
    /// Counts failed codes per user (a USER-keyed rule).
    pub rule: Rule,
    /// Users who need a second factor in every context.
    pub required: BTreeSet<UserId>,
    /// Recovery codes issued with each confirmed enrollment; 0 issues none.
    pub recovery_codes: u32,
}

impl TotpPolicy {
    /// The user's TOTP failure counter.
    pub fn slot(&self, user: &UserId) -> Slot<'_> {
        Slot {
            context: &TOTP_NAME,
            rule: &self.rule,
            key: Key::User(user.clone()),
        }
    }
}

/// Whether a rule of this kind counts on the address.
fn on_address(kind: KeyKind) -> bool {
    matches!(kind, KeyKind::Ip | KeyKind::UserIp)
}

impl ContextPolicy {
    /// Whether `ip` is in this context's trusted networks.
    pub fn trusts(&self, addr: Option<IpAddr>) -> bool {
        addr.is_some_and(|addr| self.trusted.containing(addr).is_some())
    }

    /// The subject's address when this context admits only some networks
    /// and it is outside them; a subject without one cannot be admitted.
    pub fn outsider(&self, subject: &Subject) -> Result<Option<IpAddress>, FieldError> {
        if self.allowed.is_empty() {
            return Ok(None);
        }
        let ip = subject.ip.ok_or_else(|| {
            FieldError::new(
                "subject.ip",
                format!(
                    "is required in context {:?}, which admits only listed networks",
                    self.name.as_str()
                ),
            )
        })?;
        Ok(self.allowed.containing(ip.addr()).is_none().then_some(ip))
    }

    /// A verdict that let the request through says when it was because the
    /// address is trusted.
    pub fn annotate(&self, subject: &Subject, verdict: Verdict) -> Verdict {
        if verdict.decision == Decision::Allow
            && verdict.reason == Reason::Ok
            && self.trusts(subject.ip.map(IpAddress::addr))
        {
            return Verdict {
                reason: Reason::TrustedNetwork,
                ..verdict
            };
        }
        verdict
    }

    /// The rules that judge this subject (those whose key it supplies) and,
    /// when `activity` is given, count that activity.
    pub fn slots<'a>(&'a self, subject: &Subject, activity: Option<&str>) -> Vec<Slot<'a>> {
        let trusted = self.trusts(subject.ip.map(IpAddress::addr));
        self.rules
            .iter()
            .filter(|r| activity.is_none_or(|a| r.counts(a)))
            .filter(|r| !(trusted && on_address(r.key)))
            .flat_map(|rule| {
                subject.keys(rule.key).into_iter().map(move |key| Slot {
                    context: &self.name,
                    rule,
                    key: key.under(rule.prefixes),
                })
            })
            .collect()
    }

    /// Every rule of this context counting on `kind`.
    pub fn rules_on(&self, kind: KeyKind) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(move |r| r.key == kind)
    }

    /// The rate rules counting on `key`'s kind, each applied to `key`.
    pub fn rate_slots<'a>(&'a self, key: &Key) -> Vec<Slot<'a>> {
        let trusted = self.trusts(key.ip().map(|ip| ip.addr()));
        self.rules_on(key.kind())
            .filter(|r| r.rate_limit().is_some())
            .filter(|r| !(trusted && on_address(r.key)))
            .map(|rule| Slot {
                context: &self.name,
                rule,
                key: key.clone().under(rule.prefixes),
            })
            .collect()
    }
}

/// Everything the server decides by.
#[derive(Debug, Clone)]
pub struct Policy {
    contexts: BTreeMap<String, ContextPolicy>,
    pub access: AccessList,
    pub totp: TotpPolicy,
    /// How long alerts of one kind about one subject are held back after
    /// one is delivered.
    pub alert_suppression: Duration,
    /// The shortest prefix a range ban may have unless forced.
    pub ban_minimum: super::Prefixes,
}

impl Policy {
    pub fn new(
        contexts: Vec<ContextPolicy>,
        access: AccessList,
        totp: TotpPolicy,
        alert_suppression: Duration,
    ) -> Self {
        Policy {
            contexts: contexts
                .into_iter()
                .map(|c| (c.name.as_str().to_owned(), c))
                .collect(),
            access,
            totp,
            alert_suppression,
            ban_minimum: super::BAN_MINIMUM,
        }
    }

    pub fn context_names(&self) -> impl Iterator<Item = &str> {
        self.contexts.keys().map(String::as_str)
    }

    /// Whether `user` needs a second factor in `ctx`.
    pub fn requires_totp(&self, ctx: &ContextPolicy, user: Option<&UserId>) -> bool {
        ctx.totp || user.is_some_and(|u| self.totp.required.contains(u))
    }

    /// The named context, or an error for the request field `field`.
    pub fn context(&self, field: &str, name: &str) -> Result<&ContextPolicy, FieldError> {
        ContextName::parse(field, name)?;
        self.contexts.get(name).ok_or_else(|| {
            let known: Vec<_> = self.contexts.keys().map(String::as_str).collect();
            FieldError::new(
                field,
                format!("unknown context {name:?}; configured: {}", known.join(", ")),
            )
        })
    }

    /// Every prefix a rule on the address counts `ip` by, beside the
    /// address itself: where an admin looking for the address finds its
    /// state.
    pub fn prefixes_of(&self, ip: IpAddress) -> Vec<IpPrefix> {
        let mut prefixes: Vec<IpPrefix> = self
            .contexts
            .values()
            .flat_map(|c| c.rules.iter())
            .filter(|r| on_address(r.key))
            .map(|r| IpPrefix::of(ip, r.prefixes))
            .filter(|p| *p != IpPrefix::from(ip))
            .collect();
        prefixes.sort();
        prefixes.dedup();
        prefixes
    }

    /// The rule stored state was written under, if the configuration still
    /// has it.
    pub fn rule(&self, context: &str, rule: &str) -> Option<&Rule> {
        if context == ALLOW_LIST_CONTEXT {
            return Some(&self.access.rule).filter(|r| r.name == rule);
        }
        if context == TOTP_CONTEXT {
            return Some(&self.totp.rule).filter(|r| r.name == rule);
        }
        self.contexts
            .get(context)?
            .rules
            .iter()
            .find(|r| r.name == rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Ladder, LockDuration};
    use std::time::Duration;

    fn rule(name: &str, key: KeyKind) -> Rule {
        Rule {
            name: name.into(),
            key,
            prefixes: crate::domain::Prefixes::DEFAULT,
            shadow: false,
            activities: vec![],
            kind: crate::domain::RuleKind::Failures {
                captcha_after: None,
                lock_after: Some(3),
            },
            window: Duration::from_secs(3600),
            ladder: Ladder::Tiers(vec![LockDuration::For(Duration::from_secs(3600))]),
            recurrence_window: Duration::from_secs(3600),
            extend_while_locked: false,
        }
    }

    fn ids(names: &[&str]) -> BTreeSet<UserId> {
        names
            .iter()
            .map(|n| UserId::parse("id", n).unwrap())
            .collect()
    }

    #[test]
    fn admins_must_be_allowed_users() {
        let err = AccessList::new(ids(&["a"]), ids(&["a", "x", "y"]), rule("l", KeyKind::User))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "admin_user_ids must all be in allowed_user_ids; not there: x, y"
        );
        assert!(AccessList::new(ids(&[]), ids(&["x"]), rule("l", KeyKind::User)).is_ok());
    }

    #[test]
    fn allow_list_slot_only_for_strangers() {
        let list = AccessList::new(ids(&["a"]), ids(&[]), rule("l", KeyKind::User)).unwrap();
        let stranger = Subject::parse("s", "b", "", "").unwrap();
        let friend = Subject::parse("s", "a", "", "").unwrap();
        let anonymous = Subject::parse("s", "", "1.1.1.1", "").unwrap();
        assert!(list.slot(&stranger).is_some());
        assert!(list.slot(&friend).is_none());
        assert!(list.slot(&anonymous).is_none());
        let open = AccessList::new(ids(&[]), ids(&[]), rule("l", KeyKind::User)).unwrap();
        assert!(open.slot(&stranger).is_none());
    }

    #[test]
    fn strangers_are_denied_until_blocked() {
        let list = AccessList::new(ids(&["a"]), ids(&[]), rule("l", KeyKind::User)).unwrap();
        let denied = list.judge(Verdict {
            remaining_attempts: Some(2),
            ..Verdict::allow()
        });
        assert_eq!(
            (denied.decision, denied.reason),
            (Decision::Deny, Reason::NotOnAllowList)
        );
        assert_eq!(denied.remaining_attempts, Some(2));
        let blocked = Verdict {
            decision: Decision::Blocked,
            reason: Reason::Locked,
            ..Verdict::allow()
        };
        assert_eq!(list.judge(blocked.clone()), blocked);
    }

    #[test]
    fn failing_open_still_denies_strangers() {
        let list = AccessList::new(ids(&["a"]), ids(&[]), rule("l", KeyKind::User)).unwrap();
        let friend = list.unchecked(&Subject::parse("s", "a", "", "").unwrap());
        assert_eq!(
            (friend.decision, friend.reason),
            (Decision::Allow, Reason::StoreUnavailable)
        );
        let stranger = list.unchecked(&Subject::parse("s", "b", "", "").unwrap());
        assert_eq!(
            (stranger.decision, stranger.reason),
            (Decision::Deny, Reason::NotOnAllowList)
        );
    }

    #[test]
    fn slots_follow_supplied_keys_and_activities() {
        let mut spam = rule("spam", KeyKind::User);
        spam.activities = vec!["spam".into()];
        let ctx = ContextPolicy {
            name: ContextName::parse("c", "bot").unwrap(),
            rules: vec![rule("pair", KeyKind::UserIp), rule("ip", KeyKind::Ip), spam],
            totp: false,
            fail_open: false,
            session: crate::domain::SessionPolicy {
                timeout: Duration::from_secs(600),
                mode: crate::domain::TimeoutMode::Absolute,
            },
            admission: None,
            trusted: Networks::default(),
            allowed: Networks::default(),
        };
        let user_only = Subject::parse("s", "a", "", "").unwrap();
        assert!(
            ctx.slots(&user_only, None)
                .iter()
                .any(|s| s.rule.name == "spam")
        );
        assert!(ctx.slots(&user_only, Some("other")).is_empty());
        let both = Subject::parse("s", "a", "1.1.1.1", "").unwrap();
        let names: Vec<_> = ctx
            .slots(&both, Some("x"))
            .iter()
            .map(|s| s.rule.name.clone())
            .collect();
        assert_eq!(names, ["pair", "ip"]);
        let office = ContextPolicy {
            trusted: Networks::parse("t", &["1.1.0.0/16".into()]).unwrap(),
            ..ctx.clone()
        };
        let names: Vec<_> = office
            .slots(&both, None)
            .iter()
            .map(|s| s.rule.name.clone())
            .collect();
        assert_eq!(
            names,
            ["spam"],
            "a trusted address is counted on its user only"
        );
        assert_eq!(
            office.annotate(&both, Verdict::allow()).reason,
            Reason::TrustedNetwork
        );
        assert_eq!(
            office.annotate(&user_only, Verdict::allow()).reason,
            Reason::Ok
        );
        let totp = TotpPolicy {
            issuer: "authgate".into(),
            defaults: TotpParams {
                algorithm: crate::domain::TotpAlgorithm::Sha1,
                digits: 6,
                period: 30,
            },
            window: Window { skew: 1, probe: 10 },
            rule: rule("totp", KeyKind::User),
            required: ids(&["needs-2fa"]),
            recovery_codes: 10,
        };
        let access = AccessList::new(ids(&[]), ids(&[]), rule("l", KeyKind::User)).unwrap();
        let policy = Policy::new(vec![ctx.clone()], access, totp, Duration::from_secs(300));
        assert!(policy.requires_totp(&ctx, Some(&UserId::parse("u", "needs-2fa").unwrap())));
        assert!(!policy.requires_totp(&ctx, Some(&UserId::parse("u", "other").unwrap())));
        let err = policy.context("context", "nope").unwrap_err();
        assert_eq!(err.field, "context");
        assert!(err.problem.contains("configured: bot"));
    }
}
