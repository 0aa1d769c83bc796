//! Two-factor sign-in: sessions, enrollment and code verification.

use std::sync::Arc;

use super::state::required_user;
use super::{Gate, ServiceError};
use crate::crypto::SecretKeys;
use crate::domain::{
    Code, CodeCheck, ContextPolicy, Decision, FieldError, Key, Reason, RecoveryCode, RuleName,
    Subject, TOTP_CONTEXT, TotpParams, UnixMillis, UserId, Verdict, check_code, provisioning,
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
    /// A recovery code signed the user in.
    RecoveryOk,
    /// A recovery code that is not (or no longer) one of the user's.
    RecoveryInvalid,
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
    /// Issued by this call, which confirmed an enrollment: shown once.
    pub recovery_codes: Vec<RecoveryCode>,
    /// After a recovery code signed the user in: how many are left.
    pub recovery_codes_left: Option<u64>,
}

impl VerifyOutcome {
    /// An answer that starts no session and issues nothing.
    pub(super) fn refused(result: TotpResult, verdict: Verdict) -> VerifyOutcome {
        VerifyOutcome {
            result,
            verdict,
            session_expires_at: None,
            recovery_codes: Vec::new(),
            recovery_codes_left: None,
        }
    }
}

/// A user's TOTP failure counter as stored, and its verdict now.
pub(super) type Unblocked = (Vec<crate::domain::KeyState>, Verdict);

/// What a user proves their second factor with.
#[derive(Debug, Clone, Copy)]
pub enum Proof<'a> {
    /// A code from their authenticator app.
    Code(&'a str),
    /// One of their recovery codes, as typed.
    RecoveryCode(&'a str),
}

/// What EnrollTotp hands out, once.
pub struct Enrollment {
    pub secret_base32: String,
    pub uri: String,
    pub qr_png: Vec<u8>,
    pub params: TotpParams,
}

pub(super) fn totp_verdict(user: &UserId, decision: Decision, reason: Reason) -> Verdict {
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
        proof: Proof<'_>,
    ) -> Result<VerifyOutcome, ServiceError> {
        let ctx = self.policy.context("context", context)?;
        let user = required_user(subject)?;
        let now = self.now();
        let secrets = self.store.totp().totp(user).await?;
        if secrets.is_empty() {
            return Ok(VerifyOutcome::refused(
                TotpResult::NotEnrolled,
                totp_verdict(user, Decision::EnrollTotp, Reason::TotpEnrollmentRequired),
            ));
        }
        let code = match proof {
            Proof::Code(code) => code,
            Proof::RecoveryCode(raw) => {
                return self.recover(ctx, subject, user, &secrets, raw, now).await;
            }
        };
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
        let (counter, current) = match self.totp_counter(user, now).await? {
            Ok(unblocked) => unblocked,
            Err(blocked) => return Ok(blocked),
        };
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
        let mut issued = Vec::new();
        let accepted = match (found, matched) {
            (CodeCheck::Valid { step }, Some(stored)) => {
                // Confirming an enrollment issues its recovery codes, in the
                // same transaction as the confirmation.
                let (codes, hashes) = if stored.confirmed {
                    (Vec::new(), Vec::new())
                } else {
                    self.new_recovery_codes(user)?
                };
                let won = self
                    .store
                    .totp()
                    .accept_totp_step(user, &stored.sealed.nonce, step, &hashes, now)
                    .await?;
                // Another replica accepted this step first: a replay.
                replayed |= !won;
                if won {
                    issued = codes;
                }
                won
            }
            (CodeCheck::ClockSkew { drift_steps }, Some(stored)) => {
                return Ok(VerifyOutcome::refused(
                    TotpResult::ClockSkew {
                        drift_seconds: drift_steps * i64::from(stored.params.period),
                    },
                    Verdict {
                        remaining_attempts: current.remaining_attempts,
                        ..totp_verdict(user, Decision::ChallengeTotp, Reason::ClockSkew)
                    },
                ));
            }
            _ => false,
        };
        if accepted {
            if matched.is_some_and(|t| !t.confirmed) {
                self.record(SecurityEvent::new(EventKind::TotpConfirmed, now).about(subject))
                    .await?;
                if !issued.is_empty() {
                    self.record(SecurityEvent {
                        detail: format!("count={}", issued.len()),
                        ..SecurityEvent::new(EventKind::RecoveryCodesIssued, now).about(subject)
                    })
                    .await?;
                }
            }
            let mut outcome = self.signed_in(ctx, subject, user, counter, now).await?;
            outcome.recovery_codes = issued;
            return Ok(outcome);
        }
        // A replay is answered exactly as a wrong code, so the answer never
        // tells an attacker that a code they saw was once valid.
        let result = if replayed {
            TotpResult::Replay
        } else {
            TotpResult::Invalid
        };
        self.wrong(ctx, subject, user, result, now).await
    }

    /// The user's TOTP failure counter and its verdict now, or the answer
    /// to give while it blocks them.
    pub(super) async fn totp_counter(
        &self,
        user: &UserId,
        now: UnixMillis,
    ) -> Result<Result<Unblocked, VerifyOutcome>, ServiceError> {
        let slot = self.policy.totp.slot(user);
        let counter = self.load(std::slice::from_ref(&slot)).await?;
        let current = slot.rule.assess(&slot.key, &counter[0], now);
        if current.decision == Decision::Blocked {
            return Ok(Err(VerifyOutcome::refused(TotpResult::Blocked, current)));
        }
        Ok(Ok((counter, current)))
    }

    /// The second factor proven: the failure counter forgiven, a session
    /// started and recorded.
    pub(super) async fn signed_in(
        &self,
        ctx: &ContextPolicy,
        subject: &Subject,
        user: &UserId,
        counter: Vec<crate::domain::KeyState>,
        now: UnixMillis,
    ) -> Result<VerifyOutcome, ServiceError> {
        let slot = self.policy.totp.slot(user);
        self.forgive(std::slice::from_ref(&slot), counter).await?;
        let session = ctx.session.start(now);
        self.store.sessions().put_session(user, &session).await?;
        self.record(SecurityEvent {
            context: Some(ctx.name.clone()),
            ..SecurityEvent::new(EventKind::SessionStarted, now).about(subject)
        })
        .await?;
        tracing::info!(user = %mask(user.as_str()), context = %ctx.name, "second factor accepted");
        Ok(VerifyOutcome {
            session_expires_at: session.expires_at,
            ..VerifyOutcome::refused(TotpResult::Ok, Verdict::allow())
        })
    }

    /// A wrong code (`result` says of which kind): counted on the user's
    /// TOTP failure counter, which may block them.
    pub(super) async fn wrong(
        &self,
        ctx: &ContextPolicy,
        subject: &Subject,
        user: &UserId,
        result: TotpResult,
        now: UnixMillis,
    ) -> Result<VerifyOutcome, ServiceError> {
        let slot = self.policy.totp.slot(user);
        let detail = match result {
            TotpResult::Replay => "replay",
            TotpResult::RecoveryInvalid => "invalid recovery code",
            _ => "invalid",
        };
        let failed = SecurityEvent {
            context: Some(ctx.name.clone()),
            detail: detail.into(),
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
            return Ok(VerifyOutcome::refused(TotpResult::Blocked, verdict));
        }
        Ok(VerifyOutcome::refused(
            result,
            Verdict {
                remaining_attempts: verdict.remaining_attempts,
                ..totp_verdict(user, Decision::ChallengeTotp, Reason::InvalidCode)
            },
        ))
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
