//! The embedded default: one process, one SQLite file. What only SQLite
//! does is here: one writer connection that orders every write, and alerts
//! handed straight to this process's subscribers.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, QueryBuilder, Row as _, Sqlite, SqliteConnection};
use tokio::sync::broadcast;

use super::bans::BanCache;
use super::event_row::EventRow;
use super::interface::{Admissions, Bans, EventLog, KeyStates, Parts, Upkeep};
use super::model::{AdmitFn, Applied, Purged, StateId, TransitionFn, UnlockScope};
use super::row::{Known, Named, NextRows, Row, next_rows, push_scope};
use super::shared::{COLUMNS, EVENT_COLUMNS, FailuresColumn, Params, Sql};
use super::{PoolSettings, StoreError};
use crate::clock::Reading;
use crate::domain::{
    Admission, Ban, BanScope, BanSet, ContextName, EventKind, KeyState, SecurityEvent, UnixMillis,
    UserId,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a writer waits for another process holding the file's write
/// lock (a `migrate` run, an operator's sqlite3 shell) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How a write transaction begins here: IMMEDIATE takes the write lock
/// before reading, so no other process can change the rows read before
/// they are written.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

pub struct SqliteStore {
    /// The writer pool has one connection: SQLite allows one writer at a
    /// time anyway, and queueing writers here rather than in SQLite's busy
    /// loop keeps every transition strictly ordered. WAL lets the readers
    /// run beside it.
    sql: Sql<Sqlite>,
    /// One process: events go straight to its subscribers.
    events: broadcast::Sender<SecurityEvent>,
    /// One process, whose own writes are every change there is: its copy
    /// is always current.
    bans: BanCache,
}

/// SQLite has no arrays: the times are comma-separated text.
impl FailuresColumn for SqliteRow {
    fn recent_failures(&self) -> Result<Vec<i64>, StoreError> {
        let text: String = self.try_get("recent_failures")?;
        text.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<i64>()
                    .map_err(|_| StoreError::Corrupt(format!("recent_failures {text:?}")))
            })
            .collect()
    }
}

/// The rows of `named`, in its order: one primary-key lookup each, which
/// SQLite answers in microseconds.
async fn fetch_rows(
    conn: &mut SqliteConnection,
    named: &[Named<'_>],
) -> Result<Vec<Option<Known>>, StoreError> {
    let mut rows = Vec::with_capacity(named.len());
    for n in named {
        let mut p = Params::<Sqlite>::default();
        let context = p.bind(n.id.context.as_str());
        let rule = p.bind(n.id.rule.as_str());
        let user_id = p.bind(n.columns.user_id);
        let ip = p.bind(n.columns.ip.as_str());
        let token = p.bind(n.columns.token);
        let sql = format!(
            "SELECT {COLUMNS} FROM key_state WHERE context = {context} AND rule = {rule} \
               AND user_id = {user_id} AND ip = {ip} AND token = {token}"
        );
        let row = sqlx::query_with(AssertSqlSafe(sql), p.done()?)
            .fetch_optional(&mut *conn)
            .await?;
        rows.push(match row {
            Some(row) => Some(Known::of(&Sql::<Sqlite>::decode(&row)?)),
            None => None,
        });
    }
    Ok(rows)
}

/// Writes one key state row.
async fn upsert(conn: &mut SqliteConnection, r: &Row) -> Result<(), StoreError> {
    let mut p = Params::<Sqlite>::default();
    let values = [
        p.bind(r.context.as_str()),
        p.bind(r.rule.as_str()),
        p.bind(r.kind),
        p.bind(r.user_id.as_str()),
        p.bind(r.ip.as_str()),
        p.bind(r.token.as_str()),
        p.bind(r.failures_text(false)),
        p.bind(r.failures_total),
        p.bind(r.last_failure_at),
        p.bind(r.locked_at),
        p.bind(r.locked_until),
        p.bind(r.lock_tier),
        p.bind(r.recent_lockouts),
        p.bind(r.last_lockout_at),
        p.bind(r.lockouts_total),
        p.bind(r.expires_at),
        p.bind(r.version),
    ]
    .map(|v| v.to_string())
    .join(", ");
    // The values are in COLUMNS' order, as `Row`'s fields are.
    let sql = format!(
        "INSERT INTO key_state ({COLUMNS}) VALUES ({values}) \
         ON CONFLICT (context, rule, user_id, ip, token) DO UPDATE SET \
           recent_failures = excluded.recent_failures, failures_total = excluded.failures_total, \
           last_failure_at = excluded.last_failure_at, locked_at = excluded.locked_at, \
           locked_until = excluded.locked_until, lock_tier = excluded.lock_tier, \
           recent_lockouts = excluded.recent_lockouts, last_lockout_at = excluded.last_lockout_at, \
           lockouts_total = excluded.lockouts_total, expires_at = excluded.expires_at, \
           version = excluded.version"
    );
    sqlx::query_with(AssertSqlSafe(sql), p.done()?)
        .execute(conn)
        .await?;
    Ok(())
}

/// Appends one event: the one place SQLite binds an audit event, its
/// values in EVENT_COLUMNS' order.
async fn insert_event(conn: &mut SqliteConnection, e: &SecurityEvent) -> Result<(), StoreError> {
    let mut p = Params::<Sqlite>::default();
    let e = EventRow::of(e);
    let values = [
        p.bind(e.at),
        p.bind(e.kind),
        p.bind(e.context),
        p.bind(e.rule),
        p.bind(e.key_kind),
        p.bind(e.user_id),
        p.bind(e.ip),
        p.bind(e.session_id),
        p.bind(e.password),
        p.bind(e.tier),
        p.bind(e.until_at),
        p.bind(e.permanent),
        p.bind(e.actor),
        p.bind(e.caller),
        p.bind(e.detail),
    ]
    .map(|v| v.to_string())
    .join(", ");
    let sql = format!("INSERT INTO security_event ({EVENT_COLUMNS}) VALUES ({values})");
    sqlx::query_with(AssertSqlSafe(sql), p.done()?)
        .execute(conn)
        .await?;
    Ok(())
}

/// Creates the database file readable by its owner only, before SQLite
/// would create it with the process's umask (0644, as a rule): it holds who
/// failed to log in from where. SQLite gives its -wal and -shm files the
/// database file's mode.
fn create_private(file: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(file) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::from(sqlx::Error::Io(e))),
    }
}

impl SqliteStore {
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<Parts, StoreError> {
        if let Some(file) = super::sqlite_file(url) {
            create_private(&file)?;
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged failure or lockout survives power loss,
            // not only a crash of this process.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options.clone())
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options.read_only(true))
            .await?;
        let (events, _) = broadcast::channel(settings.event_buffer.max(1));
        let sql = Sql {
            writer,
            readers,
            begin_write: BEGIN_WRITE,
        };
        let shared = Arc::new(sql.clone());
        let store = SqliteStore {
            sql,
            events,
            bans: BanCache::default(),
        };
        Ok(Parts::of(Arc::new(store), shared))
    }
}

impl SqliteStore {
    /// Delivers committed alerts to this process's subscribers; none
    /// listening is not an error, as the events are in the table.
    fn deliver(&self, events: impl IntoIterator<Item = SecurityEvent>) {
        for event in events.into_iter().filter(SecurityEvent::is_alert) {
            let _ = self.events.send(event);
        }
    }
}

#[async_trait::async_trait]
impl KeyStates for SqliteStore {
    async fn load(&self, ids: &[StateId]) -> Result<Vec<Option<KeyState>>, StoreError> {
        let mut conn = self.sql.readers.acquire().await?;
        let rows = fetch_rows(&mut conn, &Named::all(ids)).await?;
        Ok(rows
            .into_iter()
            .map(|k| k.map(|k| k.update.state))
            .collect())
    }

    async fn transition(
        &self,
        ids: &[StateId],
        f: &TransitionFn<'_>,
    ) -> Result<Applied, StoreError> {
        let named = Named::all(ids);
        let mut tx = self.sql.writer.begin_with(BEGIN_WRITE).await?;
        let current = fetch_rows(&mut tx, &named).await?;
        let NextRows {
            rows,
            events,
            applied,
        } = next_rows(&named, &current, f);
        for row in &rows {
            upsert(&mut tx, row).await?;
        }
        // The events commit with the state change or not at all, and alerts
        // are delivered once they have.
        for event in &events {
            insert_event(&mut tx, event).await?;
        }
        tx.commit().await?;
        self.deliver(events);
        Ok(applied)
    }

    async fn unlock(&self, scope: &UnlockScope, now: UnixMillis) -> Result<u64, StoreError> {
        // One writer: the count and the reset see the same rows.
        let mut tx = self.sql.writer.begin_with(BEGIN_WRITE).await?;
        let mut count: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT COUNT(*) FROM key_state");
        push_scope(&mut count, scope);
        count.push(" AND locked_at IS NOT NULL AND (locked_until IS NULL OR locked_until > ");
        count.push_bind(now.0);
        count.push(")");
        let lifted: i64 = count.build_query_scalar().fetch_one(&mut *tx).await?;
        let mut reset: QueryBuilder<Sqlite> = QueryBuilder::new(
            "UPDATE key_state SET locked_at = NULL, locked_until = NULL, lock_tier = 0, \
             recent_failures = '', recent_lockouts = 0, last_lockout_at = NULL, expires_at = ",
        );
        // The reset row holds nothing that affects a decision any more.
        reset.push_bind(now.0);
        push_scope(&mut reset, scope);
        reset.build().execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(u64::try_from(lifted).unwrap_or(0))
    }
}

#[async_trait::async_trait]
impl Bans for SqliteStore {
    async fn active_bans(&self) -> Result<Arc<BanSet>, StoreError> {
        self.bans.get(true, self.sql.read_bans(None)).await
    }

    async fn list_bans(&self, now: UnixMillis) -> Result<Vec<Ban>, StoreError> {
        self.sql.read_bans(Some(now)).await
    }

    async fn put_bans(&self, bans: &[Ban]) -> Result<u64, StoreError> {
        let mut tx = self.sql.writer.begin_with(BEGIN_WRITE).await?;
        let written = self.sql.write_bans(&mut tx, bans).await?;
        let events: Vec<SecurityEvent> = written.iter().map(|b| b.placed()).collect();
        for event in &events {
            insert_event(&mut tx, event).await?;
        }
        tx.commit().await?;
        self.bans.changed();
        self.deliver(events);
        Ok(written.len() as u64)
    }

    async fn lift_bans(&self, scope: &BanScope, lifted: &SecurityEvent) -> Result<u64, StoreError> {
        let mut tx = self.sql.writer.begin_with(BEGIN_WRITE).await?;
        let gone = self
            .sql
            .delete_bans(&mut tx, scope, UnixMillis(lifted.at))
            .await?;
        let events: Vec<SecurityEvent> = gone
            .iter()
            .map(|b| b.event(EventKind::BanLifted, lifted.clone()))
            .collect();
        for event in &events {
            insert_event(&mut tx, event).await?;
        }
        tx.commit().await?;
        self.bans.changed();
        self.deliver(events);
        Ok(gone.len() as u64)
    }
}

#[async_trait::async_trait]
impl EventLog for SqliteStore {
    async fn append(&self, event: &SecurityEvent) -> Result<(), StoreError> {
        let mut conn = self.sql.writer.acquire().await?;
        insert_event(&mut conn, event).await?;
        self.deliver([event.clone()]);
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<SecurityEvent> {
        self.events.subscribe()
    }

    /// One process: alerts go to subscribers as they commit, from the start.
    async fn events_ready(&self, _within: Duration) -> bool {
        true
    }
}

#[async_trait::async_trait]
impl Upkeep for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.sql.writer).await?;
        Ok(())
    }

    async fn purge_expired(
        &self,
        now: UnixMillis,
        retention: Duration,
    ) -> Result<Option<Purged>, StoreError> {
        let mut tx = self.sql.writer.begin_with(BEGIN_WRITE).await?;
        let purged = self.sql.cleanup(&mut tx, now, retention).await?;
        tx.commit().await?;
        Ok(Some(purged))
    }

    async fn clock(&self) -> Result<Option<Reading>, StoreError> {
        Ok(None)
    }
}

#[async_trait::async_trait]
impl Admissions for SqliteStore {
    async fn admit(
        &self,
        context: &ContextName,
        user: &UserId,
        now: UnixMillis,
        f: &AdmitFn<'_>,
    ) -> Result<Admission, StoreError> {
        let mut tx = self.sql.writer.begin_with(BEGIN_WRITE).await?;
        let current = self.sql.lock_admission(&mut tx, context, user, now).await?;
        let step = f(&current);
        self.sql
            .save_admission(&mut tx, context, user, &step.state, now)
            .await?;
        for event in &step.events {
            insert_event(&mut tx, event).await?;
        }
        tx.commit().await?;
        self.deliver(step.events);
        Ok(step.outcome)
    }
}
