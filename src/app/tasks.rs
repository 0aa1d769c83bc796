//! The background tasks a running server keeps: the store's health probe,
//! the time authority's reader, the gauges' refresher and cleanup.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::CLOCK;
use crate::clock::{Authority, Clock, Finding, Reading, SkewWatch, SystemClock};
use crate::config::ClockConfig;
use crate::grpc::proto::access_service_server::AccessServiceServer;
use crate::grpc::proto::admin_service_server::AdminServiceServer;
use crate::grpc::{AccessApi, AdminApi};
use crate::service::Gates;
use crate::store::Health;
use crate::telemetry::metrics;

/// How often this replica asks the store whether it answers, for the health
/// service: often enough that a load balancer stops sending within seconds
/// of an outage, rarely enough to cost the store nothing.
const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A probe that takes longer than this counts as the store being down.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How soon a store found down is asked again: calls are answered at once
/// meanwhile, so this bounds how long they keep failing after it returns.
const STORE_PROBE_RETRY: Duration = Duration::from_millis(100);

/// Asks the store every STORE_PROBE_INTERVAL whether it answers (at once
/// when a call found it unreachable, and every STORE_PROBE_RETRY while it is
/// down), tells `store_health`, and reports it through the health service:
/// the overall status and every service's turn NOT_SERVING while it does
/// not answer (the liveness name stays SERVING), and all of them once
/// shutdown begins.
pub(super) async fn health_loop(
    gate: Gates,
    store_health: Arc<Health>,
    reporter: HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    // run_until reported SERVING before the first connection.
    let mut was_up = true;
    loop {
        let mark = store_health.answered();
        let answer = tokio::time::timeout(STORE_PROBE_TIMEOUT, gate.load().ping())
            .await
            .unwrap_or_else(|_| store_health.probe_timed_out(mark));
        store_health.probed(&answer);
        let up = answer.is_ok();
        if up != was_up {
            if up {
                tracing::info!("state store answers again: SERVING");
            } else {
                tracing::warn!("state store unreachable: health NOT_SERVING");
            }
            metrics::store_up(up);
            let status = if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            report(reporter.clone(), status).await;
            was_up = up;
        }
        let pause = if up {
            STORE_PROBE_INTERVAL
        } else {
            STORE_PROBE_RETRY
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = store_health.suspected() => {}
            _ = stop.changed() => break,
        }
    }
    report(reporter, ServingStatus::NotServing).await;
}

/// Reads the time authority every `clock.sync_interval` and carries its
/// time forward from there; tells of a step of the authority against the
/// monotonic clock (counted) and of this replica's wall clock leaving or
/// re-entering `clock.skew_tolerance` of it (logged once per change,
/// exported as a gauge and as the `clock` health service).
pub(super) async fn clock_loop(
    gate: Gates,
    authority: Arc<Authority>,
    config: ClockConfig,
    reporter: HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let mut skew = SkewWatch::new(config.skew_tolerance);
    // On /metrics at 0 from the start, so the first step is an increase.
    metrics::clock_steps(0);
    let mut ticker = tokio::time::interval(config.sync_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        // An unreachable store is the health probe's to report; meanwhile
        // the monotonic clock carries the last reading.
        let (reading, source) =
            match tokio::time::timeout(STORE_PROBE_TIMEOUT, gate.load().read_clock()).await {
                Ok(Ok(Some(reading))) => (reading, "postgres"),
                Ok(Ok(None)) => (Reading::wall(), "wall"),
                Ok(Err(_)) | Err(_) => continue,
            };
        let wall = SystemClock.now();
        if let Some(moved) = authority.adopt(reading)
            && skew.is_step(moved)
        {
            tracing::warn!(
                authority = source,
                moved_seconds = moved as f64 / 1000.0,
                "the time authority stepped against the monotonic clock: locks and failure \
                 windows in flight now end that much sooner (forward) or later (back)"
            );
            metrics::clock_steps(1);
        }
        let skew_ms = reading.skew_of(wall);
        metrics::clock_skew(skew_ms, config.skew_tolerance);
        let status = match skew.judge(skew_ms) {
            None => continue,
            Some(Finding::Skewed) => {
                tracing::warn!(
                    skew_seconds = skew_ms as f64 / 1000.0,
                    tolerance = ?config.skew_tolerance,
                    "this replica's wall clock is off from the database's clock; it goes on \
                     deciding by the database's time, but fix its NTP: its log timestamps are off"
                );
                ServingStatus::NotServing
            }
            Some(Finding::Recovered) => {
                tracing::info!(
                    skew_seconds = skew_ms as f64 / 1000.0,
                    "this replica's wall clock is within clock.skew_tolerance of the database's again"
                );
                ServingStatus::Serving
            }
        };
        reporter.set_service_status(CLOCK, status).await;
    }
}

/// Sets the overall status and every service's (not liveness's).
pub(super) async fn report(reporter: HealthReporter, status: ServingStatus) {
    for service in [
        "",
        <AccessServiceServer<AccessApi> as NamedService>::NAME,
        <AdminServiceServer<AdminApi> as NamedService>::NAME,
    ] {
        reporter.set_service_status(service, status).await;
    }
}

/// Recomputes the store-wide gauges every `interval`, so every replica
/// reports the same session and lock figures, and lets the recorder do its
/// housekeeping.
pub(super) async fn refresh_loop(
    gate: Gates,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = gate.load().refresh_gauges().await {
            tracing::warn!(error = %e, "could not refresh session and lock gauges");
        }
        handle.run_upkeep();
    }
}

/// Purges expired state every `interval` until told to stop. A failed pass
/// is logged and retried at the next tick: purging is housekeeping, never
/// needed for a correct decision.
pub(super) async fn cleanup_loop(
    gate: Gates,
    interval: Duration,
    audit_retention: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // The first pass waits one interval: replicas starting together would
    // otherwise all purge at once, for nothing.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        match gate.load().purge_expired(audit_retention).await {
            Ok(Some(p)) => tracing::debug!(
                states = p.states,
                sessions_expired = p.sessions_expired,
                sessions_deleted = p.sessions_deleted,
                locks_expired = p.locks_expired,
                events_deleted = p.events_deleted,
                "expired state purged"
            ),
            Ok(None) => tracing::debug!("cleanup running on another replica"),
            Err(e) => tracing::warn!(error = %e, "cleanup failed; retrying next interval"),
        }
    }
}
