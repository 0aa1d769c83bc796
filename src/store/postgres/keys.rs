//! Key states on Postgres: reads and compare-and-set writes batched across
//! requests, the row-locking path for when compare-and-set keeps losing,
//! and unlock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, PgExecutor, Postgres, QueryBuilder, Row as _};

use super::cache::{self, CLEAR_ALL, KEY_CHANNEL, KeyName, Ticket};
use super::events::{logged_and_notified, notify};
use super::{MAX_ATTEMPTS, PostgresStore, is_retryable};
use crate::domain::{KeyState, SecurityEvent, UnixMillis};
use crate::store::StoreError;
use crate::store::interface::KeyStates;
use crate::store::model::{Applied, StateId, TransitionFn, UnlockScope};
use crate::store::row::{Known, Named, NextRows, Row, align, next_rows, push_scope};
use crate::store::shared::{COLUMNS, Params, Placeholder, Sql};

/// The primary-key columns of some ids, bound as parallel arrays.
struct IdArrays {
    context: Placeholder,
    rule: Placeholder,
    user_id: Placeholder,
    ip: Placeholder,
    token: Placeholder,
}

impl IdArrays {
    fn bind(p: &mut Params<Postgres>, named: &[Named<'_>]) -> IdArrays {
        let mut column = |f: for<'n> fn(&'n Named<'_>) -> &'n str| {
            p.bind(named.iter().map(f).collect::<Vec<_>>())
        };
        IdArrays {
            context: column(|n| n.id.context.as_str()),
            rule: column(|n| n.id.rule.as_str()),
            user_id: column(|n| n.columns.user_id),
            ip: column(|n| n.columns.ip.as_str()),
            token: column(|n| n.columns.token),
        }
    }
}

/// The rows of `named` that exist, through the function that carries the
/// lookup's planner setting (migration 0004).
async fn fetch<'c>(conn: impl PgExecutor<'c>, named: &[Named<'_>]) -> Result<Vec<Row>, StoreError> {
    let mut p = Params::<Postgres>::default();
    let IdArrays {
        context,
        rule,
        user_id,
        ip,
        token,
    } = IdArrays::bind(&mut p, named);
    let sql = format!(
        "SELECT {COLUMNS} FROM authgate_key_states({context}, {rule}, {user_id}, {ip}, \
         {token})"
    );
    sqlx::query_with(AssertSqlSafe(sql), p.done()?)
        .fetch_all(conn)
        .await?
        .iter()
        .map(Sql::<Postgres>::decode)
        .collect()
}

/// Answers each call of a read batch with its ids' rows in their order,
/// from one query.
pub async fn fetch_batch(
    pool: PgPool,
    calls: Vec<Vec<StateId>>,
) -> Vec<Result<Vec<Option<Known>>, StoreError>> {
    let named: Vec<Named<'_>> = calls.iter().flatten().map(Named::new).collect();
    let rows = match fetch(&pool, &named).await {
        Ok(rows) => rows,
        Err(e) => return calls.iter().map(|_| Err(e.clone())).collect(),
    };
    // Matching each call's ids against every row of the batch is
    // quadratic in the batch; an index by key is not.
    let by_key: HashMap<(&str, &str, &str, &str, &str), &Row> = rows
        .iter()
        .map(|r| {
            let key = (
                r.context.as_str(),
                r.rule.as_str(),
                r.user_id.as_str(),
                r.ip.as_str(),
                r.token.as_str(),
            );
            (key, r)
        })
        .collect();
    let mut named = named.iter();
    calls
        .iter()
        .map(|ids| {
            Ok(named
                .by_ref()
                .take(ids.len())
                .map(|n| {
                    let c = &n.columns;
                    let key = (
                        n.id.context.as_str(),
                        n.id.rule.as_str(),
                        c.user_id,
                        c.ip.as_str(),
                        c.token,
                    );
                    by_key.get(&key).map(|r| Known::of(r))
                })
                .collect())
        })
        .collect()
}

/// One request's compare-and-set: its rows, each one version past what it
/// expects, the audit records that commit with them, and its keys' hashes,
/// which other replicas are told to forget.
pub struct Write {
    rows: Vec<Row>,
    events: Vec<SecurityEvent>,
    hashes: Vec<u64>,
}

/// The order every writer locks key rows in, so that no two deadlock.
fn lock_order(r: &Row) -> (&str, &str, &str, &str, &str) {
    (&r.context, &r.rule, &r.user_id, &r.ip, &r.token)
}

/// Commits a batch of writes as one statement. A request whose expected
/// versions were already wrong when the statement began is left out and
/// answered `false`; a row that changes while the statement runs fails it
/// whole, and every request is answered `false`. Each then reads and tries
/// again on its own. A request that shares a key with an earlier one in
/// the batch cannot join it (a statement upserts a row once) and would
/// lose anyway: it is answered `false` at once. Keys are told apart by
/// hash here: two keys sharing one only send a request the slow way.
pub async fn write_batch(
    pool: PgPool,
    replica: Arc<str>,
    calls: Vec<Write>,
) -> Vec<Result<bool, StoreError>> {
    let mut taken = HashSet::new();
    let joins: Vec<bool> = calls
        .iter()
        .map(|w| {
            let free = w.hashes.iter().all(|h| !taken.contains(h));
            if free {
                taken.extend(w.hashes.iter().copied());
            }
            free
        })
        .collect();
    let joined: Vec<(i32, &Write)> = calls
        .iter()
        .zip(&joins)
        .filter(|(_, j)| **j)
        .map(|(w, _)| w)
        .zip(0..)
        .map(|(w, request)| (request, w))
        .collect();
    let mut rows: Vec<(i32, &Row)> = joined
        .iter()
        .flat_map(|(request, w)| w.rows.iter().map(|r| (*request, r)))
        .collect();
    rows.sort_by(|(_, a), (_, b)| lock_order(a).cmp(&lock_order(b)));
    let events: Vec<(i32, &SecurityEvent)> = joined
        .iter()
        .flat_map(|(request, w)| w.events.iter().map(|e| (*request, e)))
        .collect();
    let hashes: Vec<u64> = joined
        .iter()
        .flat_map(|(_, w)| w.hashes.iter().copied())
        .collect();
    let stale = match write(&pool, &rows, &events, &hashes, &replica).await {
        Ok(stale) => stale,
        Err(StoreError::Other(e)) if is_retryable(&e) => (0..).take(joined.len()).collect(),
        Err(e) => return calls.iter().map(|_| Err(e.clone())).collect(),
    };
    let mut request = 0;
    joins
        .iter()
        .map(|&joined| {
            if !joined {
                return Ok(false);
            }
            let written = !stale.contains(&request);
            request += 1;
            Ok(written)
        })
        .collect()
}

/// Writes `rows`, each of the request beside it, as compare-and-sets: each
/// row only if it is still at the version before its own. Returns the
/// requests left out because one of their rows was not; the others are
/// written with their `events`, all together or not at all (the statement
/// aborts with serialization_failure otherwise). Other replicas are told,
/// in the same statement, to forget the keys `hashes`. The audit records
/// travel in the same statement too: they commit with the state change or
/// not at all, at no extra round trip.
async fn write<'c>(
    conn: impl PgExecutor<'c>,
    rows: &[(i32, &Row)],
    events: &[(i32, &SecurityEvent)],
    hashes: &[u64],
    replica: &str,
) -> Result<Vec<i32>, StoreError> {
    let mut p = Params::<Postgres>::default();
    let text = |p: &mut Params<Postgres>, f: fn(&Row) -> &str| {
        p.bind(rows.iter().map(|(_, r)| f(r)).collect::<Vec<_>>())
    };
    let int = |p: &mut Params<Postgres>, f: fn(&Row) -> i64| {
        p.bind(rows.iter().map(|(_, r)| f(r)).collect::<Vec<_>>())
    };
    let time = |p: &mut Params<Postgres>, f: fn(&Row) -> Option<i64>| {
        p.bind(rows.iter().map(|(_, r)| f(r)).collect::<Vec<_>>())
    };
    let small = |p: &mut Params<Postgres>, f: fn(&Row) -> i32| {
        p.bind(rows.iter().map(|(_, r)| f(r)).collect::<Vec<_>>())
    };
    let request = p.bind(rows.iter().map(|(q, _)| *q).collect::<Vec<_>>());
    let context = text(&mut p, |r| &r.context);
    let rule = text(&mut p, |r| &r.rule);
    let kind = text(&mut p, |r| r.kind);
    let user_id = text(&mut p, |r| &r.user_id);
    let ip = text(&mut p, |r| &r.ip);
    let token = text(&mut p, |r| &r.token);
    // Arrays of arrays must be rectangular in Postgres, so each row's
    // recent_failures travels as an array literal and is cast back: one
    // string a row, written in place.
    let recent_failures = p.bind(
        rows.iter()
            .map(|(_, r)| r.failures_text(true))
            .collect::<Vec<_>>(),
    );
    let failures_total = int(&mut p, |r| r.failures_total);
    let last_failure_at = time(&mut p, |r| r.last_failure_at);
    let locked_at = time(&mut p, |r| r.locked_at);
    let locked_until = time(&mut p, |r| r.locked_until);
    let lock_tier = small(&mut p, |r| r.lock_tier);
    let recent_lockouts = small(&mut p, |r| r.recent_lockouts);
    let last_lockout_at = time(&mut p, |r| r.last_lockout_at);
    let lockouts_total = int(&mut p, |r| r.lockouts_total);
    let expires_at = time(&mut p, |r| r.expires_at);
    let version = int(&mut p, |r| r.version);
    let logged = logged_and_notified(&mut p, events, "request NOT IN (SELECT request FROM stale)");
    let invalidations = p.bind(cache::invalidations(replica, hashes));
    let sql = format!(
        "WITH stale AS MATERIALIZED (SELECT s AS request FROM authgate_stale_requests( \
             {request}, {context}, {rule}, {user_id}, {ip}, {token}, {version}) AS s), \
         fresh AS (SELECT * FROM UNNEST({request}::int[], {context}::text[], {rule}::text[], \
             {kind}::text[], {user_id}::text[], {ip}::text[], {token}::text[], \
             {recent_failures}::text[], {failures_total}::bigint[], {last_failure_at}::bigint[], \
             {locked_at}::bigint[], {locked_until}::bigint[], {lock_tier}::int[], \
             {recent_lockouts}::int[], {last_lockout_at}::bigint[], {lockouts_total}::bigint[], \
             {expires_at}::bigint[], {version}::bigint[]) AS u(request, {COLUMNS}) \
           WHERE request NOT IN (SELECT request FROM stale)), \
         written AS (INSERT INTO key_state ({COLUMNS}) \
           SELECT context, rule, kind, user_id, ip, token, recent_failures::bigint[], \
             failures_total, last_failure_at, locked_at, locked_until, lock_tier, \
             recent_lockouts, last_lockout_at, lockouts_total, expires_at, version \
           FROM fresh \
           ON CONFLICT (context, rule, user_id, ip, token) DO UPDATE SET \
             recent_failures = EXCLUDED.recent_failures, failures_total = EXCLUDED.failures_total, \
             last_failure_at = EXCLUDED.last_failure_at, locked_at = EXCLUDED.locked_at, \
             locked_until = EXCLUDED.locked_until, lock_tier = EXCLUDED.lock_tier, \
             recent_lockouts = EXCLUDED.recent_lockouts, last_lockout_at = EXCLUDED.last_lockout_at, \
             lockouts_total = EXCLUDED.lockouts_total, expires_at = EXCLUDED.expires_at, \
             version = EXCLUDED.version \
           WHERE key_state.version = EXCLUDED.version - 1 \
           RETURNING 1), \
         {logged}, \
         invalidated AS (SELECT pg_notify('{KEY_CHANNEL}', p) FROM unnest({invalidations}::text[]) AS p) \
         SELECT authgate_expect_written((SELECT count(*) FROM written), (SELECT count(*) FROM fresh)), \
           (SELECT count(*) FROM notified), (SELECT count(*) FROM invalidated), \
           ARRAY(SELECT request FROM stale) AS stale"
    );
    let answer = sqlx::query_with(AssertSqlSafe(sql), p.done()?)
        .fetch_one(conn)
        .await?;
    Ok(answer.try_get("stale")?)
}

impl PostgresStore {
    /// The fast path when nobody else is writing these keys: decide and
    /// compare-and-set, batched with other requests', no explicit
    /// transaction. The rows decided on are the cache's where it knows them
    /// and, for keys it does not know, none (most failures name a key seen
    /// for the first time); a wrong guess is left out of the batch, and the
    /// rows are read and tried once more. Without a trusted cache they are
    /// read first. `None` when the compare-and-set lost.
    async fn optimistic(
        &self,
        ids: &[StateId],
        named: &[Named<'_>],
        names: &[KeyName],
        f: &TransitionFn<'_>,
    ) -> Result<Option<Applied>, StoreError> {
        let lookup = self
            .cache
            .as_ref()
            .and_then(|c| c.lookup(names, Instant::now()));
        if let Some(lookup) = lookup {
            let guessed: Vec<Option<Known>> =
                lookup.found.into_iter().map(Option::flatten).collect();
            let written = self.compare_and_set(named, names, &guessed, f, Some(&lookup.ticket));
            if let Some(applied) = written.await? {
                return Ok(Some(applied));
            }
        }
        let (current, ticket) = self.read(ids, names).await?;
        self.compare_and_set(named, names, &current, f, ticket.as_ref())
            .await
    }

    /// Decides on `current` and writes, batched; once written, this
    /// replica's cache, if any, holds the rows written (`ticket` is from
    /// before `current` was known).
    async fn compare_and_set(
        &self,
        named: &[Named<'_>],
        names: &[KeyName],
        current: &[Option<Known>],
        f: &TransitionFn<'_>,
        ticket: Option<&Ticket>,
    ) -> Result<Option<Applied>, StoreError> {
        let NextRows {
            rows,
            events,
            applied,
        } = next_rows(named, current, f);
        let cached = self.cache.as_ref().zip(ticket);
        let known: Vec<Known> = match cached {
            Some(_) => rows.iter().map(Known::of).collect(),
            None => Vec::new(),
        };
        let write = Write {
            rows,
            events,
            hashes: names.iter().map(|n| n.hash).collect(),
        };
        if !self.writes.call(write).await? {
            return Ok(None);
        }
        if let Some((cache, ticket)) = cached {
            cache.wrote(ticket, known);
        }
        Ok(Some(applied))
    }

    /// The rows of `ids` from Postgres, cached on the way (with the ticket
    /// they were read under) when there is a cache.
    async fn read(
        &self,
        ids: &[StateId],
        names: &[KeyName],
    ) -> Result<(Vec<Option<Known>>, Option<Ticket>), StoreError> {
        let ticket = self.cache.as_ref().map(|c| c.ticket(names));
        let current = self.reads.call(ids.to_vec()).await?;
        if let (Some(cache), Some(ticket)) = (&self.cache, &ticket) {
            cache.fill(ticket, current.iter().cloned().enumerate().collect());
        }
        Ok((current, ticket))
    }

    /// After a write this replica did not follow with what it wrote: it
    /// ignores its own notifications, so it forgets the keys itself.
    fn forget(&self, names: &[KeyName]) {
        if let Some(cache) = &self.cache {
            cache.invalidate(&names.iter().map(|n| n.hash).collect::<Vec<_>>());
        }
    }

    async fn locking_with_retries(
        &self,
        named: &[Named<'_>],
        names: &[KeyName],
        f: &TransitionFn<'_>,
    ) -> Result<Applied, StoreError> {
        tracing::debug!("compare-and-set lost; locking the rows");
        let mut attempt = 1;
        loop {
            match self.locking(named, names, f).await {
                Err(StoreError::Other(cause)) if is_retryable(&cause) && attempt < MAX_ATTEMPTS => {
                    attempt += 1
                }
                Ok(None) if attempt < MAX_ATTEMPTS => attempt += 1,
                Ok(None) => {
                    return Err(StoreError::Corrupt(
                        "key_state versions disagree with their row locks".into(),
                    ));
                }
                Ok(Some(applied)) => {
                    self.forget(names);
                    return Ok(applied);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The path under contention, where compare-and-set would keep losing:
    /// lock the rows first, so concurrent transitions on the same keys (from
    /// any replica) queue behind each other and each succeeds in turn.
    /// `None` when the rows, though locked, were not at the versions read
    /// (which cannot happen while every writer bumps them).
    async fn locking(
        &self,
        named: &[Named<'_>],
        names: &[KeyName],
        f: &TransitionFn<'_>,
    ) -> Result<Option<Applied>, StoreError> {
        let mut p = Params::<Postgres>::default();
        let IdArrays {
            context,
            rule,
            user_id,
            ip,
            token,
        } = IdArrays::bind(&mut p, named);
        let kind = p.bind(named.iter().map(|n| n.columns.kind).collect::<Vec<_>>());
        // Upserting every id takes its row lock whether or not the row
        // existed, and RETURNING hands back the current values. Ids arrive
        // sorted, so two requests sharing keys lock them in the same order.
        let lock = format!(
            "INSERT INTO key_state (context, rule, kind, user_id, ip, token) \
             SELECT * FROM UNNEST({context}::text[], {rule}::text[], {kind}::text[], \
               {user_id}::text[], {ip}::text[], {token}::text[]) \
             ON CONFLICT (context, rule, user_id, ip, token) DO UPDATE SET kind = EXCLUDED.kind \
             RETURNING {COLUMNS}"
        );
        let mut tx = self.sql.writer.begin().await?;
        let locked = sqlx::query_with(AssertSqlSafe(lock), p.done()?)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(Sql::<Postgres>::decode)
            .collect::<Result<Vec<_>, _>>()?;
        let next = next_rows(named, &align(named, &locked), f);
        let rows: Vec<(i32, &Row)> = next.rows.iter().map(|r| (0, r)).collect();
        let events: Vec<(i32, &SecurityEvent)> = next.events.iter().map(|e| (0, e)).collect();
        let hashes: Vec<u64> = names.iter().map(|n| n.hash).collect();
        if !write(&mut *tx, &rows, &events, &hashes, &self.replica)
            .await?
            .is_empty()
        {
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(next.applied))
    }

    /// Clears every replica's cache along with `tx`, and this one's once
    /// it committed: for writes that do not name their keys.
    pub(super) async fn commit_clearing(
        &self,
        mut tx: sqlx::Transaction<'_, Postgres>,
    ) -> Result<(), StoreError> {
        // Sent whether or not this replica caches: others may.
        notify(&mut *tx, KEY_CHANNEL, CLEAR_ALL).await?;
        tx.commit().await?;
        if let Some(cache) = &self.cache {
            cache.clear();
        }
        Ok(())
    }

    /// One try of AdminUnlock's reset. The CTE reads each row's lock state
    /// as it was and locks the row, so the count is exact even while
    /// failures keep arriving.
    async fn unlock_once(&self, scope: &UnlockScope, now: UnixMillis) -> Result<u64, StoreError> {
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(
            "WITH target AS (SELECT context, rule, user_id, ip, token, \
               locked_at IS NOT NULL AND (locked_until IS NULL OR locked_until > ",
        );
        q.push_bind(now.0);
        q.push(") AS was_locked FROM key_state");
        push_scope(&mut q, scope);
        // Rows are locked by context and rule first, the order in which
        // every writer locks a subject's rows, so an unlock racing failures
        // does not deadlock with them; a conflict that still aborts it is
        // retried.
        q.push(
            " ORDER BY context, rule, user_id, ip, token FOR UPDATE) \
             UPDATE key_state AS k SET locked_at = NULL, locked_until = NULL, lock_tier = 0, \
               recent_failures = '{}', recent_lockouts = 0, last_lockout_at = NULL, \
               version = k.version + 1, expires_at = ",
        );
        // The reset row holds nothing that affects a decision any more.
        q.push_bind(now.0);
        q.push(
            " FROM target AS t WHERE k.context = t.context AND k.rule = t.rule \
               AND k.user_id = t.user_id AND k.ip = t.ip AND k.token = t.token \
             RETURNING t.was_locked",
        );
        let mut tx = self.sql.writer.begin().await?;
        let lifted: Vec<bool> = q.build_query_scalar().fetch_all(&mut *tx).await?;
        self.commit_clearing(tx).await?;
        Ok(lifted.into_iter().filter(|&l| l).count() as u64)
    }
}

#[async_trait::async_trait]
impl KeyStates for PostgresStore {
    async fn load(&self, ids: &[StateId]) -> Result<Vec<Option<KeyState>>, StoreError> {
        let named = Named::all(ids);
        let names: Vec<KeyName> = named.iter().map(KeyName::of).collect();
        let state = |known: Option<Known>| known.map(|k| k.update.state);
        let Some(lookup) = self
            .cache
            .as_ref()
            .and_then(|c| c.lookup(&names, Instant::now()))
        else {
            return Ok(self
                .reads
                .call(ids.to_vec())
                .await?
                .into_iter()
                .map(state)
                .collect());
        };
        let missing: Vec<usize> = (0..ids.len())
            .filter(|&i| lookup.found[i].is_none())
            .collect();
        let mut states: Vec<Option<KeyState>> = lookup
            .found
            .into_iter()
            .map(|found| state(found.flatten()))
            .collect();
        if missing.is_empty() {
            return Ok(states);
        }
        let wanted: Vec<StateId> = missing.iter().map(|&i| ids[i].clone()).collect();
        let read: Vec<(usize, Option<Known>)> = missing
            .into_iter()
            .zip(self.reads.call(wanted).await?)
            .collect();
        for (i, known) in &read {
            states[*i] = known.as_ref().map(|k| k.update.state.clone());
        }
        if let Some(cache) = &self.cache {
            cache.fill(&lookup.ticket, read);
        }
        Ok(states)
    }

    async fn transition(
        &self,
        ids: &[StateId],
        f: &TransitionFn<'_>,
    ) -> Result<Applied, StoreError> {
        // Each key's columns and hash, worked out once for every read,
        // write, lookup and invalidation of this call.
        let named = Named::all(ids);
        let names: Vec<KeyName> = named.iter().map(KeyName::of).collect();
        // Other replicas hear of the write at its commit; this one has
        // updated or forgotten the keys before it answers, so its caller
        // reads its own write.
        let written = match self.optimistic(ids, &named, &names, f).await {
            Ok(Some(applied)) => Ok(applied),
            Ok(None) => self.locking_with_retries(&named, &names, f).await,
            Err(e) => Err(e),
        };
        // A failed write may still have committed (the connection died
        // before the answer came), and this replica ignores its own
        // invalidations: it forgets the keys, so its checks read Postgres.
        if written.is_err() {
            self.forget(&names);
        }
        written
    }

    async fn unlock(&self, scope: &UnlockScope, now: UnixMillis) -> Result<u64, StoreError> {
        let mut attempt = 1;
        loop {
            match self.unlock_once(scope, now).await {
                Err(StoreError::Other(cause)) if is_retryable(&cause) && attempt < MAX_ATTEMPTS => {
                    attempt += 1
                }
                result => return result,
            }
        }
    }
}
