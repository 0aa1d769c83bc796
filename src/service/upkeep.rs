//! What keeps a replica and its store in shape: store probes, the
//! cleanup pass, the figures behind the gauges.

use std::time::Duration;

use super::{Gate, ServiceError};
use crate::clock::Reading;
use crate::domain::{ALLOW_LIST_CONTEXT, BanSet, TOTP_CONTEXT};
use crate::store::{Bans, Reports, Upkeep};
use crate::store::{Purged, Stats, StoreError};
use crate::telemetry::metrics;

impl Gate {
    /// Sets the session and lock gauges from the store.
    pub async fn refresh_gauges(&self) -> Result<(), StoreError> {
        let now = self.now();
        let s = self.store.reports().stats(now, TOTP_CONTEXT).await?;
        for (state, n) in [
            ("total", s.total),
            ("authenticated", s.authenticated),
            ("processing", s.processing),
            ("blocked", s.blocked),
            ("expired", s.expired),
        ] {
            metrics::sessions(state, n);
        }
        let locks = self.store.reports().active_locks(now).await?;
        // Every known context is set, so a context whose locks all ended
        // reads 0 rather than its last count.
        for context in self
            .policy
            .context_names()
            .chain([ALLOW_LIST_CONTEXT, TOTP_CONTEXT])
        {
            for (kind, permanent) in [("temporary", false), ("permanent", true)] {
                let n = locks
                    .iter()
                    .filter(|l| l.context == context && l.permanent == permanent)
                    .map(|l| l.count)
                    .sum();
                metrics::locks_active(context, kind, n);
            }
        }
        let bans = BanSet::new(self.store.bans().list_bans(now).await?).counts(now);
        for scope in ["context", "all"] {
            for kind in ["user", "ip", "range", "user+ip", "session", "password"] {
                metrics::bans_active(scope, kind, bans.get(&(scope, kind)).copied().unwrap_or(0));
            }
        }
        Ok(())
    }

    /// One cleanup pass; `None` when another replica ran it.
    pub async fn purge_expired(
        &self,
        audit_retention: Duration,
    ) -> Result<Option<Purged>, StoreError> {
        self.store
            .upkeep()
            .purge_expired(self.now(), audit_retention)
            .await
    }

    /// The store's shared clock, read now; `None` where it has none.
    pub async fn read_clock(&self) -> Result<Option<Reading>, StoreError> {
        self.store.upkeep().clock().await
    }

    /// Whether the store answers at all.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    pub async fn stats(&self) -> Result<Stats, ServiceError> {
        Ok(self.store.reports().stats(self.now(), TOTP_CONTEXT).await?)
    }
}
