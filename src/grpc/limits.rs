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

use crate::metrics;

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
                Ok(Status::resource_exhausted(
                    "authgate is at server.max_concurrent_requests; retry with backoff",
                )
                .into_http())
            });
        };
        let timeout = self.limits.timeout;
        let call = self.inner.call(request);
        Box::pin(async move {
            let answer = tokio::time::timeout(timeout, call).await;
            drop(permit);
            answer.unwrap_or_else(|_| {
                Ok(
                    Status::deadline_exceeded("the call exceeded server.request_timeout")
                        .into_http(),
                )
            })
        })
    }
}
