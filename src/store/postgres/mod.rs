//! The shared store: several replicas, one Postgres. What only Postgres
//! does is here: batching reads and compare-and-set writes, row locks under
//! contention, LISTEN/NOTIFY for alerts across replicas.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use sqlx::postgres::{PgArguments, PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::{PgExecutor, Postgres, QueryBuilder, Row as _};
use tokio::sync::{broadcast, watch};

mod admission;
mod cache;

use self::cache::{CLEAR_ALL, KEY_CHANNEL, KeyCache};
use super::batch::Batcher;
use super::sql::{COLUMNS, Common, FailuresColumn, INSERT_EVENT, Sql};
use super::{
    AdmitFn, Applied, Dialect, Health, NextRows, PoolSettings, Purged, Row, StateId, StoreError,
    TransitionFn, UnlockScope, in_order, key_columns, next_rows, push_scope,
};
use crate::clock::Reading;
use crate::domain::{Admission, EventKind, KeyState, SecurityEvent, UnixMillis, UserId};
use crate::telemetry::metrics;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Any replica's cleanup takes this transaction-scoped advisory lock, so
/// only one purges at a time.
pub const CLEANUP_LOCK: i64 = 0x6175_7468_6761_7465; // "authgate"

/// Postgres reports these when it chose this transaction as the victim of a
/// deadlock or serialization conflict, and authgate_expect_written when a
/// compare-and-set lost; the transition is pure, so it is simply run again.
/// The database's clock, the one every replica decides by: the time the
/// statement runs, not the transaction's start (`now()`), in milliseconds
/// as every stored time is.
const DATABASE_NOW: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint";

const RETRYABLE: [&str; 2] = ["40001", "40P01"];
const MAX_ATTEMPTS: usize = 5;

/// Batched reads in flight at once. Few lanes make large batches: on two
/// cores, one or two lanes served 40% more checks per second than four and
/// half again more than eight (scripts/bench.sh, pool of 16).
const READ_LANES: usize = 2;
/// Batched writes in flight at once. One lane makes the largest batches,
/// and on two cores CPU, not commit latency, is the limit: one lane served
/// 15-25% more failures than two, at 8 and at 64 in flight, and four did
/// worse still (scripts/bench.sh). Every write NOTIFYs its keys, and
/// Postgres commits NOTIFYing transactions one at a time, but that is not
/// what decides it: without the NOTIFY, two lanes did no better than one
/// with it.
const WRITE_LANES: usize = 1;

/// Far longer than any transaction of authgate's stays idle between its
/// statements (microseconds of Rust in between).
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "10s";

/// The NOTIFY channel that carries security events between replicas.
const EVENT_CHANNEL: &str = "authgate_events";

/// The batched read, through the function that carries its planner setting
/// (migration 0004).
static FETCH: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {COLUMNS} FROM authgate_key_states($1, $2, $3, $4, $5)"));

/// Takes the row lock of every id, creating rows that do not exist yet, and
/// returns them as they are.
static LOCK_ROWS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO key_state (context, rule, kind, user_id, ip, session_id) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
         ON CONFLICT (context, rule, user_id, ip, session_id) DO UPDATE SET kind = EXCLUDED.kind \
         RETURNING {COLUMNS}"
    )
});

/// A batch of compare-and-set writes and the events that commit with them,
/// alerts notified at commit; see `PostgresStore::write`. Each row and
/// event names its request ($18, $32); the requests whose expected versions
/// are already wrong are left out and answered.
static WRITE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH stale AS MATERIALIZED \
           (SELECT s AS request FROM authgate_stale_requests($18, $1, $2, $4, $5, $6, $17) AS s), \
         fresh AS (SELECT * FROM UNNEST($18::int[], $1::text[], $2::text[], $3::text[], \
             $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[], $9::bigint[], \
             $10::bigint[], $11::bigint[], $12::int[], $13::int[], $14::bigint[], $15::bigint[], \
             $16::bigint[], $17::bigint[]) AS u(request, {COLUMNS}) \
           WHERE request NOT IN (SELECT request FROM stale)), \
         written AS (INSERT INTO key_state ({COLUMNS}) \
           SELECT context, rule, kind, user_id, ip, session_id, recent_failures::bigint[], \
             failures_total, last_failure_at, locked_at, locked_until, lock_tier, \
             recent_lockouts, last_lockout_at, lockouts_total, expires_at, version \
           FROM fresh \
           ON CONFLICT (context, rule, user_id, ip, session_id) DO UPDATE SET \
             recent_failures = EXCLUDED.recent_failures, failures_total = EXCLUDED.failures_total, \
             last_failure_at = EXCLUDED.last_failure_at, locked_at = EXCLUDED.locked_at, \
             locked_until = EXCLUDED.locked_until, lock_tier = EXCLUDED.lock_tier, \
             recent_lockouts = EXCLUDED.recent_lockouts, last_lockout_at = EXCLUDED.last_lockout_at, \
             lockouts_total = EXCLUDED.lockouts_total, expires_at = EXCLUDED.expires_at, \
             version = EXCLUDED.version \
           WHERE key_state.version = EXCLUDED.version - 1 \
           RETURNING 1), \
         {}, \
         invalidated AS (SELECT pg_notify('{KEY_CHANNEL}', p) FROM unnest($35::text[]) AS p) \
         SELECT authgate_expect_written((SELECT count(*) FROM written), (SELECT count(*) FROM fresh)), \
           (SELECT count(*) FROM notified), (SELECT count(*) FROM invalidated), \
           ARRAY(SELECT request FROM stale) AS stale",
        logged_and_notified(19, "request NOT IN (SELECT request FROM stale)")
    )
});

/// The CTEs `logged` and `notified` of a batched write: its events from
/// parallel arrays at $first and the 13 parameters after it (the last, each
/// event's request), those that `keep` holds for; then the NOTIFY channel
/// and the alert kinds, as `bind_events` binds them.
fn logged_and_notified(first: usize, keep: &str) -> String {
    let arrays: Vec<String> = [
        "bigint", "text", "text", "text", "text", "text", "text", "int", "bigint", "bool", "text",
        "text", "text", "int",
    ]
    .iter()
    .enumerate()
    .map(|(i, ty)| format!("${}::{ty}[]", first + i))
    .collect();
    format!(
        "logged AS (INSERT INTO security_event \
           (at, kind, context, rule, user_id, ip, session_id, tier, until_at, permanent, actor, \
            detail, caller) \
           SELECT at, kind, context, rule, user_id, ip, session_id, tier, until_at, permanent, \
             actor, detail, caller \
           FROM UNNEST({}) AS e(at, kind, context, rule, user_id, ip, session_id, tier, until_at, \
             permanent, actor, detail, caller, request) \
           WHERE {keep} RETURNING *), \
         notified AS (SELECT pg_notify(${}, row_to_json(logged)::text) FROM logged \
           WHERE kind = ANY(${}))",
        arrays.join(", "),
        first + 14,
        first + 15
    )
}

/// Binds what `logged_and_notified` reads: `events`, each of the request
/// in `requests` beside it.
fn bind_events<'q>(
    query: Query<'q, Postgres, PgArguments>,
    events: &[SecurityEvent],
    requests: Vec<i32>,
) -> Query<'q, Postgres, PgArguments> {
    let text =
        |f: fn(&SecurityEvent) -> &str| events.iter().map(|e| f(e).to_owned()).collect::<Vec<_>>();
    query
        .bind(events.iter().map(|e| e.at).collect::<Vec<_>>())
        .bind(text(|e| e.kind.as_str()))
        .bind(text(|e| &e.context))
        .bind(text(|e| &e.rule))
        .bind(text(|e| &e.user_id))
        .bind(text(|e| &e.ip))
        .bind(text(|e| &e.session_id))
        .bind(
            events
                .iter()
                .map(|e| i32::try_from(e.tier).unwrap_or(i32::MAX))
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.until).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.permanent).collect::<Vec<_>>())
        .bind(text(|e| &e.actor))
        .bind(text(|e| &e.detail))
        .bind(text(|e| &e.caller))
        .bind(requests)
        // Alerts are notified by the same statement: NOTIFY is delivered at
        // commit, so every replica hears of a lock exactly when it holds.
        .bind(EVENT_CHANNEL)
        .bind(EventKind::alert_names())
}

/// One event, NOTIFY-ed when it is an alert ($15); the shared insert's
/// $1..$13, then the channel.
static APPEND_EVENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH e AS ({} RETURNING *) SELECT pg_notify($14, row_to_json(e)::text) FROM e WHERE $15",
        INSERT_EVENT.as_str()
    )
});

/// The alerts committed after $2, for a listener catching up.
static CATCH_UP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT id, {} FROM security_event WHERE kind = ANY($1) AND id > $2 ORDER BY id",
        super::sql::EVENT_COLUMNS
    )
});

pub struct PostgresStore {
    /// One pool for reads and writes: Postgres serves both at once.
    sql: Sql<Postgres>,
    /// Key-state reads, coalesced into one query per batch.
    reads: Batcher<Vec<StateId>, Vec<Row>>,
    /// Compare-and-set writes of the fast path, coalesced likewise; `false`
    /// answers a write that lost its compare-and-set.
    writes: Batcher<Write, bool>,
    /// Admit's reads and compare-and-set writes, batched as the key
    /// states' are.
    admission_reads: Batcher<admission::AdmissionKey, admission::Versioned>,
    admission_writes: Batcher<admission::Write, bool>,
    /// Key states known to this replica; `None` when turned off.
    cache: Option<Arc<KeyCache>>,
    /// This replica's name on the key channel, so it knows its own
    /// notifications.
    replica: Arc<str>,
    /// Fed by the LISTEN task with every replica's events, this one's too.
    events: broadcast::Sender<SecurityEvent>,
    listener: tokio::task::JoinHandle<()>,
    /// Sends the cache's heartbeats through the channel.
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// True once the LISTEN task receives every alert committed from then
    /// on.
    listening: watch::Receiver<bool>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
        if let Some(heartbeat) = &self.heartbeat {
            heartbeat.abort();
        }
    }
}

/// How far below the newest event delivered a catch-up reads: transactions
/// that overlap commit out of id order, so an event with a lower id may
/// commit after one with a higher id was delivered.
const CATCH_UP_LOOKBACK: i64 = 1000;
/// Alert ids remembered as delivered, so a catch-up never repeats one; far
/// more than CATCH_UP_LOOKBACK ids can hold alerts.
const DELIVERED_MEMORY: usize = 4096;
/// The first retry after the listener loses its connection; doubled up to
/// a second while the database stays away.
const LISTEN_RETRY: Duration = Duration::from_millis(50);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(1);

/// A notification's payload: the event row, as `row_to_json` writes it.
#[derive(serde::Deserialize)]
struct Notified {
    id: i64,
    #[serde(flatten)]
    event: SecurityEvent,
}

/// Which alerts this replica has delivered to its subscribers.
struct Delivered {
    /// Nothing at or below this id is delivered: it was committed before
    /// this replica first listened.
    floor: i64,
    newest: i64,
    recent: VecDeque<i64>,
    seen: HashSet<i64>,
}

impl Delivered {
    fn new(floor: i64) -> Self {
        Delivered {
            floor,
            newest: floor,
            recent: VecDeque::with_capacity(DELIVERED_MEMORY),
            seen: HashSet::with_capacity(DELIVERED_MEMORY),
        }
    }

    /// Marks `id` delivered; false when it was already, or predates the
    /// first LISTEN.
    fn first_time(&mut self, id: i64) -> bool {
        if id <= self.floor || !self.seen.insert(id) {
            return false;
        }
        self.recent.push_back(id);
        if self.recent.len() > DELIVERED_MEMORY
            && let Some(old) = self.recent.pop_front()
        {
            self.seen.remove(&old);
        }
        self.newest = self.newest.max(id);
        true
    }

    /// Where a catch-up starts reading.
    fn catch_up_from(&self) -> i64 {
        self.floor.max(self.newest - CATCH_UP_LOOKBACK)
    }
}

/// Forwards every replica's alerts to `events` for as long as the store
/// lives: NOTIFYs while connected, and after each (re)connection whatever
/// was committed meanwhile, read from security_event, so an outage of the
/// listening connection loses no alert. `listening` holds the LISTEN
/// connection and nothing else; the catch-up reads go through `pool`.
/// `ready` turns true once the first LISTEN is in place.
async fn listen(
    listening: PgPool,
    pool: PgPool,
    events: broadcast::Sender<SecurityEvent>,
    cache: Option<Arc<KeyCache>>,
    replica: Arc<str>,
    ready: watch::Sender<bool>,
) {
    let mut delivered = None;
    let mut retry = LISTEN_RETRY;
    let beats = cache::beats(&replica);
    let ears = Ears {
        events: &events,
        cache: cache.as_deref(),
        replica: &replica,
        beats: &beats,
    };
    loop {
        let followed = follow(&listening, &pool, &ears, &mut delivered, &ready).await;
        if let Some(cache) = &cache {
            cache.disconnected();
        }
        match followed {
            Ok(()) => {
                tracing::warn!("security event listener lost its connection; catching up");
                retry = LISTEN_RETRY;
            }
            Err(e) => {
                tracing::debug!(error = %e, "security event listener cannot listen yet");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(LISTEN_RETRY_MAX);
            }
        }
    }
}

/// Sends this replica's heartbeats for as long as the store lives, and
/// reports the cache's size and trust with each.
async fn heartbeat(pool: PgPool, cache: Arc<KeyCache>, beats: String) {
    let mut tick = tokio::time::interval(cache::HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = std::time::Instant::now();
        let beat = format!("{beats}{}", cache.beat(now));
        // A beat that cannot be sent is the point: none comes back, and
        // the cache stops being trusted.
        let _ = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(KEY_CHANNEL)
            .bind(beat)
            .execute(&pool)
            .await;
        metrics::key_cache_entries(cache.len());
        metrics::key_cache_trusted(cache.trusted(std::time::Instant::now()));
    }
}

/// Where the listener delivers what it hears.
struct Ears<'a> {
    events: &'a broadcast::Sender<SecurityEvent>,
    cache: Option<&'a KeyCache>,
    replica: &'a str,
    /// The prefix of this replica's own heartbeats.
    beats: &'a str,
}

impl Ears<'_> {
    /// A notification on the key channel: a heartbeat, a clear, or the
    /// hashes of keys written.
    fn key_notice(&self, payload: &str) {
        let Some(cache) = self.cache else {
            return;
        };
        if let Some(sent) = payload.strip_prefix(self.beats) {
            if let Ok(sent) = sent.parse() {
                cache.heard(sent);
            }
            return;
        }
        if payload.starts_with(cache::BEAT) {
            return;
        }
        match cache::notice(payload, self.replica) {
            cache::Notice::Own => {}
            cache::Notice::Invalidate(hashes) => cache.invalidate(&hashes),
            cache::Notice::Clear => cache.clear(),
        }
    }
}

/// One connection's worth of listening: LISTEN, catch up from the table,
/// then forward NOTIFYs until the connection is lost (`Ok`).
async fn follow(
    listening: &PgPool,
    pool: &PgPool,
    ears: &Ears<'_>,
    delivered: &mut Option<Delivered>,
    ready: &watch::Sender<bool>,
) -> Result<(), StoreError> {
    let events = ears.events;
    let mut listener = PgListener::connect_with(listening).await?;
    listener.eager_reconnect(false);
    listener.listen_all([EVENT_CHANNEL, KEY_CHANNEL]).await?;
    // What was cached before may have missed invalidations while nobody
    // listened.
    if let Some(cache) = ears.cache {
        cache.listening(std::time::Instant::now());
    }
    // From here on every alert committed is notified; what committed before
    // and was not delivered is in the table.
    let delivered = match delivered {
        Some(d) => d,
        None => {
            let newest: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM security_event")
                .fetch_one(pool)
                .await?;
            delivered.insert(Delivered::new(newest))
        }
    };
    let missed: Vec<PgRow> = sqlx::query(CATCH_UP.as_str())
        .bind(EventKind::alert_names())
        .bind(delivered.catch_up_from())
        .fetch_all(pool)
        .await?;
    for row in &missed {
        let (id, event) = Sql::<Postgres>::decode_event(row)?;
        if delivered.first_time(id) {
            let _ = events.send(event);
        }
    }
    ready.send_replace(true);
    while let Some(n) = listener.try_recv().await? {
        if n.channel() == KEY_CHANNEL {
            ears.key_notice(n.payload());
            continue;
        }
        match serde_json::from_str::<Notified>(n.payload()) {
            Ok(Notified { id, event }) => {
                if delivered.first_time(id) {
                    let _ = events.send(event);
                }
            }
            Err(e) => tracing::warn!(error = %e, "unreadable security event"),
        }
    }
    Ok(())
}

impl FailuresColumn for PgRow {
    fn recent_failures(&self) -> Result<Vec<i64>, StoreError> {
        Ok(self.try_get("recent_failures")?)
    }
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

/// The rows of `ids` that exist.
async fn fetch<'c>(conn: impl PgExecutor<'c>, ids: &[StateId]) -> Result<Vec<Row>, StoreError> {
    let cols = IdColumns::of(ids);
    sqlx::query(FETCH.as_str())
        .bind(&cols.context)
        .bind(&cols.rule)
        .bind(&cols.user_id)
        .bind(&cols.ip)
        .bind(&cols.session_id)
        .fetch_all(conn)
        .await?
        .iter()
        .map(Sql::<Postgres>::decode)
        .collect()
}

/// Answers each call of a read batch with its own rows, from one query.
async fn fetch_batch(pool: PgPool, calls: Vec<Vec<StateId>>) -> Vec<Result<Vec<Row>, StoreError>> {
    let all: Vec<StateId> = calls.iter().flatten().cloned().collect();
    match fetch(&pool, &all).await {
        Ok(rows) => {
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
                        r.session_id.as_str(),
                    );
                    (key, r)
                })
                .collect();
            calls
                .iter()
                .map(|ids| {
                    Ok(ids
                        .iter()
                        .filter_map(|id| {
                            let (_, user_id, ip, session_id) = key_columns(&id.key);
                            by_key
                                .get(&(
                                    id.context.as_str(),
                                    id.rule.as_str(),
                                    user_id.as_str(),
                                    ip.as_str(),
                                    session_id.as_str(),
                                ))
                                .map(|r| (*r).clone())
                        })
                        .collect())
                })
                .collect()
        }
        Err(e) => calls.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// One request's compare-and-set: its rows, each one version past what it
/// expects, and the audit records that commit with them.
struct Write {
    ids: Vec<StateId>,
    rows: Vec<Row>,
    events: Vec<SecurityEvent>,
}

/// Commits a batch of writes as one statement. A request whose expected
/// versions were already wrong when the statement began is left out and
/// answered `false`; a row that changes while the statement runs fails it
/// whole, and every request is answered `false`. Each then reads and tries
/// again on its own. A request that shares a key with an earlier one in
/// the batch cannot join it (a statement upserts a row once) and would
/// lose anyway: it is answered `false` at once.
async fn write_batch(
    pool: PgPool,
    replica: Arc<str>,
    calls: Vec<Write>,
) -> Vec<Result<bool, StoreError>> {
    let mut taken = HashSet::new();
    let joins: Vec<bool> = calls
        .iter()
        .map(|w| {
            let free = w.ids.iter().all(|id| !taken.contains(id));
            if free {
                taken.extend(w.ids.iter());
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
    // Rows are locked in the statement's order; sorting them as every other
    // writer sorts its keys rules out deadlocks between batches.
    let mut keyed: Vec<(&StateId, i32, &Row)> = joined
        .iter()
        .flat_map(|(request, w)| {
            w.ids
                .iter()
                .zip(&w.rows)
                .map(|(id, row)| (id, *request, row))
        })
        .collect();
    keyed.sort_by_key(|(id, _, _)| *id);
    let rows: Vec<(i32, Row)> = keyed.into_iter().map(|(_, q, r)| (q, r.clone())).collect();
    let events: Vec<(i32, SecurityEvent)> = joined
        .iter()
        .flat_map(|(request, w)| w.events.iter().map(|e| (*request, e.clone())))
        .collect();
    let stale = match PostgresStore::write(&pool, &rows, &events, &replica).await {
        Ok(stale) => stale,
        Err(e) if is_retryable(&e) => (0..).take(joined.len()).collect(),
        Err(e) => {
            let e = StoreError::from(e);
            return calls.iter().map(|_| Err(e.clone())).collect();
        }
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

/// Each call's answer to an all-or-nothing batched compare-and-set: the
/// statement's outcome for those that joined it (`false` when it lost),
/// `false` for those left out.
fn answer_batch(joins: &[bool], written: Result<(), sqlx::Error>) -> Vec<Result<bool, StoreError>> {
    let outcome = match written {
        Ok(()) => Ok(true),
        Err(e) if is_retryable(&e) => Ok(false),
        Err(e) => Err(StoreError::from(e)),
    };
    joins
        .iter()
        .map(|&joined| if joined { outcome.clone() } else { Ok(false) })
        .collect()
}

fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| RETRYABLE.contains(&c.as_ref())))
}

impl PostgresStore {
    /// Builds the pool without connecting: connections are made on demand,
    /// so a database that is down at start-up or later costs an UNAVAILABLE
    /// per request, never the process.
    pub fn connect(
        url: &str,
        settings: &PoolSettings,
        health: Arc<Health>,
    ) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(StoreError::from)?;
        let options = options
            .application_name("authgate")
            // A safety net, not the mechanism: calls run to their end in
            // tasks of their own, so no transaction is left open. Should one
            // ever be, Postgres ends the session instead of letting it hold
            // row locks (deploy/README).
            .options([(
                "idle_in_transaction_session_timeout",
                IDLE_IN_TRANSACTION_TIMEOUT,
            )]);
        // The LISTEN connection lives apart: it would hold one of the
        // requests' connections for good, and while it waits to reconnect it
        // would queue in front of the probe that clears dead connections.
        let listening_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(settings.acquire_timeout)
            .connect_lazy_with(options.clone());
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            // sqlx would ping every connection before lending it: a round
            // trip per query. Only a connection that sat idle through an
            // outage is tried first, so that none left over from the server
            // that went away fails a caller's request once it is back.
            .test_before_acquire(false)
            .before_acquire({
                let health = health.clone();
                move |conn, meta| {
                    let suspect = health.idle_across_outage(meta.idle_for);
                    Box::pin(async move {
                        if suspect {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                }
            })
            .connect_lazy_with(options);
        let (events, _) = broadcast::channel(settings.event_buffer.max(1));
        let (ready, listening) = watch::channel(false);
        let cache =
            (settings.cache_entries > 0).then(|| Arc::new(KeyCache::new(settings.cache_entries)));
        // Every replica's notifications reach every listener: each knows
        // its own by this name.
        let replica: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
        let listener = tokio::spawn(listen(
            listening_pool,
            pool.clone(),
            events.clone(),
            cache.clone(),
            replica.clone(),
            ready,
        ));
        let heartbeat = cache
            .clone()
            .map(|cache| tokio::spawn(heartbeat(pool.clone(), cache, cache::beats(&replica))));
        let reader = pool.clone();
        let reads = Batcher::start(READ_LANES, health.clone(), move |calls| {
            fetch_batch(reader.clone(), calls)
        });
        let (writer, sender) = (pool.clone(), replica.clone());
        let writes = Batcher::start(WRITE_LANES, health.clone(), move |calls| {
            write_batch(writer.clone(), sender.clone(), calls)
        });
        let reader = pool.clone();
        let admission_reads = Batcher::start(READ_LANES, health.clone(), move |calls| {
            admission::fetch_batch(reader.clone(), calls)
        });
        let writer = pool.clone();
        let admission_writes = Batcher::start(WRITE_LANES, health.clone(), move |calls| {
            admission::write_batch(writer.clone(), calls)
        });
        Ok(PostgresStore {
            sql: Sql {
                writer: pool.clone(),
                readers: pool,
                begin_write: "BEGIN",
                health,
            },
            reads,
            writes,
            admission_reads,
            admission_writes,
            cache,
            replica,
            events,
            listener,
            heartbeat,
            listening,
        })
    }

    /// Writes `rows`, each of the request beside it, as compare-and-sets:
    /// each row only if it is still at the version before its own. Returns
    /// the requests left out because one of their rows was not; the others
    /// are written with their `events`, all together or not at all (the
    /// statement aborts with serialization_failure otherwise). Other
    /// replicas are told, in the same statement, to forget the keys.
    async fn write<'c>(
        conn: impl PgExecutor<'c>,
        rows: &[(i32, Row)],
        events: &[(i32, SecurityEvent)],
        replica: &str,
    ) -> Result<Vec<i32>, sqlx::Error> {
        let text = |f: fn(&Row) -> &str| {
            rows.iter()
                .map(|(_, r)| f(r).to_owned())
                .collect::<Vec<_>>()
        };
        let int = |f: fn(&Row) -> i64| rows.iter().map(|(_, r)| f(r)).collect::<Vec<_>>();
        let opt = |f: fn(&Row) -> Option<i64>| rows.iter().map(|(_, r)| f(r)).collect::<Vec<_>>();
        let small = |f: fn(&Row) -> i32| rows.iter().map(|(_, r)| f(r)).collect::<Vec<_>>();
        // Arrays of arrays must be rectangular in Postgres, so each row's
        // recent_failures travels as an array literal and is cast back.
        let failures: Vec<String> = rows
            .iter()
            .map(|(_, r)| {
                let items: Vec<String> = r.recent_failures.iter().map(i64::to_string).collect();
                format!("{{{}}}", items.join(","))
            })
            .collect();
        let written: Vec<u64> = rows
            .iter()
            .map(|(_, r)| cache::column_hash(&r.context, &r.rule, &r.user_id, &r.ip, &r.session_id))
            .collect();
        let query = sqlx::query(WRITE.as_str())
            .bind(text(|r| &r.context))
            .bind(text(|r| &r.rule))
            .bind(text(|r| &r.kind))
            .bind(text(|r| &r.user_id))
            .bind(text(|r| &r.ip))
            .bind(text(|r| &r.session_id))
            .bind(&failures)
            .bind(int(|r| r.failures_total))
            .bind(opt(|r| r.last_failure_at))
            .bind(opt(|r| r.locked_at))
            .bind(opt(|r| r.locked_until))
            .bind(small(|r| r.lock_tier))
            .bind(small(|r| r.recent_lockouts))
            .bind(opt(|r| r.last_lockout_at))
            .bind(int(|r| r.lockouts_total))
            .bind(opt(|r| r.expires_at))
            .bind(int(|r| r.version))
            .bind(rows.iter().map(|(q, _)| *q).collect::<Vec<_>>());
        // The audit records travel in the same statement: they commit with
        // the state change or not at all, at no extra round trip; so do the
        // other replicas' cache invalidations.
        let (requests, events): (Vec<i32>, Vec<SecurityEvent>) = events.iter().cloned().unzip();
        let row = bind_events(query, &events, requests)
            .bind(cache::invalidations(replica, &written))
            .fetch_one(conn)
            .await?;
        row.try_get("stale")
    }

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
        f: &TransitionFn<'_>,
    ) -> Result<Option<Applied>, StoreError> {
        let lookup = self
            .cache
            .as_ref()
            .and_then(|c| c.lookup(ids, std::time::Instant::now()));
        if let Some(lookup) = lookup {
            let known: Vec<Row> = ids
                .iter()
                .zip(lookup.found)
                .filter_map(|(id, found)| found.flatten().map(|k| k.row(id)))
                .collect();
            let written = self.compare_and_set(ids, &known, f, Some(&lookup.ticket));
            if let Some(applied) = written.await? {
                return Ok(Some(applied));
            }
        }
        let (current, ticket) = self.read(ids).await?;
        self.compare_and_set(ids, &current, f, ticket.as_ref())
            .await
    }

    /// Decides on `current` and writes, batched; once written, this
    /// replica's cache, if any, holds the rows written (`ticket` is from
    /// before `current` was known).
    async fn compare_and_set(
        &self,
        ids: &[StateId],
        current: &[Row],
        f: &TransitionFn<'_>,
        ticket: Option<&cache::Ticket>,
    ) -> Result<Option<Applied>, StoreError> {
        let NextRows {
            rows,
            events,
            applied,
        } = next_rows(ids, current, f);
        let write = Write {
            ids: ids.to_vec(),
            rows: rows.clone(),
            events,
        };
        if !self.writes.call(write).await? {
            return Ok(None);
        }
        if let (Some(cache), Some(ticket)) = (&self.cache, ticket) {
            cache.wrote(ticket, &rows);
        }
        Ok(Some(applied))
    }

    /// The rows of `ids` from Postgres, cached on the way (with the ticket
    /// they were read under) when there is a cache.
    async fn read(&self, ids: &[StateId]) -> Result<(Vec<Row>, Option<cache::Ticket>), StoreError> {
        let ticket = self.cache.as_ref().map(|c| c.ticket(ids));
        let rows = self.reads.call(ids.to_vec()).await?;
        if let (Some(cache), Some(ticket)) = (&self.cache, &ticket) {
            let read = (0..ids.len())
                .map(|i| (i, rows.iter().find(|r| r.is(&ids[i])).cloned()))
                .collect();
            cache.fill(ticket, read);
        }
        Ok((rows, ticket))
    }

    /// After a write this replica did not follow with what it wrote: it
    /// ignores its own notifications, so it forgets the keys itself.
    fn forget(&self, ids: &[StateId]) {
        if let Some(cache) = &self.cache {
            cache.invalidate(&ids.iter().map(cache::key_hash).collect::<Vec<_>>());
        }
    }

    async fn locking_with_retries(
        &self,
        ids: &[StateId],
        f: &TransitionFn<'_>,
    ) -> Result<Applied, StoreError> {
        tracing::debug!("compare-and-set lost; locking the rows");
        let mut attempt = 1;
        loop {
            match self.locking(ids, f).await {
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
                    self.forget(ids);
                    return Ok(applied);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Clears every replica's cache along with `tx`, and this one's once
    /// it committed: for writes that do not name their keys.
    async fn commit_clearing(
        &self,
        mut tx: sqlx::Transaction<'_, Postgres>,
    ) -> Result<(), StoreError> {
        // Sent whether or not this replica caches: others may.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(KEY_CHANNEL)
            .bind(CLEAR_ALL)
            .execute(&mut *tx)
            .await?;
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
            "WITH target AS (SELECT context, rule, user_id, ip, session_id, \
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
            " ORDER BY context, rule, user_id, ip, session_id FOR UPDATE) \
             UPDATE key_state AS k SET locked_at = NULL, locked_until = NULL, lock_tier = 0, \
               recent_failures = '{}', recent_lockouts = 0, last_lockout_at = NULL, \
               version = k.version + 1, expires_at = ",
        );
        // The reset row holds nothing that affects a decision any more.
        q.push_bind(now.0);
        q.push(
            " FROM target AS t WHERE k.context = t.context AND k.rule = t.rule \
               AND k.user_id = t.user_id AND k.ip = t.ip AND k.session_id = t.session_id \
             RETURNING t.was_locked",
        );
        let mut tx = self.sql.writer.begin().await?;
        let lifted: Vec<bool> = q.build_query_scalar().fetch_all(&mut *tx).await?;
        self.commit_clearing(tx).await?;
        Ok(lifted.into_iter().filter(|&l| l).count() as u64)
    }

    /// The path under contention, where compare-and-set would keep losing:
    /// lock the rows first, so concurrent transitions on the same keys (from
    /// any replica) queue behind each other and each succeeds in turn.
    /// `None` when the rows, though locked, were not at the versions read
    /// (which cannot happen while every writer bumps them).
    async fn locking(
        &self,
        ids: &[StateId],
        f: &TransitionFn<'_>,
    ) -> Result<Option<Applied>, StoreError> {
        let cols = IdColumns::of(ids);
        let mut tx = self.sql.writer.begin().await?;
        // Upserting every id takes its row lock whether or not the row
        // existed, and RETURNING hands back the current values. Ids arrive
        // sorted, so two requests sharing keys lock them in the same order.
        let current = sqlx::query(LOCK_ROWS.as_str())
            .bind(&cols.context)
            .bind(&cols.rule)
            .bind(&cols.kind)
            .bind(&cols.user_id)
            .bind(&cols.ip)
            .bind(&cols.session_id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(Sql::<Postgres>::decode)
            .collect::<Result<Vec<_>, _>>()?;
        let next = next_rows(ids, &current, f);
        let rows: Vec<(i32, Row)> = next.rows.into_iter().map(|r| (0, r)).collect();
        let events: Vec<(i32, SecurityEvent)> = next.events.into_iter().map(|e| (0, e)).collect();
        if !Self::write(&mut *tx, &rows, &events, &self.replica)
            .await?
            .is_empty()
        {
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(next.applied))
    }
}

#[async_trait::async_trait]
impl Dialect for PostgresStore {
    type Sql = Sql<Postgres>;

    fn sql(&self) -> &Sql<Postgres> {
        &self.sql
    }

    async fn load(&self, ids: &[StateId]) -> Result<Vec<Option<KeyState>>, StoreError> {
        let Some(lookup) = self
            .cache
            .as_ref()
            .and_then(|c| c.lookup(ids, std::time::Instant::now()))
        else {
            return Ok(in_order(ids, &self.reads.call(ids.to_vec()).await?));
        };
        let missing: Vec<usize> = (0..ids.len())
            .filter(|&i| lookup.found[i].is_none())
            .collect();
        let mut states: Vec<Option<KeyState>> = lookup
            .found
            .into_iter()
            .map(|found| found.flatten().map(|k| k.update.state))
            .collect();
        if missing.is_empty() {
            return Ok(states);
        }
        let wanted: Vec<StateId> = missing.iter().map(|&i| ids[i].clone()).collect();
        let rows = self.reads.call(wanted).await?;
        let read: Vec<(usize, Option<Row>)> = missing
            .into_iter()
            .map(|i| (i, rows.iter().find(|r| r.is(&ids[i])).cloned()))
            .collect();
        for (i, row) in &read {
            states[*i] = row.as_ref().map(Row::state);
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
        // Other replicas hear of the write at its commit; this one has
        // updated or forgotten the keys before it answers, so its caller
        // reads its own write.
        let written = match self.optimistic(ids, f).await {
            Ok(Some(applied)) => Ok(applied),
            Ok(None) => self.locking_with_retries(ids, f).await,
            Err(e) => Err(e),
        };
        // A failed write may still have committed (the connection died
        // before the answer came), and this replica ignores its own
        // invalidations: it forgets the keys, so its checks read Postgres.
        if written.is_err() {
            self.forget(ids);
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

    async fn purge_expired(
        &self,
        now: UnixMillis,
        retention: Duration,
    ) -> Result<Option<Purged>, StoreError> {
        let mut tx = self.sql.writer.begin().await?;
        let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(CLEANUP_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !won {
            return Ok(None);
        }
        let purged = self.sql.cleanup(&mut tx, now, retention).await?;
        if purged.states > 0 {
            self.commit_clearing(tx).await?;
        } else {
            tx.commit().await?;
        }
        Ok(Some(purged))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.sql.writer).await?;
        Ok(())
    }

    async fn clock(&self) -> Result<Option<Reading>, StoreError> {
        // The round trip is timed on a connection already in hand: a wait
        // for the pool would widen it without saying anything about the
        // time.
        let mut conn = self.sql.writer.acquire().await?;
        let sent = std::time::Instant::now();
        let at: i64 = sqlx::query_scalar(DATABASE_NOW)
            .fetch_one(&mut *conn)
            .await?;
        Ok(Some(Reading {
            at: UnixMillis(at),
            sent,
            received: std::time::Instant::now(),
        }))
    }

    async fn append_event(&self, e: &SecurityEvent) -> Result<(), StoreError> {
        append(&self.sql.writer, e).await
    }

    async fn admit(
        &self,
        context: &str,
        user: &UserId,
        now: UnixMillis,
        f: &AdmitFn<'_>,
    ) -> Result<Admission, StoreError> {
        let key = (context.to_owned(), user.clone());
        let (current, version) = self.admission_reads.call(key.clone()).await?;
        let step = f(&current);
        let write = admission::Write {
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

    fn subscribe(&self) -> broadcast::Receiver<SecurityEvent> {
        self.events.subscribe()
    }

    async fn events_ready(&self, within: Duration) -> bool {
        let mut listening = self.listening.clone();
        matches!(
            tokio::time::timeout(within, listening.wait_for(|ready| *ready)).await,
            Ok(Ok(_))
        )
    }
}

/// Appends one event; one statement, so the row and, for an alert, the
/// NOTIFY commit together, and every replica's listener (this one's
/// included) delivers it.
async fn append<'c>(conn: impl PgExecutor<'c>, e: &SecurityEvent) -> Result<(), StoreError> {
    sqlx::query(APPEND_EVENT.as_str())
        .bind(e.at)
        .bind(e.kind.as_str())
        .bind(&e.context)
        .bind(&e.rule)
        .bind(&e.user_id)
        .bind(&e.ip)
        .bind(&e.session_id)
        .bind(i32::try_from(e.tier).unwrap_or(i32::MAX))
        .bind(e.until)
        .bind(e.permanent)
        .bind(&e.actor)
        .bind(&e.caller)
        .bind(&e.detail)
        .bind(EVENT_CHANNEL)
        .bind(e.is_alert())
        .execute(conn)
        .await?;
    Ok(())
}
