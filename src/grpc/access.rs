use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::proto::{self, access_service_server::AccessService};
use crate::service::{Gate, TotpResult};

pub struct AccessApi {
    gate: Arc<Gate>,
}

impl AccessApi {
    pub fn new(gate: Arc<Gate>) -> Self {
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
        let req = request.into_inner();
        let subject = convert::subject("subject", req.subject.as_ref())?;
        let verdict = self.gate.check_access(&req.context, &subject).await?;
        Ok(Response::new(proto::CheckAccessResponse {
            verdict: Some(convert::verdict(&verdict, self.gate.now())),
        }))
    }

    #[tracing::instrument(skip_all, fields(context = %request.get_ref().context))]
    async fn record_failure(
        &self,
        request: Request<proto::RecordFailureRequest>,
    ) -> Result<Response<proto::RecordFailureResponse>, Status> {
        let req = request.into_inner();
        let subject = convert::subject("subject", req.subject.as_ref())?;
        if req.activity.len() > 64 || req.activity.chars().any(char::is_control) {
            return Err(Status::invalid_argument(
                "activity: must be at most 64 bytes without control characters",
            ));
        }
        let outcome = self
            .gate
            .record_failure(&req.context, &subject, &req.activity)
            .await?;
        Ok(Response::new(proto::RecordFailureResponse {
            verdict: Some(convert::verdict(&outcome.verdict, self.gate.now())),
            lockout_applied: outcome.lockout_applied,
        }))
    }

    #[tracing::instrument(skip_all, fields(context = %request.get_ref().context))]
    async fn record_success(
        &self,
        request: Request<proto::RecordSuccessRequest>,
    ) -> Result<Response<proto::RecordSuccessResponse>, Status> {
        let req = request.into_inner();
        let subject = convert::subject("subject", req.subject.as_ref())?;
        let verdict = self.gate.record_success(&req.context, &subject).await?;
        Ok(Response::new(proto::RecordSuccessResponse {
            verdict: Some(convert::verdict(&verdict, self.gate.now())),
        }))
    }

    #[tracing::instrument(skip_all, fields(context = %request.get_ref().context))]
    async fn verify_totp(
        &self,
        request: Request<proto::VerifyTotpRequest>,
    ) -> Result<Response<proto::VerifyTotpResponse>, Status> {
        let req = request.into_inner();
        let subject = convert::subject("subject", req.subject.as_ref())?;
        let outcome = self
            .gate
            .verify_totp(&req.context, &subject, &req.code)
            .await?;
        let (result, drift) = match outcome.result {
            TotpResult::Ok => (proto::TotpResult::Ok, None),
            TotpResult::Invalid => (proto::TotpResult::Invalid, None),
            TotpResult::ClockSkew { drift_seconds } => {
                (proto::TotpResult::ClockSkew, Some(drift_seconds))
            }
            TotpResult::Blocked => (proto::TotpResult::Blocked, None),
            TotpResult::NotEnrolled => (proto::TotpResult::NotEnrolled, None),
        };
        Ok(Response::new(proto::VerifyTotpResponse {
            result: result.into(),
            verdict: Some(convert::verdict(&outcome.verdict, self.gate.now())),
            clock_drift_seconds: drift,
            session_expires_at: outcome.session_expires_at.map(convert::timestamp),
        }))
    }

    #[tracing::instrument(skip_all, fields(context = %request.get_ref().context))]
    async fn enroll_totp(
        &self,
        request: Request<proto::EnrollTotpRequest>,
    ) -> Result<Response<proto::EnrollTotpResponse>, Status> {
        let req = request.into_inner();
        let subject = convert::subject("subject", req.subject.as_ref())?;
        let e = self
            .gate
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
    }
}
