//! Admit: one call per incoming bot update, judged and recorded on state
//! every replica shares; and what admins do with that state.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::admin::Admin;
use super::state::required_user;
use super::{Gate, ServiceError};
use crate::domain::{
    Admission, AdmissionPolicy, Decision, EventKind, FieldError, Key, Reason, RuleName,
    SecurityEvent, Subject, UnixMillis, UserId, Verdict, admit,
};
use crate::store::{
    AdmissionRecord, AdmissionScope, AdmissionStats, AdmissionStep, OffenderCursor,
};
use crate::store::{AdmissionRecords, Admissions};
use crate::telemetry::{mask, metrics};

/// Longest fingerprint accepted: a SHA-512 digest. A client sends a hash,
/// never the text itself.
pub const MAX_FINGERPRINT_BYTES: usize = 64;

/// What Admit answers.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmitOutcome {
    /// The most severe of the admission's verdict, the context's failure
    /// rules' and the allow list's.
    pub verdict: Verdict,
    /// The admission's own account; `None` when the update was not judged
    /// (an exempt admin, a user not on the allow list).
    pub admission: Option<Admission>,
}

/// The stored form of a fingerprint: eight bytes of its SHA-256, enough to
/// tell repeated content apart, and not the client's own bytes.
fn digest(fingerprint: &[u8]) -> Option<u64> {
    if fingerprint.is_empty() {
        return None;
    }
    let hash = Sha256::digest(fingerprint);
    let mut head = [0u8; 8];
    head.copy_from_slice(&hash[..8]);
    Some(u64::from_be_bytes(head))
}

fn admission_verdict(user: &UserId, a: &Admission) -> Verdict {
    let base = Verdict {
        rule: Some(RuleName::builtin("admission")),
        key: Some(Key::User(user.clone())),
        ..Verdict::allow()
    };
    match (&a.block, a.admitted) {
        (Some(block), _) => Verdict {
            decision: Decision::Blocked,
            reason: Reason::SpamBlocked,
            unblock_at: Some(block.until),
            ..base
        },
        (None, false) => Verdict {
            decision: Decision::Blocked,
            reason: Reason::RateLimited,
            unblock_at: a.retry_at,
            ..base
        },
        (None, true) => base,
    }
}

impl Gate {
    fn admission_policy(&self, context: &str) -> Result<&AdmissionPolicy, ServiceError> {
        self.policy
            .context("context", context)?
            .admission
            .as_ref()
            .ok_or_else(|| {
                FieldError::new("context", "admits no updates (it has no [admission] table)").into()
            })
    }

    /// The window a context's limits count over (zero where it admits no
    /// updates).
    pub fn admission_window(&self, context: &str) -> Duration {
        self.admission_policy(context)
            .map_or(Duration::ZERO, |p| p.window)
    }

    pub async fn admit(
        &self,
        context: &str,
        subject: &Subject,
        kind: &str,
        fingerprint: &[u8],
    ) -> Result<AdmitOutcome, ServiceError> {
        let policy = self.admission_policy(context)?;
        let ctx = self.policy.context("context", context)?;
        let user = required_user(subject)?;
        let kind = policy.kind(kind).ok_or_else(|| {
            let names: Vec<&str> = policy.kinds.iter().map(|k| k.name.as_str()).collect();
            FieldError::new(
                "kind",
                format!("is not a kind of this context: {}", names.join(", ")),
            )
        })?;
        if fingerprint.len() > MAX_FINGERPRINT_BYTES {
            return Err(FieldError::new(
                "fingerprint",
                format!("must be at most {MAX_FINGERPRINT_BYTES} bytes (a hash, never the text)"),
            )
            .into());
        }
        let now = self.now();
        // Strangers are turned away before anything is recorded, as the
        // allow list judges everything else.
        if let Some(stranger) = self.stranger(ctx, subject, false, now).await?
            && stranger.decision != Decision::Allow
        {
            return Ok(AdmitOutcome {
                verdict: stranger,
                admission: None,
            });
        }
        if policy.exempt_admins && self.policy.access.is_admin(user) {
            metrics::admitted(context, &kind.name, "exempt");
            return Ok(AdmitOutcome {
                verdict: Verdict::allow(),
                admission: None,
            });
        }
        let print = digest(fingerprint);
        let outcome = self
            .store
            .admissions()
            .admit(&ctx.name, user, now, &|current| {
                let (state, outcome) = admit(policy, current, kind, print, now);
                let events = outcome
                    .block
                    .filter(|b| b.started)
                    .map(|b| SecurityEvent {
                        context: Some(ctx.name.clone()),
                        tier: u32::try_from(b.number).unwrap_or(u32::MAX),
                        until: Some(b.until.0),
                        detail: format!("cause={} block={}", b.cause.as_str(), b.number),
                        ..SecurityEvent::new(EventKind::AdmissionBlocked, now)
                            .on_key(&Key::User(user.clone()))
                    })
                    .into_iter()
                    .collect();
                AdmissionStep {
                    state,
                    events,
                    outcome,
                }
            })
            .await?;
        self.count_admission(context, &kind.name, user, &outcome);
        // The context's failure rules judge the user too (read-only, as in
        // CheckAccess); the most severe verdict wins.
        let slots = ctx.slots(subject, None);
        let states = self.load(&slots).await?;
        let mut verdicts = Self::judge(&slots, &states, now);
        verdicts.push(admission_verdict(user, &outcome));
        Ok(AdmitOutcome {
            verdict: Verdict::most_severe(verdicts),
            admission: Some(outcome),
        })
    }

    fn count_admission(&self, context: &str, kind: &str, user: &UserId, a: &Admission) {
        let decision = match (a.admitted, &a.block) {
            (true, _) => "admitted",
            (false, Some(b)) if b.started => "blocked",
            (false, Some(_)) => "refused_while_blocked",
            (false, None) => "refused",
        };
        metrics::admitted(context, kind, decision);
        if let Some(cause) = a.warning {
            metrics::admission_warning(context, cause.as_str());
        }
        if let Some(block) = a.block.filter(|b| b.started) {
            metrics::admission_block(context, block.cause.as_str());
            tracing::info!(
                context,
                user = %mask(user.as_str()),
                cause = block.cause.as_str(),
                number = block.number,
                until = block.until.0,
                "admission block"
            );
        }
    }

    /// A user's admission state in every context, as of now.
    pub async fn admissions(&self, user: &UserId) -> Result<Vec<AdmissionRecord>, ServiceError> {
        let now = self.now();
        let mut records = self.store.admission_records().admissions(user).await?;
        for r in &mut records {
            r.state = r.state.settled(now);
        }
        Ok(records)
    }

    /// Lifts the admission blocks in force in `scope` and forgets every
    /// warning there, blocked or not; returns how many blocks were lifted.
    pub(super) async fn unblock_admission(
        &self,
        scope: &AdmissionScope,
        now: UnixMillis,
    ) -> Result<u64, ServiceError> {
        Ok(self
            .store
            .admission_records()
            .reset_admission(scope, true, now)
            .await?)
    }

    /// Forgets users' admission warnings without lifting their blocks.
    pub async fn reset_warnings(
        &self,
        admin: &Admin,
        scope: &AdmissionScope,
    ) -> Result<u64, ServiceError> {
        if let Some(context) = &scope.context {
            self.admission_policy(context.as_str())?;
        }
        let now = self.now();
        let reset = self
            .store
            .admission_records()
            .reset_admission(scope, false, now)
            .await?;
        let event = admin.event(EventKind::WarningsReset, now);
        self.record(SecurityEvent {
            context: scope.context.clone(),
            detail: format!("reset={reset}"),
            ..match &scope.user {
                Some(user) => event.on_key(&Key::User(user.clone())),
                None => event,
            }
        })
        .await?;
        Ok(reset)
    }

    pub async fn admission_offenders(
        &self,
        context: Option<&str>,
        after: Option<&OffenderCursor>,
        limit: u32,
    ) -> Result<Vec<AdmissionRecord>, ServiceError> {
        if let Some(c) = context {
            self.admission_policy(c)?;
        }
        let now = self.now();
        let mut records = self
            .store
            .admission_records()
            .admission_offenders(context, after, limit)
            .await?;
        for r in &mut records {
            r.state = r.state.settled(now);
        }
        Ok(records)
    }

    pub async fn admission_stats(
        &self,
        context: Option<&str>,
    ) -> Result<AdmissionStats, ServiceError> {
        if let Some(c) = context {
            self.admission_policy(c)?;
        }
        Ok(self
            .store
            .admission_records()
            .admission_stats(context, self.now())
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::digest;

    #[test]
    fn fingerprints_are_stored_as_a_digest() {
        assert_eq!(digest(b""), None);
        assert_eq!(digest(b"hello"), digest(b"hello"));
        assert_ne!(digest(b"hello"), digest(b"hello!"));
    }
}
