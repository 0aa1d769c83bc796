//! The load itself: which calls each workload makes, with which keys, by
//! how many workers, and what they measured.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tonic::transport::Channel;
use tonic::{Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use authgate::grpc::proto::access_service_client::AccessServiceClient;
use authgate::grpc::proto::{AdmitRequest, CheckAccessRequest, RecordFailureRequest, Subject};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{self, HttpRequest, Peer};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;

use super::Args;
use super::cpu::{Cost, Meter, cache_lookups};

#[derive(Clone, Copy)]
pub(super) enum Rpc {
    Health,
    CheckAccess,
    RecordFailure,
    Admit,
    ExtAuthz,
    RateLimit,
}

/// Which user each call names.
#[derive(Clone, Copy)]
pub(super) enum Keys {
    /// Uniformly drawn from 0..n.
    Uniform(u64),
    /// Uniformly drawn from 0..n, each named once before the measurement:
    /// the steady state of keys in use, not their first sight.
    Hot(u64),
    /// 0, 1, 2, ... wrapping at n, shared by all workers.
    RoundRobin(u64),
}

/// What one workload sends, and where.
pub(super) struct Plan {
    pub(super) label: String,
    pub(super) rpc: Rpc,
    pub(super) context: String,
    pub(super) keys: Keys,
}

pub(super) struct Figures {
    pub(super) rps: f64,
    pub(super) latency: Histogram<u64>,
    pub(super) errors: u64,
    /// Shown under the row, so a misconfigured run (an unknown context, a
    /// refused call) says why instead of only counting.
    pub(super) first_error: Option<Status>,
    /// CPU time per request over the measured window.
    pub(super) cpu: Cost,
    /// The share of key cache lookups that hit over the window, when
    /// authgate's /metrics was given and any were made.
    pub(super) cache_hits: Option<f64>,
}

/// worker has its own, so drawing a key costs no shared state.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One worker's source of user numbers.
enum KeySource {
    Drawn(SplitMix64, u64),
    Shared(Arc<AtomicU64>, u64),
}

impl KeySource {
    fn next(&mut self) -> u64 {
        match self {
            KeySource::Drawn(rng, n) => rng.next() % *n,
            KeySource::Shared(next, n) => next.fetch_add(1, Ordering::Relaxed) % *n,
        }
    }
}

/// The n-th distinct subject: a user and an address of its own (distinct
/// up to 2^24 users), so every call touches keys spread across the table
/// as real traffic does.
pub(super) fn subject(n: u64) -> Subject {
    let ip = Ipv4Addr::from(0x0a00_0000 | u32::try_from(n % 0x00ff_ffff).unwrap_or(0));
    Subject {
        user_id: format!("bench-{n}"),
        ip: ip.to_string(),
        ..Subject::default()
    }
}

/// A bot's traffic: mostly text, some buttons, media and commands, every
/// update with content of its own; spread over many users, so nearly all
/// are admitted.
fn update(context: &str, n: u64) -> AdmitRequest {
    let kind = match n % 20 {
        0..14 => "text",
        14..17 => "callback",
        17..19 => "media",
        _ => "command",
    };
    AdmitRequest {
        context: context.to_owned(),
        subject: Some(Subject {
            user_id: format!("bench-{n}"),
            ..Default::default()
        }),
        kind: kind.to_owned(),
        fingerprint: n.to_be_bytes().to_vec(),
    }
}

/// A request carrying `key` as `authorization: Bearer`, when there is one.
fn keyed<T>(message: T, key: Option<&Bearer>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(key) = key {
        request.metadata_mut().insert("authorization", key.clone());
    }
    request
}

type Bearer = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

async fn call(
    rpc: Rpc,
    channel: Channel,
    context: &str,
    n: u64,
    key: Option<&Bearer>,
) -> Result<(), Status> {
    match rpc {
        Rpc::Health => HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(drop),
        Rpc::CheckAccess => AccessServiceClient::new(channel)
            .check_access(keyed(
                CheckAccessRequest {
                    context: context.to_owned(),
                    subject: Some(subject(n)),
                },
                key,
            ))
            .await
            .map(drop),
        Rpc::RecordFailure => AccessServiceClient::new(channel)
            .record_failure(keyed(
                RecordFailureRequest {
                    context: context.to_owned(),
                    subject: Some(subject(n)),
                    activity: String::new(),
                },
                key,
            ))
            .await
            .map(drop),
        Rpc::Admit => AccessServiceClient::new(channel)
            .admit(keyed(update(context, n), key))
            .await
            .map(drop),
        Rpc::ExtAuthz => AuthorizationClient::new(channel)
            .check(keyed(envoy_check(context, n), key))
            .await
            .map(drop),
        Rpc::RateLimit => RateLimitServiceClient::new(channel)
            .should_rate_limit(keyed(
                RateLimitRequest {
                    domain: context.to_owned(),
                    descriptors: vec![RateLimitDescriptor {
                        entries: vec![Entry {
                            key: "remote_address".into(),
                            value: subject(n).ip,
                        }],
                        ..RateLimitDescriptor::default()
                    }],
                    hits_addend: 1,
                },
                key,
            ))
            .await
            .map(drop),
    }
}

/// What Envoy sends for a request by the n-th subject: its address as the
/// downstream peer, its user id in the header scripts/bench.sh configures
/// as gateway.user_header, the context as the route's context_extensions.
fn envoy_check(context: &str, n: u64) -> CheckRequest {
    let s = subject(n);
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: s.ip,
                        ..SocketAddress::default()
                    })),
                }),
                ..Peer::default()
            }),
            request: Some(attribute_context::Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/login".into(),
                    host: "bench.example.com".into(),
                    headers: [("x-user".to_owned(), s.user_id)].into(),
                    ..HttpRequest::default()
                }),
                ..attribute_context::Request::default()
            }),
            context_extensions: [("authgate.context".to_owned(), context.to_owned())].into(),
            ..AttributeContext::default()
        }),
    }
}

fn bearer(args: &Args) -> Option<Bearer> {
    args.api_key.as_ref().map(|k| {
        format!("Bearer {k}")
            .parse()
            .expect("an API key is printable ASCII")
    })
}

/// One call of `plan` for each of users 0..n, unmeasured.
async fn name_each(plan: &Plan, args: &Args, channels: &[Channel], n: u64) {
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let channel = channels[w % channels.len()].clone();
            let (rpc, context, next) = (plan.rpc, plan.context.clone(), next.clone());
            let key = bearer(args);
            tokio::spawn(async move {
                loop {
                    let user = next.fetch_add(1, Ordering::Relaxed);
                    if user >= n {
                        break;
                    }
                    let _ = call(rpc, channel.clone(), &context, user, key.as_ref()).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
}

pub(super) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

pub(super) async fn run(plan: &Plan, args: &Args, channels: &[Channel], meter: Meter) -> Figures {
    if let Keys::Hot(n) = plan.keys {
        name_each(plan, args, channels, n).await;
    }
    let shared = Arc::new(AtomicU64::new(0));
    let warm_until = Instant::now() + Duration::from_secs(1);
    let stop_at = warm_until + args.duration;
    let metrics = args.metrics_addr.clone();
    let window = tokio::spawn(async move {
        let lookups = || async {
            match &metrics {
                Some(addr) => cache_lookups(addr).await,
                None => None,
            }
        };
        tokio::time::sleep_until(warm_until.into()).await;
        let before = (meter.read(), lookups().await);
        tokio::time::sleep_until(stop_at.into()).await;
        let after = (meter.read(), lookups().await);
        let hits = match (before.1, after.1) {
            (Some((h0, m0)), Some((h1, m1))) if h1 + m1 > h0 + m0 => {
                Some((h1 - h0) / (h1 + m1 - h0 - m0))
            }
            _ => None,
        };
        (before.0, after.0, hits)
    });
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let channel = channels[w % channels.len()].clone();
            let (rpc, context) = (plan.rpc, plan.context.clone());
            let key = bearer(args);
            let mut keys = match plan.keys {
                Keys::Uniform(n) | Keys::Hot(n) => KeySource::Drawn(SplitMix64(w as u64), n.max(1)),
                Keys::RoundRobin(n) => KeySource::Shared(shared.clone(), n.max(1)),
            };
            tokio::spawn(async move {
                let mut latency = histogram();
                let (mut done, mut errors, mut first_error) = (0u64, 0u64, None);
                loop {
                    let n = keys.next();
                    let start = Instant::now();
                    let result = call(rpc, channel.clone(), &context, n, key.as_ref()).await;
                    let end = Instant::now();
                    if end >= stop_at {
                        break;
                    }
                    if start >= warm_until {
                        done += 1;
                        if let Err(e) = result {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                        let micros = u64::try_from(end.duration_since(start).as_micros())
                            .unwrap_or(u64::MAX);
                        latency.saturating_record(micros.max(1));
                    }
                }
                (latency, done, errors, first_error)
            })
        })
        .collect();
    let mut latency_all = histogram();
    let (mut done, mut errors_all, mut first) = (0u64, 0u64, None);
    for w in workers {
        let (latency, d, errors, first_error) = w.await.expect("worker");
        latency_all.add(&latency).expect("same bounds");
        done += d;
        errors_all += errors;
        if first.is_none() {
            first = first_error;
        }
    }
    let (before, after, cache_hits) = window.await.expect("CPU meter");
    Figures {
        rps: done as f64 / args.duration.as_secs_f64(),
        latency: latency_all,
        errors: errors_all,
        first_error: first,
        cpu: before.cost(after, done),
        cache_hits,
    }
}

/// `--fill`: users 0..total each get one failure, then the figures of the
/// whole fill are printed.
pub(super) async fn fill(args: &Args, channels: &[Channel], total: u64) {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let channel = channels[w % channels.len()].clone();
            let context = args.context.clone();
            let key = bearer(args);
            let next = next.clone();
            tokio::spawn(async move {
                let (mut errors, mut first_error) = (0u64, None);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    if let Err(e) = call(
                        Rpc::RecordFailure,
                        channel.clone(),
                        &context,
                        n,
                        key.as_ref(),
                    )
                    .await
                    {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
                (errors, first_error)
            })
        })
        .collect();
    let (mut errors, mut first_error) = (0u64, None);
    for w in workers {
        let (e, first) = w.await.expect("worker");
        errors += e;
        first_error = first_error.or(first);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "filled {total} keys in context {:?} in {secs:.1} s ({:.0} req/s), {errors} errors",
        args.context,
        total as f64 / secs
    );
    if let Some(e) = first_error {
        println!("  first error: {e}");
    }
}
