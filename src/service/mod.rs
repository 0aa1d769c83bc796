//! The use cases behind the RPCs: pick the slots a request touches, let the
//! domain decide, let the store persist. Knows neither gRPC nor SQL.

mod totp;

pub use totp::{Enrollment, TotpResult, VerifyOutcome};

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::crypto::{CryptoError, SecretKeys};
use crate::domain::{
    ALLOW_LIST_CONTEXT, ContextPolicy, EventKind, FieldError, Key, KeyState, Policy, SecurityEvent,
    Session, Slot, Subject, TOTP_CONTEXT, UnixMillis, UserId, Verdict,
};
use crate::metrics;
use crate::store::{
    EventFilter, Purged, StateId, Store, StoreError, Stored, StoredTotp, Transition, UnlockScope,
    Update,
};
use crate::telemetry::mask;

/// Why a use case could not be carried out. Each variant maps to one gRPC
/// status in `grpc::status`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// INVALID_ARGUMENT naming the field.
    #[error(transparent)]
    InvalidArgument(#[from] FieldError),
    /// PERMISSION_DENIED.
    #[error("{0}")]
    PermissionDenied(String),
    /// FAILED_PRECONDITION: the request is well-formed but the state of
    /// things does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// UNAVAILABLE when the store cannot be reached, INTERNAL otherwise.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// INTERNAL: a stored secret cannot be decrypted.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// A verdict and whether this very request started a lockout.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub lockout_applied: bool,
}

/// Everything GetSubject returns.
#[derive(Clone)]
pub struct SubjectReport {
    pub allowed: bool,
    pub admin: bool,
    pub states: Vec<Stored>,
    pub session: Option<Session>,
    /// The confirmed secret, else a pending one.
    pub totp: Option<StoredTotp>,
}

/// An admin call's authority: the admin user it acts for and the
/// authenticated caller that made it, both recorded in the audit trail.
pub struct Admin {
    pub actor: UserId,
    pub caller: String,
}

impl Admin {
    fn event(&self, kind: EventKind, now: UnixMillis) -> SecurityEvent {
        SecurityEvent {
            actor: self.actor.to_string(),
            caller: self.caller.clone(),
            ..SecurityEvent::new(kind, now)
        }
    }
}

pub struct Gate {
    policy: Policy,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// `None` when no TOTP encryption key is configured (Postgres without
    /// totp.keys): TOTP calls answer FAILED_PRECONDITION.
    keys: Option<Arc<SecretKeys>>,
}

fn id_of(slot: &Slot<'_>) -> StateId {
    StateId {
        context: slot.context.to_owned(),
        rule: slot.rule.name.clone(),
        key: slot.key.clone(),
    }
}

impl Gate {
    pub fn new(
        policy: Policy,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        keys: Option<Arc<SecretKeys>>,
    ) -> Self {
        Gate {
            policy,
            store,
            clock,
            keys,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    /// Records one failure on every slot, atomically per request, together
    /// with `audit` and the alerts the failure causes: a lockout on any slot
    /// and, with `alert_each`, an alert of that kind for every slot. Slots
    /// are sorted first so concurrent requests lock shared rows in one
    /// order. Returns the new states and whether this failure locked any
    /// slot.
    async fn fail(
        &self,
        slots: &[Slot<'_>],
        now: UnixMillis,
        audit: &[SecurityEvent],
        alert_each: Option<EventKind>,
    ) -> Result<(Vec<KeyState>, bool), StoreError> {
        if slots.is_empty() {
            for event in audit {
                self.record(event.clone()).await?;
            }
            return Ok((Vec::new(), false));
        }
        let mut order: Vec<usize> = (0..slots.len()).collect();
        order.sort_by_key(|&i| id_of(&slots[i]));
        let ids: Vec<StateId> = order.iter().map(|&i| id_of(&slots[i])).collect();
        let applied = self
            .store
            .transition(&ids, &|current| {
                let mut events = audit.to_vec();
                let updates = order
                    .iter()
                    .zip(current)
                    .map(|(&i, state)| {
                        let slot = &slots[i];
                        let t = slot
                            .rule
                            .record_failure(&state.clone().unwrap_or_default(), now);
                        if t.lockout_applied {
                            events.push(slot_event(
                                lockout_kind(slot, &t.state),
                                slot,
                                now,
                                &t.state,
                            ));
                        }
                        if let Some(kind) = alert_each {
                            events.push(slot_event(kind, slot, now, &t.state));
                        }
                        Update {
                            expires_at: slot.rule.expires_at(&t.state),
                            state: t.state,
                        }
                    })
                    .collect();
                Transition { updates, events }
            })
            .await?;
        let mut by_slot = vec![KeyState::default(); slots.len()];
        let mut locked = vec![false; slots.len()];
        for ((&i, before), after) in order.iter().zip(applied.before).zip(applied.after) {
            // The rule is pure: run on the committed run's input, it tells
            // what that run decided.
            locked[i] = slots[i]
                .rule
                .record_failure(&before.unwrap_or_default(), now)
                .lockout_applied;
            by_slot[i] = after;
        }
        metrics::failure(slots[0].context);
        for ((slot, state), _) in slots.iter().zip(&by_slot).zip(&locked).filter(|(_, l)| **l) {
            metrics::lockout(slot.context, state.recent_lockouts);
            tracing::info!(
                context = slot.context,
                rule = %slot.rule.name,
                key = %mask_key(&slot.key),
                tier = state.recent_lockouts,
                "lockout applied"
            );
        }
        Ok((by_slot, locked.contains(&true)))
    }

    /// Appends to the audit trail (and, for alert kinds, the alert stream).
    async fn record(&self, event: SecurityEvent) -> Result<(), StoreError> {
        self.store.append_event(&event).await
    }

    /// Events from every replica, for AdminService.WatchSecurityEvents.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<SecurityEvent> {
        self.store.subscribe()
    }

    async fn load(&self, slots: &[Slot<'_>]) -> Result<Vec<KeyState>, StoreError> {
        if slots.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<StateId> = slots.iter().map(id_of).collect();
        Ok(self
            .store
            .load(&ids)
            .await?
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect())
    }

    fn judge(slots: &[Slot<'_>], states: &[KeyState], now: UnixMillis) -> Vec<Verdict> {
        slots
            .iter()
            .zip(states)
            .map(|(slot, state)| slot.rule.assess(&slot.key, state, now))
            .collect()
    }

    /// The allow list's verdict for a stranger; counting the attempt when
    /// `count` (CheckAccess counts attempts, the record calls only report).
    async fn stranger(
        &self,
        subject: &Subject,
        count: bool,
        now: UnixMillis,
    ) -> Result<Option<Verdict>, StoreError> {
        let Some(slot) = self.policy.access.slot(subject) else {
            return Ok(None);
        };
        let slots = [slot];
        let states = if count {
            self.fail(&slots, now, &[], Some(EventKind::NotAllowed))
                .await?
                .0
        } else {
            self.load(&slots).await?
        };
        let verdict = slots[0].rule.assess(&slots[0].key, &states[0], now);
        Ok(Some(self.policy.access.judge(verdict)))
    }

    pub async fn check_access(
        &self,
        context: &str,
        subject: &Subject,
    ) -> Result<Verdict, ServiceError> {
        let ctx = self.policy.context("context", context)?;
        match self.judge_access(ctx, subject).await {
            // A second factor cannot be checked without the store, so it
            // never fails open.
            Err(ServiceError::Store(StoreError::Unavailable(cause)))
                if ctx.fail_open && !self.policy.requires_totp(ctx, subject.user.as_ref()) =>
            {
                tracing::warn!(context, error = %cause, "store unavailable; failing open");
                metrics::failed_open(context);
                Ok(self.policy.access.unchecked(subject))
            }
            judged => judged,
        }
    }

    async fn judge_access(
        &self,
        ctx: &ContextPolicy,
        subject: &Subject,
    ) -> Result<Verdict, ServiceError> {
        let now = self.now();
        let slots = ctx.slots(subject, None);
        let mut verdicts = Self::judge(&slots, &self.load(&slots).await?, now);
        verdicts.extend(self.stranger(subject, true, now).await?);
        if self.policy.requires_totp(ctx, subject.user.as_ref()) {
            let user = required_user(subject)?;
            verdicts.push(self.second_factor(ctx, user, now).await?);
        }
        Ok(Verdict::most_severe(verdicts))
    }

    pub async fn record_failure(
        &self,
        context: &str,
        subject: &Subject,
        activity: &str,
        caller: &str,
    ) -> Result<Outcome, ServiceError> {
        let ctx = self.policy.context("context", context)?;
        let now = self.now();
        let counting = ctx.slots(subject, Some(activity));
        // The failure's audit record names the service that reported it.
        let recorded = SecurityEvent {
            context: context.to_owned(),
            caller: caller.to_owned(),
            detail: activity.to_owned(),
            ..SecurityEvent::new(EventKind::FailureRecorded, now).about(subject)
        };
        let (states, lockout_applied) = self.fail(&counting, now, &[recorded], None).await?;
        let mut verdicts = Self::judge(&counting, &states, now);
        // Rules that do not count this activity still judge the request.
        let others: Vec<Slot<'_>> = ctx
            .slots(subject, None)
            .into_iter()
            .filter(|s| !counting.contains(s))
            .collect();
        verdicts.extend(Self::judge(&others, &self.load(&others).await?, now));
        verdicts.extend(self.stranger(subject, false, now).await?);
        Ok(Outcome {
            verdict: Verdict::most_severe(verdicts),
            lockout_applied,
        })
    }

    pub async fn record_success(
        &self,
        context: &str,
        subject: &Subject,
    ) -> Result<Verdict, ServiceError> {
        let ctx = self.policy.context("context", context)?;
        let now = self.now();
        let slots = ctx.slots(subject, None);
        let loaded = self.load(&slots).await?;
        let states = self.forgive(&slots, loaded).await?;
        let mut verdicts = Self::judge(&slots, &states, now);
        verdicts.extend(self.stranger(subject, false, now).await?);
        Ok(Verdict::most_severe(verdicts))
    }

    /// Clears the recent failures of the slots whose `states` have any: a
    /// success on a fresh key stores nothing. Returns the new states.
    async fn forgive(
        &self,
        slots: &[Slot<'_>],
        mut states: Vec<KeyState>,
    ) -> Result<Vec<KeyState>, StoreError> {
        let dirty: Vec<usize> = (0..slots.len())
            .filter(|&i| !states[i].recent_failures.is_empty())
            .collect();
        if !dirty.is_empty() {
            let ids: Vec<StateId> = dirty.iter().map(|&i| id_of(&slots[i])).collect();
            let written = self
                .store
                .transition(&ids, &|current| Transition {
                    updates: dirty
                        .iter()
                        .zip(current)
                        .map(|(&i, state)| {
                            let rule = slots[i].rule;
                            let next = rule.record_success(&state.clone().unwrap_or_default());
                            Update {
                                expires_at: rule.expires_at(&next),
                                state: next,
                            }
                        })
                        .collect(),
                    events: Vec::new(),
                })
                .await?;
            for (&i, state) in dirty.iter().zip(written.after) {
                states[i] = state;
            }
        }
        Ok(states)
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
            self.known_context("key.context", context)?;
            let kind_known = context == ALLOW_LIST_CONTEXT
                || self
                    .policy
                    .context("key.context", context)?
                    .rules_on(key.kind())
                    .next()
                    .is_some();
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
        let lifted = self.store.unlock(scope, now).await?;
        metrics::unlocked(scope_name(scope), lifted);
        let event = SecurityEvent {
            detail: format!("scope={} lifted={lifted}", scope_name(scope)),
            ..admin.event(EventKind::Unlocked, now)
        };
        self.record(match scope {
            UnlockScope::Key { context, key } => SecurityEvent {
                context: context.clone(),
                user_id: key.user().map(|u| u.to_string()).unwrap_or_default(),
                ip: key.ip().map(|i| i.to_string()).unwrap_or_default(),
                session_id: key.session().map(|s| s.to_string()).unwrap_or_default(),
                ..event
            },
            UnlockScope::Subject(subject) => event.about(subject),
            UnlockScope::All => event,
        })
        .await?;
        tracing::info!(actor = %crate::telemetry::mask(admin.actor.as_str()), caller = %admin.caller, scope = scope_name(scope), lifted, "admin unlock");
        Ok(lifted)
    }

    fn known_context(&self, field: &str, context: &str) -> Result<(), FieldError> {
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
            .list_locked(context, after, limit, self.now())
            .await?)
    }

    pub async fn subject(&self, subject: &Subject) -> Result<SubjectReport, ServiceError> {
        let states = self.store.subject_states(subject).await?;
        let user = subject.user.as_ref();
        let (session, totp) = match user {
            Some(u) => (
                self.store.session(u).await?,
                self.store.totp(u).await?.into_iter().next(),
            ),
            None => (None, None),
        };
        Ok(SubjectReport {
            allowed: user.is_none_or(|u| self.policy.access.is_allowed(u)),
            admin: user.is_some_and(|u| self.policy.access.is_admin(u)),
            states,
            session,
            totp,
        })
    }

    /// Sets the session and lock gauges from the store.
    pub async fn refresh_gauges(&self) -> Result<(), StoreError> {
        let now = self.now();
        let s = self.store.stats(now, TOTP_CONTEXT).await?;
        for (state, n) in [
            ("total", s.total),
            ("authenticated", s.authenticated),
            ("processing", s.processing),
            ("blocked", s.blocked),
            ("expired", s.expired),
        ] {
            metrics::sessions(state, n);
        }
        let locks = self.store.active_locks(now).await?;
        // Every known context is set, so a context whose locks all ended
        // reads 0 rather than its last count.
        for context in self
            .policy
            .context_names()
            .chain([ALLOW_LIST_CONTEXT, TOTP_CONTEXT])
        {
            for (kind, permanent) in [("temporary", false), ("permanent", true)] {
                let n = locks
                    .iter()
                    .filter(|l| l.context == context && l.permanent == permanent)
                    .map(|l| l.count)
                    .sum();
                metrics::locks_active(context, kind, n);
            }
        }
        Ok(())
    }

    /// One cleanup pass; `None` when another replica ran it.
    pub async fn purge_expired(
        &self,
        audit_retention: Duration,
    ) -> Result<Option<Purged>, StoreError> {
        self.store.purge_expired(self.now(), audit_retention).await
    }

    pub async fn audit_events(
        &self,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<(i64, SecurityEvent)>, ServiceError> {
        if !filter.context.is_empty() {
            self.known_context("context", &filter.context)?;
        }
        Ok(self.store.list_events(filter, limit).await?)
    }
}

/// The alert a lock on `slot` raises.
fn lockout_kind(slot: &Slot<'_>, state: &KeyState) -> EventKind {
    if slot.context == TOTP_CONTEXT {
        EventKind::TotpBlocked
    } else if state.lock.as_ref().is_some_and(|l| l.until.is_none()) {
        EventKind::PermanentLockout
    } else {
        EventKind::Lockout
    }
}

/// A security event of `kind` about `slot`'s key in `state`.
fn slot_event(
    kind: EventKind,
    slot: &Slot<'_>,
    now: UnixMillis,
    state: &KeyState,
) -> SecurityEvent {
    let lock = state.active_lock(now);
    SecurityEvent {
        context: slot.context.to_owned(),
        rule: slot.rule.name.clone(),
        user_id: slot.key.user().map(|u| u.to_string()).unwrap_or_default(),
        ip: slot.key.ip().map(|i| i.to_string()).unwrap_or_default(),
        session_id: slot
            .key
            .session()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        tier: lock.map_or(0, |l| l.tier),
        until: lock.and_then(|l| l.until).map(|t| t.0),
        permanent: lock.is_some_and(|l| l.until.is_none()),
        ..SecurityEvent::new(kind, now)
    }
}

/// The user id of a request that needs one.
fn required_user(subject: &Subject) -> Result<&UserId, FieldError> {
    subject
        .user
        .as_ref()
        .ok_or_else(|| FieldError::new("subject.user_id", "is required for two-factor sign-in"))
}

fn scope_name(scope: &UnlockScope) -> &'static str {
    match scope {
        UnlockScope::Key { .. } => "key",
        UnlockScope::Subject(_) => "subject",
        UnlockScope::All => "all",
    }
}

/// A key for logs: its kind and masked identifiers.
fn mask_key(key: &Key) -> String {
    let parts: Vec<String> = [
        key.user().map(|u| mask(u.as_str())),
        key.ip().map(|i| mask(&i.to_string())),
        key.session().map(|s| mask(s.as_str())),
    ]
    .into_iter()
    .flatten()
    .collect();
    format!("{}:{}", key.kind().as_str(), parts.join("|"))
}
