//! Recovery codes: issued with a confirmed enrollment and on request,
//! each good for one sign-in in place of a TOTP code, under the same
//! failure counter.

use aes_gcm::aead::OsRng;
use aes_gcm::aead::rand_core::RngCore;

use super::totp::{Proof, TotpResult, VerifyOutcome};
use super::{Admin, Gate, ServiceError};
use crate::crypto::CodeHash;
use crate::domain::{
    ContextPolicy, EventKind, Key, RecoveryCode, SecurityEvent, Subject, UnixMillis, UserId,
};
use crate::store::{Sessions, StoredTotp, TotpSecrets};
use crate::telemetry::mask;

impl Gate {
    /// A fresh set of the configured number of codes: what to show, and
    /// what to store.
    pub(super) fn new_recovery_codes(
        &self,
        user: &UserId,
    ) -> Result<(Vec<RecoveryCode>, Vec<CodeHash>), ServiceError> {
        let keys = self.keys()?;
        let codes: Vec<RecoveryCode> = (0..self.policy.totp.recovery_codes)
            .map(|_| RecoveryCode::generate(|bytes| OsRng.fill_bytes(bytes)))
            .collect();
        let hashes = codes
            .iter()
            .map(|c| keys.hash_code(user.as_str().as_bytes(), c.as_str()))
            .collect();
        Ok((codes, hashes))
    }

    /// VerifyTotp with a recovery code: well-formed or INVALID_ARGUMENT,
    /// then refused while the TOTP counter is blocked, used up and signed
    /// in with when it is one of the user's, counted as a wrong code when
    /// it is not.
    pub(super) async fn recover(
        &self,
        ctx: &ContextPolicy,
        subject: &Subject,
        user: &UserId,
        secrets: &[StoredTotp],
        raw: &str,
        now: UnixMillis,
    ) -> Result<VerifyOutcome, ServiceError> {
        let code = RecoveryCode::parse("recovery_code", raw)?;
        let keys = self.keys()?;
        let counter = match self.totp_counter(user, now).await? {
            Ok((counter, _)) => counter,
            Err(blocked) => return Ok(blocked),
        };
        let left = if secrets.iter().any(|t| t.confirmed) {
            let candidates = keys.code_hashes(user.as_str().as_bytes(), code.as_str());
            self.store
                .totp()
                .use_recovery_code(user, &candidates)
                .await?
        } else {
            None
        };
        let Some(left) = left else {
            return self
                .wrong(ctx, subject, user, TotpResult::RecoveryInvalid, now)
                .await;
        };
        // A used code is worth an admin's look: the user may have lost their
        // phone, or someone may hold their codes. The last one doubly so.
        let kind = if left == 0 {
            EventKind::RecoveryCodesExhausted
        } else {
            EventKind::RecoveryCodeUsed
        };
        self.record(SecurityEvent {
            context: Some(ctx.name.clone()),
            detail: format!("remaining={left}"),
            ..SecurityEvent::new(kind, now).about(subject)
        })
        .await?;
        tracing::warn!(user = %mask(user.as_str()), remaining = left, "recovery code used");
        let outcome = self.signed_in(ctx, subject, user, counter, now).await?;
        Ok(VerifyOutcome {
            result: TotpResult::RecoveryOk,
            recovery_codes_left: Some(left),
            ..outcome
        })
    }

    /// New codes for the user of `subject`, from their authenticated
    /// session in `context`; every earlier code stops working.
    pub async fn regenerate_recovery_codes(
        &self,
        context: &str,
        subject: &Subject,
    ) -> Result<Vec<RecoveryCode>, ServiceError> {
        let ctx = self.policy.context("context", context)?;
        let user = super::state::required_user(subject)?;
        let session = self.store.sessions().session(user).await?;
        if !session.is_some_and(|s| ctx.session.is_live(&s, self.now())) {
            return Err(ServiceError::FailedPrecondition(
                "recovery codes are regenerated from an authenticated session (VerifyTotp first) \
                 or by an admin (AdminService.RegenerateRecoveryCodes)"
                    .into(),
            ));
        }
        self.issue_recovery_codes(user, None).await
    }

    /// New codes for `user`, by an admin.
    pub async fn admin_regenerate_recovery_codes(
        &self,
        admin: &Admin,
        user: &UserId,
    ) -> Result<Vec<RecoveryCode>, ServiceError> {
        self.issue_recovery_codes(user, Some(admin)).await
    }

    async fn issue_recovery_codes(
        &self,
        user: &UserId,
        admin: Option<&Admin>,
    ) -> Result<Vec<RecoveryCode>, ServiceError> {
        let confirmed = self
            .store
            .totp()
            .totp(user)
            .await?
            .iter()
            .any(|t| t.confirmed);
        if !confirmed {
            return Err(ServiceError::FailedPrecondition(
                "the user has no confirmed TOTP secret: recovery codes come with one".into(),
            ));
        }
        let now = self.now();
        let (codes, hashes) = self.new_recovery_codes(user)?;
        self.store
            .totp()
            .put_recovery_codes(user, &hashes, now)
            .await?;
        let event = match admin {
            Some(admin) => admin.event(EventKind::RecoveryCodesIssued, now),
            None => SecurityEvent::new(EventKind::RecoveryCodesIssued, now),
        };
        self.record(SecurityEvent {
            detail: format!("count={}", codes.len()),
            ..event.on_key(&Key::User(user.clone()))
        })
        .await?;
        tracing::info!(user = %mask(user.as_str()), count = codes.len(), "recovery codes issued");
        Ok(codes)
    }

    /// How many of the user's recovery codes are left, for GetSubject.
    pub(super) async fn recovery_codes_left(&self, user: &UserId) -> Result<u64, ServiceError> {
        Ok(self.store.totp().recovery_codes_left(user).await?)
    }
}

/// What a VerifyTotp request proves the second factor with: a TOTP code or
/// a recovery code, never both.
pub fn proof<'a>(
    code: &'a str,
    recovery_code: &'a str,
) -> Result<Proof<'a>, crate::domain::FieldError> {
    match (code.is_empty(), recovery_code.is_empty()) {
        (false, true) => Ok(Proof::Code(code)),
        (true, false) => Ok(Proof::RecoveryCode(recovery_code)),
        (false, false) => Err(crate::domain::FieldError::new(
            "recovery_code",
            "give code or recovery_code, not both",
        )),
        (true, true) => Ok(Proof::Code(code)),
    }
}
