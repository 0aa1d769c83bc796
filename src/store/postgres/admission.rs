//! Admit on Postgres: the same two batched statements as a failure's fast
//! path (one read for every waiting call, one compare-and-set write with
//! the events), and the row lock when a user's updates race.

use std::collections::{HashMap, HashSet};

use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Postgres, Row as _};

use super::events::{append, logged_and_notified};
use super::{PostgresStore, answer_batch};
use crate::domain::{
    Admission, AdmissionState, Cause, ContextName, SecurityEvent, UnixMillis, UserId,
};
use crate::store::StoreError;
use crate::store::interface::Admissions;
use crate::store::model::AdmitFn;
use crate::store::shared::{ADMISSION_COLUMNS, Params, Sql, encode_recent};

/// Whose admission row: a context and a user.
pub type AdmissionKey = (ContextName, UserId);

/// A row as read: its state and version (0 for a user not seen yet).
pub type Versioned = (AdmissionState, i64);

/// Answers each call of a read batch with its row, from one query.
pub async fn fetch_batch(
    pool: PgPool,
    calls: Vec<AdmissionKey>,
) -> Vec<Result<Versioned, StoreError>> {
    let mut p = Params::<Postgres>::default();
    let contexts = p.bind(calls.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>());
    let users = p.bind(calls.iter().map(|(_, u)| u.as_str()).collect::<Vec<_>>());
    // Through the function that carries the lookup's planner setting
    // (migration 0005).
    let sql = format!(
        "SELECT {ADMISSION_COLUMNS}, version FROM authgate_admissions({contexts}, {users})"
    );
    let read = match p.done() {
        Ok(args) => sqlx::query_with(AssertSqlSafe(sql), args)
            .fetch_all(&pool)
            .await
            .map_err(StoreError::from),
        Err(e) => Err(e),
    };
    let rows = match read {
        Ok(rows) => rows,
        Err(e) => return calls.iter().map(|_| Err(e.clone())).collect(),
    };
    let mut by_key = HashMap::new();
    for row in &rows {
        let decoded = Sql::<Postgres>::decode_admission(row).and_then(|record| {
            let version: i64 = row.try_get("version")?;
            Ok(((record.context, record.user), (record.state, version)))
        });
        match decoded {
            Ok((key, versioned)) => {
                by_key.insert(key, versioned);
            }
            Err(e) => return calls.iter().map(|_| Err(e.clone())).collect(),
        }
    }
    calls
        .iter()
        .map(|key| Ok(by_key.get(key).cloned().unwrap_or_default()))
        .collect()
}

/// One call's compare-and-set: the row one version past what it read, and
/// the events that commit with it.
pub struct Write {
    pub key: AdmissionKey,
    pub state: AdmissionState,
    pub version: i64,
    pub events: Vec<SecurityEvent>,
    pub now: UnixMillis,
}

/// Commits a batch of writes as one statement; a single lost
/// compare-and-set answers `false` to the whole batch, and each call
/// retries under the row lock. A second call for a user already in the
/// batch could only lose: it is answered `false` at once.
pub async fn write_batch(pool: PgPool, calls: Vec<Write>) -> Vec<Result<bool, StoreError>> {
    let mut taken = HashSet::new();
    let joins: Vec<bool> = calls.iter().map(|w| taken.insert(&w.key)).collect();
    // Sorted as the locking path's single row is trivially, so that batches
    // lock rows in one order and never deadlock one another.
    let mut joined: Vec<&Write> = calls
        .iter()
        .zip(&joins)
        .filter(|(_, j)| **j)
        .map(|(w, _)| w)
        .collect();
    joined.sort_by(|a, b| a.key.cmp(&b.key));
    let events: Vec<(i32, &SecurityEvent)> = joined
        .iter()
        .flat_map(|w| w.events.iter().map(|e| (0, e)))
        .collect();
    answer_batch(&joins, write(&pool, &joined, &events).await)
}

/// A batch of compare-and-set writes: each row only if it is still at the
/// version before its own (a row never written counts as version 0), all
/// of them or none, with their events.
async fn write(
    pool: &PgPool,
    rows: &[&Write],
    events: &[(i32, &SecurityEvent)],
) -> Result<(), StoreError> {
    let mut p = Params::<Postgres>::default();
    let big = |p: &mut Params<Postgres>, f: fn(&AdmissionState) -> u64| {
        p.bind(
            rows.iter()
                .map(|w| i64::try_from(f(&w.state)).unwrap_or(i64::MAX))
                .collect::<Vec<_>>(),
        )
    };
    let small = |p: &mut Params<Postgres>, f: fn(&AdmissionState) -> u32| {
        p.bind(
            rows.iter()
                .map(|w| i32::try_from(f(&w.state)).unwrap_or(i32::MAX))
                .collect::<Vec<_>>(),
        )
    };
    let time = |p: &mut Params<Postgres>, f: fn(&AdmissionState) -> Option<UnixMillis>| {
        p.bind(
            rows.iter()
                .map(|w| f(&w.state).map(|t| t.0))
                .collect::<Vec<_>>(),
        )
    };
    let context = p.bind(rows.iter().map(|w| w.key.0.as_str()).collect::<Vec<_>>());
    let user_id = p.bind(rows.iter().map(|w| w.key.1.as_str()).collect::<Vec<_>>());
    let recent = p.bind(
        rows.iter()
            .map(|w| encode_recent(&w.state.recent))
            .collect::<Vec<_>>(),
    );
    let warnings = small(&mut p, |s| s.warnings);
    let reputation = small(&mut p, |s| s.reputation);
    let blocked_until = time(&mut p, |s| s.blocked_until);
    let block_cause = p.bind(
        rows.iter()
            .map(|w| w.state.block_cause.map(Cause::as_str))
            .collect::<Vec<_>>(),
    );
    let updates_total = big(&mut p, |s| s.updates_total);
    let blocks_total = big(&mut p, |s| s.blocks_total);
    let warnings_total = big(&mut p, |s| s.warnings_total);
    let refused_total = big(&mut p, |s| s.refused_total);
    let first_seen = time(&mut p, |s| s.first_seen);
    let last_seen = time(&mut p, |s| s.last_seen);
    let touched_at = p.bind(rows.iter().map(|w| w.now.0).collect::<Vec<_>>());
    let version = p.bind(rows.iter().map(|w| w.version).collect::<Vec<_>>());
    let expected = p.bind(i64::try_from(rows.len()).unwrap_or(i64::MAX));
    let logged = logged_and_notified(&mut p, events, "TRUE");
    let sql = format!(
        "WITH written AS (INSERT INTO admission (context, user_id, recent, warnings, reputation, \
             blocked_until, block_cause, updates_total, blocks_total, warnings_total, \
             refused_total, first_seen, last_seen, touched_at, version) \
           SELECT * FROM UNNEST({context}::text[], {user_id}::text[], {recent}::text[], \
             {warnings}::int[], {reputation}::int[], {blocked_until}::bigint[], \
             {block_cause}::text[], {updates_total}::bigint[], {blocks_total}::bigint[], \
             {warnings_total}::bigint[], {refused_total}::bigint[], {first_seen}::bigint[], \
             {last_seen}::bigint[], {touched_at}::bigint[], {version}::bigint[]) \
           ON CONFLICT (context, user_id) DO UPDATE SET recent = EXCLUDED.recent, \
             warnings = EXCLUDED.warnings, reputation = EXCLUDED.reputation, \
             blocked_until = EXCLUDED.blocked_until, block_cause = EXCLUDED.block_cause, \
             updates_total = EXCLUDED.updates_total, blocks_total = EXCLUDED.blocks_total, \
             warnings_total = EXCLUDED.warnings_total, refused_total = EXCLUDED.refused_total, \
             first_seen = EXCLUDED.first_seen, last_seen = EXCLUDED.last_seen, \
             touched_at = EXCLUDED.touched_at, version = EXCLUDED.version \
           WHERE admission.version = EXCLUDED.version - 1 \
           RETURNING 1), \
         {logged} \
         SELECT authgate_expect_written((SELECT count(*) FROM written), {expected}), \
           (SELECT count(*) FROM notified)"
    );
    sqlx::query_with(AssertSqlSafe(sql), p.done()?)
        .execute(pool)
        .await?;
    Ok(())
}

#[async_trait::async_trait]
impl Admissions for PostgresStore {
    async fn admit(
        &self,
        context: &ContextName,
        user: &UserId,
        now: UnixMillis,
        f: &AdmitFn<'_>,
    ) -> Result<Admission, StoreError> {
        let key = (context.clone(), user.clone());
        let (current, version) = self.admission_reads.call(key.clone()).await?;
        let step = f(&current);
        let write = Write {
            key,
            state: step.state,
            version: version + 1,
            events: step.events,
            now,
        };
        if self.admission_writes.call(write).await? {
            return Ok(step.outcome);
        }
        tracing::debug!("admission compare-and-set lost; locking the row");
        // The row lock orders one user's racing updates across replicas;
        // the events are notified at commit, with the state they describe.
        let mut tx = self.sql.writer.begin().await?;
        let current = self.sql.lock_admission(&mut tx, context, user, now).await?;
        let step = f(&current);
        self.sql
            .save_admission(&mut tx, context, user, &step.state, now)
            .await?;
        for event in &step.events {
            append(&mut *tx, event).await?;
        }
        tx.commit().await?;
        Ok(step.outcome)
    }
}
