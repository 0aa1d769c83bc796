//! Two-factor sign-in: sessions, enrollment and code verification.

use std::sync::Arc;

use super::state::required_user;
use super::{Gate, ServiceError};
use crate::crypto::SecretKeys;
use crate::domain::{
    Code, CodeCheck, ContextPolicy, Decision, FieldError, Key, Reason, RuleName, Subject,
    TOTP_CONTEXT, TotpParams, UnixMillis, UserId, Verdict, check_code, provisioning,
};
use crate::domain::{EventKind, SecurityEvent};
use crate::store::StoredTotp;
use crate::store::{Sessions, TotpSecrets};
use crate::telemetry::mask;

/// Smallest secret ImportTotp accepts: RFC 4226's minimum.
pub(super) const MIN_SECRET_BYTES: usize = 16;

/// What VerifyTotp found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpResult {
    Ok,
    Invalid,
    /// A code already used. Callers are told Invalid, so the answer never
    /// reveals that the code was once valid; only metrics tell them apart.
    Replay,
    ClockSkew {
        drift_seconds: i64,
    },
    Blocked,
    NotEnrolled,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VerifyOutcome {
    pub result: TotpResult,
    pub verdict: Verdict,
    pub session_expires_at: Option<UnixMillis>,
}

/// What EnrollTotp hands out, once.
pub struct Enrollment {
    pub secret_base32: String,
    pub uri: String,
    pub qr_png: Vec<u8>,
    pub params: TotpParams,
}

fn totp_verdict(user: &UserId, decision: Decision, reason: Reason) -> Verdict {
    Verdict {
        decision,
        reason,
        rule: Some(RuleName::builtin(TOTP_CONTEXT)),
        key: Some(crate::domain::Key::User(user.clone())),
        ..Verdict::allow()
    }
}

/// Which of two checks against two secrets tells more: a valid code wins,
/// then a replay (which must count as a failure), then a clock skew.
fn rank(check: CodeCheck) -> u8 {
    match check {
        CodeCheck::Valid { .. } => 3,
        CodeCheck::Replayed => 2,
        CodeCheck::ClockSkew { .. } => 1,
        CodeCheck::Invalid => 0,
    }
}

impl Gate {
    pub(super) fn keys(&self) -> Result<&Arc<SecretKeys>, ServiceError> {
        self.keys.as_ref().ok_or_else(|| {
            ServiceError::FailedPrecondition(
                "TOTP is not configured on this server: set totp.keys".into(),
            )
        })
    }

    /// The verdict of the second factor for a check in a TOTP context,
    /// moving the session along its states.
    pub(super) async fn second_factor(
        &self,
        ctx: &ContextPolicy,
        user: &UserId,
        now: UnixMillis,
    ) -> Result<Verdict, ServiceError> {
        let slot = self.policy.totp.slot(user);
        let counter = self.load(std::slice::from_ref(&slot)).await?;
        let blocked = slot.rule.assess(&slot.key, &counter[0], now);
        if blocked.decision == Decision::Blocked {
            return Ok(blocked);
        }
        let session = self.store.sessions().session(user).await?;
        let enrolled = self
            .store
            .totp()
            .totp(user)
            .await?
            .iter()
            .any(|t| t.confirmed);
        let step = ctx.session.check(user, session.as_ref(), enrolled, now);
        if let Some(next) = &step.write {
            self.store.sessions().put_session(user, next).await?;
        }
        if step.expired {
            tracing::info!(user = %mask(user.as_str()), context = %ctx.name, "session expired");
            self.record(SecurityEvent {
                context: Some(ctx.name.clone()),
                ..SecurityEvent::new(EventKind::SessionExpired, now)
                    .on_key(&Key::User(user.clone()))
            })
            .await?;
        }
        Ok(step.verdict)
    }

    pub async fn verify_totp(
        &self,
        context: &str,
        subject: &Subject,
        code: &str,
    ) -> Result<VerifyOutcome, ServiceError> {
        let ctx = self.policy.context("context", context)?;
        let user = required_user(subject)?;
        let now = self.now();
        let secrets = self.store.totp().totp(user).await?;
        if secrets.is_empty() {
            return Ok(VerifyOutcome {
                result: TotpResult::NotEnrolled,
                verdict: totp_verdict(user, Decision::EnrollTotp, Reason::TotpEnrollmentRequired),
                session_expires_at: None,
            });
        }
        // The shape is checked against what the user enrolled with: a code
        // no secret could have produced is bad input and counts nothing.
        let codes: Vec<Option<Code>> = secrets
            .iter()
            .map(|t| Code::parse("code", code, t.params.digits).ok())
            .collect();
        if codes.iter().all(Option::is_none) {
            Code::parse("code", code, secrets[0].params.digits)?;
        }
        let keys = self.keys()?;
        let slot = self.policy.totp.slot(user);
        let counter = self.load(std::slice::from_ref(&slot)).await?;
        let current = slot.rule.assess(&slot.key, &counter[0], now);
        if current.decision == Decision::Blocked {
            return Ok(VerifyOutcome {
                result: TotpResult::Blocked,
                verdict: current,
                session_expires_at: None,
            });
        }
        // The confirmed secret first, then a pending one: either may prove
        // the user, and a pending one's first valid code confirms it.
        let mut found = CodeCheck::Invalid;
        let mut matched = None;
        for (stored, code) in secrets.iter().zip(&codes) {
            let Some(code) = code else { continue };
            let secret = keys.open(user.as_str().as_bytes(), &stored.sealed)?;
            let check = check_code(
                &stored.params,
                &secret,
                code,
                now,
                self.policy.totp.window,
                stored.last_step,
            );
            if rank(check) > rank(found) {
                found = check;
                matched = Some(stored);
            }
        }
        let mut replayed = matches!(found, CodeCheck::Replayed);
        let accepted = match (found, matched) {
            (CodeCheck::Valid { step }, Some(stored)) => {
                let won = self
                    .store
                    .totp()
                    .accept_totp_step(user, &stored.sealed.nonce, step)
                    .await?;
                // Another replica accepted this step first: a replay.
                replayed |= !won;
                won
            }
            (CodeCheck::ClockSkew { drift_steps }, Some(stored)) => {
                return Ok(VerifyOutcome {
                    result: TotpResult::ClockSkew {
                        drift_seconds: drift_steps * i64::from(stored.params.period),
                    },
                    verdict: Verdict {
                        remaining_attempts: current.remaining_attempts,
                        ..totp_verdict(user, Decision::ChallengeTotp, Reason::ClockSkew)
                    },
                    session_expires_at: None,
                });
            }
            _ => false,
        };
        if accepted {
            self.forgive(std::slice::from_ref(&slot), counter).await?;
            let session = ctx.session.start(now);
            self.store.sessions().put_session(user, &session).await?;
            if matched.is_some_and(|t| !t.confirmed) {
                self.record(SecurityEvent::new(EventKind::TotpConfirmed, now).about(subject))
                    .await?;
            }
            self.record(SecurityEvent {
                context: Some(ctx.name.clone()),
                ..SecurityEvent::new(EventKind::SessionStarted, now).about(subject)
            })
            .await?;
            tracing::info!(user = %mask(user.as_str()), context = %ctx.name, "second factor accepted");
            return Ok(VerifyOutcome {
                result: TotpResult::Ok,
                verdict: Verdict::allow(),
                session_expires_at: session.expires_at,
            });
        }
        // A replay is answered exactly as a wrong code, so the answer never
        // tells an attacker that a code they saw was once valid.
        let failed = SecurityEvent {
            context: Some(ctx.name.clone()),
            detail: if replayed { "replay" } else { "invalid" }.into(),
            ..SecurityEvent::new(EventKind::TotpFailed, now).about(subject)
        };
        let (states, lockout_applied) = self
            .fail(std::slice::from_ref(&slot), now, &[failed], None)
            .await?;
        let verdict = slot.rule.assess(&slot.key, &states[0], now);
        if lockout_applied {
            tracing::warn!(user = %mask(user.as_str()), "TOTP blocked after too many failed codes");
        }
        if verdict.decision == Decision::Blocked {
            return Ok(VerifyOutcome {
                result: TotpResult::Blocked,
                verdict,
                session_expires_at: None,
            });
        }
        Ok(VerifyOutcome {
            result: if replayed {
                TotpResult::Replay
            } else {
                TotpResult::Invalid
            },
            verdict: Verdict {
                remaining_attempts: verdict.remaining_attempts,
                ..totp_verdict(user, Decision::ChallengeTotp, Reason::InvalidCode)
            },
            session_expires_at: None,
        })
    }

    pub async fn enroll_totp(
        &self,
        context: &str,
        subject: &Subject,
        account: &str,
    ) -> Result<Enrollment, ServiceError> {
        let ctx = self.policy.context("context", context)?;
        let user = required_user(subject)?.clone();
        let keys = self.keys()?.clone();
        let now = self.now();
        if self
            .store
            .totp()
            .totp(&user)
            .await?
            .iter()
            .any(|t| t.confirmed)
        {
            let session = self.store.sessions().session(&user).await?;
            if !session.is_some_and(|s| ctx.session.is_live(&s, now)) {
                return Err(ServiceError::FailedPrecondition(
                    "a confirmed TOTP secret can only be replaced from an authenticated session \
                     or by an admin (AdminService.ResetTotp)"
                        .into(),
                ));
            }
        }
        let account = if account.is_empty() {
            user.as_str()
        } else {
            account
        }
        .to_owned();
        if account.contains(':') || account.len() > 256 {
            return Err(
                FieldError::new("account_name", "must be at most 256 bytes without ':'").into(),
            );
        }
        let params = self.policy.totp.defaults;
        let issuer = self.policy.totp.issuer.clone();
        let secret = totp_rs::Secret::generate();
        let secret_base32 = secret.to_base32();
        let bytes = secret.as_bytes().to_vec();
        // The PNG costs milliseconds of CPU: keep it off the async threads.
        let (provision, sealed) = tokio::task::spawn_blocking(move || {
            let sealed = keys.seal(user.as_str().as_bytes(), &bytes);
            (
                provisioning(&params, &bytes, &issuer, &account),
                (user, sealed),
            )
        })
        .await?;
        let (user, sealed) = sealed;
        let provision = provision.map_err(|e| FieldError::new("account_name", e))?;
        self.store
            .totp()
            .put_totp(
                &user,
                &StoredTotp {
                    sealed,
                    params,
                    confirmed: false,
                    created_at: now,
                    last_step: None,
                },
            )
            .await?;
        tracing::info!(user = %mask(user.as_str()), "TOTP enrollment started");
        self.record(SecurityEvent {
            context: Some(ctx.name.clone()),
            ..SecurityEvent::new(EventKind::TotpEnrolled, now).on_key(&Key::User(user.clone()))
        })
        .await?;
        Ok(Enrollment {
            secret_base32,
            uri: provision.uri,
            qr_png: provision.qr_png,
            params,
        })
    }
}
