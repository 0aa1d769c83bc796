//! Bans: an admin's refusal of one key, or of a whole range of addresses,
//! in one context or in every one, for a while or for good. A range is one
//! ban however many addresses it holds: a request's address is looked up
//! under each prefix length some ban uses, never stored per address.

use std::collections::{BTreeSet, HashMap};

use super::{
    ContextName, Decision, EventKind, IpPrefix, Key, KeyKind, Prefixes, Reason, RuleName,
    SecurityEvent, Subject, UnixMillis, Verdict,
};

/// The rule a ban's verdict names: no configured rule may take the name.
pub const BAN_RULE: &str = "ban";

/// The shortest prefixes a range ban may have unless forced, by default:
/// an IPv4 /16, an IPv6 /32 (an ISP's allocation).
pub const BAN_MINIMUM: Prefixes = Prefixes { v4: 16, v6: 32 };

/// Longest reason an admin may give: it is shown to callers and admins,
/// not a place for documents.
pub const MAX_REASON: usize = 200;

/// What a ban refuses, and where.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BanTarget {
    /// `None`: every context, those configured later included.
    pub context: Option<ContextName>,
    /// The key refused; an `Ip` key of a network is a range ban.
    pub key: Key,
}

impl BanTarget {
    /// What metrics and the audit trail call the kind of thing banned: the
    /// key's kind, or `range` for a network of addresses.
    pub fn kind_name(&self) -> &'static str {
        match &self.key {
            Key::Ip(prefix) if !prefix.is_single() => "range",
            key => key.kind().as_str(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub target: BanTarget,
    pub reason: String,
    /// The admin who banned, and the caller they acted through.
    pub actor: String,
    pub caller: String,
    pub created_at: UnixMillis,
    /// `None` while it lasts until an admin lifts it.
    pub until: Option<UnixMillis>,
}

impl Ban {
    pub fn in_force(&self, now: UnixMillis) -> bool {
        self.until.is_none_or(|until| until > now)
    }

    /// Whether writing `self` over `stored` changes what is refused, and
    /// until when, and why: a ban imported again is no change.
    pub fn same_as(&self, stored: &Ban) -> bool {
        self.target == stored.target && self.reason == stored.reason && self.until == stored.until
    }

    /// The answer to a request it refuses.
    pub fn verdict(&self) -> Verdict {
        Verdict {
            decision: Decision::Blocked,
            reason: Reason::Banned,
            rule: Some(RuleName::builtin(BAN_RULE)),
            key: Some(self.target.key.clone()),
            unblock_at: self.until,
            permanent: self.until.is_none(),
            ban_reason: Some(self.reason.clone()),
            ..Verdict::allow()
        }
    }

    /// The audit record of `kind` about this ban, on top of `base` (who
    /// acted, and when).
    pub fn event(&self, kind: EventKind, base: SecurityEvent) -> SecurityEvent {
        SecurityEvent {
            context: self.target.context.clone(),
            rule: Some(RuleName::builtin(BAN_RULE)),
            until: self.until.map(|t| t.0),
            permanent: self.until.is_none(),
            detail: self.reason.clone(),
            kind,
            ..base.on_key(&self.target.key)
        }
    }

    /// The record of the ban being placed, by whom it names.
    pub fn placed(&self) -> SecurityEvent {
        let base = SecurityEvent {
            actor: self.actor.clone(),
            caller: self.caller.clone(),
            ..SecurityEvent::new(EventKind::Banned, self.created_at)
        };
        self.event(EventKind::Banned, base)
    }
}

/// Which bans AdminUnlock lifts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BanScope {
    /// These exact targets.
    Targets(Vec<BanTarget>),
    /// Every ban, in any context, whose key is one of these: a subject's
    /// own keys, never a wider range that holds its address.
    Keys(Vec<Key>),
    All,
}

/// The bans in force, indexed for the check path.
#[derive(Debug, Default)]
pub struct BanSet {
    bans: HashMap<BanTarget, Ban>,
    /// The prefix lengths address bans use, per family: what an address is
    /// looked up under.
    v4: BTreeSet<u8>,
    v6: BTreeSet<u8>,
}

impl BanSet {
    pub fn new(bans: impl IntoIterator<Item = Ban>) -> BanSet {
        let mut set = BanSet::default();
        for ban in bans {
            if let Some(prefix) = ban.target.key.ip() {
                let lengths = if prefix.is_v6() {
                    &mut set.v6
                } else {
                    &mut set.v4
                };
                lengths.insert(prefix.prefix_len());
            }
            set.bans.insert(ban.target.clone(), ban);
        }
        set
    }

    pub fn len(&self) -> usize {
        self.bans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    /// Every key of `subject` a ban could name: its own, and its address
    /// (alone and with its user) under every prefix length a ban uses.
    fn candidates(&self, subject: &Subject, address: bool) -> Vec<Key> {
        let mut keys: Vec<Key> = [KeyKind::User, KeyKind::Session, KeyKind::Password]
            .into_iter()
            .flat_map(|kind| subject.keys(kind))
            .collect();
        if let (Some(ip), true) = (subject.ip, address) {
            let lengths = if ip.addr().is_ipv6() {
                &self.v6
            } else {
                &self.v4
            };
            for &len in lengths {
                let prefix = IpPrefix::of(ip, Prefixes { v4: len, v6: len });
                keys.push(Key::Ip(prefix));
                if let Some(user) = &subject.user {
                    keys.push(Key::UserIp(user.clone(), prefix));
                }
            }
        }
        keys
    }

    /// The bans in force at `now` that refuse `subject` in `context`; with
    /// `address_trusted`, none on its address (a trusted network is never
    /// refused by a range ban).
    pub fn refusing(
        &self,
        context: &ContextName,
        subject: &Subject,
        address_trusted: bool,
        now: UnixMillis,
    ) -> Vec<&Ban> {
        if self.bans.is_empty() {
            return Vec::new();
        }
        let mut found = Vec::new();
        for key in self.candidates(subject, !address_trusted) {
            for context in [Some(context.clone()), None] {
                let target = BanTarget {
                    context,
                    key: key.clone(),
                };
                if let Some(ban) = self.bans.get(&target).filter(|b| b.in_force(now)) {
                    found.push(ban);
                }
            }
        }
        found
    }

    /// The bans in force at `now` that refuse `subject` anywhere: what
    /// GetSubject shows.
    pub fn covering(&self, subject: &Subject, now: UnixMillis) -> Vec<&Ban> {
        let keys = self.candidates(subject, true);
        let mut found: Vec<&Ban> = self
            .bans
            .values()
            .filter(|b| b.in_force(now) && keys.contains(&b.target.key))
            .collect();
        found.sort_by(|a, b| a.target.cmp(&b.target));
        found
    }

    /// Bans in force at `now`, counted by scope (`context` or `all`) and
    /// kind (`BanTarget::kind_name`).
    pub fn counts(&self, now: UnixMillis) -> HashMap<(&'static str, &'static str), u64> {
        let mut counts = HashMap::new();
        for ban in self.bans.values().filter(|b| b.in_force(now)) {
            let scope = if ban.target.context.is_some() {
                "context"
            } else {
                "all"
            };
            *counts.entry((scope, ban.target.kind_name())).or_default() += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{IpAddress, UserId};

    fn ban(context: Option<&str>, key: Key, until: Option<i64>) -> Ban {
        Ban {
            target: BanTarget {
                context: context.map(ContextName::from),
                key,
            },
            reason: "abuse".into(),
            actor: "admin".into(),
            caller: "tool".into(),
            created_at: UnixMillis(0),
            until: until.map(UnixMillis),
        }
    }

    fn range(raw: &str) -> Key {
        Key::Ip(IpPrefix::parse("range", raw).unwrap())
    }

    fn from(ip: &str, user: Option<&str>) -> Subject {
        Subject {
            ip: Some(IpAddress::parse("ip", ip).unwrap()),
            user: user.map(|u| UserId::parse("user_id", u).unwrap()),
            ..Subject::default()
        }
    }

    #[test]
    fn a_range_refuses_every_address_in_it_and_no_other() {
        let set = BanSet::new([
            ban(Some("login"), range("10.0.0.0/8"), None),
            ban(None, range("2001:db8::/32"), Some(1_000)),
        ]);
        let login = ContextName::from("login");
        let refused = |ip: &str, now| {
            !set.refusing(&login, &from(ip, None), false, UnixMillis(now))
                .is_empty()
        };
        assert!(refused("10.0.0.1", 0));
        assert!(refused("10.255.255.255", 0));
        assert!(refused("::ffff:10.1.2.3", 0), "IPv4-mapped is IPv4");
        assert!(!refused("11.0.0.1", 0));
        assert!(refused("2001:db8:ffff::1", 999));
        assert!(!refused("2001:db8:ffff::1", 1_000), "ended");
        assert!(!refused("2001:db9::1", 0));
        let other = ContextName::from("other");
        assert!(
            set.refusing(&other, &from("10.0.0.1", None), false, UnixMillis(0))
                .is_empty()
        );
        assert!(
            !set.refusing(&other, &from("2001:db8::1", None), false, UnixMillis(0))
                .is_empty()
        );
        assert!(
            set.refusing(&login, &from("10.0.0.1", None), true, UnixMillis(0))
                .is_empty(),
            "a trusted address is never refused by a range"
        );
    }

    #[test]
    fn a_users_ban_refuses_them_from_anywhere_trusted_or_not() {
        let user = Key::User(UserId::parse("user_id", "mallory").unwrap());
        let set = BanSet::new([ban(None, user.clone(), None)]);
        let login = ContextName::from("login");
        let found = set.refusing(
            &login,
            &from("10.0.0.1", Some("mallory")),
            true,
            UnixMillis(0),
        );
        assert_eq!(found.len(), 1);
        let verdict = found[0].verdict();
        assert_eq!(
            (verdict.decision, verdict.reason),
            (Decision::Blocked, Reason::Banned)
        );
        assert!(verdict.permanent);
        assert_eq!(verdict.key, Some(user));
        assert_eq!(verdict.ban_reason.as_deref(), Some("abuse"));
        assert!(
            set.refusing(
                &login,
                &from("10.0.0.1", Some("alice")),
                false,
                UnixMillis(0)
            )
            .is_empty()
        );
    }

    #[test]
    fn bans_are_counted_by_scope_and_kind() {
        let set = BanSet::new([
            ban(Some("login"), range("10.0.0.0/8"), None),
            ban(None, range("192.0.2.7"), None),
            ban(None, range("192.0.2.8"), Some(5)),
        ]);
        let counts = set.counts(UnixMillis(10));
        assert_eq!(counts.get(&("context", "range")), Some(&1));
        assert_eq!(counts.get(&("all", "ip")), Some(&1));
        assert_eq!(counts.len(), 2);
    }
}
