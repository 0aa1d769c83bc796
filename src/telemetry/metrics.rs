//! Prometheus metrics: every name, its help text and buckets in one place,
//! and the /metrics endpoint. Labels are bounded sets (RPC names, configured
//! contexts, decisions, status codes): no user id, IP or session id ever
//! becomes a label.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::domain::{Decision, Verdict};

pub const SESSIONS: &str = "authgate_sessions";
pub const LOCKOUTS_ACTIVE: &str = "authgate_lockouts_active";
pub const BANS_ACTIVE: &str = "authgate_bans_active";
pub const DECISIONS: &str = "authgate_decisions_total";
pub const SHADOW_DECISIONS: &str = "authgate_shadow_decisions_total";
pub const FAILURES: &str = "authgate_failures_total";
pub const LOCKOUTS: &str = "authgate_lockouts_total";
pub const UNLOCKS: &str = "authgate_unlocks_total";
pub const TOTP_VERIFICATIONS: &str = "authgate_totp_verifications_total";
pub const RPC_DURATION: &str = "authgate_rpc_duration_seconds";
pub const FORWARD_AUTH_DURATION: &str = "authgate_forward_auth_duration_seconds";
pub const STORE_DURATION: &str = "authgate_store_duration_seconds";
pub const STORE_ERRORS: &str = "authgate_store_errors_total";
pub const BUILD_INFO: &str = "authgate_build_info";
pub const CONFIG_RELOADS: &str = "authgate_config_reloads_total";
pub const CONFIG_INFO: &str = "authgate_config_info";
pub const EVENTS_DROPPED: &str = "authgate_security_events_dropped_total";
pub const AUTH_REJECTED: &str = "authgate_auth_rejected_total";
pub const SHED: &str = "authgate_requests_shed_total";
pub const CONNECTION_SHED: &str = "authgate_connection_share_shed_total";
pub const ABANDONED: &str = "authgate_calls_abandoned_total";
pub const CONNECTIONS: &str = "authgate_connections";
pub const CONNECTIONS_REFUSED: &str = "authgate_connections_refused_total";
pub const HTTP2_WARNINGS_SUPPRESSED: &str = "authgate_http2_warnings_suppressed_total";
pub const ACCEPT_ERRORS: &str = "authgate_accept_errors_total";
pub const ADMISSIONS: &str = "authgate_admission_updates_total";
pub const ADMISSION_WARNINGS: &str = "authgate_admission_warnings_total";
pub const ADMISSION_BLOCKS: &str = "authgate_admission_blocks_total";
pub const STORE_UP: &str = "authgate_store_up";
pub const FAIL_OPEN: &str = "authgate_fail_open_decisions_total";
pub const KEY_CACHE_LOOKUPS: &str = "authgate_key_cache_lookups_total";
pub const KEY_CACHE_ENTRIES: &str = "authgate_key_cache_entries";
pub const KEY_CACHE_TRUSTED: &str = "authgate_key_cache_trusted";
pub const CLOCK_SKEW: &str = "authgate_clock_skew_seconds";
pub const CLOCK_SKEW_TOLERANCE: &str = "authgate_clock_skew_tolerance_seconds";
pub const CLOCK_STEPS: &str = "authgate_clock_steps_total";
pub const RATE_REQUESTS: &str = "authgate_rate_limit_requests_total";

/// 50 µs to 1 s: a cached check is tens of microseconds, a store under
/// strain hundreds of milliseconds.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Tiers above this share one label value, keeping the series bounded.
const MAX_TIER_LABEL: u32 = 10;

/// The process-wide recorder. Installed once: several servers in one
/// process (the tests) share it.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), BUCKETS)
                .expect("bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(
        SESSIONS,
        "Two-factor sessions by state (authenticated, processing, blocked, expired, total), from the shared store"
    );
    describe_gauge!(
        LOCKOUTS_ACTIVE,
        "Locks in force, by context and kind (temporary or permanent), from the shared store"
    );
    describe_gauge!(
        BANS_ACTIVE,
        "Admins' bans in force, by scope (context: one context; all: every context) and kind (user, ip, range, user+ip, session, password), from the shared store"
    );
    describe_counter!(DECISIONS, "Verdicts answered, by RPC, context and decision");
    describe_counter!(
        SHADOW_DECISIONS,
        "What rules in shadow mode decided (never the answer), by context, rule and decision"
    );
    describe_counter!(FAILURES, "Failures recorded, by context");
    describe_counter!(LOCKOUTS, "Lockouts applied, by context, key kind and tier");
    describe_counter!(UNLOCKS, "Locks lifted by admins, by scope");
    describe_counter!(
        TOTP_VERIFICATIONS,
        "TOTP codes verified, by result (ok, invalid, replay, clock_skew, blocked, not_enrolled)"
    );
    describe_histogram!(
        RPC_DURATION,
        Unit::Seconds,
        "gRPC call latency, by RPC and status code"
    );
    describe_histogram!(
        FORWARD_AUTH_DURATION,
        Unit::Seconds,
        "HTTP forward-auth request latency (gateway.http), by endpoint (/ or /nginx) and HTTP status answered"
    );
    describe_histogram!(
        STORE_DURATION,
        Unit::Seconds,
        "State store operation latency, by operation"
    );
    describe_counter!(
        STORE_ERRORS,
        "State store operations that failed, by operation"
    );
    describe_counter!(
        AUTH_REJECTED,
        "Calls refused before reaching a service, by reason (missing, malformed, unknown_key, role)"
    );
    describe_counter!(
        SHED,
        "Calls answered RESOURCE_EXHAUSTED because server.max_concurrent_requests were in flight"
    );
    describe_counter!(
        CONNECTION_SHED,
        "Calls answered RESOURCE_EXHAUSTED because their connection's calls held server.max_connection_share of the replica's"
    );
    describe_counter!(
        ABANDONED,
        "Calls whose caller reset them, hung up or ran out of time before their work touched the store: their work was not run"
    );
    describe_gauge!(
        CONNECTIONS,
        "gRPC connections open (at most server.max_connections)"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "gRPC connections closed on arrival because server.max_connections were open"
    );
    describe_counter!(
        HTTP2_WARNINGS_SUPPRESSED,
        "Warnings of the HTTP/2 stack (GOAWAYs to abusive peers, for one) left out of the log past its rate limit"
    );
    describe_counter!(
        ADMISSIONS,
        "Updates judged by Admit, by context, kind (as configured) and decision (admitted, refused, blocked, refused_while_blocked, exempt)"
    );
    describe_counter!(
        ADMISSION_WARNINGS,
        "Admission warnings, by context and cause (rate_limit or a spam pattern)"
    );
    describe_counter!(
        ADMISSION_BLOCKS,
        "Users blocked by admission, by context and cause"
    );
    describe_counter!(
        ACCEPT_ERRORS,
        "Connections the gRPC listener failed to accept (at the file-descriptor limit, for one); it pauses after each"
    );
    describe_gauge!(
        STORE_UP,
        "1 while the state store answers this replica's health probe, 0 while it does not"
    );
    describe_counter!(
        FAIL_OPEN,
        "CheckAccess calls answered ALLOW because the store was unreachable, by context (failure_mode = fail_open)"
    );
    describe_counter!(
        KEY_CACHE_LOOKUPS,
        "Key states looked up in this replica's cache, by result: hit, miss (read from Postgres), bypass (the cache was not trusted)"
    );
    describe_gauge!(
        KEY_CACHE_ENTRIES,
        "Key states this replica's cache holds (at most database.cache_entries)"
    );
    describe_gauge!(
        KEY_CACHE_TRUSTED,
        "1 while this replica's key cache provably hears every invalidation, 0 while checks bypass it"
    );
    describe_gauge!(
        CLOCK_SKEW,
        "How far this replica's wall clock is ahead of the time authority (Postgres's clock; negative: behind) at the latest reading; decisions use the authority's time"
    );
    describe_gauge!(
        CLOCK_SKEW_TOLERANCE,
        "clock.skew_tolerance: a skew beyond it is reported, and a step of the authority beyond it is counted"
    );
    describe_counter!(
        CLOCK_STEPS,
        "Times the time authority (Postgres's clock, or on SQLite this host's wall clock) moved against the monotonic clock by more than clock.skew_tolerance between two readings"
    );
    describe_counter!(
        RATE_REQUESTS,
        "Requests judged by a rate rule (CheckAccess, ext_authz, ShouldRateLimit), by context, rule and result: counted (let through), over_limit, locked (by its penalty box), not_counted (another rule refused the request)"
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label names the running build"
    );
    describe_counter!(
        CONFIG_RELOADS,
        "Configuration reloads (SIGHUP), by result: ok, or invalid (refused whole; the old configuration keeps serving)"
    );
    describe_gauge!(
        CONFIG_INFO,
        "1 for the configuration in force, 0 for those it replaced; hash is the first 12 hex digits of its SHA-256"
    );
}

pub fn decision_label(d: Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
        Decision::ChallengeCaptcha => "challenge_captcha",
        Decision::ChallengeTotp => "challenge_totp",
        Decision::EnrollTotp => "enroll_totp",
        Decision::Blocked => "blocked",
    }
}

pub fn decided(rpc: &'static str, context: &str, d: Decision) {
    counter!(DECISIONS, "rpc" => rpc, "context" => context.to_owned(), "decision" => decision_label(d)).increment(1);
}

/// A reload's outcome.
pub fn config_reload(ok: bool) {
    counter!(CONFIG_RELOADS, "result" => if ok { "ok" } else { "invalid" }).increment(1);
}

/// Which configuration is in force: `hash` 1, `replaced` (if any) 0.
pub fn config_in_force(hash: &str, replaced: Option<&str>) {
    if let Some(old) = replaced.filter(|old| *old != hash) {
        gauge!(CONFIG_INFO, "hash" => old.to_owned()).set(0.0);
    }
    gauge!(CONFIG_INFO, "hash" => hash.to_owned()).set(1.0);
}

/// Counts what shadow rules decided behind one answer. Labels are
/// bounded: contexts and rules are configured.
pub fn shadowed(context: &str, verdicts: &[Verdict]) {
    for v in verdicts {
        let rule = v.rule.as_deref().unwrap_or_default().to_owned();
        counter!(SHADOW_DECISIONS, "context" => context.to_owned(), "rule" => rule, "decision" => decision_label(v.decision)).increment(1);
    }
}

/// What a rate rule did with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateResult {
    Counted,
    OverLimit,
    Locked,
    NotCounted,
}

impl RateResult {
    fn label(self) -> &'static str {
        match self {
            RateResult::Counted => "counted",
            RateResult::OverLimit => "over_limit",
            RateResult::Locked => "locked",
            RateResult::NotCounted => "not_counted",
        }
    }
}

/// Labels are bounded: contexts and rules are configured.
pub fn rate_request(context: &str, rule: &str, result: RateResult) {
    counter!(RATE_REQUESTS, "context" => context.to_owned(), "rule" => rule.to_owned(), "result" => result.label()).increment(1);
}

pub fn failure(context: &str) {
    counter!(FAILURES, "context" => context.to_owned()).increment(1);
}

/// Puts each first-tier lockout series a context can produce on /metrics at
/// 0, so that the first lock shows as an increase: Prometheus's
/// `increase()` sees none in a series that appears already at 1, and
/// AuthgatePasswordSprayed would miss the first sprayed password.
pub fn lockouts_possible(context: &str, key: &'static str) {
    counter!(LOCKOUTS, "context" => context.to_owned(), "key" => key, "tier" => "1").increment(0);
}

/// `key` is the key kind (user, ip, user+ip, session, password), never a
/// key: a lock on a password shows as spraying without naming it.
pub fn lockout(context: &str, key: &'static str, tier: u32) {
    let tier = if tier > MAX_TIER_LABEL {
        format!("{MAX_TIER_LABEL}+")
    } else {
        tier.to_string()
    };
    counter!(LOCKOUTS, "context" => context.to_owned(), "key" => key, "tier" => tier).increment(1);
}

pub fn unlocked(scope: &'static str, n: u64) {
    counter!(UNLOCKS, "scope" => scope).increment(n);
}

pub fn totp_verified(result: &'static str) {
    counter!(TOTP_VERIFICATIONS, "result" => result).increment(1);
}

pub fn rpc_done(rpc: &'static str, code: tonic::Code, took: Duration) {
    histogram!(RPC_DURATION, "rpc" => rpc, "code" => format!("{code:?}")).record(took);
}

/// `status` is one of the few statuses forward auth answers.
pub fn forward_auth_done(endpoint: &'static str, status: u16, took: Duration) {
    histogram!(FORWARD_AUTH_DURATION, "endpoint" => endpoint, "status" => status.to_string())
        .record(took);
}

pub fn store_done(op: &'static str, ok: bool, took: Duration) {
    histogram!(STORE_DURATION, "op" => op).record(took);
    if !ok {
        counter!(STORE_ERRORS, "op" => op).increment(1);
    }
}

pub fn events_dropped(n: u64) {
    counter!(EVENTS_DROPPED).increment(n);
}

pub fn auth_rejected(reason: &'static str) {
    counter!(AUTH_REJECTED, "reason" => reason).increment(1);
}

pub fn shed() {
    counter!(SHED).increment(1);
}

pub fn connection_shed() {
    counter!(CONNECTION_SHED).increment(1);
}

pub fn abandoned() {
    counter!(ABANDONED).increment(1);
}

pub fn connections(open: usize) {
    gauge!(CONNECTIONS).set(open as f64);
}

pub fn connection_refused() {
    counter!(CONNECTIONS_REFUSED).increment(1);
}

pub fn http2_warning_suppressed() {
    counter!(HTTP2_WARNINGS_SUPPRESSED).increment(1);
}

/// Labels are bounded: kinds are those a context configures.
pub fn admitted(context: &str, kind: &str, decision: &'static str) {
    counter!(ADMISSIONS, "context" => context.to_owned(), "kind" => kind.to_owned(), "decision" => decision).increment(1);
}

pub fn admission_warning(context: &str, cause: &'static str) {
    counter!(ADMISSION_WARNINGS, "context" => context.to_owned(), "cause" => cause).increment(1);
}

pub fn admission_block(context: &str, cause: &'static str) {
    counter!(ADMISSION_BLOCKS, "context" => context.to_owned(), "cause" => cause).increment(1);
}

pub fn accept_failed() {
    counter!(ACCEPT_ERRORS).increment(1);
}

pub fn store_up(up: bool) {
    gauge!(STORE_UP).set(if up { 1.0 } else { 0.0 });
}

pub fn failed_open(context: &str) {
    counter!(FAIL_OPEN, "context" => context.to_owned()).increment(1);
}

pub fn sessions(state: &'static str, n: u64) {
    gauge!(SESSIONS, "state" => state).set(n as f64);
}

pub fn bans_active(scope: &'static str, kind: &'static str, n: u64) {
    gauge!(BANS_ACTIVE, "scope" => scope, "kind" => kind).set(n as f64);
}

pub fn locks_active(context: &str, kind: &'static str, n: u64) {
    gauge!(LOCKOUTS_ACTIVE, "context" => context.to_owned(), "kind" => kind).set(n as f64);
}

/// Serves `path` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    path: String,
    handle: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        &path,
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

pub fn key_cache_lookups(result: &'static str, n: usize) {
    counter!(KEY_CACHE_LOOKUPS, "result" => result).increment(n as u64);
}

pub fn key_cache_entries(n: usize) {
    gauge!(KEY_CACHE_ENTRIES).set(n as f64);
}

pub fn key_cache_trusted(trusted: bool) {
    gauge!(KEY_CACHE_TRUSTED).set(if trusted { 1.0 } else { 0.0 });
}

pub fn clock_skew(skew_ms: i64, tolerance: Duration) {
    gauge!(CLOCK_SKEW).set(skew_ms as f64 / 1000.0);
    gauge!(CLOCK_SKEW_TOLERANCE).set(tolerance.as_secs_f64());
}

pub fn clock_steps(n: u64) {
    counter!(CLOCK_STEPS).increment(n);
}
