//! The gRPC face: proto <-> domain conversion, the service implementations,
//! and the one place errors become a `Status`.

mod access;
mod admin;
mod auth;
mod convert;
mod incoming;
mod limits;
mod request_id;
mod wire;

pub use access::AccessApi;
pub use admin::AdminApi;
pub use auth::{Authenticate, caller};
pub use incoming::incoming;
pub use limits::LimitsLayer;
pub use request_id::RequestIdLayer;
pub use wire::WireErrorsLayer;

/// Code generated from proto/authgate/v1 by build.rs.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("authgate.v1");

    /// The encoded descriptors of authgate's protos, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/authgate_descriptor.bin"));
}

use std::future::Future;
use std::time::Instant;

use tonic::{Response, Status};

use crate::domain::FieldError;
use crate::service::ServiceError;
use crate::store::StoreError;

/// Runs one RPC and records its latency and status code.
async fn observe<T>(
    rpc: &'static str,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    let start = Instant::now();
    let result = call.await;
    let code = result
        .as_ref()
        .map_or_else(Status::code, |_| tonic::Code::Ok);
    crate::metrics::rpc_done(rpc, code, start.elapsed());
    result
}

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Status {
        ServiceError::from(e).into()
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        match e {
            ServiceError::InvalidArgument(f) => Status::invalid_argument(f.to_string()),
            ServiceError::PermissionDenied(m) => Status::permission_denied(m),
            ServiceError::FailedPrecondition(m) => Status::failed_precondition(m),
            ServiceError::Crypto(e) => {
                tracing::error!(error = %e, "TOTP secret unusable");
                Status::internal("internal error")
            }
            ServiceError::Store(StoreError::Unavailable(cause)) => {
                tracing::warn!(error = %cause, "store unavailable");
                Status::unavailable("the state store is unavailable; retry later")
            }
            ServiceError::Store(other) => {
                tracing::error!(error = %other, "store error");
                Status::internal("internal error")
            }
        }
    }
}
