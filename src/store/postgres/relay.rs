//! The event relay: one LISTEN connection per replica that hears every
//! replica's alerts and key invalidations, catches up from the table after
//! each reconnection so no alert is lost, and sends the heartbeats that
//! prove the key cache still hears every invalidation (cache.rs says why
//! that is what makes the cache safe to trust).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgRow};
use sqlx::{AssertSqlSafe, Postgres};
use tokio::sync::{broadcast, watch};

use super::bans::BANS;
use super::cache::{self, KEY_CHANNEL, KeyCache};
use crate::domain::{EventKind, SecurityEvent};
use crate::store::StoreError;
use crate::store::bans::BanCache;
use crate::store::shared::{EVENT_COLUMNS, Params, Sql};
use crate::telemetry::metrics;

/// The NOTIFY channel that carries security events between replicas.
pub const EVENT_CHANNEL: &str = "authgate_events";

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
pub async fn listen(
    listening: PgPool,
    pool: PgPool,
    events: broadcast::Sender<SecurityEvent>,
    heard: Heard,
    replica: Arc<str>,
    ready: watch::Sender<bool>,
) {
    let Heard { cache, bans } = heard;
    let mut delivered = None;
    let mut retry = LISTEN_RETRY;
    let beats = cache::beats(&replica);
    let ears = Ears {
        events: &events,
        cache: cache.as_deref(),
        bans: &bans,
        replica: &replica,
        beats: &beats,
    };
    loop {
        let followed = follow(&listening, &pool, &ears, &mut delivered, &ready).await;
        if let Some(cache) = &cache {
            cache.disconnected();
        }
        bans.changed();
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
pub async fn heartbeat(pool: PgPool, cache: Arc<KeyCache>, beats: String) {
    let mut tick = tokio::time::interval(cache::HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = std::time::Instant::now();
        let beat = format!("{beats}{}", cache.beat(now));
        // A beat that cannot be sent is the point: none comes back, and
        // the cache stops being trusted.
        let _ = super::events::notify(&pool, KEY_CHANNEL, &beat).await;
        metrics::key_cache_entries(cache.len());
        metrics::key_cache_trusted(cache.trusted(std::time::Instant::now()));
    }
}

/// What the key channel's notices keep current: the key cache, when there
/// is one, and the bans.
pub struct Heard {
    pub cache: Option<Arc<KeyCache>>,
    pub bans: Arc<BanCache>,
}

/// Where the listener delivers what it hears.
struct Ears<'a> {
    events: &'a broadcast::Sender<SecurityEvent>,
    cache: Option<&'a KeyCache>,
    bans: &'a BanCache,
    replica: &'a str,
    /// The prefix of this replica's own heartbeats.
    beats: &'a str,
}

impl Ears<'_> {
    /// A notification on the key channel: a heartbeat, a change of the
    /// bans, a clear, or the hashes of keys written.
    fn key_notice(&self, payload: &str) {
        if let Some(sender) = payload.strip_prefix(BANS) {
            if sender != self.replica {
                self.bans.changed();
            }
            return;
        }
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
    ears.bans.changed();
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
    let mut p = Params::<Postgres>::default();
    let alerts = p.bind(EventKind::alert_names());
    let after = p.bind(delivered.catch_up_from());
    let catch_up = format!(
        "SELECT id, {EVENT_COLUMNS} FROM security_event \
         WHERE kind = ANY({alerts}) AND id > {after} ORDER BY id"
    );
    let missed: Vec<PgRow> = sqlx::query_with(AssertSqlSafe(catch_up), p.done()?)
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
