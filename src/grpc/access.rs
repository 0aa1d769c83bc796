use tonic::{Request, Response, Status};

use super::proto::{self, access_service_server::AccessService};
use super::{caller, convert, observe};
use crate::domain::FieldError;
use crate::service::{Gates, TotpResult};
use crate::telemetry::metrics;

pub struct AccessApi {
    gate: Gates,
}

impl AccessApi {
    pub fn new(gate: Gates) -> Self {
        AccessApi { gate }
    }
}

#[tonic::async_trait]
impl AccessService for AccessApi {
    #[tracing::instrument(skip_all, fields(context = %request.get_ref().context))]
    async fn check_access(
        &self,
        request: Request<proto::CheckAccessRequest>,
    ) -> Result<Response<proto::CheckAccessResponse>, Status> {
        observe("CheckAccess", async move {
            let gate = self.gate.load();
            let req = request.into_inner();
            let subject = convert::subject("subject", req.subject.as_ref(), gate.passwords())?;
            let verdict = gate.check_access(&req.context, &subject).await?;
            metrics::decided("CheckAccess", &req.context, verdict.decision);
            metrics::shadowed(&req.context, &verdict.shadowed);
            let now = gate.now();
            Ok(Response::new(proto::CheckAccessResponse {
                verdict: Some(convert::verdict(&verdict, now)),
                shadow: convert::shadow(&verdict, now),
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(context = %request.get_ref().context))]
    async fn record_failure(
        &self,
        request: Request<proto::RecordFailureRequest>,
    ) -> Result<Response<proto::RecordFailureResponse>, Status> {
        observe("RecordFailure", async move {
            let gate = self.gate.load();
            let caller = caller(&request)?.name.clone();
            let req = request.into_inner();
            let subject = convert::subject("subject", req.subject.as_ref(), gate.passwords())?;
            if req.activity.len() > 64 || req.activity.chars().any(char::is_control) {
                return Err(FieldError::new(
                    "activity",
                    "must be at most 64 bytes without control characters",
                )
                .into());
            }
            let outcome = gate
                .record_failure(&req.context, &subject, &req.activity, &caller)
                .await?;
            metrics::decided("RecordFailure", &req.context, outcome.verdict.decision);
            metrics::shadowed(&req.context, &outcome.verdict.shadowed);
            let now = gate.now();
            Ok(Response::new(proto::RecordFailureResponse {
                verdict: Some(convert::verdict(&outcome.verdict, now)),
                lockout_applied: outcome.lockout_applied,
                shadow: convert::shadow(&outcome.verdict, now),
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(context = %request.get_ref().context))]
    async fn record_success(
        &self,
        request: Request<proto::RecordSuccessRequest>,
    ) -> Result<Response<proto::RecordSuccessResponse>, Status> {
        observe("RecordSuccess", async move {
            let gate = self.gate.load();
            let req = request.into_inner();
            let subject = convert::subject("subject", req.subject.as_ref(), gate.passwords())?;
            let verdict = gate.record_success(&req.context, &subject).await?;
            metrics::decided("RecordSuccess", &req.context, verdict.decision);
            metrics::shadowed(&req.context, &verdict.shadowed);
            let now = gate.now();
            Ok(Response::new(proto::RecordSuccessResponse {
                verdict: Some(convert::verdict(&verdict, now)),
                shadow: convert::shadow(&verdict, now),
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(context = %request.get_ref().context))]
    async fn verify_totp(
        &self,
        request: Request<proto::VerifyTotpRequest>,
    ) -> Result<Response<proto::VerifyTotpResponse>, Status> {
        observe("VerifyTotp", async move {
            let gate = self.gate.load();
            let req = request.into_inner();
            let subject = convert::subject("subject", req.subject.as_ref(), gate.passwords())?;
            let proof = crate::service::proof(&req.code, &req.recovery_code)?;
            let outcome = gate.verify_totp(&req.context, &subject, proof).await?;
            metrics::decided("VerifyTotp", &req.context, outcome.verdict.decision);
            // A replay is counted apart here, where only operators see it;
            // the caller gets the same answer as for a wrong code.
            let (result, drift, label) = match outcome.result {
                TotpResult::Ok => (proto::TotpResult::Ok, None, "ok"),
                TotpResult::Invalid => (proto::TotpResult::Invalid, None, "invalid"),
                TotpResult::Replay => (proto::TotpResult::Invalid, None, "replay"),
                TotpResult::RecoveryOk => (proto::TotpResult::Ok, None, "recovery_ok"),
                TotpResult::RecoveryInvalid => {
                    (proto::TotpResult::Invalid, None, "recovery_invalid")
                }
                TotpResult::ClockSkew { drift_seconds } => (
                    proto::TotpResult::ClockSkew,
                    Some(drift_seconds),
                    "clock_skew",
                ),
                TotpResult::Blocked => (proto::TotpResult::Blocked, None, "blocked"),
                TotpResult::NotEnrolled => (proto::TotpResult::NotEnrolled, None, "not_enrolled"),
            };
            metrics::totp_verified(label);
            Ok(Response::new(proto::VerifyTotpResponse {
                result: result.into(),
                verdict: Some(convert::verdict(&outcome.verdict, gate.now())),
                clock_drift_seconds: drift,
                session_expires_at: outcome.session_expires_at.map(convert::timestamp),
                recovery_codes: outcome
                    .recovery_codes
                    .iter()
                    .map(|c| c.shown().to_string())
                    .collect(),
                recovery_codes_remaining: outcome
                    .recovery_codes_left
                    .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(context = %request.get_ref().context))]
    async fn admit(
        &self,
        request: Request<proto::AdmitRequest>,
    ) -> Result<Response<proto::AdmitResponse>, Status> {
        observe("Admit", async move {
            let gate = self.gate.load();
            let req = request.into_inner();
            let subject = convert::subject("subject", req.subject.as_ref(), gate.passwords())?;
            let outcome = gate
                .admit(&req.context, &subject, &req.kind, &req.fingerprint)
                .await?;
            metrics::decided("Admit", &req.context, outcome.verdict.decision);
            let window = gate.admission_window(&req.context);
            Ok(Response::new(convert::admit_response(
                &outcome,
                window,
                gate.now(),
            )))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(context = %request.get_ref().context))]
    async fn regenerate_recovery_codes(
        &self,
        request: Request<proto::RegenerateRecoveryCodesRequest>,
    ) -> Result<Response<proto::RegenerateRecoveryCodesResponse>, Status> {
        observe("RegenerateRecoveryCodes", async move {
            let gate = self.gate.load();
            let req = request.into_inner();
            let subject = convert::subject("subject", req.subject.as_ref(), gate.passwords())?;
            let codes = gate
                .regenerate_recovery_codes(&req.context, &subject)
                .await?;
            Ok(Response::new(proto::RegenerateRecoveryCodesResponse {
                recovery_codes: codes.iter().map(|c| c.shown().to_string()).collect(),
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(context = %request.get_ref().context))]
    async fn enroll_totp(
        &self,
        request: Request<proto::EnrollTotpRequest>,
    ) -> Result<Response<proto::EnrollTotpResponse>, Status> {
        observe("EnrollTotp", async move {
            let gate = self.gate.load();
            let req = request.into_inner();
            let subject = convert::subject("subject", req.subject.as_ref(), gate.passwords())?;
            let e = gate
                .enroll_totp(&req.context, &subject, &req.account_name)
                .await?;
            Ok(Response::new(proto::EnrollTotpResponse {
                secret_base32: e.secret_base32,
                otpauth_uri: e.uri,
                qr_png: e.qr_png,
                algorithm: e.params.algorithm.as_str().into(),
                digits: u32::from(e.params.digits),
                period_seconds: e.params.period,
            }))
        })
        .await
    }
}
