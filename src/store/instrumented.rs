//! Watches every store operation, whichever dialect is underneath: times
//! it, counts its failures, and keeps `Health` informed, answering at once
//! while the store is known to be unreachable.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    Applied, Cursor, EventFilter, Health, LockCount, Purged, SecurityEvent, StateId, Stats, Store,
    StoreError, Stored, StoredTotp, TransitionFn, UnlockScope,
};
use crate::domain::{KeyState, Session, Subject, UnixMillis, UserId};
use crate::metrics;

pub struct Instrumented {
    inner: Box<dyn Store>,
    health: Arc<Health>,
}

impl Instrumented {
    pub fn new(inner: Box<dyn Store>, health: Arc<Health>) -> Self {
        Instrumented { inner, health }
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.health.admit()?;
        let start = Instant::now();
        let result = f.await;
        metrics::store_done(op, result.is_ok(), start.elapsed());
        self.health.observe(&result);
        result
    }
}

#[async_trait]
impl Store for Instrumented {
    async fn load(&self, ids: &[StateId]) -> Result<Vec<Option<KeyState>>, StoreError> {
        self.timed("load", self.inner.load(ids)).await
    }

    async fn transition(
        &self,
        ids: &[StateId],
        f: &TransitionFn<'_>,
    ) -> Result<Applied, StoreError> {
        self.timed("transition", self.inner.transition(ids, f))
            .await
    }

    async fn unlock(&self, scope: &UnlockScope, now: UnixMillis) -> Result<u64, StoreError> {
        self.timed("unlock", self.inner.unlock(scope, now)).await
    }

    async fn list_locked(
        &self,
        context: Option<&str>,
        after: Option<&Cursor>,
        limit: u32,
        now: UnixMillis,
    ) -> Result<Vec<Stored>, StoreError> {
        self.timed(
            "list_locked",
            self.inner.list_locked(context, after, limit, now),
        )
        .await
    }

    async fn subject_states(&self, subject: &Subject) -> Result<Vec<Stored>, StoreError> {
        self.timed("subject_states", self.inner.subject_states(subject))
            .await
    }

    async fn purge_expired(
        &self,
        now: UnixMillis,
        retention: Duration,
    ) -> Result<Option<Purged>, StoreError> {
        self.timed("purge_expired", self.inner.purge_expired(now, retention))
            .await
    }

    async fn list_events(
        &self,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<(i64, SecurityEvent)>, StoreError> {
        self.timed("list_events", self.inner.list_events(filter, limit))
            .await
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.timed("migrate", self.inner.migrate()).await
    }

    async fn totp(&self, user: &UserId) -> Result<Vec<StoredTotp>, StoreError> {
        self.timed("totp", self.inner.totp(user)).await
    }

    async fn put_totp(&self, user: &UserId, totp: &StoredTotp) -> Result<(), StoreError> {
        self.timed("put_totp", self.inner.put_totp(user, totp))
            .await
    }

    async fn accept_totp_step(
        &self,
        user: &UserId,
        nonce: &[u8],
        step: u64,
    ) -> Result<bool, StoreError> {
        self.timed(
            "accept_totp_step",
            self.inner.accept_totp_step(user, nonce, step),
        )
        .await
    }

    async fn delete_totp(&self, user: &UserId) -> Result<bool, StoreError> {
        self.timed("delete_totp", self.inner.delete_totp(user))
            .await
    }

    async fn session(&self, user: &UserId) -> Result<Option<Session>, StoreError> {
        self.timed("session", self.inner.session(user)).await
    }

    async fn put_session(&self, user: &UserId, session: &Session) -> Result<(), StoreError> {
        self.timed("put_session", self.inner.put_session(user, session))
            .await
    }

    async fn revoke_sessions(
        &self,
        user: Option<&UserId>,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        self.timed("revoke_sessions", self.inner.revoke_sessions(user, now))
            .await
    }

    async fn stats(&self, now: UnixMillis, totp_context: &str) -> Result<Stats, StoreError> {
        self.timed("stats", self.inner.stats(now, totp_context))
            .await
    }

    async fn append_event(&self, event: &SecurityEvent) -> Result<(), StoreError> {
        self.timed("append_event", self.inner.append_event(event))
            .await
    }

    /// Never refused: the probe that decides whether the store is back.
    async fn ping(&self) -> Result<(), StoreError> {
        let start = Instant::now();
        let result = self.inner.ping().await;
        metrics::store_done("ping", result.is_ok(), start.elapsed());
        result
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<SecurityEvent> {
        self.inner.subscribe()
    }

    async fn events_ready(&self, within: Duration) -> bool {
        self.inner.events_ready(within).await
    }

    async fn active_locks(&self, now: UnixMillis) -> Result<Vec<LockCount>, StoreError> {
        self.timed("active_locks", self.inner.active_locks(now))
            .await
    }
}
