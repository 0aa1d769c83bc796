//! Drives a running authgate with concurrent calls and prints one table of
//! throughput and latency: grpc.health.v1 Check on a bare tonic server
//! (authgate-bare) and on authgate, RecordFailure and CheckAccess on a
//! one-rule context and on the three-rule `login`, and Admit, all in the
//! same run, with pgbench's single-row upsert on the same Postgres when the
//! caller passes its figures. The machines this runs on are shared and
//! noisy, so the shares of the baselines measured alongside are what to
//! compare across runs: the bare server's req/s and p99 for every RPC, and
//! pgbench's TPS for the writes.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};
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

#[derive(Parser)]
#[command(about = "Benchmark a running authgate against a bare tonic server and pgbench")]
struct Args {
    /// The authgate to drive.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// A bare tonic server (authgate-bare) whose health check is the
    /// baseline; without it the table has no shares.
    #[arg(long)]
    bare_addr: Option<String>,
    /// The API key authgate's AccessService calls carry, as a bot's would
    /// (authgate checks it on every call); health needs none.
    #[arg(long, env = "AUTHGATE_API_KEY")]
    api_key: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections to each server the requests are spread over (gRPC
    /// clients in production hold a few, one per backend). authgate serves
    /// at most server.max_concurrent_streams (100) calls of a connection at
    /// once (more wait in the client) and refuses more than
    /// server.max_connection_share of its calls (128) from one: keep
    /// --concurrency / --connections under both.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured time per workload, after a one-second warm-up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// A context with a single rule, for RecordFailure and CheckAccess at
    /// their cheapest (scripts/bench.sh configures one).
    #[arg(long, default_value = "bench")]
    context: String,
    /// A context with several rules, each a key of its own to read and write.
    #[arg(long, default_value = "login")]
    login_context: String,
    /// The context ShouldRateLimit names: one rate rule on the address
    /// (scripts/bench.sh configures one).
    #[arg(long, default_value = "bench_rate")]
    rate_context: String,
    /// The context named in Admit: one with admission rules.
    #[arg(long, default_value = "bot")]
    admit_context: String,
    /// RecordFailure draws users uniformly from this many, so nearly every
    /// failure is a new key, as in an attack spread over many users.
    #[arg(long, default_value_t = 10_000_000)]
    key_space: u64,
    /// CheckAccess draws users uniformly from this many: the set of users
    /// active at one time, whose rows stay in the database's cache.
    #[arg(long, default_value_t = 10_000)]
    hot_keys: u64,
    /// Admit goes round this many users in turn, few enough updates each
    /// that nearly all are admitted.
    #[arg(long, default_value_t = 100_000)]
    admit_users: u64,
    /// Runs the rows this many times in turn, so rows compared with each
    /// other (ext_authz with CheckAccess) are measured side by side again
    /// and again on a noisy machine; the medians of those comparisons
    /// close the table.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Run only these rows, e.g. `--only bare,health,check`.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Workload>,
    /// pgbench's transactions per second, measured by the caller on the
    /// same Postgres; it adds a row, and RecordFailure's share of it.
    #[arg(long, requires_all = ["pgbench_p50", "pgbench_p99", "pgbench_avg"])]
    pgbench_tps: Option<f64>,
    /// pgbench's median latency, in milliseconds.
    #[arg(long, requires = "pgbench_tps")]
    pgbench_p50: Option<f64>,
    /// pgbench's 99th percentile latency, in milliseconds.
    #[arg(long, requires = "pgbench_tps")]
    pgbench_p99: Option<f64>,
    /// pgbench's average latency, in milliseconds.
    #[arg(long, requires = "pgbench_tps")]
    pgbench_avg: Option<f64>,
    /// Instead of the table: record one failure each for users 0..N in
    /// `--context`, as fast as `--concurrency` allows, and exit (to measure
    /// the server's memory per key).
    #[arg(long, value_name = "N", conflicts_with_all = ["only", "bare_addr"])]
    fill: Option<u64>,
}

/// The table's rows, in the order they run.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// grpc.health.v1 Check on the bare server.
    Bare,
    /// grpc.health.v1 Check on authgate.
    Health,
    /// pgbench's figures, as passed.
    Pgbench,
    /// RecordFailure in the one-rule context.
    Failure,
    /// RecordFailure in the login context.
    FailureLogin,
    /// CheckAccess in the one-rule context.
    Check,
    /// CheckAccess in the login context.
    CheckLogin,
    /// Envoy's ext_authz Check on the one-rule context and the same keys
    /// as CheckAccess: what a request through Envoy costs authgate.
    ExtAuthz,
    /// Envoy's ShouldRateLimit on a context with one rate rule per address:
    /// every call a counted request, on the same hot keys.
    RateLimit,
    /// Admit in the admission context.
    Admit,
}

impl Workload {
    const ALL: [Workload; 10] = [
        Workload::Bare,
        Workload::Health,
        Workload::Pgbench,
        Workload::Failure,
        Workload::FailureLogin,
        Workload::Check,
        Workload::CheckLogin,
        Workload::ExtAuthz,
        Workload::RateLimit,
        Workload::Admit,
    ];
}

#[derive(Clone, Copy)]
enum Rpc {
    Health,
    CheckAccess,
    RecordFailure,
    Admit,
    ExtAuthz,
    RateLimit,
}

/// Which user each call names.
#[derive(Clone, Copy)]
enum Keys {
    /// Uniformly drawn from 0..n.
    Uniform(u64),
    /// Uniformly drawn from 0..n, each named once before the measurement:
    /// the steady state of keys in use, not their first sight.
    Hot(u64),
    /// 0, 1, 2, ... wrapping at n, shared by all workers.
    RoundRobin(u64),
}

/// What one workload sends, and where.
struct Plan {
    label: String,
    rpc: Rpc,
    context: String,
    keys: Keys,
}

struct Figures {
    rps: f64,
    latency: Histogram<u64>,
    errors: u64,
    /// Shown under the row, so a misconfigured run (an unknown context, a
    /// refused call) says why instead of only counting.
    first_error: Option<Status>,
}

/// A table row: what was measured, in milliseconds.
struct Row {
    label: String,
    rps: f64,
    p50: f64,
    p99: f64,
    mean: f64,
    errors: Option<u64>,
}

/// SplitMix64: a few lines, fast, and even enough to spread keys; each
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
fn subject(n: u64) -> Subject {
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

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

async fn run(plan: &Plan, args: &Args, channels: &[Channel]) -> Figures {
    if let Keys::Hot(n) = plan.keys {
        name_each(plan, args, channels, n).await;
    }
    let shared = Arc::new(AtomicU64::new(0));
    let warm_until = Instant::now() + Duration::from_secs(1);
    let stop_at = warm_until + args.duration;
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
    let mut figures = Figures {
        rps: 0.0,
        latency: histogram(),
        errors: 0,
        first_error: None,
    };
    let mut done = 0u64;
    for w in workers {
        let (latency, d, errors, first_error) = w.await.expect("worker");
        figures.latency.add(&latency).expect("same bounds");
        done += d;
        figures.errors += errors;
        if figures.first_error.is_none() {
            figures.first_error = first_error;
        }
    }
    figures.rps = done as f64 / args.duration.as_secs_f64();
    figures
}

/// `--fill`: users 0..total each get one failure, then the figures of the
/// whole fill are printed.
async fn fill(args: &Args, channels: &[Channel], total: u64) {
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

/// What `workload` sends; None for the pgbench row, which is not an RPC.
fn plan(workload: Workload, args: &Args) -> Option<Plan> {
    let (rpc, context, keys) = match workload {
        Workload::Pgbench => return None,
        Workload::Bare | Workload::Health => (Rpc::Health, String::new(), Keys::RoundRobin(1)),
        Workload::Failure => (
            Rpc::RecordFailure,
            args.context.clone(),
            Keys::Uniform(args.key_space),
        ),
        Workload::FailureLogin => (
            Rpc::RecordFailure,
            args.login_context.clone(),
            Keys::Uniform(args.key_space),
        ),
        Workload::Check => (
            Rpc::CheckAccess,
            args.context.clone(),
            Keys::Hot(args.hot_keys),
        ),
        Workload::CheckLogin => (
            Rpc::CheckAccess,
            args.login_context.clone(),
            Keys::Hot(args.hot_keys),
        ),
        Workload::ExtAuthz => (
            Rpc::ExtAuthz,
            args.context.clone(),
            Keys::Hot(args.hot_keys),
        ),
        Workload::RateLimit => (
            Rpc::RateLimit,
            args.rate_context.clone(),
            Keys::Hot(args.hot_keys),
        ),
        Workload::Admit => (
            Rpc::Admit,
            args.admit_context.clone(),
            Keys::RoundRobin(args.admit_users),
        ),
    };
    let label = match rpc {
        Rpc::Health if workload == Workload::Bare => "bare tonic server (health)".to_owned(),
        Rpc::Health => "authgate health".to_owned(),
        Rpc::RecordFailure => format!("RecordFailure [{context}]"),
        Rpc::CheckAccess => format!("CheckAccess [{context}]"),
        Rpc::Admit => format!("Admit [{context}]"),
        Rpc::ExtAuthz => format!("ext_authz Check [{context}]"),
        Rpc::RateLimit => format!("ShouldRateLimit [{context}]"),
    };
    Some(Plan {
        label,
        rpc,
        context,
        keys,
    })
}

/// The pgbench row, when the caller passed its figures (clap requires all
/// of them or none).
fn pgbench_row(args: &Args) -> Option<Row> {
    Some(Row {
        label: "pgbench upsert".to_owned(),
        rps: args.pgbench_tps?,
        p50: args.pgbench_p50?,
        p99: args.pgbench_p99?,
        mean: args.pgbench_avg?,
        errors: None,
    })
}

async fn connect(addr: &str, connections: usize) -> Result<Vec<Channel>, tonic::transport::Error> {
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels.push(Endpoint::from_shared(addr.to_owned())?.connect().await?);
    }
    Ok(channels)
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// `part / whole` in the table's notation, or "-" without a baseline.
fn ratio(part: f64, whole: Option<f64>, percent: bool) -> String {
    match whole {
        Some(w) if w > 0.0 && percent => format!("{:.1}%", 100.0 * part / w),
        Some(w) if w > 0.0 => format!("{:.2}x", part / w),
        _ => "-".to_owned(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.only.contains(&Workload::Bare) && args.bare_addr.is_none() {
        return Err("--only bare needs --bare-addr".into());
    }
    if args.only.contains(&Workload::Pgbench) && args.pgbench_tps.is_none() {
        return Err("--only pgbench needs --pgbench-tps and its latencies".into());
    }
    let authgate = connect(&args.addr, args.connections).await?;
    if let Some(total) = args.fill {
        fill(&args, &authgate, total).await;
        return Ok(());
    }
    let wanted = |w| args.only.is_empty() || args.only.contains(&w);
    let bare = match &args.bare_addr {
        Some(addr) if wanted(Workload::Bare) => Some(connect(addr, args.connections).await?),
        _ => None,
    };

    println!(
        "authgate-bench: {} in flight over {} connections per server, {:?} per workload after 1s warm-up",
        args.concurrency, args.connections, args.duration
    );
    println!(
        "  RecordFailure: users drawn from {}; CheckAccess: from {} hot users (each checked once before); Admit: {} users in turn",
        args.key_space, args.hot_keys, args.admit_users
    );
    println!(
        "  share = req/s / bare server's; vs pgbench = req/s / pgbench's TPS; p99/bare = p99 / bare server's p99"
    );
    println!(
        "{:<28} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7} {:>10} {:>8}",
        "workload",
        "req/s",
        "p50 ms",
        "p99 ms",
        "mean ms",
        "errors",
        "share",
        "vs pgbench",
        "p99/bare"
    );
    // (req/s, p99) of the bare server, once measured.
    let mut baseline: Option<(f64, f64)> = None;
    // (req/s, p99) of CheckAccess on the one-rule context, which ext_authz
    // is compared with.
    let mut check: Option<(f64, f64)> = None;
    // ext_authz's req/s and p99 over CheckAccess's, a pair each round.
    let mut vs_check: Vec<(f64, f64)> = Vec::new();
    let rounds =
        (0..args.rounds.max(1)).flat_map(|_| Workload::ALL.into_iter().filter(|&w| wanted(w)));
    for workload in rounds {
        let (row, first_error) = match plan(workload, &args) {
            None => match pgbench_row(&args) {
                Some(row) => (row, None),
                None => continue,
            },
            Some(plan) => {
                let channels = match (workload, &bare) {
                    (Workload::Bare, Some(bare)) => bare,
                    (Workload::Bare, None) => continue,
                    _ => &authgate,
                };
                let f = run(&plan, &args, channels).await;
                let row = Row {
                    label: plan.label,
                    rps: f.rps,
                    p50: ms(f.latency.value_at_quantile(0.50)),
                    p99: ms(f.latency.value_at_quantile(0.99)),
                    mean: f.latency.mean() / 1000.0,
                    errors: Some(f.errors),
                };
                (row, f.first_error)
            }
        };
        match workload {
            Workload::Bare => baseline = Some((row.rps, row.p99)),
            Workload::Check => check = Some((row.rps, row.p99)),
            _ => {}
        }
        let share = match workload {
            Workload::Pgbench => "-".to_owned(),
            _ => ratio(row.rps, baseline.map(|b| b.0), true),
        };
        let vs_pgbench = match workload {
            Workload::Pgbench | Workload::Failure | Workload::FailureLogin => {
                ratio(row.rps, args.pgbench_tps, false)
            }
            _ => "-".to_owned(),
        };
        println!(
            "{:<28} {:>9.0} {:>8.3} {:>8.3} {:>8.3} {:>7} {:>7} {:>10} {:>8}",
            row.label,
            row.rps,
            row.p50,
            row.p99,
            row.mean,
            row.errors.map_or("-".to_owned(), |e| e.to_string()),
            share,
            vs_pgbench,
            ratio(row.p99, baseline.map(|b| b.1), false),
        );
        if let Some(e) = first_error {
            println!("  first error: {e}");
        }
        if workload == Workload::ExtAuthz {
            println!(
                "  vs CheckAccess [{}]: req/s {}, p99 {}",
                args.context,
                ratio(row.rps, check.map(|c| c.0), true),
                ratio(row.p99, check.map(|c| c.1), false)
            );
            if let Some((rps, p99)) = check.filter(|c| c.0 > 0.0 && c.1 > 0.0) {
                vs_check.push((row.rps / rps, row.p99 / p99));
            }
        }
    }
    if vs_check.len() > 1 {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "ext_authz vs CheckAccess over {} rounds: median req/s {:.1}%, median p99 {:.2}x (req/s {})",
            vs_check.len(),
            100.0 * median(vs_check.iter().map(|v| v.0).collect()),
            median(vs_check.iter().map(|v| v.1).collect()),
            vs_check
                .iter()
                .map(|v| format!("{:.0}%", 100.0 * v.0))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}
