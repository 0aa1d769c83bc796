//! Admit on Postgres: the same two batched statements as a failure's fast
//! path (one read for every waiting call, one compare-and-set write with
//! the events), and the row lock when a user's updates race.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use sqlx::postgres::PgPool;
use sqlx::{Postgres, Row as _};

use super::{answer_batch, bind_events, logged_and_notified};
use crate::domain::{AdmissionState, Cause, SecurityEvent, UnixMillis, UserId};
use crate::store::StoreError;
use crate::store::admission::encode_recent;
use crate::store::sql::{ADMISSION_COLUMNS, Common, Sql};

/// The batched read, through the function that carries its planner setting
/// (migration 0005).
static FETCH: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {ADMISSION_COLUMNS}, version FROM authgate_admissions($1, $2)")
});

/// A batch of compare-and-set writes: each row only if it is still at the
/// version before its own (a row never written counts as version 0), all of
/// them or none, with their events.
static WRITE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH written AS (INSERT INTO admission (context, user_id, recent, warnings, reputation, \
             blocked_until, block_cause, updates_total, blocks_total, warnings_total, \
             refused_total, first_seen, last_seen, touched_at, version) \
           SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int[], $5::int[], \
             $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], \
             $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[]) \
           ON CONFLICT (context, user_id) DO UPDATE SET recent = EXCLUDED.recent, \
             warnings = EXCLUDED.warnings, reputation = EXCLUDED.reputation, \
             blocked_until = EXCLUDED.blocked_until, block_cause = EXCLUDED.block_cause, \
             updates_total = EXCLUDED.updates_total, blocks_total = EXCLUDED.blocks_total, \
             warnings_total = EXCLUDED.warnings_total, refused_total = EXCLUDED.refused_total, \
             first_seen = EXCLUDED.first_seen, last_seen = EXCLUDED.last_seen, \
             touched_at = EXCLUDED.touched_at, version = EXCLUDED.version \
           WHERE admission.version = EXCLUDED.version - 1 \
           RETURNING 1), \
         {} \
         SELECT authgate_expect_written((SELECT count(*) FROM written), $16), \
           (SELECT count(*) FROM notified)",
        logged_and_notified(17, "true")
    )
});

/// Whose admission row: a context and a user.
pub type AdmissionKey = (String, UserId);

/// A row as read: its state and version (0 for a user not seen yet).
pub type Versioned = (AdmissionState, i64);

/// Answers each call of a read batch with its row, from one query.
pub async fn fetch_batch(
    pool: PgPool,
    calls: Vec<AdmissionKey>,
) -> Vec<Result<Versioned, StoreError>> {
    let contexts: Vec<&str> = calls.iter().map(|(c, _)| c.as_str()).collect();
    let users: Vec<&str> = calls.iter().map(|(_, u)| u.as_str()).collect();
    let rows = match sqlx::query(FETCH.as_str())
        .bind(&contexts)
        .bind(&users)
        .fetch_all(&pool)
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            let e = StoreError::from(e);
            return calls.iter().map(|_| Err(e.clone())).collect();
        }
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
    let events: Vec<SecurityEvent> = joined.iter().flat_map(|w| w.events.clone()).collect();
    answer_batch(&joins, write(&pool, &joined, &events).await)
}

async fn write(
    pool: &PgPool,
    rows: &[&Write],
    events: &[SecurityEvent],
) -> Result<(), sqlx::Error> {
    let big = |f: fn(&AdmissionState) -> u64| {
        rows.iter()
            .map(|w| i64::try_from(f(&w.state)).unwrap_or(i64::MAX))
            .collect::<Vec<_>>()
    };
    let small = |f: fn(&AdmissionState) -> u32| {
        rows.iter()
            .map(|w| i32::try_from(f(&w.state)).unwrap_or(i32::MAX))
            .collect::<Vec<_>>()
    };
    let time = |f: fn(&AdmissionState) -> Option<UnixMillis>| {
        rows.iter()
            .map(|w| f(&w.state).map(|t| t.0))
            .collect::<Vec<_>>()
    };
    let query = sqlx::query(WRITE.as_str())
        .bind(rows.iter().map(|w| w.key.0.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|w| w.key.1.as_str()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|w| encode_recent(&w.state.recent))
                .collect::<Vec<_>>(),
        )
        .bind(small(|s| s.warnings))
        .bind(small(|s| s.reputation))
        .bind(time(|s| s.blocked_until))
        .bind(
            rows.iter()
                .map(|w| w.state.block_cause.map(Cause::as_str))
                .collect::<Vec<_>>(),
        )
        .bind(big(|s| s.updates_total))
        .bind(big(|s| s.blocks_total))
        .bind(big(|s| s.warnings_total))
        .bind(big(|s| s.refused_total))
        .bind(time(|s| s.first_seen))
        .bind(time(|s| s.last_seen))
        .bind(rows.iter().map(|w| w.now.0).collect::<Vec<_>>())
        .bind(rows.iter().map(|w| w.version).collect::<Vec<_>>())
        .bind(i64::try_from(rows.len()).unwrap_or(i64::MAX));
    bind_events(query, events, vec![0; events.len()])
        .execute(pool)
        .await?;
    Ok(())
}
