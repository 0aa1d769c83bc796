//! The embedded default: one process, one SQLite file. What only SQLite
//! does is here: one writer connection that orders every write, and alerts
//! handed straight to this process's subscribers.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row as _, Sqlite, SqliteConnection};
use tokio::sync::broadcast;

use super::sql::{COLUMNS, Common, FailuresColumn, Sql};
use super::{
    AdmitFn, Applied, Dialect, Health, NextRows, PoolSettings, Purged, Row, StateId, StoreError,
    TransitionFn, UnlockScope, in_order, key_columns, next_rows, push_scope,
};
use crate::clock::Reading;
use crate::domain::{Admission, KeyState, SecurityEvent, UnixMillis, UserId};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a writer waits for another process holding the file's write
/// lock (a `migrate` run, an operator's sqlite3 shell) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How a write transaction begins here: IMMEDIATE takes the write lock
/// before reading, so no other process can change the rows read before
/// they are written.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

static FETCH_ONE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM key_state \
         WHERE context = $1 AND rule = $2 AND user_id = $3 AND ip = $4 AND session_id = $5"
    )
});

static UPSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO key_state ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
         ON CONFLICT (context, rule, user_id, ip, session_id) DO UPDATE SET \
           recent_failures = excluded.recent_failures, failures_total = excluded.failures_total, \
           last_failure_at = excluded.last_failure_at, locked_at = excluded.locked_at, \
           locked_until = excluded.locked_until, lock_tier = excluded.lock_tier, \
           recent_lockouts = excluded.recent_lockouts, last_lockout_at = excluded.last_lockout_at, \
           lockouts_total = excluded.lockouts_total, expires_at = excluded.expires_at, \
           version = excluded.version"
    )
});

pub struct SqliteStore {
    /// The writer pool has one connection: SQLite allows one writer at a
    /// time anyway, and queueing writers here rather than in SQLite's busy
    /// loop keeps every transition strictly ordered. WAL lets the readers
    /// run beside it.
    sql: Sql<Sqlite>,
    /// One process: events go straight to its subscribers.
    events: broadcast::Sender<SecurityEvent>,
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

async fn fetch_rows(conn: &mut SqliteConnection, ids: &[StateId]) -> Result<Vec<Row>, StoreError> {
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        let (_, user_id, ip, session_id) = key_columns(&id.key);
        let row = sqlx::query(FETCH_ONE.as_str())
            .bind(&id.context)
            .bind(&id.rule)
            .bind(user_id)
            .bind(ip)
            .bind(session_id)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(row) = row {
            rows.push(Sql::<Sqlite>::decode(&row)?);
        }
    }
    Ok(rows)
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
    pub async fn connect(
        url: &str,
        settings: &PoolSettings,
        health: Arc<Health>,
    ) -> Result<Self, StoreError> {
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
        Ok(SqliteStore {
            sql: Sql {
                writer,
                readers,
                begin_write: BEGIN_WRITE,
                health,
            },
            events,
        })
    }
}

#[async_trait::async_trait]
impl Dialect for SqliteStore {
    type Sql = Sql<Sqlite>;

    fn sql(&self) -> &Sql<Sqlite> {
        &self.sql
    }

    async fn load(&self, ids: &[StateId]) -> Result<Vec<Option<KeyState>>, StoreError> {
        let mut conn = self.sql.readers.acquire().await?;
        let rows = fetch_rows(&mut conn, ids).await?;
        Ok(in_order(ids, &rows))
    }

    async fn transition(
        &self,
        ids: &[StateId],
        f: &TransitionFn<'_>,
    ) -> Result<Applied, StoreError> {
        let mut tx = self.sql.writer.begin_with(BEGIN_WRITE).await?;
        let current = fetch_rows(&mut tx, ids).await?;
        let NextRows {
            rows,
            events,
            applied,
        } = next_rows(ids, &current, f);
        for r in rows {
            let failures: Vec<String> = r.recent_failures.iter().map(i64::to_string).collect();
            sqlx::query(UPSERT.as_str())
                .bind(r.context)
                .bind(r.rule)
                .bind(r.kind)
                .bind(r.user_id)
                .bind(r.ip)
                .bind(r.session_id)
                .bind(failures.join(","))
                .bind(r.failures_total)
                .bind(r.last_failure_at)
                .bind(r.locked_at)
                .bind(r.locked_until)
                .bind(r.lock_tier)
                .bind(r.recent_lockouts)
                .bind(r.last_lockout_at)
                .bind(r.lockouts_total)
                .bind(r.expires_at)
                .bind(r.version)
                .execute(&mut *tx)
                .await?;
        }
        // The events commit with the state change or not at all, and alerts
        // are delivered once they have.
        for event in &events {
            self.sql.insert_event(&mut tx, event).await?;
        }
        tx.commit().await?;
        for event in events.into_iter().filter(SecurityEvent::is_alert) {
            let _ = self.events.send(event);
        }
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

    async fn append_event(&self, event: &SecurityEvent) -> Result<(), StoreError> {
        let mut conn = self.sql.writer.acquire().await?;
        self.sql.insert_event(&mut conn, event).await?;
        // No subscribers is not an error: the event is in the table.
        if event.is_alert() {
            let _ = self.events.send(event.clone());
        }
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<SecurityEvent> {
        self.events.subscribe()
    }

    /// One process: alerts go to subscribers as they commit, from the start.
    async fn events_ready(&self, _within: Duration) -> bool {
        true
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.sql.writer).await?;
        Ok(())
    }

    async fn clock(&self) -> Result<Option<Reading>, StoreError> {
        Ok(None)
    }

    async fn admit(
        &self,
        context: &str,
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
            self.sql.insert_event(&mut tx, event).await?;
        }
        tx.commit().await?;
        for event in step.events.into_iter().filter(SecurityEvent::is_alert) {
            let _ = self.events.send(event);
        }
        Ok(step.outcome)
    }
}
