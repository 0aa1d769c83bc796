//! Bounds on the work a replica takes on: a deadline per call, a cap on
//! calls in flight, and a share of that cap per connection. Past a cap a
//! call is refused at once with RESOURCE_EXHAUSTED, so an overloaded
//! replica sheds load and clients retry elsewhere, instead of queueing until
//! every caller times out; and one connection cannot hold the replica's
//! capacity.
//!
//! A call's slot is taken before its request is read: the request is read
//! here, whole and under the call's deadline, so a call that sends headers
//! and never a body gives its slot back at its deadline, or as soon as its
//! caller resets it. Only then does its work start, in a task of its own.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};
use tracing::Instrument;

use super::Refusal;
use super::route::Route;
use crate::telemetry::metrics;
use crate::work;

/// gRPC's prefix to each message: a compression flag and a 4-byte length.
const MESSAGE_PREFIX: usize = 5;

#[derive(Debug, Clone)]
pub struct LimitsLayer {
    permits: Arc<Semaphore>,
    shares: Shares,
    timeout: Duration,
    /// The most a request's body may take: one message of the largest size
    /// the services decode.
    max_body_bytes: usize,
    /// The same for the gateway services, whose messages describe a whole
    /// proxied HTTP request.
    max_proxied_body_bytes: usize,
}

impl LimitsLayer {
    /// `max_in_flight` calls at once, `per_connection` of them from one
    /// connection; each at most `timeout`, with a request message of at
    /// most `max_message_bytes` (`max_proxied_bytes` from a proxy).
    pub fn new(
        max_in_flight: usize,
        per_connection: usize,
        timeout: Duration,
        max_message_bytes: usize,
        max_proxied_bytes: usize,
    ) -> Self {
        LimitsLayer {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            shares: Shares::new(per_connection),
            timeout,
            max_body_bytes: max_message_bytes + MESSAGE_PREFIX,
            max_proxied_body_bytes: max_proxied_bytes + MESSAGE_PREFIX,
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

impl<S, RB> Service<Request<Body>> for Limits<S>
where
    S: Service<Request<Body>, Response = Response<RB>> + Clone + Send + 'static,
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

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let route = Route::of(request.uri().path());
        // Health checks are never shed nor cut short: Kubernetes would
        // otherwise restart a replica for being busy.
        if route == Route::Health {
            return Box::pin(self.inner.call(request));
        }
        let Ok(permit) = self.limits.permits.clone().try_acquire_owned() else {
            metrics::shed();
            return refuse("authgate is at server.max_concurrent_requests; retry with backoff");
        };
        let share = match connection_of(&request) {
            Some(peer) => match self.limits.shares.take(peer) {
                Some(share) => Some(share),
                None => {
                    metrics::connection_shed();
                    return refuse(
                        "this connection's calls hold server.max_connection_share of the \
                         replica's; retry with backoff, or spread calls over more connections",
                    );
                }
            },
            None => None,
        };
        let slot = Slot {
            _permit: permit,
            _share: share,
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
        let max_body_bytes = if route == Route::Gateway {
            self.limits.max_proxied_body_bytes
        } else {
            self.limits.max_body_bytes
        };
        // Called once the request is whole: the clone waits its turn, the
        // service polled ready goes with this call.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(async move {
            tokio::pin!(deadline);
            // Dropped (the caller reset the call or hung up) before its work
            // starts: counted as abandoned.
            let mut unstarted = Unstarted(true);
            let request = if route.takes_one_message() {
                tokio::select! {
                    biased;
                    () = &mut deadline => {
                        unstarted.0 = false;
                        return Ok(deadline_exceeded());
                    }
                    read = read_whole(request, max_body_bytes) => match read {
                        Ok(request) => request,
                        Err(refusal) => {
                            unstarted.0 = false;
                            return Ok(Status::from(refusal).into_http());
                        }
                    },
                }
            } else {
                request
            };
            // A reset that came in the same frames as the body has been
            // read by now, but is reported only once this call waits: one
            // turn lets the transport drop a reset call here, before it
            // starts any work.
            tokio::task::yield_now().await;
            unstarted.0 = false;
            let call = inner.call(request);
            // Closed when this future ends or is dropped: the caller has its
            // answer or is gone. The work runs in its own task, so a caller
            // that goes away never interrupts a store transaction; work that
            // has not touched the store yet is dropped instead. The slot
            // goes with the work: abandoned calls still count until their
            // work is done.
            let (_caller_here, gone) = oneshot::channel::<()>();
            let work = tokio::spawn(
                async move {
                    let answer = work::unless_abandoned(call, async {
                        let _ = gone.await;
                    })
                    .await;
                    drop(slot);
                    if answer.is_none() {
                        metrics::abandoned();
                    }
                    answer
                }
                .in_current_span(),
            );
            tokio::select! {
                biased;
                () = deadline => Ok(deadline_exceeded()),
                joined = work => match joined {
                    Ok(Some(answer)) => answer,
                    // The work stops early only once the caller is gone, and
                    // the caller is still here.
                    Ok(None) => Ok(Status::from(Refusal::Internal).into_http()),
                    Err(e) => {
                        tracing::error!(error = %e, "a call's task failed");
                        Ok(Status::from(Refusal::Internal).into_http())
                    }
                },
            }
        })
    }
}

/// What a call holds while it runs: a permit of the replica's, and its
/// place in its connection's share.
struct Slot {
    _permit: OwnedSemaphorePermit,
    _share: Option<Share>,
}

/// Armed until a call's work is handed over: a call dropped before that
/// was abandoned by its caller.
struct Unstarted(bool);

impl Drop for Unstarted {
    fn drop(&mut self) {
        if self.0 {
            metrics::abandoned();
        }
    }
}

fn refuse<RB: Default + Send + 'static, E: Send + 'static>(
    message: &'static str,
) -> Pin<Box<dyn Future<Output = Result<Response<RB>, E>> + Send>> {
    Box::pin(std::future::ready(Ok(Status::from(
        Refusal::ResourceExhausted {
            message: message.into(),
            retry: true,
        },
    )
    .into_http())))
}

fn deadline_exceeded<RB: Default>() -> Response<RB> {
    Status::from(Refusal::DeadlineExceeded(
        "the call exceeded its deadline (the caller's or server.request_timeout)".into(),
    ))
    .into_http()
}

/// `request` with its body read whole, up to `limit` bytes.
async fn read_whole(request: Request<Body>, limit: usize) -> Result<Request<Body>, Refusal> {
    let (parts, body) = request.into_parts();
    match Limited::new(body, limit).collect().await {
        Ok(whole) => Ok(Request::from_parts(
            parts,
            Body::new(Full::new(whole.to_bytes())),
        )),
        Err(e) if e.is::<LengthLimitError>() => Err(Refusal::ResourceExhausted {
            message: format!("the request is too large: more than {limit} bytes"),
            retry: false,
        }),
        Err(e) => Err(Refusal::Cancelled(format!("the request broke off: {e}"))),
    }
}

/// The connection a request came on, by its peer's address: unique among
/// the connections open at one time.
pub(super) fn connection_of<B>(request: &Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|tls| tls.get_ref().remote_addr())
        })
}

/// How many calls each connection holds. The server's layers are built once
/// and cloned for every connection and every call, so a connection is told
/// apart by its peer's address rather than by a value of its own.
#[derive(Debug, Clone)]
struct Shares {
    held: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    per_connection: usize,
}

/// One call's place in its connection's share, given back when dropped.
struct Share {
    held: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    peer: SocketAddr,
}

impl Shares {
    fn new(per_connection: usize) -> Self {
        Shares {
            held: Arc::default(),
            per_connection,
        }
    }

    /// A place for one more call of `peer`'s, unless it holds its share.
    fn take(&self, peer: SocketAddr) -> Option<Share> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let calls = held.entry(peer).or_insert(0);
        if *calls >= self.per_connection {
            return None;
        }
        *calls += 1;
        Some(Share {
            held: self.held.clone(),
            peer,
        })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(calls) = held.get_mut(&self.peer) {
            *calls -= 1;
            // A closed connection leaves nothing behind.
            if *calls == 0 {
                held.remove(&self.peer);
            }
        }
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
    use super::{Shares, client_timeout};
    use http::{HeaderMap, HeaderValue};
    use std::time::Duration;

    #[test]
    fn a_connection_holds_at_most_its_share_and_nothing_once_done() {
        let shares = Shares::new(2);
        let (a, b) = (
            "192.0.2.1:1000".parse().unwrap(),
            "192.0.2.1:1001".parse().unwrap(),
        );
        let first = shares.take(a).expect("one");
        let second = shares.take(a).expect("two");
        assert!(shares.take(a).is_none(), "a third is past the share");
        assert!(shares.take(b).is_some(), "another connection has its own");
        drop(first);
        let third = shares.take(a).expect("a place given back is free again");
        drop((second, third));
        assert!(shares.held.lock().unwrap().is_empty());
    }

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
