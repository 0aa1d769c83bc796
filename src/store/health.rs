//! Whether the store is known to answer. Once a call finds it unreachable,
//! every call answers at once (UNAVAILABLE, or ALLOW for fail_open) instead
//! of each waiting out `database.acquire_timeout` behind the others, until
//! a probe finds the store answering again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
}

impl Default for Health {
    fn default() -> Self {
        Health {
            up: AtomicBool::new(true),
            cause: Mutex::new(None),
            suspected: Notify::new(),
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
    pub fn admit(&self) -> Result<(), StoreError> {
        if self.is_up() {
            return Ok(());
        }
        let cause = self.cause.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Err(cause.unwrap_or_else(|| StoreError::from(sqlx::Error::PoolTimedOut)))
    }

    /// Takes note of a call's result: an unreachable store is known down
    /// from now on, until `probed` says otherwise.
    pub fn observe<T>(&self, result: &Result<T, StoreError>) {
        if let Err(e @ StoreError::Unavailable(_)) = result {
            *self.cause.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
            if self.up.swap(false, Ordering::AcqRel) {
                self.suspected.notify_one();
            }
        }
    }

    /// A probe's answer decides either way.
    pub fn probed(&self, result: &Result<(), StoreError>) {
        match result {
            Ok(()) => self.up.store(true, Ordering::Release),
            Err(e) => {
                *self.cause.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
                self.up.store(false, Ordering::Release);
            }
        }
    }

    /// Resolves when a call has found the store unreachable since the last
    /// time this resolved.
    pub async fn suspected(&self) {
        self.suspected.notified().await;
    }
}
