//! What both SQL dialects run alike, written once: sqlx's SQLite driver
//! takes Postgres's `$N` placeholders, so most statements are the same text,
//! and the code that runs them is generic over the sqlx database. The few
//! differences are fields of `Sql`: how a write transaction begins and how
//! the recent-failures column reads.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, QueryBuilder, Row as _,
    Type,
};

use super::admission::{
    AdmissionRecord, AdmissionScope, AdmissionStats, OffenderCursor, decode_cause, decode_recent,
    encode_recent,
};
use super::{
    EventFilter, Health, LockCount, Purged, Row, StateId, Stats, StoreError, Stored, StoredTotp,
    count, key_columns, push_subject,
};
use crate::crypto::Sealed;
use crate::domain::{
    AdmissionState, Cause, EventKind, HIDDEN_HEX, PASSWORD_DETAIL, SecurityEvent, Session,
    SessionStatus, Subject, TotpAlgorithm, TotpParams, UnixMillis, UserId,
};

/// The columns of a stored key state, in the order `Row` has them.
pub const COLUMNS: &str = "context, rule, kind, user_id, ip, session_id, recent_failures, \
     failures_total, last_failure_at, locked_at, locked_until, lock_tier, recent_lockouts, \
     last_lockout_at, lockouts_total, expires_at, version";

/// The columns of a security event, without its id, in the order
/// `bind_event` binds them.
pub const EVENT_COLUMNS: &str = "at, kind, context, rule, user_id, ip, session_id, tier, \
     until_at, permanent, actor, caller, detail";

/// One security event as $1..$13.
pub static INSERT_EVENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO security_event ({EVENT_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    )
});

static LIST_LOCKED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM key_state \
         WHERE locked_at IS NOT NULL AND (locked_until IS NULL OR locked_until > $1) \
           AND ($2 = '' OR context = $2) \
           AND (NOT $3 OR (context, rule, user_id, ip, session_id) > ($4, $5, $6, $7, $8)) \
         ORDER BY context, rule, user_id, ip, session_id LIMIT $9"
    )
});

static LIST_EVENTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT id, {EVENT_COLUMNS} FROM security_event \
         WHERE ($1 = '' OR user_id = $1) AND ($2 = '' OR ip = $2) AND ($3 = '' OR session_id = $3) \
           AND ($4 = '' OR context = $4) AND ($5 = '' OR kind = $5) AND at >= $6 AND at < $7 \
           AND id < $8 \
         ORDER BY id DESC LIMIT $9"
    )
});

/// A user's admission row, as `decode_admission` reads it.
pub const ADMISSION_COLUMNS: &str = "context, user_id, recent, warnings, reputation, blocked_until, \
     block_cause, updates_total, blocks_total, warnings_total, refused_total, first_seen, last_seen";

/// Takes one user's row lock, creating the row first, and returns it: one
/// statement, whether or not the user was seen before, in either dialect.
static LOCK_ADMISSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO admission (context, user_id, touched_at) VALUES ($1, $2, $3) \
         ON CONFLICT (context, user_id) DO UPDATE SET version = admission.version \
         RETURNING {ADMISSION_COLUMNS}"
    )
});

const SAVE_ADMISSION: &str = "UPDATE admission SET recent = $3, warnings = $4, reputation = $5, \
       blocked_until = $6, block_cause = $7, updates_total = $8, blocks_total = $9, \
       warnings_total = $10, refused_total = $11, first_seen = $12, last_seen = $13, \
       touched_at = $14, version = version + 1 \
     WHERE context = $1 AND user_id = $2";

static USER_ADMISSIONS: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {ADMISSION_COLUMNS} FROM admission WHERE user_id = $1 ORDER BY context")
});

/// Which rows an admin call covers: $1 a context or '' for all, $2 a user
/// or '' for all.
const ADMISSION_SCOPE: &str = "($1 = '' OR context = $1) AND ($2 = '' OR user_id = $2)";

/// Lifts the blocks in force at $3; an unlock forgets the warnings with
/// RESET_WARNINGS.
static UNBLOCK_ADMISSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE admission SET blocked_until = NULL, version = version + 1 \
         WHERE {ADMISSION_SCOPE} AND blocked_until > $3"
    )
});

static RESET_WARNINGS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE admission SET warnings = 0, version = version + 1 \
         WHERE {ADMISSION_SCOPE} AND warnings > 0"
    )
});

/// Most blocks first; after the cursor ($3 set: blocks $4, context $5,
/// user $6) when paging.
static OFFENDERS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {ADMISSION_COLUMNS} FROM admission \
         WHERE {ADMISSION_SCOPE} AND blocks_total > 0 \
           AND (NOT $3 OR blocks_total < $4 \
             OR (blocks_total = $4 AND (context, user_id) > ($5, $6))) \
         ORDER BY blocks_total DESC, context, user_id LIMIT $7"
    )
});

static ADMISSION_STATS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT COUNT(*) AS users, \
           CAST(COALESCE(SUM(refused_total), 0) AS BIGINT) AS refused, \
           CAST(COALESCE(SUM(warnings_total), 0) AS BIGINT) AS warnings, \
           COALESCE(SUM(CASE WHEN blocked_until > $3 THEN 1 ELSE 0 END), 0) AS blocked \
         FROM admission WHERE {ADMISSION_SCOPE}"
    )
});

/// The confirmed secret first.
const GET_TOTP: &str = "SELECT pending, key_id, nonce, ciphertext, algorithm, digits, period, \
     created_at, last_step FROM totp_secret WHERE user_id = $1 ORDER BY pending";

const PUT_TOTP: &str = "INSERT INTO totp_secret \
       (user_id, pending, key_id, nonce, ciphertext, algorithm, digits, period, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (user_id, pending) DO UPDATE SET key_id = excluded.key_id, nonce = excluded.nonce, \
       ciphertext = excluded.ciphertext, algorithm = excluded.algorithm, digits = excluded.digits, \
       period = excluded.period, created_at = excluded.created_at, last_step = NULL";

/// One statement, so two replicas accepting the same code race in the
/// database and exactly one wins. The nonce pins the secret the code was
/// checked against, in case it was replaced meanwhile.
const ACCEPT_STEP: &str = "UPDATE totp_secret SET last_step = $2 \
     WHERE user_id = $1 AND nonce = $3 AND (last_step IS NULL OR last_step < $2) RETURNING pending";

/// A pending secret's first valid code promotes it over the confirmed one.
const DROP_CONFIRMED: &str = "DELETE FROM totp_secret WHERE user_id = $1 AND pending = FALSE";
const PROMOTE_PENDING: &str =
    "UPDATE totp_secret SET pending = FALSE WHERE user_id = $1 AND nonce = $2";

const DELETE_TOTP: &str = "DELETE FROM totp_secret WHERE user_id = $1";

/// An imported (confirmed) secret replaces any enrollment under way.
const DROP_PENDING: &str = "DELETE FROM totp_secret WHERE user_id = $1 AND pending = TRUE";

const GET_SESSION: &str =
    "SELECT status, since, last_seen_at, expires_at FROM session WHERE user_id = $1";

const PUT_SESSION: &str = "INSERT INTO session (user_id, status, since, last_seen_at, expires_at) \
     VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (user_id) DO UPDATE SET status = excluded.status, since = excluded.since, \
       last_seen_at = excluded.last_seen_at, expires_at = excluded.expires_at";

/// One user's sessions ($1), or everyone's ($1 = '').
const REVOKE_SESSIONS: &str = "UPDATE session SET status = 'unauthenticated', since = $2, \
       last_seen_at = NULL, expires_at = NULL \
     WHERE ($1 = '' OR user_id = $1) AND status IN ('authenticated', 'processing')";

const SESSION_STATS: &str = "SELECT COUNT(*) AS total, \
       COALESCE(SUM(CASE WHEN status = 'authenticated' AND expires_at > $1 THEN 1 ELSE 0 END), 0) AS authenticated, \
       COALESCE(SUM(CASE WHEN status = 'processing' THEN 1 ELSE 0 END), 0) AS processing, \
       COALESCE(SUM(CASE WHEN status = 'expired' \
         OR (status = 'authenticated' AND expires_at <= $1) THEN 1 ELSE 0 END), 0) AS expired \
     FROM session";

const LOCK_STATS: &str = "SELECT \
       COALESCE(SUM(CASE WHEN locked_until IS NOT NULL THEN 1 ELSE 0 END), 0) AS temporary, \
       COALESCE(SUM(CASE WHEN locked_until IS NULL THEN 1 ELSE 0 END), 0) AS permanent, \
       COALESCE(SUM(CASE WHEN context = $2 THEN 1 ELSE 0 END), 0) AS totp \
     FROM key_state WHERE locked_at IS NOT NULL AND (locked_until IS NULL OR locked_until > $1)";

const ACTIVE_LOCKS: &str = "SELECT context, locked_until IS NULL AS permanent, COUNT(*) AS n \
     FROM key_state WHERE locked_at IS NOT NULL AND (locked_until IS NULL OR locked_until > $1) \
     GROUP BY 1, 2";

/// The cleanup pass, in order: locks that ended since the last pass become
/// audit events (before their rows can be purged), then the marker moves;
/// timed-out sessions become expired (so statistics see them), and
/// sessions that are not authenticated are forgotten a day after they last
/// changed.
const LAST_PASS: &str = "SELECT last_at FROM maintenance WHERE name = 'cleanup'";
/// A password key's row keeps its key where a session id goes; its event
/// names it as every password event does, by what admins are shown.
static LOCKS_EXPIRED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO security_event \
           (at, kind, context, rule, user_id, ip, session_id, tier, until_at, detail) \
         SELECT locked_until, $3, context, rule, user_id, ip, \
           CASE WHEN kind = 'password' THEN '' ELSE session_id END, lock_tier, locked_until, \
           CASE WHEN kind = 'password' \
             THEN '{PASSWORD_DETAIL}' || substr(session_id, 1, length(session_id) - {HIDDEN_HEX}) \
             ELSE '' END \
         FROM key_state WHERE locked_until > $1 AND locked_until <= $2"
    )
});
const MARK_PASS: &str = "INSERT INTO maintenance (name, last_at) VALUES ('cleanup', $1) \
     ON CONFLICT (name) DO UPDATE SET last_at = excluded.last_at";
const DELETE_EXPIRED_STATES: &str = "DELETE FROM key_state WHERE expires_at <= $1";
const SESSIONS_EXPIRED: &str = "INSERT INTO security_event (at, kind, user_id) \
     SELECT expires_at, $2, user_id FROM session \
     WHERE status = 'authenticated' AND expires_at <= $1";
const EXPIRE_SESSIONS: &str = "UPDATE session SET status = 'expired', since = $1 \
     WHERE status = 'authenticated' AND expires_at <= $1";
const SWEEP_SESSIONS: &str = "DELETE FROM session WHERE status <> 'authenticated' AND since <= $1";
const DROP_OLD_EVENTS: &str = "DELETE FROM security_event WHERE at < $1";
/// Users idle for a day ($1 is a day ago) and not blocked at $2.
const DROP_IDLE_ADMISSIONS: &str = "DELETE FROM admission \
     WHERE touched_at <= $1 AND (blocked_until IS NULL OR blocked_until <= $2)";

/// How long a session that is not authenticated is kept after it changed.
const SESSION_RETENTION_MS: i64 = 24 * 3600 * 1000;
/// How long a user's admission state is kept after their last update,
/// unless they are blocked.
const ADMISSION_RETENTION_MS: i64 = 24 * 3600 * 1000;

/// How many rows a statement changed; each driver has its own result type.
pub trait Affected {
    fn affected(&self) -> u64;
}

impl Affected for sqlx::postgres::PgQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl Affected for sqlx::sqlite::SqliteQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// A key-state row's recent_failures column, which each dialect stores its
/// own way (Postgres as BIGINT[], SQLite as comma-separated text).
pub trait FailuresColumn {
    fn recent_failures(&self) -> Result<Vec<i64>, StoreError>;
}

/// One database's pools and what differs in running the shared statements.
pub struct Sql<DB: Database> {
    /// Where writes go; for SQLite its one writer connection.
    pub writer: Pool<DB>,
    /// Where reads go (the same pool on Postgres).
    pub readers: Pool<DB>,
    /// How a transaction that writes begins: SQLite must take the write lock
    /// at BEGIN (IMMEDIATE), or two transactions deadlock upgrading to it.
    pub begin_write: &'static str,
    /// Whether the database answers, as the operations on it found.
    pub health: Arc<Health>,
}

/// The statements both dialects share, for a `Sql` of either.
#[async_trait]
pub trait Common: Send + Sync {
    type Db: Database;

    fn health(&self) -> &Health;

    /// A key-state row, in either dialect.
    fn decode(row: &<Self::Db as Database>::Row) -> Result<Row, StoreError>;
    /// A security event row, with its id.
    fn decode_event(row: &<Self::Db as Database>::Row) -> Result<(i64, SecurityEvent), StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;
    async fn list_locked(
        &self,
        context: Option<&str>,
        after: Option<&StateId>,
        limit: u32,
        now: UnixMillis,
    ) -> Result<Vec<Stored>, StoreError>;
    async fn subject_states(&self, subject: &Subject) -> Result<Vec<Stored>, StoreError>;
    async fn totp(&self, user: &UserId) -> Result<Vec<StoredTotp>, StoreError>;
    async fn put_totp(&self, user: &UserId, totp: &StoredTotp) -> Result<(), StoreError>;
    async fn accept_totp_step(
        &self,
        user: &UserId,
        nonce: &[u8],
        step: u64,
    ) -> Result<bool, StoreError>;
    async fn delete_totp(&self, user: &UserId) -> Result<bool, StoreError>;
    async fn session(&self, user: &UserId) -> Result<Option<Session>, StoreError>;
    async fn put_session(&self, user: &UserId, session: &Session) -> Result<(), StoreError>;
    async fn revoke_sessions(
        &self,
        user: Option<&UserId>,
        now: UnixMillis,
    ) -> Result<u64, StoreError>;
    async fn stats(&self, now: UnixMillis, totp_context: &str) -> Result<Stats, StoreError>;
    async fn list_events(
        &self,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<(i64, SecurityEvent)>, StoreError>;
    async fn active_locks(&self, now: UnixMillis) -> Result<Vec<LockCount>, StoreError>;
    /// Appends `event` inside the caller's transaction.
    async fn insert_event(
        &self,
        conn: &mut <Self::Db as Database>::Connection,
        event: &SecurityEvent,
    ) -> Result<(), StoreError>;
    /// A user's admission row.
    fn decode_admission(row: &<Self::Db as Database>::Row) -> Result<AdmissionRecord, StoreError>;
    /// Takes `user`'s admission row lock in `context` inside the caller's
    /// transaction, and returns the state (the default when new).
    async fn lock_admission(
        &self,
        conn: &mut <Self::Db as Database>::Connection,
        context: &str,
        user: &UserId,
        now: UnixMillis,
    ) -> Result<AdmissionState, StoreError>;
    async fn save_admission(
        &self,
        conn: &mut <Self::Db as Database>::Connection,
        context: &str,
        user: &UserId,
        state: &AdmissionState,
        now: UnixMillis,
    ) -> Result<(), StoreError>;
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
    /// One cleanup pass inside the caller's transaction (see the
    /// statements above for the order and why).
    async fn cleanup(
        &self,
        conn: &mut <Self::Db as Database>::Connection,
        now: UnixMillis,
        retention: Duration,
    ) -> Result<Purged, StoreError>;
}

#[async_trait]
impl<DB> Common for Sql<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    DB::QueryResult: Affected,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Decode<'q, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    DB::Row: FailuresColumn,
{
    type Db = DB;

    fn health(&self) -> &Health {
        &self.health
    }

    fn decode(row: &DB::Row) -> Result<Row, StoreError> {
        Ok(Row {
            context: row.try_get("context")?,
            rule: row.try_get("rule")?,
            kind: row.try_get("kind")?,
            user_id: row.try_get("user_id")?,
            ip: row.try_get("ip")?,
            session_id: row.try_get("session_id")?,
            recent_failures: row.recent_failures()?,
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

    fn decode_event(row: &DB::Row) -> Result<(i64, SecurityEvent), StoreError> {
        let tier: i32 = row.try_get("tier")?;
        let kind: String = row.try_get("kind")?;
        Ok((
            row.try_get("id")?,
            SecurityEvent {
                at: row.try_get("at")?,
                kind: EventKind::from_name(&kind)
                    .ok_or_else(|| StoreError::Corrupt(format!("event kind {kind:?}")))?,
                context: row.try_get("context")?,
                rule: row.try_get("rule")?,
                user_id: row.try_get("user_id")?,
                ip: row.try_get("ip")?,
                session_id: row.try_get("session_id")?,
                tier: u32::try_from(tier).unwrap_or(0),
                until: row.try_get("until_at")?,
                permanent: row.try_get("permanent")?,
                actor: row.try_get("actor")?,
                caller: row.try_get("caller")?,
                detail: row.try_get("detail")?,
            },
        ))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.writer).await?;
        Ok(())
    }

    async fn list_locked(
        &self,
        context: Option<&str>,
        after: Option<&StateId>,
        limit: u32,
        now: UnixMillis,
    ) -> Result<Vec<Stored>, StoreError> {
        let after_cols = after.map(|c| {
            let (_, user_id, ip, session_id) = key_columns(&c.key);
            (c.context.clone(), c.rule.clone(), user_id, ip, session_id)
        });
        let (ac, ar, au, ai, as_) = after_cols.unwrap_or_default();
        let rows = sqlx::query(LIST_LOCKED.as_str())
            .bind(now.0)
            .bind(context.unwrap_or_default())
            .bind(after.is_some())
            .bind(ac)
            .bind(ar)
            .bind(au)
            .bind(ai)
            .bind(as_)
            .bind(i64::from(limit))
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(|r| Self::decode(r)?.stored()).collect()
    }

    async fn subject_states(&self, subject: &Subject) -> Result<Vec<Stored>, StoreError> {
        let mut q = QueryBuilder::<DB>::new(format!("SELECT {COLUMNS} FROM key_state WHERE "));
        push_subject(&mut q, subject);
        q.push(" ORDER BY context, rule, user_id, ip, session_id");
        let rows = q.build().fetch_all(&self.readers).await?;
        rows.iter().map(|r| Self::decode(r)?.stored()).collect()
    }

    async fn totp(&self, user: &UserId) -> Result<Vec<StoredTotp>, StoreError> {
        let rows = sqlx::query(GET_TOTP)
            .bind(user.as_str())
            .fetch_all(&self.readers)
            .await?;
        let corrupt = |what: &str| StoreError::Corrupt(format!("totp_secret {what}"));
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let algorithm: String = r.try_get("algorithm")?;
            let digits: i32 = r.try_get("digits")?;
            let period: i32 = r.try_get("period")?;
            let last_step: Option<i64> = r.try_get("last_step")?;
            let pending: bool = r.try_get("pending")?;
            out.push(StoredTotp {
                sealed: Sealed {
                    key_id: r.try_get("key_id")?,
                    nonce: r.try_get("nonce")?,
                    ciphertext: r.try_get("ciphertext")?,
                },
                params: TotpParams {
                    algorithm: TotpAlgorithm::from_name(&algorithm)
                        .ok_or_else(|| corrupt("algorithm"))?,
                    digits: u8::try_from(digits).map_err(|_| corrupt("digits"))?,
                    period: u32::try_from(period).map_err(|_| corrupt("period"))?,
                },
                confirmed: !pending,
                created_at: UnixMillis(r.try_get("created_at")?),
                last_step: last_step.map(|s| u64::try_from(s).unwrap_or(0)),
            });
        }
        Ok(out)
    }

    async fn put_totp(&self, user: &UserId, totp: &StoredTotp) -> Result<(), StoreError> {
        let mut tx = self.writer.begin_with(self.begin_write).await?;
        sqlx::query(PUT_TOTP)
            .bind(user.as_str())
            .bind(!totp.confirmed)
            .bind(totp.sealed.key_id.as_str())
            .bind(totp.sealed.nonce.as_slice())
            .bind(totp.sealed.ciphertext.as_slice())
            .bind(totp.params.algorithm.as_str())
            .bind(i32::from(totp.params.digits))
            .bind(i32::try_from(totp.params.period).unwrap_or(i32::MAX))
            .bind(totp.created_at.0)
            .execute(&mut *tx)
            .await?;
        if totp.confirmed {
            sqlx::query(DROP_PENDING)
                .bind(user.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn accept_totp_step(
        &self,
        user: &UserId,
        nonce: &[u8],
        step: u64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin_with(self.begin_write).await?;
        let pending: Option<bool> = sqlx::query_scalar(ACCEPT_STEP)
            .bind(user.as_str())
            .bind(i64::try_from(step).unwrap_or(i64::MAX))
            .bind(nonce)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(pending) = pending else {
            return Ok(false);
        };
        if pending {
            sqlx::query(DROP_CONFIRMED)
                .bind(user.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query(PROMOTE_PENDING)
                .bind(user.as_str())
                .bind(nonce)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn delete_totp(&self, user: &UserId) -> Result<bool, StoreError> {
        let done = sqlx::query(DELETE_TOTP)
            .bind(user.as_str())
            .execute(&self.writer)
            .await?;
        Ok(done.affected() > 0)
    }

    async fn session(&self, user: &UserId) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(GET_SESSION)
            .bind(user.as_str())
            .fetch_optional(&self.readers)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let status: String = r.try_get("status")?;
        let last_seen: Option<i64> = r.try_get("last_seen_at")?;
        let expires: Option<i64> = r.try_get("expires_at")?;
        Ok(Some(Session {
            status: SessionStatus::from_name(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("session status {status:?}")))?,
            since: UnixMillis(r.try_get("since")?),
            last_seen: last_seen.map(UnixMillis),
            expires_at: expires.map(UnixMillis),
        }))
    }

    async fn put_session(&self, user: &UserId, session: &Session) -> Result<(), StoreError> {
        sqlx::query(PUT_SESSION)
            .bind(user.as_str())
            .bind(session.status.as_str())
            .bind(session.since.0)
            .bind(session.last_seen.map(|t| t.0))
            .bind(session.expires_at.map(|t| t.0))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn revoke_sessions(
        &self,
        user: Option<&UserId>,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(REVOKE_SESSIONS)
            .bind(user.map_or("", |u| u.as_str()))
            .bind(now.0)
            .execute(&self.writer)
            .await?;
        Ok(done.affected())
    }

    async fn stats(&self, now: UnixMillis, totp_context: &str) -> Result<Stats, StoreError> {
        let s = sqlx::query(SESSION_STATS)
            .bind(now.0)
            .fetch_one(&self.readers)
            .await?;
        let l = sqlx::query(LOCK_STATS)
            .bind(now.0)
            .bind(totp_context)
            .fetch_one(&self.readers)
            .await?;
        Ok(Stats {
            total: count(s.try_get("total")?),
            authenticated: count(s.try_get("authenticated")?),
            processing: count(s.try_get("processing")?),
            expired: count(s.try_get("expired")?),
            blocked: count(l.try_get("totp")?),
            locks_temporary: count(l.try_get("temporary")?),
            locks_permanent: count(l.try_get("permanent")?),
        })
    }

    async fn list_events(
        &self,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<(i64, SecurityEvent)>, StoreError> {
        let rows = sqlx::query(LIST_EVENTS.as_str())
            .bind(filter.user_id.as_str())
            .bind(filter.ip.as_str())
            .bind(filter.session_id.as_str())
            .bind(filter.context.as_str())
            .bind(filter.kind.map_or("", EventKind::as_str))
            .bind(filter.from.map_or(i64::MIN, |t| t.0))
            .bind(filter.to.map_or(i64::MAX, |t| t.0))
            .bind(filter.before_id.unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(Self::decode_event).collect()
    }

    async fn active_locks(&self, now: UnixMillis) -> Result<Vec<LockCount>, StoreError> {
        let rows = sqlx::query(ACTIVE_LOCKS)
            .bind(now.0)
            .fetch_all(&self.readers)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(LockCount {
                    context: r.try_get("context")?,
                    permanent: r.try_get("permanent")?,
                    count: count(r.try_get("n")?),
                })
            })
            .collect()
    }

    async fn insert_event(
        &self,
        conn: &mut DB::Connection,
        e: &SecurityEvent,
    ) -> Result<(), StoreError> {
        sqlx::query(INSERT_EVENT.as_str())
            .bind(e.at)
            .bind(e.kind.as_str())
            .bind(e.context.as_str())
            .bind(e.rule.as_str())
            .bind(e.user_id.as_str())
            .bind(e.ip.as_str())
            .bind(e.session_id.as_str())
            .bind(i32::try_from(e.tier).unwrap_or(i32::MAX))
            .bind(e.until)
            .bind(e.permanent)
            .bind(e.actor.as_str())
            .bind(e.caller.as_str())
            .bind(e.detail.as_str())
            .execute(conn)
            .await?;
        Ok(())
    }

    fn decode_admission(row: &DB::Row) -> Result<AdmissionRecord, StoreError> {
        let warnings: i32 = row.try_get("warnings")?;
        let reputation: i32 = row.try_get("reputation")?;
        let recent: String = row.try_get("recent")?;
        let user: String = row.try_get("user_id")?;
        Ok(AdmissionRecord {
            context: row.try_get("context")?,
            user: UserId::parse("user_id", &user)
                .map_err(|e| StoreError::Corrupt(format!("admission {e}")))?,
            state: AdmissionState {
                recent: decode_recent(&recent)?,
                warnings: u32::try_from(warnings).unwrap_or(0),
                reputation: u32::try_from(reputation).unwrap_or(0),
                blocked_until: row
                    .try_get::<Option<i64>, _>("blocked_until")?
                    .map(UnixMillis),
                block_cause: decode_cause(row.try_get("block_cause")?)?,
                updates_total: count(row.try_get("updates_total")?),
                blocks_total: count(row.try_get("blocks_total")?),
                warnings_total: count(row.try_get("warnings_total")?),
                refused_total: count(row.try_get("refused_total")?),
                first_seen: row.try_get::<Option<i64>, _>("first_seen")?.map(UnixMillis),
                last_seen: row.try_get::<Option<i64>, _>("last_seen")?.map(UnixMillis),
            },
        })
    }

    async fn lock_admission(
        &self,
        conn: &mut DB::Connection,
        context: &str,
        user: &UserId,
        now: UnixMillis,
    ) -> Result<AdmissionState, StoreError> {
        let row = sqlx::query(LOCK_ADMISSION.as_str())
            .bind(context)
            .bind(user.as_str())
            .bind(now.0)
            .fetch_one(conn)
            .await?;
        Ok(Self::decode_admission(&row)?.state)
    }

    async fn save_admission(
        &self,
        conn: &mut DB::Connection,
        context: &str,
        user: &UserId,
        s: &AdmissionState,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let small = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        sqlx::query(SAVE_ADMISSION)
            .bind(context)
            .bind(user.as_str())
            .bind(encode_recent(&s.recent))
            .bind(small(s.warnings))
            .bind(small(s.reputation))
            .bind(s.blocked_until.map(|t| t.0))
            .bind(s.block_cause.map(Cause::as_str))
            .bind(big(s.updates_total))
            .bind(big(s.blocks_total))
            .bind(big(s.warnings_total))
            .bind(big(s.refused_total))
            .bind(s.first_seen.map(|t| t.0))
            .bind(s.last_seen.map(|t| t.0))
            .bind(now.0)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn admissions(&self, user: &UserId) -> Result<Vec<AdmissionRecord>, StoreError> {
        let rows = sqlx::query(USER_ADMISSIONS.as_str())
            .bind(user.as_str())
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(Self::decode_admission).collect()
    }

    async fn reset_admission(
        &self,
        scope: &AdmissionScope,
        unblock: bool,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        let context = scope.context.as_deref().unwrap_or_default();
        let user = scope.user.as_ref().map_or("", |u| u.as_str());
        // One transaction, so an unlock never lifts a block and leaves the
        // warnings that would block again at the next one too many.
        let mut tx = self.writer.begin_with(self.begin_write).await?;
        let unblocked = if unblock {
            let done = sqlx::query(UNBLOCK_ADMISSION.as_str())
                .bind(context)
                .bind(user)
                .bind(now.0)
                .execute(&mut *tx)
                .await?;
            Some(done.affected())
        } else {
            None
        };
        let reset = sqlx::query(RESET_WARNINGS.as_str())
            .bind(context)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(unblocked.unwrap_or(reset.affected()))
    }

    async fn admission_offenders(
        &self,
        context: Option<&str>,
        after: Option<&OffenderCursor>,
        limit: u32,
    ) -> Result<Vec<AdmissionRecord>, StoreError> {
        let rows = sqlx::query(OFFENDERS.as_str())
            .bind(context.unwrap_or_default())
            .bind("")
            .bind(after.is_some())
            .bind(after.map_or(0, |a| i64::try_from(a.blocks).unwrap_or(i64::MAX)))
            .bind(after.map_or("", |a| a.context.as_str()))
            .bind(after.map_or("", |a| a.user.as_str()))
            .bind(i64::from(limit))
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(Self::decode_admission).collect()
    }

    async fn admission_stats(
        &self,
        context: Option<&str>,
        now: UnixMillis,
    ) -> Result<AdmissionStats, StoreError> {
        let row = sqlx::query(ADMISSION_STATS.as_str())
            .bind(context.unwrap_or_default())
            .bind("")
            .bind(now.0)
            .fetch_one(&self.readers)
            .await?;
        Ok(AdmissionStats {
            users: count(row.try_get("users")?),
            refused: count(row.try_get("refused")?),
            warnings: count(row.try_get("warnings")?),
            active_blocks: count(row.try_get("blocked")?),
        })
    }

    async fn cleanup(
        &self,
        conn: &mut DB::Connection,
        now: UnixMillis,
        retention: Duration,
    ) -> Result<Purged, StoreError> {
        // Most steps take one time and tell how many rows they changed.
        async fn step<DB>(
            conn: &mut DB::Connection,
            statement: &'static str,
            at: i64,
        ) -> Result<u64, StoreError>
        where
            DB: Database,
            for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
            DB::Arguments: IntoArguments<DB>,
            DB::QueryResult: Affected,
            for<'q> i64: Encode<'q, DB> + Type<DB>,
        {
            Ok(sqlx::query(statement)
                .bind(at)
                .execute(conn)
                .await?
                .affected())
        }
        let last: Option<i64> = sqlx::query_scalar(LAST_PASS)
            .fetch_optional(&mut *conn)
            .await?;
        let locks_expired = sqlx::query(LOCKS_EXPIRED.as_str())
            .bind(last.unwrap_or(i64::MIN))
            .bind(now.0)
            .bind(EventKind::LockoutExpired.as_str())
            .execute(&mut *conn)
            .await?
            .affected();
        step::<DB>(conn, MARK_PASS, now.0).await?;
        let states = step::<DB>(conn, DELETE_EXPIRED_STATES, now.0).await?;
        sqlx::query(SESSIONS_EXPIRED)
            .bind(now.0)
            .bind(EventKind::SessionExpired.as_str())
            .execute(&mut *conn)
            .await?;
        let sessions_expired = step::<DB>(conn, EXPIRE_SESSIONS, now.0).await?;
        let sessions_deleted =
            step::<DB>(conn, SWEEP_SESSIONS, now.0 - SESSION_RETENTION_MS).await?;
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let events_deleted =
            step::<DB>(conn, DROP_OLD_EVENTS, now.0.saturating_sub(retention_ms)).await?;
        let admissions = sqlx::query(DROP_IDLE_ADMISSIONS)
            .bind(now.0 - ADMISSION_RETENTION_MS)
            .bind(now.0)
            .execute(&mut *conn)
            .await?
            .affected();
        Ok(Purged {
            states,
            sessions_expired,
            sessions_deleted,
            locks_expired,
            events_deleted,
            admissions,
        })
    }
}
