//! Bounds on the work a replica takes on: a deadline per call and a cap on
//! calls in flight. Past the cap a call is refused at once with
//! RESOURCE_EXHAUSTED, so an overloaded replica sheds load and clients retry
//! elsewhere, instead of queueing until every caller times out.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::sync::Semaphore;
use tonic::Status;
use tower::{Layer, Service};
use tracing::Instrument;

use super::Refusal;
use crate::telemetry::metrics;

/// Health checks are never shed nor cut short: Kubernetes would otherwise
/// restart a replica for being busy.
const EXEMPT: &str = "/grpc.health.v1.Health/";

#[derive(Debug, Clone)]
pub struct LimitsLayer {
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl LimitsLayer {
    pub fn new(max_in_flight: usize, timeout: Duration) -> Self {
        LimitsLayer {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            timeout,
        }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = Limits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limits {
            inner,
            limits: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Limits<S> {
    inner: S,
    limits: LimitsLayer,
}

impl<S, B, RB> Service<Request<B>> for Limits<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.uri().path().starts_with(EXEMPT) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(permit) = self.limits.permits.clone().try_acquire_owned() else {
            metrics::shed();
            return Box::pin(async {
                Ok(Status::from(Refusal::ResourceExhausted {
                    message: "authgate is at server.max_concurrent_requests; retry with backoff"
                        .into(),
                    retry: true,
                })
                .into_http())
            });
        };
        // The caller's own deadline, when shorter, bounds the call too. The
        // timer starts here, before tonic starts its own for grpc-timeout,
        // and is looked at first: when both have run out by the time the
        // call is polled (in one tick of the timer, or after a stall), this
        // one's DEADLINE_EXCEEDED is the answer rather than tonic's
        // CANCELLED.
        let budget = client_timeout(request.headers())
            .map_or(self.limits.timeout, |t| t.min(self.limits.timeout));
        let deadline = tokio::time::sleep(budget);
        let call = self.inner.call(request);
        Box::pin(async move {
            // The call runs in its own task: a caller that cancels, times
            // out or disconnects stops waiting for the answer, never the
            // work, so no store transaction is ever left half-done. The
            // permit goes with the work: abandoned calls still count.
            let work = tokio::spawn(
                async move {
                    let answer = call.await;
                    drop(permit);
                    answer
                }
                .in_current_span(),
            );
            tokio::select! {
                biased;
                () = deadline => Ok(Status::from(Refusal::DeadlineExceeded(
                    "the call exceeded its deadline (the caller's or server.request_timeout)".into(),
                ))
                .into_http()),
                joined = work => joined.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "a call's task failed");
                    Ok(Status::from(Refusal::Internal).into_http())
                }),
            }
        })
    }
}

/// The `grpc-timeout` a caller sent: up to eight digits and a unit.
fn client_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::client_timeout;
    use http::{HeaderMap, HeaderValue};
    use std::time::Duration;

    fn parse(value: &'static str) -> Option<Duration> {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", HeaderValue::from_static(value));
        client_timeout(&h)
    }

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_writes_them() {
        assert_eq!(parse("10m"), Some(Duration::from_millis(10)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("500u"), Some(Duration::from_micros(500)));
        assert_eq!(parse("123456789S"), None, "more than eight digits");
        assert_eq!(parse("10x"), None);
        assert_eq!(parse("S"), None);
        assert_eq!(client_timeout(&HeaderMap::new()), None);
    }
}
