//! Where state lives. The `Store` trait speaks the domain's types; SQL lives
//! only in its two implementations.

mod admission;
mod batch;
mod health;
mod postgres;
mod sql;
mod sqlite;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::clock::Reading;
use crate::crypto::Sealed;
use crate::domain::{
    Admission, EventKind, Key, KeyKind, KeyState, Lock, SecurityEvent, Session, Subject,
    TotpParams, UnixMillis, UserId,
};
use crate::telemetry::metrics;
use sql::Common;

pub use admission::{
    AdmissionRecord, AdmissionScope, AdmissionStats, AdmissionStep, AdmitFn, OffenderCursor,
};
pub use health::Health;
pub use postgres::{CLEANUP_LOCK, PostgresStore};
pub use sqlite::SqliteStore;

/// Clone, because one failed read answers every request that shared it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is refusing work right now; the
    /// caller should retry later. Becomes UNAVAILABLE.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Arc<sqlx::Error>),
    /// A row that the domain cannot read: a bug or a hand-edited database.
    #[error("stored state is corrupt: {0}")]
    Corrupt(String),
    #[error("store error: {0}")]
    Other(#[source] Arc<sqlx::Error>),
    #[error("migration failed: {0}")]
    Migrate(#[source] Arc<sqlx::migrate::MigrateError>),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        // Whatever keeps authgate from talking to its database, rather than
        // a fault of a statement: the caller may retry, a fail_open context
        // may fail open. A protocol error is a server that is not (or no
        // longer) speaking Postgres's protocol on that address.
        let unavailable = match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                // 08: connection exceptions; 28: the server refuses these
                // credentials; 3D000: no such database; 57P0x: the server
                // is shutting down or starting; 53300: too many
                // connections; SQLite's 5 and 6: the file is busy or locked
                // by another process.
                c.starts_with("08")
                    || c.starts_with("28")
                    || c == "3D000"
                    || c.starts_with("57P0")
                    || c == "53300"
                    || c == "5"
                    || c == "6"
            }),
            _ => false,
        };
        if unavailable {
            StoreError::Unavailable(Arc::new(e))
        } else {
            StoreError::Other(Arc::new(e))
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(Arc::new(e))
    }
}

/// The name of a stored row: a key of a rule in a context. (README,
/// "Architecture", tells it from `Key`, `Slot` and `KeyState`.) ListLocked
/// pages resume after one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateId {
    pub context: String,
    pub rule: String,
    pub key: Key,
}

/// State as stored, with its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: StateId,
    pub state: KeyState,
}

/// What a transition writes for one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub state: KeyState,
    /// When the state may be purged; `None` while it must be kept forever.
    pub expires_at: Option<UnixMillis>,
}

/// What a transition writes: the new states, in the order of the ids, and
/// the security events that commit with them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transition {
    pub updates: Vec<Update>,
    /// Audit records, and alerts (delivered to every replica's subscribers
    /// once committed); derived from the states they describe, so a lock
    /// and its alert commit together or not at all.
    pub events: Vec<SecurityEvent>,
}

/// Computes the new states, and the events they cause, from the current
/// ones (`None`: nothing stored), in the order of the ids given. Pure, and
/// may run more than once when the database asks for a retry.
pub type TransitionFn<'a> = dyn Fn(&[Option<KeyState>]) -> Transition + Send + Sync + 'a;

/// A committed transition: the states it started from (those of the run
/// that committed) and the states it wrote, in the order of the ids.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    pub before: Vec<Option<KeyState>>,
    pub after: Vec<KeyState>,
}

/// Which locks AdminUnlock lifts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlockScope {
    /// One key in one context, in every rule there.
    Key {
        context: String,
        key: Key,
    },
    /// Every key involving any identifier of the subject.
    Subject(Subject),
    All,
}

/// A user's TOTP secret as stored: sealed, never in the clear.
#[derive(Clone)]
pub struct StoredTotp {
    pub sealed: Sealed,
    pub params: TotpParams,
    /// False while pending: enrolled, not yet proven by a code.
    pub confirmed: bool,
    pub created_at: UnixMillis,
    /// The last time step accepted.
    pub last_step: Option<u64>,
}

/// GetStats' figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub total: u64,
    pub authenticated: u64,
    pub processing: u64,
    pub expired: u64,
    /// Users whose TOTP counter is locked.
    pub blocked: u64,
    pub locks_temporary: u64,
    pub locks_permanent: u64,
}

/// ListAuditEvents' filters; empty strings and `None` match everything.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub user_id: String,
    pub ip: String,
    pub session_id: String,
    pub context: String,
    pub kind: Option<EventKind>,
    pub from: Option<UnixMillis>,
    pub to: Option<UnixMillis>,
    /// Only events older than this id (the previous page's last).
    pub before_id: Option<i64>,
}

/// Locks in force in one context, of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockCount {
    pub context: String,
    pub permanent: bool,
    pub count: u64,
}

/// What one cleanup pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Expired key states deleted.
    pub states: u64,
    /// Authenticated sessions found timed out and marked expired.
    pub sessions_expired: u64,
    /// Sessions that were not authenticated, deleted a day after their last
    /// change.
    pub sessions_deleted: u64,
    /// Locks that ended since the previous pass, now in the audit trail.
    pub locks_expired: u64,
    /// Audit events past retention, deleted.
    pub events_deleted: u64,
    /// Users' admission state, idle for a day and not blocked, deleted.
    pub admissions: u64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Current states of `ids`, in order; `None` where nothing is stored.
    async fn load(&self, ids: &[StateId]) -> Result<Vec<Option<KeyState>>, StoreError>;

    /// Reads, transforms with `f` and writes the states of `ids`, with the
    /// events `f` derives, as one atomic step: concurrent transitions on the
    /// same ids, from any replica, run one after another, and the result is
    /// committed before this returns.
    async fn transition(
        &self,
        ids: &[StateId],
        f: &TransitionFn<'_>,
    ) -> Result<Applied, StoreError>;

    /// Resets every key in `scope`: lifts its lock, forgets its recent
    /// failures and its run of lockouts (totals are kept). Returns how many
    /// locks in force at `now` were lifted.
    async fn unlock(&self, scope: &UnlockScope, now: UnixMillis) -> Result<u64, StoreError>;

    /// Locks in force at `now`, ordered by id, after `after`.
    async fn list_locked(
        &self,
        context: Option<&str>,
        after: Option<&StateId>,
        limit: u32,
        now: UnixMillis,
    ) -> Result<Vec<Stored>, StoreError>;

    /// Every state involving any identifier of `subject`, ordered by id.
    async fn subject_states(&self, subject: &Subject) -> Result<Vec<Stored>, StoreError>;

    /// Deletes state that expired before `now`, sweeps sessions, records the
    /// locks and sessions that ended since the previous pass and drops audit
    /// events older than `retention`. Returns `None` when another replica is
    /// purging at the same moment.
    async fn purge_expired(
        &self,
        now: UnixMillis,
        retention: Duration,
    ) -> Result<Option<Purged>, StoreError>;

    /// Audit events matching `filter`, newest first, with their ids.
    async fn list_events(
        &self,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<(i64, SecurityEvent)>, StoreError>;

    /// The user's secrets: the confirmed one first, then a pending one.
    async fn totp(&self, user: &UserId) -> Result<Vec<StoredTotp>, StoreError>;

    /// Stores a pending secret (replacing any pending one), or a confirmed
    /// one (replacing both).
    async fn put_totp(&self, user: &UserId, totp: &StoredTotp) -> Result<(), StoreError>;

    /// Records `step` as accepted for the secret sealed with `nonce`, unless
    /// that step or a later one was accepted already; a pending secret
    /// becomes the confirmed one. Atomic across replicas: of two concurrent
    /// calls with one step, one returns true.
    async fn accept_totp_step(
        &self,
        user: &UserId,
        nonce: &[u8],
        step: u64,
    ) -> Result<bool, StoreError>;

    /// Deletes confirmed and pending secrets; returns whether there were any.
    async fn delete_totp(&self, user: &UserId) -> Result<bool, StoreError>;

    async fn session(&self, user: &UserId) -> Result<Option<Session>, StoreError>;

    async fn put_session(&self, user: &UserId, session: &Session) -> Result<(), StoreError>;

    /// Ends authenticated and processing sessions, one user's or everyone's.
    async fn revoke_sessions(
        &self,
        user: Option<&UserId>,
        now: UnixMillis,
    ) -> Result<u64, StoreError>;

    async fn stats(&self, now: UnixMillis, totp_context: &str) -> Result<Stats, StoreError>;

    /// Appends `event` durably; an alert kind is then delivered to the
    /// subscribers of every replica sharing this store.
    async fn append_event(&self, event: &SecurityEvent) -> Result<(), StoreError>;

    /// Events appended from now on, by any replica. The buffer is bounded:
    /// a receiver that falls behind loses the oldest and is told how many.
    fn subscribe(&self) -> broadcast::Receiver<SecurityEvent>;

    /// Waits, at most `within`, until every alert committed from now on by
    /// any replica reaches `subscribe`'s receivers; false if that did not
    /// happen in time.
    async fn events_ready(&self, within: Duration) -> bool;

    /// Locks in force at `now`, counted by context and kind; contexts with
    /// none are absent.
    async fn active_locks(&self, now: UnixMillis) -> Result<Vec<LockCount>, StoreError>;

    /// Runs the embedded migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// One trivial round trip: whether the store answers at all (the
    /// health service reports it).
    async fn ping(&self) -> Result<(), StoreError>;

    /// The clock every replica of this store shares, read now; `None` when
    /// the store has none (SQLite: one process, whose wall clock it is).
    async fn clock(&self) -> Result<Option<Reading>, StoreError>;

    /// Judges one update with `f` against `user`'s admission state in
    /// `context` and writes the outcome with its events, as one atomic step:
    /// concurrent updates of one user, from any replica, are judged one
    /// after another.
    async fn admit(
        &self,
        context: &str,
        user: &UserId,
        now: UnixMillis,
        f: &AdmitFn<'_>,
    ) -> Result<Admission, StoreError>;

    /// A user's admission state in every context.
    async fn admissions(&self, user: &UserId) -> Result<Vec<AdmissionRecord>, StoreError>;

    /// Forgets the warnings of every user in `scope`, blocked or not, and
    /// with `unblock` lifts the blocks in force at `now`; returns how many
    /// blocks were lifted, or without `unblock` how many users had warnings.
    async fn reset_admission(
        &self,
        scope: &AdmissionScope,
        unblock: bool,
        now: UnixMillis,
    ) -> Result<u64, StoreError>;

    /// Users with blocks, most first, after `after`.
    async fn admission_offenders(
        &self,
        context: Option<&str>,
        after: Option<&OffenderCursor>,
        limit: u32,
    ) -> Result<Vec<AdmissionRecord>, StoreError>;

    async fn admission_stats(
        &self,
        context: Option<&str>,
        now: UnixMillis,
    ) -> Result<AdmissionStats, StoreError>;
}

/// What a database does its own way. Everything else a `Store` does is the
/// same SQL on either, written once in `sql::Common`.
#[async_trait]
pub(crate) trait Dialect: Send + Sync + 'static {
    type Sql: Common;

    /// The pools and the shared statements.
    fn sql(&self) -> &Self::Sql;

    async fn load(&self, ids: &[StateId]) -> Result<Vec<Option<KeyState>>, StoreError>;
    async fn transition(
        &self,
        ids: &[StateId],
        f: &TransitionFn<'_>,
    ) -> Result<Applied, StoreError>;
    async fn unlock(&self, scope: &UnlockScope, now: UnixMillis) -> Result<u64, StoreError>;
    async fn purge_expired(
        &self,
        now: UnixMillis,
        retention: Duration,
    ) -> Result<Option<Purged>, StoreError>;
    async fn append_event(&self, event: &SecurityEvent) -> Result<(), StoreError>;
    fn subscribe(&self) -> broadcast::Receiver<SecurityEvent>;
    async fn events_ready(&self, within: Duration) -> bool;
    async fn migrate(&self) -> Result<(), StoreError>;
    async fn clock(&self) -> Result<Option<Reading>, StoreError>;
    async fn admit(
        &self,
        context: &str,
        user: &UserId,
        now: UnixMillis,
        f: &AdmitFn<'_>,
    ) -> Result<Admission, StoreError>;
}

/// Runs one store operation on behalf of `Store`: answered at once while
/// the store is known to be unreachable, timed, its failures counted, and
/// its outcome told to `health`. From here on the call's work runs to
/// completion, whatever its caller does.
async fn watched<T>(
    health: &Health,
    op: &'static str,
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    crate::work::point_of_no_return();
    health.admit()?;
    let start = Instant::now();
    let result = f.await;
    metrics::store_done(op, result.is_ok(), start.elapsed());
    health.observe(&result);
    result
}

/// A dialect is a store: its own operations, and the shared statements on
/// its pools, each watched.
#[async_trait]
impl<D: Dialect> Store for D {
    async fn load(&self, ids: &[StateId]) -> Result<Vec<Option<KeyState>>, StoreError> {
        watched(self.sql().health(), "load", Dialect::load(self, ids)).await
    }

    async fn transition(
        &self,
        ids: &[StateId],
        f: &TransitionFn<'_>,
    ) -> Result<Applied, StoreError> {
        watched(
            self.sql().health(),
            "transition",
            Dialect::transition(self, ids, f),
        )
        .await
    }

    async fn unlock(&self, scope: &UnlockScope, now: UnixMillis) -> Result<u64, StoreError> {
        watched(
            self.sql().health(),
            "unlock",
            Dialect::unlock(self, scope, now),
        )
        .await
    }

    async fn list_locked(
        &self,
        context: Option<&str>,
        after: Option<&StateId>,
        limit: u32,
        now: UnixMillis,
    ) -> Result<Vec<Stored>, StoreError> {
        let sql = self.sql();
        watched(
            sql.health(),
            "list_locked",
            sql.list_locked(context, after, limit, now),
        )
        .await
    }

    async fn subject_states(&self, subject: &Subject) -> Result<Vec<Stored>, StoreError> {
        let sql = self.sql();
        watched(sql.health(), "subject_states", sql.subject_states(subject)).await
    }

    async fn purge_expired(
        &self,
        now: UnixMillis,
        retention: Duration,
    ) -> Result<Option<Purged>, StoreError> {
        let purge = Dialect::purge_expired(self, now, retention);
        watched(self.sql().health(), "purge_expired", purge).await
    }

    async fn list_events(
        &self,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<(i64, SecurityEvent)>, StoreError> {
        let sql = self.sql();
        watched(sql.health(), "list_events", sql.list_events(filter, limit)).await
    }

    async fn totp(&self, user: &UserId) -> Result<Vec<StoredTotp>, StoreError> {
        let sql = self.sql();
        watched(sql.health(), "totp", sql.totp(user)).await
    }

    async fn put_totp(&self, user: &UserId, totp: &StoredTotp) -> Result<(), StoreError> {
        let sql = self.sql();
        watched(sql.health(), "put_totp", sql.put_totp(user, totp)).await
    }

    async fn accept_totp_step(
        &self,
        user: &UserId,
        nonce: &[u8],
        step: u64,
    ) -> Result<bool, StoreError> {
        let sql = self.sql();
        let accept = sql.accept_totp_step(user, nonce, step);
        watched(sql.health(), "accept_totp_step", accept).await
    }

    async fn delete_totp(&self, user: &UserId) -> Result<bool, StoreError> {
        let sql = self.sql();
        watched(sql.health(), "delete_totp", sql.delete_totp(user)).await
    }

    async fn session(&self, user: &UserId) -> Result<Option<Session>, StoreError> {
        let sql = self.sql();
        watched(sql.health(), "session", sql.session(user)).await
    }

    async fn put_session(&self, user: &UserId, session: &Session) -> Result<(), StoreError> {
        let sql = self.sql();
        watched(sql.health(), "put_session", sql.put_session(user, session)).await
    }

    async fn revoke_sessions(
        &self,
        user: Option<&UserId>,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        let sql = self.sql();
        watched(
            sql.health(),
            "revoke_sessions",
            sql.revoke_sessions(user, now),
        )
        .await
    }

    async fn stats(&self, now: UnixMillis, totp_context: &str) -> Result<Stats, StoreError> {
        let sql = self.sql();
        watched(sql.health(), "stats", sql.stats(now, totp_context)).await
    }

    async fn append_event(&self, event: &SecurityEvent) -> Result<(), StoreError> {
        let append = Dialect::append_event(self, event);
        watched(self.sql().health(), "append_event", append).await
    }

    fn subscribe(&self) -> broadcast::Receiver<SecurityEvent> {
        Dialect::subscribe(self)
    }

    async fn events_ready(&self, within: Duration) -> bool {
        Dialect::events_ready(self, within).await
    }

    async fn active_locks(&self, now: UnixMillis) -> Result<Vec<LockCount>, StoreError> {
        let sql = self.sql();
        watched(sql.health(), "active_locks", sql.active_locks(now)).await
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        watched(self.sql().health(), "migrate", Dialect::migrate(self)).await
    }

    async fn admit(
        &self,
        context: &str,
        user: &UserId,
        now: UnixMillis,
        f: &AdmitFn<'_>,
    ) -> Result<Admission, StoreError> {
        let admit = Dialect::admit(self, context, user, now, f);
        watched(self.sql().health(), "admit", admit).await
    }

    async fn admissions(&self, user: &UserId) -> Result<Vec<AdmissionRecord>, StoreError> {
        let sql = self.sql();
        watched(sql.health(), "admissions", sql.admissions(user)).await
    }

    async fn reset_admission(
        &self,
        scope: &AdmissionScope,
        unblock: bool,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        let sql = self.sql();
        let reset = sql.reset_admission(scope, unblock, now);
        watched(sql.health(), "reset_admission", reset).await
    }

    async fn admission_offenders(
        &self,
        context: Option<&str>,
        after: Option<&OffenderCursor>,
        limit: u32,
    ) -> Result<Vec<AdmissionRecord>, StoreError> {
        let sql = self.sql();
        let offenders = sql.admission_offenders(context, after, limit);
        watched(sql.health(), "admission_offenders", offenders).await
    }

    async fn admission_stats(
        &self,
        context: Option<&str>,
        now: UnixMillis,
    ) -> Result<AdmissionStats, StoreError> {
        let sql = self.sql();
        watched(
            sql.health(),
            "admission_stats",
            sql.admission_stats(context, now),
        )
        .await
    }

    /// Never refused: the probe that decides whether the store is back.
    async fn ping(&self) -> Result<(), StoreError> {
        let start = Instant::now();
        let result = self.sql().ping().await;
        metrics::store_done("ping", result.is_ok(), start.elapsed());
        result
    }

    async fn clock(&self) -> Result<Option<Reading>, StoreError> {
        watched(self.sql().health(), "clock", Dialect::clock(self)).await
    }
}

/// Connection settings shared by both implementations.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// Key states cached per replica (Postgres); 0 for none.
    pub cache_entries: usize,
    /// How many security events a subscriber may fall behind before it
    /// loses the oldest.
    pub event_buffer: usize,
}

/// The database file of an SQLite URL; `None` for other URLs and for
/// in-memory databases.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    use std::str::FromStr;
    if !url.starts_with("sqlite:") {
        return None;
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let file = options.get_filename();
    (!file.as_os_str().is_empty() && file != std::path::Path::new(":memory:"))
        .then(|| file.to_path_buf())
}

/// Opens the store the URL names; `health` learns from its every operation
/// whether the database answers.
pub async fn connect(
    url: &str,
    settings: &PoolSettings,
    health: &Arc<Health>,
) -> Result<Box<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Box::new(
            SqliteStore::connect(url, settings, health.clone()).await?,
        ))
    } else {
        Ok(Box::new(PostgresStore::connect(
            url,
            settings,
            health.clone(),
        )?))
    }
}

/// One stored row in plain types, shared by both dialects' codecs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Row {
    context: String,
    rule: String,
    kind: String,
    /// Empty when the key has no such part: the primary key cannot hold
    /// NULLs, and '' is never a valid identifier.
    user_id: String,
    ip: String,
    session_id: String,
    recent_failures: Vec<i64>,
    failures_total: i64,
    last_failure_at: Option<i64>,
    locked_at: Option<i64>,
    locked_until: Option<i64>,
    lock_tier: i32,
    recent_lockouts: i32,
    last_lockout_at: Option<i64>,
    lockouts_total: i64,
    expires_at: Option<i64>,
    version: i64,
}

/// The identifier columns of a key.
///
/// A password key is stored in the session_id column: a rule counts on one
/// kind (stored beside it), so the column cannot hold both for one rule, and
/// every query that matches session ids asks for the session kind.
fn key_columns(key: &Key) -> (&'static str, String, String, String) {
    let opaque = match key {
        Key::Password(p) => p.as_str().to_owned(),
        _ => key.session().map(|s| s.to_string()).unwrap_or_default(),
    };
    (
        key.kind().as_str(),
        key.user().map(|u| u.to_string()).unwrap_or_default(),
        key.ip().map(|i| i.to_string()).unwrap_or_default(),
        opaque,
    )
}

/// The identifier columns a subject matches ('' for a part it lacks, which
/// matches nothing).
fn subject_columns(subject: &Subject) -> (String, String, String) {
    (
        subject
            .user
            .as_ref()
            .map(|u| u.to_string())
            .unwrap_or_default(),
        subject.ip.map(|i| i.to_string()).unwrap_or_default(),
        subject
            .session
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
    )
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn tier(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

impl Row {
    fn new(id: &StateId, update: &Update) -> Row {
        let (kind, user_id, ip, session_id) = key_columns(&id.key);
        let s = &update.state;
        Row {
            context: id.context.clone(),
            rule: id.rule.clone(),
            kind: kind.to_owned(),
            user_id,
            ip,
            session_id,
            recent_failures: s.recent_failures.iter().map(|t| t.0).collect(),
            failures_total: i64::try_from(s.failures_total).unwrap_or(i64::MAX),
            last_failure_at: s.last_failure_at.map(|t| t.0),
            locked_at: s.lock.as_ref().map(|l| l.locked_at.0),
            locked_until: s.lock.as_ref().and_then(|l| l.until).map(|t| t.0),
            lock_tier: s.lock.as_ref().map(|l| tier(l.tier)).unwrap_or(0),
            recent_lockouts: tier(s.recent_lockouts),
            last_lockout_at: s.last_lockout_at.map(|t| t.0),
            lockouts_total: i64::try_from(s.lockouts_total).unwrap_or(i64::MAX),
            expires_at: update.expires_at.map(|t| t.0),
            version: 0,
        }
    }

    fn id(&self) -> Result<StateId, StoreError> {
        let corrupt =
            |what: &str| StoreError::Corrupt(format!("{what} in {}/{}", self.context, self.rule));
        let kind = KeyKind::from_name(&self.kind).ok_or_else(|| corrupt("unknown key kind"))?;
        let key = Key::from_parts("key", kind, &self.user_id, &self.ip, &self.session_id)
            .map_err(|e| corrupt(&format!("bad {}", e.field)))?;
        Ok(StateId {
            context: self.context.clone(),
            rule: self.rule.clone(),
            key,
        })
    }

    fn state(&self) -> KeyState {
        KeyState {
            recent_failures: self
                .recent_failures
                .iter()
                .copied()
                .map(UnixMillis)
                .collect(),
            failures_total: count(self.failures_total),
            last_failure_at: self.last_failure_at.map(UnixMillis),
            lock: self.locked_at.map(|at| Lock {
                locked_at: UnixMillis(at),
                until: self.locked_until.map(UnixMillis),
                tier: u32::try_from(self.lock_tier).unwrap_or(0),
            }),
            recent_lockouts: u32::try_from(self.recent_lockouts).unwrap_or(0),
            last_lockout_at: self.last_lockout_at.map(UnixMillis),
            lockouts_total: count(self.lockouts_total),
        }
    }

    fn stored(&self) -> Result<Stored, StoreError> {
        Ok(Stored {
            id: self.id()?,
            state: self.state(),
        })
    }

    /// Whether this row is the state of `id`.
    fn is(&self, id: &StateId) -> bool {
        let (_, user_id, ip, session_id) = key_columns(&id.key);
        self.context == id.context
            && self.rule == id.rule
            && self.user_id == user_id
            && self.ip == ip
            && self.session_id == session_id
    }
}

/// Appends the rows `scope` covers as a WHERE clause; the same text serves
/// both dialects.
fn push_scope<DB>(q: &mut sqlx::QueryBuilder<DB>, scope: &UnlockScope)
where
    DB: sqlx::Database,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    match scope {
        UnlockScope::All => {
            q.push(" WHERE TRUE");
        }
        UnlockScope::Key { context, key } => {
            let (kind, user_id, ip, session_id) = key_columns(key);
            q.push(" WHERE context = ").push_bind(context.clone());
            q.push(" AND kind = ").push_bind(kind.to_owned());
            q.push(" AND user_id = ").push_bind(user_id);
            q.push(" AND ip = ").push_bind(ip);
            q.push(" AND session_id = ").push_bind(session_id);
        }
        UnlockScope::Subject(subject) => {
            q.push(" WHERE ");
            push_subject(q, subject);
        }
    }
}

/// The condition that a row's key involves any identifier of `subject`.
fn push_subject<DB>(q: &mut sqlx::QueryBuilder<DB>, subject: &Subject)
where
    DB: sqlx::Database,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let (user_id, ip, session_id) = subject_columns(subject);
    q.push("((user_id = ").push_bind(user_id);
    q.push(" AND user_id <> '') OR (ip = ").push_bind(ip);
    q.push(" AND ip <> '') OR (session_id = ")
        .push_bind(session_id);
    q.push(" AND session_id <> '' AND kind = ")
        .push_bind(KeyKind::Session.as_str().to_owned());
    q.push(")");
    if !subject.passwords.is_empty() {
        q.push(" OR (kind = ")
            .push_bind(KeyKind::Password.as_str().to_owned());
        q.push(" AND session_id IN (");
        let mut keys = q.separated(", ");
        for key in &subject.passwords {
            keys.push_bind(key.as_str().to_owned());
        }
        q.push("))");
    }
    q.push(")");
}

/// Puts rows back in the order of `ids`.
fn in_order(ids: &[StateId], rows: &[Row]) -> Vec<Option<KeyState>> {
    ids.iter()
        .map(|id| rows.iter().find(|r| r.is(id)).map(Row::state))
        .collect()
}

/// One run of a transition: the rows to write, each one version past what
/// was read (0 for a row not stored yet), the events to append with them,
/// and the states before and after.
struct NextRows {
    rows: Vec<Row>,
    events: Vec<SecurityEvent>,
    applied: Applied,
}

/// Runs `f` on the current rows of `ids`.
fn next_rows(ids: &[StateId], current: &[Row], f: &TransitionFn<'_>) -> NextRows {
    let before = in_order(ids, current);
    let Transition { updates, events } = f(&before);
    let rows = ids
        .iter()
        .zip(&updates)
        .map(|(id, update)| Row {
            version: current.iter().find(|r| r.is(id)).map_or(0, |r| r.version) + 1,
            ..Row::new(id, update)
        })
        .collect();
    NextRows {
        rows,
        events,
        applied: Applied {
            before,
            after: updates.into_iter().map(|u| u.state).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IpAddress;

    #[test]
    fn a_row_round_trips() {
        let id = StateId {
            context: "login".into(),
            rule: "user_ip".into(),
            key: Key::UserIp(
                UserId::parse("u", "alice").unwrap(),
                IpAddress::parse("i", "::1").unwrap(),
            ),
        };
        let state = KeyState {
            recent_failures: vec![UnixMillis(1), UnixMillis(2)],
            failures_total: 7,
            last_failure_at: Some(UnixMillis(2)),
            lock: Some(Lock {
                locked_at: UnixMillis(2),
                until: None,
                tier: 2,
            }),
            recent_lockouts: 2,
            last_lockout_at: Some(UnixMillis(2)),
            lockouts_total: 3,
        };
        let row = Row::new(
            &id,
            &Update {
                state: state.clone(),
                expires_at: None,
            },
        );
        assert!(row.is(&id));
        assert_eq!(row.stored().unwrap(), Stored { id, state });
    }
}
