//! Every call gets a request id: the caller's `x-request-id` when it sends a
//! usable one, a fresh UUID otherwise. It rides in a span, so every log line
//! of the call carries it, and goes back in the response metadata, so a bot
//! author can quote it to an operator.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

/// Longest caller-supplied id kept; longer ones are replaced.
const MAX_LEN: usize = 128;

#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
}

/// The caller's id when it is short and plain (it ends up in logs, so
/// nothing that could forge a log line is accepted).
fn usable(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let plain = !text.is_empty()
        && text.len() <= MAX_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    plain.then(|| text.to_owned())
}

impl<S, B, RB> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let id = request
            .headers()
            .get(HEADER)
            .and_then(usable)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let span = tracing::info_span!("request", request_id = %id, rpc = %request.uri().path());
        let call = self.inner.call(request);
        Box::pin(
            async move {
                let mut response = call.await?;
                if let Ok(value) = HeaderValue::from_str(&id) {
                    response.headers_mut().insert(HEADER, value);
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::usable;
    use http::HeaderValue;

    #[test]
    fn only_plain_ids_are_kept() {
        assert_eq!(
            usable(&HeaderValue::from_static("req-42.a_b:c")),
            Some("req-42.a_b:c".into())
        );
        assert_eq!(usable(&HeaderValue::from_static("has space")), None);
        assert_eq!(usable(&HeaderValue::from_static("a\"b")), None);
        assert_eq!(
            usable(&HeaderValue::from_str(&"x".repeat(129)).unwrap()),
            None
        );
    }
}
