//! The gRPC face: proto <-> domain conversion, the service implementations,
//! the transport's middleware, and (status.rs) the one place errors become
//! a `Status`.

mod access;
mod admin;
pub mod auth;
mod convert;
mod incoming;
mod limits;
mod request_id;
mod route;
mod status;
mod wire;

pub use access::AccessApi;
pub use admin::AdminApi;
pub use auth::{AuthenticateLayer, caller};
pub use incoming::incoming;
pub use limits::LimitsLayer;
pub use request_id::RequestIdLayer;
pub use status::Refusal;
pub use wire::wire_errors;

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

/// Runs one RPC and records its latency and status code.
pub(crate) async fn observe<T>(
    rpc: &'static str,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    let start = Instant::now();
    let result = call.await;
    let code = result
        .as_ref()
        .map_or_else(Status::code, |_| tonic::Code::Ok);
    crate::telemetry::metrics::rpc_done(rpc, code, start.elapsed());
    result
}
