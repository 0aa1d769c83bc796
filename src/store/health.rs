//! Whether the store is known to answer. Once a call finds it unreachable,
//! every call answers at once (UNAVAILABLE, or ALLOW for fail_open) instead
//! of each waiting out `database.acquire_timeout` behind the others, until
//! a probe finds the store answering again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::StoreError;

#[derive(Debug)]
pub struct Health {
    up: AtomicBool,
    /// Why the store was last found unreachable, for the answers given
    /// while it is known down.
    cause: Mutex<Option<StoreError>>,
    /// Woken when a call finds the store unreachable, so the probe confirms
    /// or clears that at once rather than at its next tick.
    suspected: Notify,
    /// When the store last came back (or this process started).
    up_since: Mutex<Instant>,
    /// Calls the store has answered, ever: a probe that times out while
    /// this moves was queued behind them, at a store that is busy, not
    /// gone. (Calls the key cache answered count too, for the second it is
    /// trusted without its heartbeats: a store gone is then found down one
    /// probe later.)
    answered: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            up: AtomicBool::new(true),
            cause: Mutex::new(None),
            suspected: Notify::new(),
            up_since: Mutex::new(Instant::now()),
            answered: AtomicU64::new(0),
        }
    }
}

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Health::default())
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Ok while the store is believed to answer; the last cause otherwise.
    pub fn refuse_while_down(&self) -> Result<(), StoreError> {
        if self.is_up() {
            return Ok(());
        }
        let cause = self.cause.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Err(cause.unwrap_or_else(|| StoreError::from(sqlx::Error::PoolTimedOut)))
    }

    /// Takes note of a call's result: an unreachable store is known down
    /// from now on, until `probed` says otherwise.
    pub fn observe<T>(&self, result: &Result<T, StoreError>) {
        if result.is_ok() {
            self.answered.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e @ StoreError::Unavailable(_)) = result {
            *self.cause.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
            if self.up.swap(false, Ordering::AcqRel) {
                self.suspected.notify_one();
            }
        }
    }

    /// A mark to pass to `probe_timed_out` for a probe starting now.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// What a probe that ran out of time means, given the mark taken as it
    /// started: the store is down only if it answered nothing else in the
    /// meantime. (A SQLite replica's probe waits for its one writer behind
    /// every call queued there, and under load that took longer than the
    /// probe's patience while each of those calls was being answered.)
    pub fn probe_timed_out(&self, mark: u64) -> Result<(), StoreError> {
        if self.answered() != mark {
            return Ok(());
        }
        Err(sqlx::Error::PoolTimedOut.into())
    }

    /// A probe's answer decides either way.
    pub fn probed(&self, result: &Result<(), StoreError>) {
        match result {
            Ok(()) => {
                if !self.up.swap(true, Ordering::AcqRel) {
                    *self.up_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                }
            }
            Err(e) => {
                *self.cause.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
                self.up.store(false, Ordering::Release);
            }
        }
    }

    /// Whether a pooled connection idle for `idle_for` has been idle since
    /// before the store last came back: it is likely a connection to the
    /// server that went away, and should be tried before a caller uses it.
    pub fn idle_across_outage(&self, idle_for: Duration) -> bool {
        idle_for
            >= self
                .up_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed()
    }

    /// Resolves when a call has found the store unreachable since the last
    /// time this resolved.
    pub async fn suspected(&self) {
        self.suspected.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_that_times_out_while_calls_are_answered_finds_the_store_up() {
        let health = Health::default();
        let mark = health.answered();
        assert!(health.probe_timed_out(mark).is_err(), "nothing answered");
        health.observe(&Ok::<(), StoreError>(()));
        assert!(health.probe_timed_out(mark).is_ok(), "busy, not down");
        let failed: Result<(), StoreError> = Err(sqlx::Error::PoolTimedOut.into());
        let mark = health.answered();
        health.observe(&failed);
        assert!(
            health.probe_timed_out(mark).is_err(),
            "a failure is no answer"
        );
    }
}
