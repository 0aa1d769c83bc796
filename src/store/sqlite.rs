//! The embedded default: one process, one SQLite file.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, QueryBuilder, Row as _, Sqlite, SqliteConnection};
use tokio::sync::broadcast;

use super::shared::{self, bind_event, cleanup_pass, store_impl};
use super::{
    Applied, Cursor, EventFilter, LockCount, NextRows, PoolSettings, Purged, Row, SecurityEvent,
    StateId, Stats, Store, StoreError, Stored, StoredTotp, TransitionFn, UnlockScope, in_order,
    key_columns, next_rows, push_scope, subject_columns,
};
use crate::crypto::Sealed;
use crate::domain::{
    KeyState, Session, SessionStatus, Subject, TotpAlgorithm, TotpParams, UnixMillis, UserId,
};

/// The shared statements use `$N`; SQLite's numbered parameters are `?N`.
fn sql(statement: &'static str) -> AssertSqlSafe<String> {
    AssertSqlSafe(statement.replace('$', "?"))
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a writer waits for another process holding the file's write
/// lock (a `migrate` run, an operator's sqlite3 shell) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteStore {
    /// One connection: SQLite allows one writer at a time anyway, and
    /// queueing writers here rather than in SQLite's busy loop keeps every
    /// transition strictly ordered.
    writer: SqlitePool,
    /// WAL lets readers run beside the writer.
    readers: SqlitePool,
    /// One process: events go straight to its subscribers.
    events: broadcast::Sender<SecurityEvent>,
}

fn decode(row: &SqliteRow) -> Result<Row, StoreError> {
    let failures: String = row.try_get("recent_failures")?;
    let recent_failures = failures
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<i64>()
                .map_err(|_| StoreError::Corrupt(format!("recent_failures {failures:?}")))
        })
        .collect::<Result<_, _>>()?;
    Ok(Row {
        context: row.try_get("context")?,
        rule: row.try_get("rule")?,
        kind: row.try_get("kind")?,
        user_id: row.try_get("user_id")?,
        ip: row.try_get("ip")?,
        session_id: row.try_get("session_id")?,
        recent_failures,
        failures_total: row.try_get("failures_total")?,
        last_failure_at: row.try_get("last_failure_at")?,
        locked_at: row.try_get("locked_at")?,
        locked_until: row.try_get("locked_until")?,
        lock_tier: row.try_get("lock_tier")?,
        recent_lockouts: row.try_get("recent_lockouts")?,
        last_lockout_at: row.try_get("last_lockout_at")?,
        lockouts_total: row.try_get("lockouts_total")?,
        expires_at: row.try_get("expires_at")?,
        version: row.try_get("version")?,
    })
}

fn stored(rows: &[SqliteRow]) -> Result<Vec<Stored>, StoreError> {
    rows.iter().map(|r| decode(r)?.stored()).collect()
}

async fn fetch_rows(conn: &mut SqliteConnection, ids: &[StateId]) -> Result<Vec<Row>, StoreError> {
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        let (_, user_id, ip, session_id) = key_columns(&id.key);
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM key_state WHERE context = ? AND rule = ? AND user_id = ? AND ip = ? AND session_id = ?"
        ))
        .bind(&id.context)
        .bind(&id.rule)
        .bind(user_id)
        .bind(ip)
        .bind(session_id)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            rows.push(decode(&row)?);
        }
    }
    Ok(rows)
}

async fn insert_event(
    conn: &mut SqliteConnection,
    event: &SecurityEvent,
) -> Result<(), StoreError> {
    bind_event!(sqlx::query(sql(shared::INSERT_EVENT)), event)
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
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<Self, StoreError> {
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
            writer,
            readers,
            events,
        })
    }
}

store_impl!(SqliteStore, writer, readers, sql, {
    async fn load(&self, ids: &[StateId]) -> Result<Vec<Option<KeyState>>, StoreError> {
        let mut conn = self.readers.acquire().await?;
        let rows = fetch_rows(&mut conn, ids).await?;
        Ok(in_order(ids, &rows))
    }

    async fn transition(
        &self,
        ids: &[StateId],
        f: &TransitionFn<'_>,
    ) -> Result<Applied, StoreError> {
        // IMMEDIATE takes the write lock before reading, so no other process
        // can change these rows between the read and the write.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let current = fetch_rows(&mut tx, ids).await?;
        let NextRows {
            rows,
            events,
            applied,
        } = next_rows(ids, &current, f);
        for r in rows {
            let failures: Vec<String> = r.recent_failures.iter().map(i64::to_string).collect();
            sqlx::query(concat!(
                "INSERT INTO key_state (",
                columns!(),
                ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (context, rule, user_id, ip, session_id) DO UPDATE SET \
                   recent_failures = excluded.recent_failures, failures_total = excluded.failures_total, \
                   last_failure_at = excluded.last_failure_at, locked_at = excluded.locked_at, \
                   locked_until = excluded.locked_until, lock_tier = excluded.lock_tier, \
                   recent_lockouts = excluded.recent_lockouts, last_lockout_at = excluded.last_lockout_at, \
                   lockouts_total = excluded.lockouts_total, expires_at = excluded.expires_at, \
                   version = excluded.version"
            ))
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
            insert_event(&mut tx, event).await?;
        }
        tx.commit().await?;
        for event in events.into_iter().filter(SecurityEvent::is_alert) {
            let _ = self.events.send(event);
        }
        Ok(applied)
    }

    async fn unlock(&self, scope: &UnlockScope, now: UnixMillis) -> Result<u64, StoreError> {
        // One writer: the count and the reset see the same rows.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
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

    async fn list_locked(
        &self,
        context: Option<&str>,
        after: Option<&Cursor>,
        limit: u32,
        now: UnixMillis,
    ) -> Result<Vec<Stored>, StoreError> {
        let after_cols = after.map(|c| {
            let (_, user_id, ip, session_id) = key_columns(&c.key);
            (c.context.clone(), c.rule.clone(), user_id, ip, session_id)
        });
        let (ac, ar, au, ai, as_) = after_cols.unwrap_or_default();
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM key_state \
             WHERE locked_at IS NOT NULL AND (locked_until IS NULL OR locked_until > ?1) \
               AND (?2 IS NULL OR context = ?2) \
               AND (NOT ?3 OR (context, rule, user_id, ip, session_id) > (?4, ?5, ?6, ?7, ?8)) \
             ORDER BY context, rule, user_id, ip, session_id LIMIT ?9"
        ))
        .bind(now.0)
        .bind(context)
        .bind(after.is_some())
        .bind(ac)
        .bind(ar)
        .bind(au)
        .bind(ai)
        .bind(as_)
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await?;
        stored(&rows)
    }

    async fn subject_states(&self, subject: &Subject) -> Result<Vec<Stored>, StoreError> {
        let (user_id, ip, session_id) = subject_columns(subject);
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM key_state \
             WHERE (user_id = ?1 AND user_id <> '') OR (ip = ?2 AND ip <> '') \
                OR (session_id = ?3 AND session_id <> '') \
             ORDER BY context, rule, user_id, ip, session_id"
        ))
        .bind(user_id)
        .bind(ip)
        .bind(session_id)
        .fetch_all(&self.readers)
        .await?;
        stored(&rows)
    }

    async fn purge_expired(
        &self,
        now: UnixMillis,
        retention: Duration,
    ) -> Result<Option<Purged>, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let purged = cleanup_pass!(tx, sql, now, retention);
        tx.commit().await?;
        Ok(Some(purged))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    async fn append_event(&self, event: &SecurityEvent) -> Result<(), StoreError> {
        let mut conn = self.writer.acquire().await?;
        insert_event(&mut conn, event).await?;
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
});
