//! Proxies' own front doors: Envoy's ext_authz, ext_proc and rate-limit
//! service on the gRPC port, and HTTP forward auth for nginx, Traefik and
//! Caddy. Each maps the request it is sent to the use cases CheckAccess,
//! RecordFailure and RecordSuccess run, so a proxied service is judged by
//! the same rules, locks, audit trail and metrics, and renders the verdict
//! as the proxy expects it.

mod answer;
mod ext_authz;
mod ext_proc;
mod forward_auth;
mod map;
mod path;
mod rate_limit;

pub use answer::{Answer, HEADERS, Quota, decision_name, quota_headers, rate_limit_headers};
pub use ext_authz::ExtAuthz;
pub use ext_proc::ExtProc;
pub use forward_auth::ForwardAuth;
pub use map::{MapError, Mapped, Mapping, Request, Route, forwarded_address};
pub use rate_limit::RateLimitService;

use std::sync::Arc;

use tonic::Status;

use crate::domain::{FieldError, Verdict};
use crate::service::{Gate, Gates, ServiceError};
use crate::store::StoreError;
use crate::telemetry::metrics;

/// A proxied request's fate.
#[derive(Debug, Clone)]
pub enum Judged {
    /// Judged by the rules: let through or refused as the verdict says.
    Answered(Answer),
    /// The proxy sent too little or something malformed: 400, nothing
    /// recorded.
    Invalid(Answer),
    /// The store is unreachable and the context fails closed: 503.
    Unavailable(Answer),
}

impl Judged {
    pub fn into_answer(self) -> Answer {
        match self {
            Judged::Answered(a) | Judged::Invalid(a) | Judged::Unavailable(a) => a,
        }
    }

    pub fn answer(&self) -> &Answer {
        match self {
            Judged::Answered(a) | Judged::Invalid(a) | Judged::Unavailable(a) => a,
        }
    }
}

/// The gateway mapping and the use cases it leads to.
pub struct Gateway {
    gate: Gates,
    mapping: Mapping,
}

/// The header names authgate writes that `set` does not: a client's own
/// copies of them must not reach the upstream.
pub fn forged(set: &[(&'static str, String)]) -> Vec<String> {
    HEADERS
        .iter()
        .filter(|h| !set.iter().any(|(k, _)| k == *h))
        .map(|h| (*h).to_owned())
        .collect()
}

fn invalid(error: &FieldError) -> Judged {
    tracing::debug!(field = %error.field, problem = %error.problem, "gateway request refused");
    Judged::Invalid(Answer::invalid(error))
}

impl Gateway {
    pub fn new(gate: Gates, mapping: Mapping) -> Self {
        Gateway { gate, mapping }
    }

    pub fn gate(&self) -> Arc<Gate> {
        self.gate.load()
    }

    /// Judges `req` as CheckAccess would; its verdict is counted under
    /// `door`, the front door it came through.
    pub async fn check(&self, door: &'static str, req: &Request<'_>) -> Result<Judged, Status> {
        Ok(self.check_mapped(door, req).await?.0)
    }

    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// As `check`, with what the request was mapped to when it was.
    pub async fn check_mapped(
        &self,
        door: &'static str,
        req: &Request<'_>,
    ) -> Result<(Judged, Option<Mapped>), Status> {
        let mapped = match self.mapping.map(req) {
            Ok(m) => m,
            Err(MapError::NoRoute) => return Ok((Judged::Answered(Answer::no_route()), None)),
            Err(MapError::Invalid(e)) => return Ok((invalid(&e), None)),
        };
        let context = mapped.route.context.as_str();
        let judged = match self
            .gate
            .load()
            .check_access(context, &mapped.subject)
            .await
        {
            Ok(verdict) => {
                metrics::decided(door, context, verdict.decision);
                metrics::shadowed(context, &verdict.shadowed);
                Judged::Answered(self.answer(&mapped, &verdict))
            }
            Err(e) => self.refused(e)?,
        };
        Ok((judged, Some(mapped)))
    }

    /// The answer to a request on `mapped`'s route judged `verdict`.
    pub fn answer(&self, mapped: &Mapped, verdict: &Verdict) -> Answer {
        let quota = Quota::of(self.gate.load().policy(), &mapped.route.context, verdict);
        Answer::of(verdict, mapped.route.captcha, quota, self.gate.load().now())
    }

    /// What a use case's error becomes for a proxy: an answer where the
    /// proxy should answer its client, a status where it is authgate's
    /// fault.
    pub fn refused(&self, error: ServiceError) -> Result<Judged, Status> {
        match error {
            ServiceError::InvalidArgument(e) => Ok(invalid(&e)),
            ServiceError::Store(StoreError::Unavailable(cause)) => {
                tracing::warn!(error = %cause, "store unavailable; gateway request refused");
                Ok(Judged::Unavailable(Answer::unavailable()))
            }
            other => Err(other.into()),
        }
    }
}
