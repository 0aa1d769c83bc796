//! Drives a running authgate with concurrent calls and prints one table of
//! throughput and latency: grpc.health.v1 Check on a bare tonic server
//! (authgate-bare) and on authgate, RecordFailure and CheckAccess on a
//! one-rule context and on the three-rule `login`, and Admit, all in the
//! same run, with two pgbench rows on the same Postgres when the caller
//! passes their figures: a single-row upsert, and the durable work of one
//! failure (its key state upserted and its audit event inserted, on
//! authgate's own tables) done one transaction at a time. The machines this
//! runs on are shared and noisy, so the shares of the baselines measured
//! alongside are what to compare across runs: the bare server's req/s and
//! p99 for every RPC, and pgbench's TPS for the writes.

use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tonic::transport::{Channel, Endpoint};

mod cpu;
mod load;
use cpu::{Cost, Meter};
use load::{Keys, Plan, Rpc, fill, run};

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
    /// pgbench's single-row upsert on the same Postgres, measured by the
    /// caller, as `TPS,AVG,P50,P99,DB_US,CLIENT_US,STEAL` (latencies in
    /// milliseconds, Postgres's and pgbench's CPU µs a transaction, the
    /// hypervisor's share): it adds a row, and the writes' share of it.
    #[arg(long, value_name = "TPS,AVG,P50,P99,DB_US,CLIENT_US,STEAL")]
    pgbench_upsert: Option<Pgbench>,
    /// pgbench doing one failure's durable work per transaction (a
    /// key_state upsert and a security_event insert on authgate's schema),
    /// in the same form: the baseline RecordFailure's batching must beat.
    #[arg(long, value_name = "TPS,AVG,P50,P99,DB_US,CLIENT_US,STEAL")]
    pgbench_work: Option<Pgbench>,
    /// Instead of the table: record one failure each for users 0..N in
    /// `--context`, as fast as `--concurrency` allows, and exit (to measure
    /// the server's memory per key).
    #[arg(long, value_name = "N", conflicts_with_all = ["only", "bare_addr"])]
    fill: Option<u64>,
    /// authgate's process: the table shows its CPU time (and its
    /// descendants') per request.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// authgate's /metrics (HOST:PORT): each row shows the share of its key
    /// cache lookups that hit.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// The bare server's process: its row shows its CPU time per request.
    #[arg(long, value_name = "PID")]
    bare_pid: Option<u32>,
    /// The store's process (Postgres's postmaster): the table shows its CPU
    /// time and its backends' per request.
    #[arg(long, value_name = "PID")]
    store_pid: Option<u32>,
    /// Instead of the table: print the CPU ticks of each PID with its
    /// descendants (and those that ended), then the machine's steal and
    /// total ticks, and exit (scripts/bench.sh measures pgbench with it).
    #[arg(long, value_name = "PID", num_args = 1.., conflicts_with_all = ["only", "fill"])]
    ticks: Vec<u32>,
}

impl Args {
    /// The processes whose CPU time `workload`'s row shows.
    fn meter(&self, workload: Workload) -> Meter {
        match workload {
            Workload::Bare => Meter {
                server: self.bare_pid,
                store: None,
            },
            _ => Meter {
                server: self.server_pid,
                store: self.store_pid,
            },
        }
    }
}

/// The table's rows, in the order they run.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// grpc.health.v1 Check on the bare server.
    Bare,
    /// grpc.health.v1 Check on authgate.
    Health,
    /// pgbench's single-row upsert, as passed.
    Pgbench,
    /// pgbench doing one failure's work a transaction, as passed.
    PgbenchWork,
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
    const ALL: [Workload; 11] = [
        Workload::Bare,
        Workload::Health,
        Workload::Pgbench,
        Workload::PgbenchWork,
        Workload::Failure,
        Workload::FailureLogin,
        Workload::Check,
        Workload::CheckLogin,
        Workload::ExtAuthz,
        Workload::RateLimit,
        Workload::Admit,
    ];
}

/// A table row: what was measured, in milliseconds.
struct Row {
    label: String,
    rps: f64,
    p50: f64,
    p99: f64,
    mean: f64,
    errors: Option<u64>,
    cpu: Option<Cost>,
    cache_hits: Option<f64>,
}

/// What `workload` sends; None for the pgbench row, which is not an RPC.
fn plan(workload: Workload, args: &Args) -> Option<Plan> {
    let (rpc, context, keys) = match workload {
        Workload::Pgbench | Workload::PgbenchWork => return None,
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

/// Figures pgbench printed, as the caller passes them, with the CPU time
/// per transaction of Postgres and of pgbench that scripts/bench.sh read.
#[derive(Clone, Copy)]
struct Pgbench {
    tps: f64,
    avg: f64,
    p50: f64,
    p99: f64,
    cpu: Cost,
}

impl FromStr for Pgbench {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let figures: Vec<f64> = s
            .split(',')
            .map(|f| f.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{s:?}: {e}"))?;
        let [tps, avg, p50, p99, store, client, steal] = figures[..] else {
            return Err(format!(
                "{s:?}: expected TPS,AVG,P50,P99,DB_US,CLIENT_US,STEAL"
            ));
        };
        let cpu = Cost {
            server: None,
            store: Some(store),
            client,
            steal,
        };
        Ok(Pgbench {
            tps,
            avg,
            p50,
            p99,
            cpu,
        })
    }
}

/// A pgbench row, when the caller passed its figures.
fn pgbench_row(workload: Workload, args: &Args) -> Option<Row> {
    let (label, figures) = match workload {
        Workload::Pgbench => ("pgbench upsert", args.pgbench_upsert?),
        Workload::PgbenchWork => ("pgbench one failure's work", args.pgbench_work?),
        _ => return None,
    };
    Some(Row {
        label: label.to_owned(),
        rps: figures.tps,
        p50: figures.p50,
        p99: figures.p99,
        mean: figures.avg,
        errors: None,
        cpu: Some(figures.cpu),
        cache_hits: None,
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
    if !args.ticks.is_empty() {
        println!("{}", Meter::ticks(&args.ticks));
        return Ok(());
    }
    if args.only.contains(&Workload::Bare) && args.bare_addr.is_none() {
        return Err("--only bare needs --bare-addr".into());
    }
    if args.only.contains(&Workload::Pgbench) && args.pgbench_upsert.is_none() {
        return Err("--only pgbench needs --pgbench-upsert".into());
    }
    if args.only.contains(&Workload::PgbenchWork) && args.pgbench_work.is_none() {
        return Err("--only pgbench-work needs --pgbench-work".into());
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
        "  share = req/s / bare server's; vs upsert, vs work = req/s / the pgbench row's TPS; p99/bare = p99 / bare server's p99"
    );
    println!(
        "  CPU µs a request (or transaction): srv = the server's, db = Postgres's processes', cli = the load generator's (pgbench's for its rows); steal = the machine's time the hypervisor took; hit = the share of authgate's key cache lookups that hit"
    );
    println!(
        "{:<28} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7} {:>9} {:>8} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "workload",
        "req/s",
        "p50 ms",
        "p99 ms",
        "mean ms",
        "errors",
        "share",
        "vs upsert",
        "vs work",
        "p99/bare",
        "srv",
        "db",
        "cli",
        "steal",
        "hit"
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
            None => match pgbench_row(workload, &args) {
                Some(row) => (row, None),
                None => continue,
            },
            Some(plan) => {
                let channels = match (workload, &bare) {
                    (Workload::Bare, Some(bare)) => bare,
                    (Workload::Bare, None) => continue,
                    _ => &authgate,
                };
                let f = run(&plan, &args, channels, args.meter(workload)).await;
                let row = Row {
                    label: plan.label,
                    rps: f.rps,
                    p50: ms(f.latency.value_at_quantile(0.50)),
                    p99: ms(f.latency.value_at_quantile(0.99)),
                    mean: f.latency.mean() / 1000.0,
                    errors: Some(f.errors),
                    cpu: Some(f.cpu),
                    cache_hits: f.cache_hits,
                };
                (row, f.first_error)
            }
        };
        match workload {
            Workload::Bare => baseline = Some((row.rps, row.p99)),
            Workload::Check => check = Some((row.rps, row.p99)),
            _ => {}
        }
        let pgbench = matches!(workload, Workload::Pgbench | Workload::PgbenchWork);
        let share = match pgbench {
            true => "-".to_owned(),
            false => ratio(row.rps, baseline.map(|b| b.0), true),
        };
        // The upsert is every write's floor; the work script is one
        // failure on one rule, so only the one-rule RecordFailure does it.
        let vs = |of: Option<Pgbench>, compared: bool| match compared || pgbench {
            true => ratio(row.rps, of.map(|p| p.tps), false),
            false => "-".to_owned(),
        };
        let writes = matches!(workload, Workload::Failure | Workload::FailureLogin);
        let micros = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        println!(
            "{:<28} {:>9.0} {:>8.3} {:>8.3} {:>8.3} {:>7} {:>7} {:>9} {:>8} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6}",
            row.label,
            row.rps,
            row.p50,
            row.p99,
            row.mean,
            row.errors.map_or("-".to_owned(), |e| e.to_string()),
            share,
            vs(args.pgbench_upsert, writes),
            vs(args.pgbench_work, workload == Workload::Failure),
            ratio(row.p99, baseline.map(|b| b.1), false),
            micros(row.cpu.and_then(|c| c.server)),
            micros(row.cpu.and_then(|c| c.store)),
            micros(row.cpu.map(|c| c.client)),
            row.cpu
                .map_or("-".to_owned(), |c| format!("{:.0}%", 100.0 * c.steal)),
            row.cache_hits
                .map_or("-".to_owned(), |h| format!("{:.0}%", 100.0 * h)),
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
