//! Times every store operation and counts its failures, whichever dialect
//! is underneath.

use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    Applied, Cursor, EventFilter, LockCount, Purged, SecurityEvent, StateId, Stats, Store,
    StoreError, Stored, StoredTotp, TransitionFn, UnlockScope,
};
use crate::domain::{KeyState, Session, Subject, UnixMillis, UserId};
use crate::metrics;

pub struct Instrumented(pub Box<dyn Store>);

async fn timed<T>(
    op: &'static str,
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let start = Instant::now();
    let result = f.await;
    metrics::store_done(op, result.is_ok(), start.elapsed());
    result
}

#[async_trait]
impl Store for Instrumented {
    async fn load(&self, ids: &[StateId]) -> Result<Vec<Option<KeyState>>, StoreError> {
        timed("load", self.0.load(ids)).await
    }

    async fn transition(
        &self,
        ids: &[StateId],
        f: &TransitionFn<'_>,
    ) -> Result<Applied, StoreError> {
        timed("transition", self.0.transition(ids, f)).await
    }

    async fn unlock(&self, scope: &UnlockScope, now: UnixMillis) -> Result<u64, StoreError> {
        timed("unlock", self.0.unlock(scope, now)).await
    }

    async fn list_locked(
        &self,
        context: Option<&str>,
        after: Option<&Cursor>,
        limit: u32,
        now: UnixMillis,
    ) -> Result<Vec<Stored>, StoreError> {
        timed(
            "list_locked",
            self.0.list_locked(context, after, limit, now),
        )
        .await
    }

    async fn subject_states(&self, subject: &Subject) -> Result<Vec<Stored>, StoreError> {
        timed("subject_states", self.0.subject_states(subject)).await
    }

    async fn purge_expired(
        &self,
        now: UnixMillis,
        retention: Duration,
    ) -> Result<Option<Purged>, StoreError> {
        timed("purge_expired", self.0.purge_expired(now, retention)).await
    }

    async fn list_events(
        &self,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<(i64, SecurityEvent)>, StoreError> {
        timed("list_events", self.0.list_events(filter, limit)).await
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        timed("migrate", self.0.migrate()).await
    }

    async fn totp(&self, user: &UserId) -> Result<Vec<StoredTotp>, StoreError> {
        timed("totp", self.0.totp(user)).await
    }

    async fn put_totp(&self, user: &UserId, totp: &StoredTotp) -> Result<(), StoreError> {
        timed("put_totp", self.0.put_totp(user, totp)).await
    }

    async fn accept_totp_step(
        &self,
        user: &UserId,
        nonce: &[u8],
        step: u64,
    ) -> Result<bool, StoreError> {
        timed(
            "accept_totp_step",
            self.0.accept_totp_step(user, nonce, step),
        )
        .await
    }

    async fn delete_totp(&self, user: &UserId) -> Result<bool, StoreError> {
        timed("delete_totp", self.0.delete_totp(user)).await
    }

    async fn session(&self, user: &UserId) -> Result<Option<Session>, StoreError> {
        timed("session", self.0.session(user)).await
    }

    async fn put_session(&self, user: &UserId, session: &Session) -> Result<(), StoreError> {
        timed("put_session", self.0.put_session(user, session)).await
    }

    async fn revoke_sessions(
        &self,
        user: Option<&UserId>,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        timed("revoke_sessions", self.0.revoke_sessions(user, now)).await
    }

    async fn stats(&self, now: UnixMillis, totp_context: &str) -> Result<Stats, StoreError> {
        timed("stats", self.0.stats(now, totp_context)).await
    }

    async fn append_event(&self, event: &SecurityEvent) -> Result<(), StoreError> {
        timed("append_event", self.0.append_event(event)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        timed("ping", self.0.ping()).await
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<SecurityEvent> {
        self.0.subscribe()
    }

    async fn events_ready(&self, within: Duration) -> bool {
        self.0.events_ready(within).await
    }

    async fn active_locks(&self, now: UnixMillis) -> Result<Vec<LockCount>, StoreError> {
        timed("active_locks", self.0.active_locks(now)).await
    }
}
