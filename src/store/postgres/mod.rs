//! The shared store: several replicas, one Postgres. What only Postgres
//! does is below here: batching reads and compare-and-set writes
//! (`keys.rs`, `admission.rs`), row locks under contention, the audit
//! trail's statements (`events.rs`), the LISTEN/NOTIFY relay of alerts and
//! invalidations (`relay.rs`) and the key cache it keeps safe (`cache.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row as _};
use tokio::sync::{broadcast, watch};

mod admission;
mod bans;
mod cache;
mod events;
mod keys;
mod relay;

use self::cache::{KEY_CHANNEL, KeyCache};
use super::bans::BanCache;
use super::batch::Batcher;
use super::interface::{EventLog, Parts, Upkeep};
use super::model::{Purged, StateId};
use super::row::Known;
use super::shared::{FailuresColumn, Params, Sql};
use super::{Health, PoolSettings, StoreError};
use crate::clock::Reading;
use crate::domain::{SecurityEvent, UnixMillis};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Any replica's cleanup takes this transaction-scoped advisory lock, so
/// only one purges at a time.
pub const CLEANUP_LOCK: i64 = 0x6175_7468_6761_7465; // "authgate"

/// The database's clock, the one every replica decides by: the time the
/// statement runs, not the transaction's start (`now()`), in milliseconds
/// as every stored time is.
const DATABASE_NOW: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// Postgres reports these when it chose this transaction as the victim of a
/// deadlock or serialization conflict, and authgate_expect_written when a
/// compare-and-set lost; the transition is pure, so it is simply run again.
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

pub struct PostgresStore {
    /// One pool for reads and writes: Postgres serves both at once.
    sql: Sql<Postgres>,
    /// Key-state reads, coalesced into one query per batch.
    reads: Batcher<Vec<StateId>, Vec<Option<Known>>>,
    /// Compare-and-set writes of the fast path, coalesced likewise; `false`
    /// answers a write that lost its compare-and-set.
    writes: Batcher<keys::Write, bool>,
    /// Admit's reads and compare-and-set writes, batched as the key
    /// states' are.
    admission_reads: Batcher<admission::AdmissionKey, admission::Versioned>,
    admission_writes: Batcher<admission::Write, bool>,
    /// Key states known to this replica; `None` when turned off.
    cache: Option<Arc<KeyCache>>,
    /// The bans known to this replica.
    bans: Arc<BanCache>,
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

/// Each call's answer to an all-or-nothing batched compare-and-set: the
/// statement's outcome for those that joined it (`false` when it lost),
/// `false` for those left out.
fn answer_batch(joins: &[bool], written: Result<(), StoreError>) -> Vec<Result<bool, StoreError>> {
    let outcome = match written {
        Ok(()) => Ok(true),
        Err(StoreError::Other(e)) if is_retryable(&e) => Ok(false),
        Err(e) => Err(e),
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
    ) -> Result<Parts, StoreError> {
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
        let bans = Arc::new(BanCache::default());
        let listener = tokio::spawn(relay::listen(
            listening_pool,
            pool.clone(),
            events.clone(),
            relay::Heard {
                cache: cache.clone(),
                bans: bans.clone(),
            },
            replica.clone(),
            ready,
        ));
        let heartbeat = cache.clone().map(|cache| {
            tokio::spawn(relay::heartbeat(
                pool.clone(),
                cache,
                cache::beats(&replica),
            ))
        });
        let reader = pool.clone();
        let reads = Batcher::start(READ_LANES, health.clone(), move |calls| {
            keys::fetch_batch(reader.clone(), calls)
        });
        let (writer, sender) = (pool.clone(), replica.clone());
        let writes = Batcher::start(WRITE_LANES, health.clone(), move |calls| {
            keys::write_batch(writer.clone(), sender.clone(), calls)
        });
        let reader = pool.clone();
        let admission_reads = Batcher::start(READ_LANES, health.clone(), move |calls| {
            admission::fetch_batch(reader.clone(), calls)
        });
        let writer = pool.clone();
        let admission_writes = Batcher::start(WRITE_LANES, health.clone(), move |calls| {
            admission::write_batch(writer.clone(), calls)
        });
        let sql = Sql {
            writer: pool.clone(),
            readers: pool,
            begin_write: "BEGIN",
        };
        let shared = Arc::new(sql.clone());
        let store = PostgresStore {
            sql,
            reads,
            writes,
            admission_reads,
            admission_writes,
            cache,
            bans,
            replica,
            events,
            listener,
            heartbeat,
            listening,
        };
        Ok(Parts::of(Arc::new(store), shared))
    }
}

impl FailuresColumn for PgRow {
    fn recent_failures(&self) -> Result<Vec<i64>, StoreError> {
        Ok(self.try_get("recent_failures")?)
    }
}

#[async_trait::async_trait]
impl Upkeep for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.sql.writer).await?;
        Ok(())
    }

    async fn purge_expired(
        &self,
        now: UnixMillis,
        retention: Duration,
    ) -> Result<Option<Purged>, StoreError> {
        let mut tx = self.sql.writer.begin().await?;
        let mut p = Params::<Postgres>::default();
        let lock = format!("SELECT pg_try_advisory_xact_lock({})", p.bind(CLEANUP_LOCK));
        let won: bool = sqlx::query_scalar_with(AssertSqlSafe(lock), p.done()?)
            .fetch_one(&mut *tx)
            .await?;
        if !won {
            return Ok(None);
        }
        let purged = self.sql.cleanup(&mut tx, now, retention).await?;
        if purged.bans > 0 {
            events::notify(&mut *tx, KEY_CHANNEL, &bans::notice(&self.replica)).await?;
            self.bans.changed();
        }
        if purged.states > 0 {
            self.commit_clearing(tx).await?;
        } else {
            tx.commit().await?;
        }
        Ok(Some(purged))
    }

    async fn clock(&self) -> Result<Option<Reading>, StoreError> {
        // The round trip is timed on a connection already in hand: a wait
        // for the pool would widen it without saying anything about the
        // time.
        let mut conn = self.sql.writer.acquire().await?;
        let sent = Instant::now();
        let at: i64 = sqlx::query_scalar(DATABASE_NOW)
            .fetch_one(&mut *conn)
            .await?;
        Ok(Some(Reading {
            at: UnixMillis(at),
            sent,
            received: Instant::now(),
        }))
    }
}

#[async_trait::async_trait]
impl EventLog for PostgresStore {
    async fn append(&self, e: &SecurityEvent) -> Result<(), StoreError> {
        events::append(&self.sql.writer, e).await
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
