//! Admins' bans: placing them (one, or a file's worth), the verdicts they
//! give, and what AdminUnlock and GetSubject see of them.

use std::time::Duration;

use super::{Admin, Gate, ServiceError};
use crate::domain::{
    Ban, BanScope, BanSet, BanTarget, ContextName, ContextPolicy, EventKind, FieldError, Key,
    MAX_REASON, Subject, UnixMillis, Verdict,
};
use crate::store::{Bans, Involving, UnlockScope};

/// How long a ban lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    For(Duration),
    Until(UnixMillis),
    Permanent,
}

/// A ban as an admin asks for it, before it is checked against the
/// configuration.
#[derive(Debug, Clone)]
pub struct BanOrder {
    /// `None`: every context.
    pub context: Option<ContextName>,
    pub key: Key,
    pub lifetime: Lifetime,
    pub reason: String,
    /// Bans a range wider than access.ban_min_ipv*_prefix.
    pub force: bool,
}

impl Gate {
    /// The ban `order` asks for, checked: a configured context, a range no
    /// wider than the configured minimum unless forced, an end in the
    /// future, a reason. `field` prefixes the names in errors.
    pub fn ban_of(&self, admin: &Admin, order: BanOrder, field: &str) -> Result<Ban, FieldError> {
        let now = self.now();
        if let Some(context) = &order.context {
            self.policy
                .context(&format!("{field}.context"), context.as_str())?;
        }
        if let Some(prefix) = order.key.ip() {
            let (minimum, setting) = if prefix.is_v6() {
                (self.policy.ban_minimum.v6, "access.ban_min_ipv6_prefix")
            } else {
                (self.policy.ban_minimum.v4, "access.ban_min_ipv4_prefix")
            };
            if prefix.prefix_len() < minimum && !order.force {
                return Err(FieldError::new(
                    format!("{field}.range"),
                    format!(
                        "{prefix} is wider than {setting} (/{minimum}); set force to ban it anyway"
                    ),
                ));
            }
        }
        let until = match order.lifetime {
            Lifetime::For(d) if d.is_zero() => {
                return Err(FieldError::new(
                    format!("{field}.duration"),
                    "must be more than 0 (or ban with permanent)",
                ));
            }
            Lifetime::For(d) => Some(now.plus(d)),
            Lifetime::Until(at) if at <= now => {
                return Err(FieldError::new(
                    format!("{field}.until"),
                    "is not in the future",
                ));
            }
            Lifetime::Until(at) => Some(at),
            Lifetime::Permanent => None,
        };
        let reason = order.reason.trim();
        if reason.is_empty() {
            return Err(FieldError::new(
                format!("{field}.reason"),
                "is required: it is what callers and admins are told",
            ));
        }
        if reason.chars().count() > MAX_REASON || reason.chars().any(char::is_control) {
            return Err(FieldError::new(
                format!("{field}.reason"),
                format!("must be at most {MAX_REASON} characters, none of them control characters"),
            ));
        }
        Ok(Ban {
            target: BanTarget {
                context: order.context,
                key: order.key,
            },
            reason: reason.to_owned(),
            actor: admin.actor.to_string(),
            caller: admin.caller.clone(),
            created_at: now,
            until,
        })
    }

    /// Places `bans`, checked already; returns how many changed anything.
    pub async fn ban(&self, admin: &Admin, bans: &[Ban]) -> Result<u64, ServiceError> {
        let written = self.store.bans().put_bans(bans).await?;
        tracing::info!(
            actor = %crate::telemetry::mask(admin.actor.as_str()),
            caller = %admin.caller,
            asked = bans.len(),
            written,
            "bans placed"
        );
        Ok(written)
    }

    /// The verdicts of the bans that refuse `subject` in `ctx` now.
    pub(super) async fn banned(
        &self,
        ctx: &ContextPolicy,
        subject: &Subject,
        now: UnixMillis,
    ) -> Result<Vec<Verdict>, ServiceError> {
        let set = self.store.bans().active_bans().await?;
        let trusted = ctx.trusts(subject.ip.map(|ip| ip.addr()));
        Ok(set
            .refusing(&ctx.name, subject, trusted, now)
            .into_iter()
            .map(Ban::verdict)
            .collect())
    }

    /// The bans in force, those of one context (and every context's) when
    /// `context` is given.
    pub async fn list_bans(&self, context: Option<&str>) -> Result<Vec<Ban>, ServiceError> {
        if let Some(c) = context {
            self.known_context("context", c)?;
        }
        let bans = self.store.bans().list_bans(self.now()).await?;
        Ok(bans
            .into_iter()
            .filter(|b| {
                context.is_none_or(|c| b.target.context.as_ref().is_none_or(|own| own == c))
            })
            .collect())
    }

    /// The bans in force that refuse `subject` anywhere.
    pub(super) async fn bans_covering(&self, subject: &Subject) -> Result<Vec<Ban>, ServiceError> {
        let now = self.now();
        let set = BanSet::new(self.store.bans().list_bans(now).await?);
        Ok(set.covering(subject, now).into_iter().cloned().collect())
    }

    /// Whether a ban in force names `key` in `context`, or in every one.
    pub(super) async fn is_banned(
        &self,
        context: &ContextName,
        key: &Key,
    ) -> Result<bool, ServiceError> {
        let now = self.now();
        let set = self.store.bans().list_bans(now).await?;
        Ok(set.iter().any(|b| {
            &b.target.key == key && b.target.context.as_ref().is_none_or(|c| c == context)
        }))
    }

    /// Lifts the bans an unlock of `scope` covers: a key's in its context
    /// and in every context, a subject's own keys' (never a wider range
    /// that holds its address: that is lifted by naming it), or all.
    pub(super) async fn lift_bans(
        &self,
        admin: &Admin,
        scope: &UnlockScope,
        now: UnixMillis,
    ) -> Result<u64, ServiceError> {
        let bans = match scope {
            UnlockScope::Key { context, key } => BanScope::Targets(
                [Some(context.clone()), None]
                    .into_iter()
                    .map(|context| BanTarget {
                        context,
                        key: key.clone(),
                    })
                    .collect(),
            ),
            UnlockScope::Subject(involving) => BanScope::Keys(subject_keys(involving)),
            UnlockScope::All => BanScope::All,
        };
        Ok(self
            .store
            .bans()
            .lift_bans(&bans, &admin.event(EventKind::BanLifted, now))
            .await?)
    }
}

/// Every key a ban on `involving`'s subject could have: its own, and its
/// address also as each prefix a rule counts it by.
fn subject_keys(involving: &Involving) -> Vec<Key> {
    let s = &involving.subject;
    let mut keys: Vec<Key> = s.user.clone().map(Key::User).into_iter().collect();
    keys.extend(s.session.clone().map(Key::Session));
    keys.extend(s.passwords.iter().cloned().map(Key::Password));
    let addresses =
        s.ip.map(Into::into)
            .into_iter()
            .chain(involving.prefixes.iter().copied());
    for prefix in addresses {
        keys.push(Key::Ip(prefix));
        if let Some(user) = &s.user {
            keys.push(Key::UserIp(user.clone(), prefix));
        }
    }
    keys
}
