//! What admins do: unlock, look at locked keys and subjects, read the
//! audit trail, watch alerts, manage second factors and sessions.

use super::totp::MIN_SECRET_BYTES;
use super::{Gate, ServiceError};
use crate::domain::{
    ALLOW_LIST_CONTEXT, EventKind, FieldError, Key, KeyKind, SecurityEvent, Session, Subject,
    TotpParams, UnixMillis, UserId,
};
use crate::store::{
    AdmissionRecord, AdmissionScope, EventFilter, Involving, StateId, Stored, StoredTotp,
    UnlockScope,
};
use crate::store::{EventLog, KeyStates, Reports, Sessions, TotpSecrets};
use crate::telemetry::metrics;

fn scope_name(scope: &UnlockScope) -> &'static str {
    match scope {
        UnlockScope::Key { .. } => "key",
        UnlockScope::Subject(_) => "subject",
        UnlockScope::All => "all",
    }
}

/// Everything GetSubject returns.
#[derive(Clone)]
pub struct SubjectReport {
    pub allowed: bool,
    /// The bans in force that refuse the subject anywhere.
    pub bans: Vec<crate::domain::Ban>,
    pub admin: bool,
    pub states: Vec<Stored>,
    pub session: Option<Session>,
    /// The confirmed secret, else a pending one.
    pub totp: Option<StoredTotp>,
    /// Recovery codes the user has left.
    pub recovery_codes_left: u64,
    /// Admission state in every context that judged the user's updates.
    pub admission: Vec<AdmissionRecord>,
}

/// An admin call's authority: the admin user it acts for and the
/// authenticated caller that made it, both recorded in the audit trail.
pub struct Admin {
    pub actor: UserId,
    pub caller: String,
}

impl Admin {
    pub(super) fn event(&self, kind: EventKind, now: UnixMillis) -> SecurityEvent {
        SecurityEvent {
            actor: self.actor.to_string(),
            caller: self.caller.clone(),
            ..SecurityEvent::new(kind, now)
        }
    }
}

impl Gate {
    /// Events from every replica, for AdminService.WatchSecurityEvents.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<SecurityEvent> {
        self.store.events().subscribe()
    }

    /// Admin calls act on behalf of a user on the admin list, through an
    /// authenticated caller.
    pub fn authorize_admin(&self, caller: &str, actor: &str) -> Result<Admin, ServiceError> {
        let actor = UserId::parse("actor_user_id", actor)?;
        if !self.policy.access.is_admin(&actor) {
            return Err(ServiceError::PermissionDenied(
                "actor_user_id is not on the admin list".into(),
            ));
        }
        Ok(Admin {
            actor,
            caller: caller.to_owned(),
        })
    }

    pub async fn unlock(&self, admin: &Admin, scope: &UnlockScope) -> Result<u64, ServiceError> {
        if let UnlockScope::Key { context, key } = scope {
            self.known_context("key.context", context.as_str())?;
            let kind_known = context == ALLOW_LIST_CONTEXT
                || {
                    let ctx = self.policy.context("key.context", context.as_str())?;
                    ctx.rules_on(key.kind()).next().is_some()
                        || (ctx.admission.is_some() && key.kind() == KeyKind::User)
                }
                || self.is_banned(context, key).await?;
            if !kind_known {
                return Err(FieldError::new(
                    "key.key.kind",
                    format!(
                        "no rule of context {context:?} counts on {}",
                        key.kind().as_str()
                    ),
                )
                .into());
            }
        }
        let now = self.now();
        // Admission blocks are lifted too: they are the users' locks in a
        // bot. The warnings go whether or not a block is in force (the
        // reference's unblock keeps those of a user not blocked), so an
        // unlocked user is not one warning away from the next block.
        let admission = match scope {
            UnlockScope::Key { context, key } => key.user().map(|user| AdmissionScope {
                context: Some(context.clone()),
                user: Some(user.clone()),
            }),
            UnlockScope::Subject(Involving { subject, .. }) => {
                subject.user.clone().map(|user| AdmissionScope {
                    context: None,
                    user: Some(user),
                })
            }
            UnlockScope::All => Some(AdmissionScope::default()),
        };
        let mut lifted = 0;
        for scope in self.counted_as(scope) {
            lifted += self.store.keys().unlock(&scope, now).await?;
        }
        if let Some(admission) = admission {
            lifted += self.unblock_admission(&admission, now).await?;
        }
        lifted += self.lift_bans(admin, scope, now).await?;
        metrics::unlocked(scope_name(scope), lifted);
        let event = SecurityEvent {
            detail: format!("scope={} lifted={lifted}", scope_name(scope)),
            ..admin.event(EventKind::Unlocked, now)
        };
        self.record(match scope {
            UnlockScope::Key { context, key } => SecurityEvent {
                context: Some(context.clone()),
                ..event.on_key(key)
            },
            UnlockScope::Subject(involving) => event.about(&involving.subject),
            UnlockScope::All => event,
        })
        .await?;
        tracing::info!(actor = %crate::telemetry::mask(admin.actor.as_str()), caller = %admin.caller, scope = scope_name(scope), lifted, "admin unlock");
        Ok(lifted)
    }

    /// Who an admin call about `subject` covers: its address also as every
    /// prefix a rule counts it by.
    pub fn involving(&self, subject: Subject) -> Involving {
        let prefixes = subject
            .ip
            .map(|ip| self.policy.prefixes_of(ip))
            .unwrap_or_default();
        Involving { subject, prefixes }
    }

    /// An unlock of one key as the context's rules count it: a key on one
    /// address is also the key of each prefix a rule there counts it by.
    fn counted_as(&self, scope: &UnlockScope) -> Vec<UnlockScope> {
        let UnlockScope::Key { context, key } = scope else {
            return vec![scope.clone()];
        };
        let mut keys = vec![key.clone()];
        if let Ok(ctx) = self.policy.context("key.context", context) {
            keys.extend(
                ctx.rules_on(key.kind())
                    .map(|r| key.clone().under(r.prefixes)),
            );
        }
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|key| UnlockScope::Key {
                context: context.clone(),
                key,
            })
            .collect()
    }

    pub(super) fn known_context(&self, field: &str, context: &str) -> Result<(), FieldError> {
        if context != ALLOW_LIST_CONTEXT {
            self.policy.context(field, context)?;
        }
        Ok(())
    }

    pub async fn list_locked(
        &self,
        context: Option<&str>,
        after: Option<&StateId>,
        limit: u32,
    ) -> Result<Vec<Stored>, ServiceError> {
        if let Some(c) = context {
            self.known_context("context", c)?;
        }
        Ok(self
            .store
            .reports()
            .list_locked(context, after, limit, self.now())
            .await?)
    }

    pub async fn subject(&self, subject: &Subject) -> Result<SubjectReport, ServiceError> {
        let states = self
            .store
            .reports()
            .subject_states(&self.involving(subject.clone()))
            .await?;
        let user = subject.user.as_ref();
        let (session, totp, admission, recovery_codes_left) = match user {
            Some(u) => (
                self.store.sessions().session(u).await?,
                self.store.totp().totp(u).await?.into_iter().next(),
                self.admissions(u).await?,
                self.recovery_codes_left(u).await?,
            ),
            None => (None, None, Vec::new(), 0),
        };
        Ok(SubjectReport {
            bans: self.bans_covering(subject).await?,
            allowed: user.is_none_or(|u| self.policy.access.is_allowed(u)),
            admin: user.is_some_and(|u| self.policy.access.is_admin(u)),
            states,
            session,
            totp,
            admission,
            recovery_codes_left,
        })
    }

    pub async fn audit_events(
        &self,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<(i64, SecurityEvent)>, ServiceError> {
        if !filter.context.is_empty() {
            self.known_context("context", &filter.context)?;
        }
        Ok(self.store.reports().list_events(filter, limit).await?)
    }

    pub async fn import_totp(
        &self,
        admin: &Admin,
        user: &UserId,
        secret_base32: &str,
        params: TotpParams,
    ) -> Result<(), ServiceError> {
        params.validate("digits", "period_seconds")?;
        let secret = totp_rs::Secret::try_from_base32(secret_base32.trim_end_matches('='))
            .map_err(|_| FieldError::new("secret_base32", "is not base32"))?;
        if secret.as_bytes().len() < MIN_SECRET_BYTES {
            return Err(FieldError::new("secret_base32", "must be at least 128 bits").into());
        }
        let sealed = self
            .keys()?
            .seal(user.as_str().as_bytes(), secret.as_bytes());
        self.store
            .totp()
            .put_totp(
                user,
                &StoredTotp {
                    sealed,
                    params,
                    confirmed: true,
                    created_at: self.now(),
                    last_step: None,
                },
            )
            .await?;
        self.record(
            admin
                .event(EventKind::TotpImported, self.now())
                .on_key(&Key::User(user.clone())),
        )
        .await?;
        Ok(())
    }

    /// Removes the user's secret and ends their session.
    pub async fn reset_totp(&self, admin: &Admin, user: &UserId) -> Result<bool, ServiceError> {
        let now = self.now();
        let removed = self.store.totp().delete_totp(user).await?;
        self.store
            .sessions()
            .revoke_sessions(Some(user), now)
            .await?;
        self.record(SecurityEvent {
            detail: format!("removed={removed}"),
            ..admin
                .event(EventKind::TotpReset, now)
                .on_key(&Key::User(user.clone()))
        })
        .await?;
        Ok(removed)
    }

    pub async fn revoke_sessions(
        &self,
        admin: &Admin,
        user: Option<&UserId>,
    ) -> Result<u64, ServiceError> {
        let now = self.now();
        let revoked = self.store.sessions().revoke_sessions(user, now).await?;
        let event = admin.event(EventKind::SessionRevoked, now);
        self.record(SecurityEvent {
            detail: format!("revoked={revoked}"),
            ..match user {
                Some(user) => event.on_key(&Key::User(user.clone())),
                None => event,
            }
        })
        .await?;
        Ok(revoked)
    }
}
