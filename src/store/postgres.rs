//! The shared store: several replicas, one Postgres.

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row as _};

use super::{
    Cursor, PoolSettings, Row, StateId, Store, StoreError, Stored, TransitionFn, UnlockScope,
    Update, in_order, key_columns, push_scope, subject_columns,
};
use crate::domain::{KeyState, Subject, UnixMillis};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Any replica's cleanup takes this transaction-scoped advisory lock, so
/// only one purges at a time.
const CLEANUP_LOCK: i64 = 0x6175_7468_6761_7465; // "authgate"

/// Postgres reports these when it chose this transaction as the victim of a
/// deadlock or serialization conflict; the transition is pure, so it is
/// simply run again.
const RETRYABLE: [&str; 2] = ["40001", "40P01"];
const MAX_ATTEMPTS: usize = 5;

pub struct PostgresStore {
    pool: PgPool,
}

fn decode(row: &PgRow) -> Result<Row, sqlx::Error> {
    Ok(Row {
        context: row.try_get("context")?,
        rule: row.try_get("rule")?,
        kind: row.try_get("kind")?,
        user_id: row.try_get("user_id")?,
        ip: row.try_get("ip")?,
        session_id: row.try_get("session_id")?,
        recent_failures: row.try_get("recent_failures")?,
        failures_total: row.try_get("failures_total")?,
        last_failure_at: row.try_get("last_failure_at")?,
        locked_at: row.try_get("locked_at")?,
        locked_until: row.try_get("locked_until")?,
        lock_tier: row.try_get("lock_tier")?,
        recent_lockouts: row.try_get("recent_lockouts")?,
        last_lockout_at: row.try_get("last_lockout_at")?,
        lockouts_total: row.try_get("lockouts_total")?,
        expires_at: row.try_get("expires_at")?,
    })
}

fn stored(rows: &[PgRow]) -> Result<Vec<Stored>, StoreError> {
    rows.iter().map(|r| decode(r)?.stored()).collect()
}

/// Parallel arrays of the id columns, for UNNEST.
#[derive(Default)]
struct IdColumns {
    context: Vec<String>,
    rule: Vec<String>,
    kind: Vec<String>,
    user_id: Vec<String>,
    ip: Vec<String>,
    session_id: Vec<String>,
}

impl IdColumns {
    fn of(ids: &[StateId]) -> Self {
        let mut c = IdColumns::default();
        for id in ids {
            let (kind, user_id, ip, session_id) = key_columns(&id.key);
            c.context.push(id.context.clone());
            c.rule.push(id.rule.clone());
            c.kind.push(kind.to_owned());
            c.user_id.push(user_id);
            c.ip.push(ip);
            c.session_id.push(session_id);
        }
        c
    }
}

fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| RETRYABLE.contains(&c.as_ref())))
}

impl PostgresStore {
    /// Builds the pool without connecting: connections are made on demand,
    /// so a database that is down at start-up or later costs an UNAVAILABLE
    /// per request, never the process.
    pub fn connect(url: &str, settings: &PoolSettings) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(StoreError::Other)?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_lazy_with(options.application_name("authgate"));
        Ok(PostgresStore { pool })
    }

    async fn try_transition(
        &self,
        ids: &[StateId],
        f: &TransitionFn<'_>,
    ) -> Result<Vec<KeyState>, sqlx::Error> {
        let cols = IdColumns::of(ids);
        let mut tx = self.pool.begin().await?;
        // Upserting every id takes its row lock whether or not the row
        // existed, and RETURNING hands back the current values: one round
        // trip that makes concurrent transitions on the same key (from any
        // replica) queue behind each other. Ids arrive sorted, so two
        // requests sharing keys lock them in the same order.
        let locked = sqlx::query(concat!(
            "INSERT INTO key_state (context, rule, kind, user_id, ip, session_id) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
             ON CONFLICT (context, rule, user_id, ip, session_id) DO UPDATE SET kind = EXCLUDED.kind \
             RETURNING ",
            columns!()
        ))
        .bind(&cols.context)
        .bind(&cols.rule)
        .bind(&cols.kind)
        .bind(&cols.user_id)
        .bind(&cols.ip)
        .bind(&cols.session_id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(decode)
        .collect::<Result<Vec<_>, _>>()?;
        let current = in_order(ids, &locked);
        let updates = f(&current);
        let rows: Vec<Row> = ids
            .iter()
            .zip(&updates)
            .map(|(id, u)| Row::new(id, u))
            .collect();
        // Arrays of arrays must be rectangular in Postgres, so each row's
        // recent_failures travels as an array literal and is cast back.
        let failures: Vec<String> = rows
            .iter()
            .map(|r| {
                let items: Vec<String> = r.recent_failures.iter().map(i64::to_string).collect();
                format!("{{{}}}", items.join(","))
            })
            .collect();
        let pick = |f: fn(&Row) -> Option<i64>| rows.iter().map(f).collect::<Vec<_>>();
        sqlx::query(
            "UPDATE key_state AS k SET \
                recent_failures = u.recent_failures::bigint[], failures_total = u.failures_total, \
                last_failure_at = u.last_failure_at, locked_at = u.locked_at, \
                locked_until = u.locked_until, lock_tier = u.lock_tier, \
                recent_lockouts = u.recent_lockouts, last_lockout_at = u.last_lockout_at, \
                lockouts_total = u.lockouts_total, expires_at = u.expires_at \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                         $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::int[], \
                         $12::int[], $13::bigint[], $14::bigint[], $15::bigint[]) \
                AS u(context, rule, user_id, ip, session_id, recent_failures, failures_total, \
                     last_failure_at, locked_at, locked_until, lock_tier, recent_lockouts, \
                     last_lockout_at, lockouts_total, expires_at) \
             WHERE k.context = u.context AND k.rule = u.rule AND k.user_id = u.user_id \
               AND k.ip = u.ip AND k.session_id = u.session_id",
        )
        .bind(&cols.context)
        .bind(&cols.rule)
        .bind(&cols.user_id)
        .bind(&cols.ip)
        .bind(&cols.session_id)
        .bind(&failures)
        .bind(rows.iter().map(|r| r.failures_total).collect::<Vec<_>>())
        .bind(pick(|r| r.last_failure_at))
        .bind(pick(|r| r.locked_at))
        .bind(pick(|r| r.locked_until))
        .bind(rows.iter().map(|r| r.lock_tier).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.recent_lockouts).collect::<Vec<_>>())
        .bind(pick(|r| r.last_lockout_at))
        .bind(rows.iter().map(|r| r.lockouts_total).collect::<Vec<_>>())
        .bind(pick(|r| r.expires_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(updates
            .into_iter()
            .map(|Update { state, .. }| state)
            .collect())
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn load(&self, ids: &[StateId]) -> Result<Vec<Option<KeyState>>, StoreError> {
        let cols = IdColumns::of(ids);
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM key_state \
             WHERE (context, rule, user_id, ip, session_id) IN \
               (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]))"
        ))
        .bind(&cols.context)
        .bind(&cols.rule)
        .bind(&cols.user_id)
        .bind(&cols.ip)
        .bind(&cols.session_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(decode)
        .collect::<Result<Vec<_>, _>>()?;
        Ok(in_order(ids, &rows))
    }

    async fn transition(
        &self,
        ids: &[StateId],
        f: &TransitionFn<'_>,
    ) -> Result<Vec<KeyState>, StoreError> {
        let mut attempt = 1;
        loop {
            match self.try_transition(ids, f).await {
                Err(e) if is_retryable(&e) && attempt < MAX_ATTEMPTS => attempt += 1,
                result => return result.map_err(StoreError::from),
            }
        }
    }

    async fn unlock(&self, scope: &UnlockScope, now: UnixMillis) -> Result<u64, StoreError> {
        // The CTE reads each row's lock state as it was and locks the row,
        // so the count is exact even while failures keep arriving.
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(
            "WITH target AS (SELECT context, rule, user_id, ip, session_id, \
               locked_at IS NOT NULL AND (locked_until IS NULL OR locked_until > ",
        );
        q.push_bind(now.0);
        q.push(") AS was_locked FROM key_state");
        push_scope(&mut q, scope);
        q.push(
            " FOR UPDATE) \
             UPDATE key_state AS k SET locked_at = NULL, locked_until = NULL, lock_tier = 0, \
               recent_failures = '{}', recent_lockouts = 0, last_lockout_at = NULL, expires_at = ",
        );
        // The reset row holds nothing that affects a decision any more.
        q.push_bind(now.0);
        q.push(
            " FROM target AS t WHERE k.context = t.context AND k.rule = t.rule \
               AND k.user_id = t.user_id AND k.ip = t.ip AND k.session_id = t.session_id \
             RETURNING t.was_locked",
        );
        let lifted: Vec<bool> = q.build_query_scalar().fetch_all(&self.pool).await?;
        Ok(lifted.into_iter().filter(|&l| l).count() as u64)
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
             WHERE locked_at IS NOT NULL AND (locked_until IS NULL OR locked_until > $1) \
               AND ($2::text IS NULL OR context = $2) \
               AND (NOT $3 OR (context, rule, user_id, ip, session_id) > ($4, $5, $6, $7, $8)) \
             ORDER BY context, rule, user_id, ip, session_id LIMIT $9"
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
        .fetch_all(&self.pool)
        .await?;
        stored(&rows)
    }

    async fn subject_states(&self, subject: &Subject) -> Result<Vec<Stored>, StoreError> {
        let (user_id, ip, session_id) = subject_columns(subject);
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM key_state \
             WHERE (user_id = $1 AND user_id <> '') OR (ip = $2 AND ip <> '') \
                OR (session_id = $3 AND session_id <> '') \
             ORDER BY context, rule, user_id, ip, session_id"
        ))
        .bind(user_id)
        .bind(ip)
        .bind(session_id)
        .fetch_all(&self.pool)
        .await?;
        stored(&rows)
    }

    async fn purge_expired(&self, now: UnixMillis) -> Result<Option<u64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(CLEANUP_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !won {
            return Ok(None);
        }
        let deleted = sqlx::query("DELETE FROM key_state WHERE expires_at <= $1")
            .bind(now.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(Some(deleted))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }
}
