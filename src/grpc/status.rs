//! The one place an error becomes a gRPC `Status`: every handler, the
//! interceptor and the transport layers refuse a call through `Refusal`.
//! Where a client can act on it, the status carries google.rpc error
//! details any gRPC library decodes: `BadRequest` naming the field for
//! INVALID_ARGUMENT, `RetryInfo` with a delay where trying again later is
//! the answer (RESOURCE_EXHAUSTED, UNAVAILABLE).

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::FieldError;
use crate::service::ServiceError;
use crate::store::StoreError;

/// How soon a refused caller may try again: about when the replica's
/// probe has looked at the store again, or when calls in flight have
/// finished.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a call is refused, each variant one status code.
#[derive(Debug)]
pub enum Refusal {
    /// INVALID_ARGUMENT, with a BadRequest field violation.
    InvalidArgument(FieldError),
    /// UNAUTHENTICATED: no credential, or one authgate does not know.
    Unauthenticated(String),
    /// PERMISSION_DENIED: a known caller without the role, or an actor who
    /// is not an admin.
    PermissionDenied(String),
    /// FAILED_PRECONDITION: well-formed, but the state of things does not
    /// allow it.
    FailedPrecondition(String),
    /// RESOURCE_EXHAUSTED, with RetryInfo: the replica is at its limit, or
    /// the request is too large (no RetryInfo then: the same request would
    /// fail again).
    ResourceExhausted { message: String, retry: bool },
    /// DEADLINE_EXCEEDED: the caller's deadline or the server's.
    DeadlineExceeded(String),
    /// CANCELLED: the request broke off before it was whole (its caller
    /// is gone, so the answer is for the logs).
    Cancelled(String),
    /// UNAVAILABLE, with RetryInfo: the store cannot be reached.
    Unavailable,
    /// INTERNAL: authgate's own fault; the cause is logged, never sent.
    Internal,
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Status {
        match refusal {
            Refusal::InvalidArgument(e) => Status::with_error_details(
                Code::InvalidArgument,
                e.to_string(),
                ErrorDetails::with_bad_request_violation(e.field.clone(), e.problem.clone()),
            ),
            Refusal::Unauthenticated(m) => Status::unauthenticated(m),
            Refusal::PermissionDenied(m) => Status::permission_denied(m),
            Refusal::FailedPrecondition(m) => Status::failed_precondition(m),
            Refusal::ResourceExhausted { message, retry } => {
                let details = if retry {
                    ErrorDetails::with_retry_info(Some(RETRY_AFTER))
                } else {
                    ErrorDetails::new()
                };
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            Refusal::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            Refusal::Cancelled(m) => Status::cancelled(m),
            Refusal::Unavailable => Status::with_error_details(
                Code::Unavailable,
                "the state store is unavailable; retry later",
                ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
            ),
            Refusal::Internal => Status::internal("internal error"),
        }
    }
}

impl From<FieldError> for Refusal {
    fn from(e: FieldError) -> Refusal {
        Refusal::InvalidArgument(e)
    }
}

impl From<ServiceError> for Refusal {
    fn from(e: ServiceError) -> Refusal {
        match e {
            ServiceError::InvalidArgument(f) => Refusal::InvalidArgument(f),
            ServiceError::PermissionDenied(m) => Refusal::PermissionDenied(m),
            ServiceError::FailedPrecondition(m) => Refusal::FailedPrecondition(m),
            ServiceError::Crypto(e) => {
                tracing::error!(error = %e, "TOTP secret unusable");
                Refusal::Internal
            }
            ServiceError::Interrupted(e) => {
                tracing::error!(error = %e, "a use case's task failed");
                Refusal::Internal
            }
            ServiceError::Store(StoreError::Unavailable(cause)) => {
                tracing::warn!(error = %cause, "store unavailable");
                Refusal::Unavailable
            }
            ServiceError::Store(other) => {
                tracing::error!(error = %other, "store error");
                Refusal::Internal
            }
        }
    }
}

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Status {
        Refusal::from(e).into()
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        Refusal::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_name_the_field_and_the_delay() {
        let status = Status::from(FieldError::new("subject.ip", "is not an address"));
        assert_eq!(status.message(), "subject.ip: is not an address");
        let violations = status.get_details_bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, "subject.ip");
        assert_eq!(violations[0].description, "is not an address");

        let status = Status::from(Refusal::Unavailable);
        assert_eq!(
            status.get_details_retry_info().unwrap().retry_delay,
            Some(RETRY_AFTER)
        );
        let too_large = Status::from(Refusal::ResourceExhausted {
            message: "too large".into(),
            retry: false,
        });
        assert!(too_large.get_details_retry_info().is_none());
    }
}
