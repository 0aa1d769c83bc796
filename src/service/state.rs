//! The machinery every use case shares: reading key states, judging them,
//! recording failures with the events they cause, forgiving on success.

use super::Gate;
use crate::domain::{
    EventKind, FieldError, Hit, Key, KeyKind, KeyState, Reason, SecurityEvent, Slot, Subject,
    TOTP_CONTEXT, UnixMillis, UserId, Verdict, hit_all,
};
use crate::store::{EventLog, KeyStates};
use crate::store::{StateId, StoreError, Transition, Update};
use crate::telemetry::mask;
use crate::telemetry::metrics;

pub(super) fn id_of(slot: &Slot<'_>) -> StateId {
    StateId {
        context: slot.context.clone(),
        rule: slot.rule.name.clone(),
        key: slot.key.clone(),
    }
}

/// The alert a lock on `slot` raises.
pub(super) fn lockout_kind(slot: &Slot<'_>, state: &KeyState) -> EventKind {
    if slot.rule.shadow {
        EventKind::ShadowLockout
    } else if slot.context == TOTP_CONTEXT {
        EventKind::TotpBlocked
    } else if state.lock.as_ref().is_some_and(|l| l.until.is_none()) {
        EventKind::PermanentLockout
    } else {
        EventKind::Lockout
    }
}

/// A security event of `kind` about `slot`'s key in `state`.
pub(super) fn slot_event(
    kind: EventKind,
    slot: &Slot<'_>,
    now: UnixMillis,
    state: &KeyState,
) -> SecurityEvent {
    let lock = state.active_lock(now);
    SecurityEvent {
        context: Some(slot.context.clone()),
        rule: Some(slot.rule.name.clone()),
        tier: lock.map_or(0, |l| l.tier),
        until: lock.and_then(|l| l.until).map(|t| t.0),
        permanent: lock.is_some_and(|l| l.until.is_none()),
        ..SecurityEvent::new(kind, now).on_key(&slot.key)
    }
}

/// The user id of a request that needs one.
pub(super) fn required_user(subject: &Subject) -> Result<&UserId, FieldError> {
    subject
        .user
        .as_ref()
        .ok_or_else(|| FieldError::new("subject.user_id", "is required for two-factor sign-in"))
}

/// A key for logs: its kind and masked identifiers.
pub(super) fn mask_key(key: &Key) -> String {
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

/// Counts and logs a lockout this replica just committed; a shadow rule's
/// is logged as what it would have done, and counted among its decisions.
fn lockout_applied(slot: &Slot<'_>, state: &KeyState) {
    if slot.rule.shadow {
        tracing::info!(
            context = %slot.context,
            rule = %slot.rule.name,
            key = %mask_key(&slot.key),
            "shadow rule would have locked the key"
        );
        return;
    }
    metrics::lockout(
        slot.context,
        slot.key.kind().as_str(),
        state.recent_lockouts,
    );
    tracing::info!(
        context = %slot.context,
        rule = %slot.rule.name,
        key = %mask_key(&slot.key),
        tier = state.recent_lockouts,
        "lockout applied"
    );
}

/// Counts what each rate slot did with a request.
fn rate_metrics(slots: &[Slot<'_>], outcome: &[Hit]) {
    for (slot, hit) in slots.iter().zip(outcome) {
        let result = if hit.counted {
            metrics::RateResult::Counted
        } else {
            match hit.verdict.reason {
                Reason::RateLimited => metrics::RateResult::OverLimit,
                Reason::Locked | Reason::LockedPermanently => metrics::RateResult::Locked,
                _ => metrics::RateResult::NotCounted,
            }
        };
        metrics::rate_request(slot.context, &slot.rule.name, result);
    }
}

impl Gate {
    /// Records one failure on every slot, atomically per request, together
    /// with `audit` and the alerts the failure causes: a lockout on any slot
    /// and, with `alert_each`, an alert of that kind for every slot. Slots
    /// are sorted first so concurrent requests lock shared rows in one
    /// order. Returns the new states and whether this failure locked any
    /// slot.
    pub(super) async fn fail(
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
            .keys()
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
            lockout_applied(slot, state);
        }
        let enforced = slots.iter().zip(&locked).any(|(s, l)| *l && !s.rule.shadow);
        Ok((by_slot, enforced))
    }

    /// Judges one request of `hits[i]` on each rate slot and counts it on
    /// all of them when every one has room and `admitted` (nothing else
    /// refused it): one compare-and-set transition, so concurrent requests
    /// on any replica never count over the limit nor lose a hit, with the
    /// penalty box's lockout events committed alongside. Slots must be
    /// distinct.
    pub(super) async fn hit(
        &self,
        slots: &[Slot<'_>],
        hits: &[u32],
        admitted: bool,
        now: UnixMillis,
    ) -> Result<Vec<Verdict>, StoreError> {
        if slots.is_empty() {
            return Ok(Vec::new());
        }
        let judge = |states: &[KeyState]| {
            let entries: Vec<_> = slots
                .iter()
                .zip(states)
                .zip(hits)
                .map(|((slot, state), &n)| (slot.rule, &slot.key, state, n))
                .collect();
            hit_all(&entries, admitted, now)
        };
        // A request the stored states already refuse, with no penalty box to
        // apply, changes nothing: refused floods cost no write. Counts only
        // grow between this read and a write, so a refusal read here stands.
        let loaded = self.load(slots).await?;
        let read = judge(&loaded);
        if read.iter().all(|h| !h.counted && !h.lockout_applied) {
            rate_metrics(slots, &read);
            return Ok(read.into_iter().map(|h| h.verdict).collect());
        }
        let mut order: Vec<usize> = (0..slots.len()).collect();
        order.sort_by_key(|&i| id_of(&slots[i]));
        let ids: Vec<StateId> = order.iter().map(|&i| id_of(&slots[i])).collect();
        let in_slot_order = |current: &[Option<KeyState>]| {
            let mut states = vec![KeyState::default(); slots.len()];
            for (&i, state) in order.iter().zip(current) {
                states[i] = state.clone().unwrap_or_default();
            }
            states
        };
        let applied = self
            .store
            .keys()
            .transition(&ids, &|current| {
                let outcome = judge(&in_slot_order(current));
                let events = slots
                    .iter()
                    .zip(&outcome)
                    .filter(|(_, h)| h.lockout_applied)
                    .map(|(slot, h)| slot_event(lockout_kind(slot, &h.state), slot, now, &h.state))
                    .collect();
                let updates = order
                    .iter()
                    .map(|&i| Update {
                        expires_at: slots[i].rule.expires_at(&outcome[i].state),
                        state: outcome[i].state.clone(),
                    })
                    .collect();
                Transition { updates, events }
            })
            .await?;
        // The rules are pure: run on the committed run's input, they tell
        // what that run decided.
        let outcome = judge(&in_slot_order(&applied.before));
        rate_metrics(slots, &outcome);
        for (slot, h) in slots
            .iter()
            .zip(&outcome)
            .filter(|(_, h)| h.lockout_applied)
        {
            lockout_applied(slot, &h.state);
        }
        Ok(outcome.into_iter().map(|h| h.verdict).collect())
    }

    /// Appends to the audit trail (and, for alert kinds, the alert stream).
    pub(super) async fn record(&self, event: SecurityEvent) -> Result<(), StoreError> {
        self.store.events().append(&event).await
    }

    pub(super) async fn load(&self, slots: &[Slot<'_>]) -> Result<Vec<KeyState>, StoreError> {
        if slots.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<StateId> = slots.iter().map(id_of).collect();
        Ok(self
            .store
            .keys()
            .load(&ids)
            .await?
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect())
    }

    pub(super) fn judge(slots: &[Slot<'_>], states: &[KeyState], now: UnixMillis) -> Vec<Verdict> {
        slots
            .iter()
            .zip(states)
            .map(|(slot, state)| slot.rule.assess(&slot.key, state, now))
            .collect()
    }

    /// Clears the recent failures of the slots whose `states` have any: a
    /// success on a fresh key stores nothing. Returns the new states.
    ///
    /// Password keys keep theirs: a success shows the password right for
    /// one account, and spraying is exactly a common password that is right
    /// for some accounts and failing on the rest. Rate rules count
    /// requests, which a success does not undo.
    pub(super) async fn forgive(
        &self,
        slots: &[Slot<'_>],
        mut states: Vec<KeyState>,
    ) -> Result<Vec<KeyState>, StoreError> {
        let dirty: Vec<usize> = (0..slots.len())
            .filter(|&i| {
                !states[i].recent_failures.is_empty()
                    && slots[i].key.kind() != KeyKind::Password
                    && slots[i].rule.rate_limit().is_none()
            })
            .collect();
        if !dirty.is_empty() {
            let ids: Vec<StateId> = dirty.iter().map(|&i| id_of(&slots[i])).collect();
            let written = self
                .store
                .keys()
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
}
