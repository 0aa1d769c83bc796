//! Drives a running authgate with concurrent calls and prints throughput and
//! latency for CheckAccess, RecordFailure and Admit next to grpc.health.v1 Check on
//! the same server in the same run: the health check is an almost empty RPC,
//! the ceiling of this stack on this machine, so the ratios are what to
//! compare across runs and machines.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use authgate::grpc::proto::access_service_client::AccessServiceClient;
use authgate::grpc::proto::{AdmitRequest, CheckAccessRequest, RecordFailureRequest, Subject};

#[derive(Parser)]
#[command(about = "Benchmark a running authgate")]
struct Args {
    /// The server to drive.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the requests are spread over (gRPC clients in
    /// production hold a few, one per backend).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured time per RPC, after a one-second warm-up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Distinct users (each with its own address) the calls are spread over.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// The context named in CheckAccess and RecordFailure.
    #[arg(long, default_value = "login")]
    context: String,
    /// The context named in Admit: one with admission rules.
    #[arg(long, default_value = "bot")]
    admit_context: String,
}

#[derive(Clone, Copy)]
enum Rpc {
    Health,
    CheckAccess,
    RecordFailure,
    Admit,
}

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Rpc::Health => "grpc.health.v1 Check",
            Rpc::CheckAccess => "CheckAccess",
            Rpc::RecordFailure => "RecordFailure",
            Rpc::Admit => "Admit",
        }
    }
}

struct Figures {
    rps: f64,
    latency: Histogram<u64>,
    errors: u64,
}

/// The n-th distinct subject: a user and an address of its own, so every
/// call touches keys spread across the table as real traffic does.
fn subject(n: u64) -> Subject {
    let ip = Ipv4Addr::from(0x0a00_0000 | u32::try_from(n % 0x00ff_ffff).unwrap_or(0));
    Subject {
        user_id: format!("bench-{n}"),
        ip: ip.to_string(),
        session_id: String::new(),
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

async fn call(rpc: Rpc, channel: Channel, context: &str, n: u64) -> bool {
    match rpc {
        Rpc::Health => HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok(),
        Rpc::CheckAccess => AccessServiceClient::new(channel)
            .check_access(CheckAccessRequest {
                context: context.to_owned(),
                subject: Some(subject(n)),
            })
            .await
            .is_ok(),
        Rpc::RecordFailure => AccessServiceClient::new(channel)
            .record_failure(RecordFailureRequest {
                context: context.to_owned(),
                subject: Some(subject(n)),
                activity: String::new(),
            })
            .await
            .is_ok(),
        Rpc::Admit => AccessServiceClient::new(channel)
            .admit(update(context, n))
            .await
            .is_ok(),
    }
}

async fn run(rpc: Rpc, args: &Args, channels: &[Channel]) -> Figures {
    let next = Arc::new(AtomicU64::new(0));
    let warm_until = Instant::now() + Duration::from_secs(1);
    let stop_at = warm_until + args.duration;
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let channel = channels[w % channels.len()].clone();
            let next = next.clone();
            let context = match rpc {
                Rpc::Admit => args.admit_context.clone(),
                _ => args.context.clone(),
            };
            let keys = args.keys.max(1);
            tokio::spawn(async move {
                let mut latency =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
                let (mut done, mut errors) = (0u64, 0u64);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed) % keys;
                    let start = Instant::now();
                    let ok = call(rpc, channel.clone(), &context, n).await;
                    let end = Instant::now();
                    if end >= stop_at {
                        break;
                    }
                    if start >= warm_until {
                        done += 1;
                        errors += u64::from(!ok);
                        let micros = u64::try_from(end.duration_since(start).as_micros())
                            .unwrap_or(u64::MAX);
                        latency.saturating_record(micros.max(1));
                    }
                }
                (latency, done, errors)
            })
        })
        .collect();
    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let (mut done, mut errors) = (0u64, 0u64);
    for w in workers {
        let (h, d, e) = w.await.expect("worker");
        latency.add(&h).expect("same bounds");
        done += d;
        errors += e;
    }
    Figures {
        rps: done as f64 / args.duration.as_secs_f64(),
        latency,
        errors,
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(Endpoint::from_shared(args.addr.clone())?.connect().await?);
    }
    println!(
        "authgate-bench: {} in flight over {} connections, {:?} per RPC, {} keys, context {:?}",
        args.concurrency, args.connections, args.duration, args.keys, args.context
    );
    println!(
        "{:<22} {:>10} {:>9} {:>9} {:>9} {:>8} {:>7}",
        "rpc", "req/s", "p50 ms", "p99 ms", "max ms", "errors", "ratio"
    );
    let mut baseline = None;
    // RecordFailure before CheckAccess, so checks run against a table that
    // holds state, as in production.
    for rpc in [
        Rpc::Health,
        Rpc::RecordFailure,
        Rpc::CheckAccess,
        Rpc::Admit,
    ] {
        let f = run(rpc, &args, &channels).await;
        let base = *baseline.get_or_insert(f.rps);
        println!(
            "{:<22} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>8} {:>6.1}%",
            rpc.name(),
            f.rps,
            ms(f.latency.value_at_quantile(0.50)),
            ms(f.latency.value_at_quantile(0.99)),
            ms(f.latency.max()),
            f.errors,
            100.0 * f.rps / base
        );
    }
    Ok(())
}
