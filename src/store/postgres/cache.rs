//! This replica's copy of the key state rows, so that a check on a key
//! already known costs no round trip to Postgres, and a failure on one
//! needs no read before its compare-and-set.
//!
//! What is cached is the stored row (or its absence), never a verdict:
//! every check judges it at its own `now`, so a lock that ends or a window
//! that slides is seen on time. A write on any replica invalidates the keys
//! it wrote on every other replica: the writing statement NOTIFYs their
//! hashes on [`KEY_CHANNEL`], delivered at commit. The writing replica
//! itself replaces them with what it wrote before it answers, so a caller
//! reads its own write; it ignores its own notifications.
//!
//! The cache is only trusted while it provably hears those notifications.
//! Each replica NOTIFYs a heartbeat carrying when it was sent; the cache is
//! trusted while the newest heartbeat that came back was sent less than
//! [`STALENESS`] ago. Postgres delivers notifications in commit order, so by
//! then every invalidation committed before that heartbeat was applied: a
//! channel that breaks silently bypasses the cache after at most
//! [`STALENESS`], and one whose connection drops bypasses it at once and
//! starts empty once it listens again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};

use crate::store::row::{Known, Named};
use crate::telemetry::metrics;

/// The NOTIFY channel of key invalidations and heartbeats.
pub const KEY_CHANNEL: &str = "authgate_keys";

/// The payload that clears every replica's cache, for writes that do not
/// name their keys (an admin's unlock, the cleanup pass); both are rare.
pub const CLEAR_ALL: &str = "*";

/// What a heartbeat's payload starts with: then the sending replica's id,
/// ':' and when it was sent.
pub const BEAT: &str = "beat:";

/// The prefix of `replica`'s heartbeats.
pub fn beats(replica: &str) -> String {
    format!("{BEAT}{replica}:")
}

/// The longest a trusted cache may go without proof that it hears every
/// invalidation: the bound on how stale a check can be when the channel
/// fails without its connection dropping.
pub const STALENESS: Duration = Duration::from_secs(1);

/// How often a heartbeat is sent: several per STALENESS, so one late beat
/// does not bypass the cache.
pub const HEARTBEAT: Duration = Duration::from_millis(200);

/// Invalidations are counted per bucket of keys: a fill that raced one in
/// its bucket is dropped. Enough buckets that at thousands of writes per
/// second a millisecond's read rarely shares one with a write.
const BUCKETS: usize = 1 << 14;

/// Hashes per notification, so a payload stays under Postgres's 8000
/// bytes (17 bytes each).
const HASHES_PER_NOTIFY: usize = 400;

/// A key's name: 128 bits of SHA-256 of its primary key columns, the same
/// in every replica and every build. The first 64 are its hash, what the
/// channel names and entries are found by; two keys that share it only
/// invalidate each other. The other 64 tell such keys apart in the cache,
/// which keeps no key text: finding two keys with one name takes about
/// 2^64 tries.
fn column_name(context: &str, rule: &str, user_id: &str, ip: &str, token: &str) -> (u64, u64) {
    let mut h = Sha256::new();
    for part in [context, rule, user_id, ip, token] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let half = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest[at..at + 8]);
        u64::from_be_bytes(bytes)
    };
    (half(0), half(8))
}

/// A key's name, worked out once per call from its columns: its hash, which
/// invalidations carry, and the rest, which tells keys sharing a hash
/// apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyName {
    pub hash: u64,
    check: u64,
}

impl KeyName {
    pub fn of(named: &Named<'_>) -> KeyName {
        let c = &named.columns;
        let (hash, check) =
            column_name(&named.id.context, &named.id.rule, c.user_id, &c.ip, c.token);
        KeyName { hash, check }
    }
}

/// The payloads that invalidate the keys with these hashes on every
/// replica but `sender`'s: its id, '|', then the hashes.
pub fn invalidations(sender: &str, hashes: &[u64]) -> Vec<String> {
    hashes
        .chunks(HASHES_PER_NOTIFY)
        .map(|chunk| {
            let hashes: Vec<String> = chunk.iter().map(|h| format!("{h:016x}")).collect();
            format!("{sender}|{}", hashes.join(","))
        })
        .collect()
}

/// What an invalidation payload asks of the replica `me`.
#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    /// Its own write, already applied.
    Own,
    Invalidate(Vec<u64>),
    /// A clear, or a payload this build cannot read (a newer one's?) that
    /// might name any key.
    Clear,
}

pub fn notice(payload: &str, me: &str) -> Notice {
    let Some((sender, hashes)) = payload.split_once('|') else {
        return Notice::Clear;
    };
    if sender == me {
        return Notice::Own;
    }
    hashes
        .split(',')
        .map(|h| u64::from_str_radix(h, 16).ok())
        .collect::<Option<Vec<u64>>>()
        .map_or(Notice::Clear, Notice::Invalidate)
}

/// What a lookup that missed must show when it fills: nothing it read may
/// be cached if an invalidation of its keys (or a clear) came in between.
pub struct Ticket {
    epoch: u64,
    /// Per id looked up: its hash and its bucket's generation.
    keys: Vec<(u64, u64)>,
    /// Per id, the rest of its name.
    checks: Vec<u64>,
}

/// A lookup: the rows found (`Some(None)`: known not to be stored), and
/// the ticket to fill the rest with.
pub struct Lookup {
    pub found: Vec<Option<Option<Known>>>,
    pub ticket: Ticket,
}

/// Entries are found by key hash, which is what invalidations name; the
/// rest of the key's name tells two keys with one hash apart.
struct Entry {
    check: u64,
    known: Option<Known>,
}

pub struct KeyCache {
    entries: Cache<u64, Arc<Entry>>,
    /// Per bucket, bumped by every invalidation of a key in it.
    generations: Box<[AtomicU64]>,
    /// Bumped by every clear.
    epoch: AtomicU64,
    /// Milliseconds since `origin` when the newest heartbeat that came back
    /// was sent; 0 while none has since the channel (re)connected.
    fresh_as_of: AtomicU64,
    /// Heartbeats sent before this (ms since `origin`) do not count: they
    /// may predate the LISTEN that the cache's contents rely on.
    floor: AtomicU64,
    origin: Instant,
}

impl KeyCache {
    /// A cache of at most `capacity` keys; untrusted until the channel
    /// connects and a heartbeat comes back.
    pub fn new(capacity: usize) -> Self {
        KeyCache {
            entries: Cache::new(capacity.max(1)),
            generations: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            fresh_as_of: AtomicU64::new(0),
            floor: AtomicU64::new(u64::MAX),
            origin: Instant::now(),
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        // 1 ms past the origin at least, so that 0 means "never".
        u64::try_from(at.duration_since(self.origin).as_millis()).unwrap_or(u64::MAX) + 1
    }

    /// The timestamp a heartbeat carries.
    pub fn beat(&self, now: Instant) -> u64 {
        self.millis(now)
    }

    /// A heartbeat sent at `sent` (a `beat`) came back through the channel.
    pub fn heard(&self, sent: u64) {
        if sent >= self.floor.load(Ordering::SeqCst) {
            self.fresh_as_of.fetch_max(sent, Ordering::SeqCst);
        }
    }

    /// Whether the cache may answer at `now`.
    pub fn trusted(&self, now: Instant) -> bool {
        let fresh = self.fresh_as_of.load(Ordering::SeqCst);
        fresh != 0 && self.millis(now).saturating_sub(fresh) < millis(STALENESS)
    }

    /// The channel's connection is gone: nothing is trusted until it
    /// listens again.
    pub fn disconnected(&self) {
        self.floor.store(u64::MAX, Ordering::SeqCst);
        self.fresh_as_of.store(0, Ordering::SeqCst);
        metrics::key_cache_trusted(false);
    }

    /// The channel listens again at `now`: what was cached may have missed
    /// invalidations, so it goes, and heartbeats count from now on.
    pub fn listening(&self, now: Instant) {
        self.clear();
        self.floor.store(self.millis(now), Ordering::SeqCst);
    }

    /// What a read of the keys `names` must show to fill the cache: taken
    /// before the read.
    pub fn ticket(&self, names: &[KeyName]) -> Ticket {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let (keys, checks) = names
            .iter()
            .map(|n| {
                (
                    (n.hash, self.generation(n.hash).load(Ordering::SeqCst)),
                    n.check,
                )
            })
            .unzip();
        Ticket {
            epoch,
            keys,
            checks,
        }
    }

    /// Looks the keys `names` up, at `now`; `None` when the cache must not
    /// answer.
    pub fn lookup(&self, names: &[KeyName], now: Instant) -> Option<Lookup> {
        if !self.trusted(now) {
            metrics::key_cache_lookups("bypass", names.len());
            return None;
        }
        // The ticket is taken before the entries are read, and both before
        // the caller reads the misses from Postgres.
        let ticket = self.ticket(names);
        let found: Vec<_> = ticket
            .keys
            .iter()
            .zip(&ticket.checks)
            .map(|((hash, _), check)| {
                self.entries
                    .get(hash)
                    .filter(|entry| entry.check == *check)
                    .map(|entry| entry.known.clone())
            })
            .collect();
        let hits = found.iter().filter(|f| f.is_some()).count();
        metrics::key_cache_lookups("hit", hits);
        metrics::key_cache_lookups("miss", names.len() - hits);
        Some(Lookup { found, ticket })
    }

    /// Caches what was read for a lookup's misses: `(i, known)` is what
    /// Postgres holds for the lookup's `i`th key, `ticket` the lookup's.
    pub fn fill(&self, ticket: &Ticket, read: Vec<(usize, Option<Known>)>) {
        for (i, known) in read {
            let (hash, generation) = ticket.keys[i];
            let unchanged = || {
                self.epoch.load(Ordering::SeqCst) == ticket.epoch
                    && self.generation(hash).load(Ordering::SeqCst) == generation
            };
            if !unchanged() {
                continue;
            }
            let entry = Entry {
                check: ticket.checks[i],
                known,
            };
            self.entries.insert(hash, Arc::new(entry));
            // An invalidation that came in between the check and the insert
            // is either seen here or removes the entry after it (it bumps
            // the generation before it removes): no stale entry stays.
            if !unchanged() {
                self.entries.remove(&hash);
                continue;
            }
            // A key read for a call is one a call asked for: marked used, it
            // is kept (moved among the frequent) where keys only written, a
            // flood's of failures on keys never seen again, are evicted
            // first.
            let _ = self.entries.get(&hash);
        }
    }

    /// Replaces `ids` with the rows this replica just wrote to them, once
    /// committed; `ticket` is from before the write. The bump of each
    /// key's generation turns away fills of what was read before the
    /// commit. A key that another replica's write invalidated since the
    /// ticket is dropped instead: that write may have come after this one.
    pub fn wrote(&self, ticket: &Ticket, written: Vec<Known>) {
        for ((known, (hash, generation)), check) in
            written.into_iter().zip(&ticket.keys).zip(&ticket.checks)
        {
            // One step from the ticket's generation to this write's, so
            // that no invalidation can slip in between unseen.
            let mine = generation + 1;
            let unchanged = self.epoch.load(Ordering::SeqCst) == ticket.epoch
                && self
                    .generation(*hash)
                    .compare_exchange(*generation, mine, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok();
            if !unchanged {
                self.invalidate(&[*hash]);
                continue;
            }
            let entry = Entry {
                check: *check,
                known: Some(known),
            };
            self.entries.insert(*hash, Arc::new(entry));
            if self.epoch.load(Ordering::SeqCst) != ticket.epoch
                || self.generation(*hash).load(Ordering::SeqCst) != mine
            {
                self.entries.remove(hash);
            }
        }
    }

    /// Drops the keys with these hashes: another replica wrote them, or
    /// this one did without knowing what it wrote beforehand.
    pub fn invalidate(&self, hashes: &[u64]) {
        for hash in hashes {
            self.generation(*hash).fetch_add(1, Ordering::SeqCst);
            self.entries.remove(hash);
        }
    }

    fn generation(&self, hash: u64) -> &AtomicU64 {
        // BUCKETS is a power of two, well below 2^32.
        &self.generations[(hash as usize) & (BUCKETS - 1)]
    }

    /// Empties the cache.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Key, UserId};
    use crate::store::model::StateId;

    fn id(user: &str) -> KeyName {
        let ids = [StateId {
            context: "login".into(),
            rule: "user".into(),
            key: Key::User(UserId::parse("user_id", user).unwrap()),
        }];
        KeyName::of(&Named::all(&ids)[0])
    }

    fn failed_once() -> Option<Known> {
        known(1)
    }

    /// What a lookup finds of a key that failed `times` times.
    fn known(times: i64) -> Option<Known> {
        let state = crate::domain::KeyState {
            failures_total: u64::try_from(times).unwrap(),
            ..crate::domain::KeyState::default()
        };
        Some(Known {
            update: crate::store::Update {
                state,
                expires_at: None,
            },
            version: times,
        })
    }

    /// A cache that trusts itself at `now` and for the next STALENESS.
    fn trusted_at(now: Instant) -> KeyCache {
        let cache = KeyCache::new(100);
        cache.listening(now);
        cache.heard(cache.beat(now));
        cache
    }

    #[test]
    fn a_fill_is_served_until_the_key_is_invalidated() {
        let now = Instant::now();
        let cache = trusted_at(now);
        let ids = [id("alice"), id("bob")];
        let first = cache.lookup(&ids, now).unwrap();
        assert_eq!(first.found, vec![None, None]);
        cache.fill(&first.ticket, vec![(0, failed_once()), (1, None)]);
        let second = cache.lookup(&ids, now).unwrap();
        assert_eq!(second.found, vec![Some(known(1)), Some(None)]);

        cache.invalidate(&[ids[0].hash]);
        let third = cache.lookup(&ids, now).unwrap();
        assert_eq!(third.found, vec![None, Some(None)]);
    }

    #[test]
    fn keys_read_for_checks_outlast_a_flood_of_keys_only_written() {
        let now = Instant::now();
        let cache = KeyCache::new(5_000);
        cache.listening(now);
        cache.heard(cache.beat(now));
        // Failures on keys never seen again, three times the cache's size.
        for n in 0..15_000 {
            let name = [id(&format!("flood{n}"))];
            cache.wrote(&cache.ticket(&name), vec![known(1).unwrap()]);
        }
        // Then checks name a working set a fifth of its size, once each,
        // and another flood comes before they are checked again.
        let hot: Vec<_> = (0..1_000).map(|n| [id(&format!("hot{n}"))]).collect();
        for name in &hot {
            let missed = cache.lookup(name, now).unwrap();
            cache.fill(&missed.ticket, vec![(0, failed_once())]);
        }
        for n in 0..4_000 {
            let name = [id(&format!("later{n}"))];
            cache.wrote(&cache.ticket(&name), vec![known(1).unwrap()]);
        }
        let hits = hot
            .iter()
            .filter(|name| cache.lookup(*name, now).unwrap().found[0].is_some())
            .count();
        assert!(hits >= 990, "{hits} of 1000 checked keys still cached");
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_or_a_clear_is_dropped() {
        let now = Instant::now();
        let cache = trusted_at(now);
        let ids = [id("alice"), id("bob")];
        // The read that missed saw the state before a write whose
        // invalidation came in before the fill.
        let raced = cache.lookup(&ids, now).unwrap();
        cache.invalidate(&[ids[0].hash]);
        cache.fill(&raced.ticket, vec![(0, None), (1, None)]);
        let after = cache.lookup(&ids, now).unwrap();
        assert_eq!(after.found, vec![None, Some(None)], "only bob was filled");

        let raced = cache.lookup(&ids, now).unwrap();
        cache.clear();
        cache.fill(&raced.ticket, vec![(0, None)]);
        assert_eq!(cache.lookup(&ids, now).unwrap().found, vec![None, None]);
    }

    #[test]
    fn a_write_replaces_the_key_and_turns_away_fills_read_before_it() {
        let now = Instant::now();
        let cache = trusted_at(now);
        let ids = [id("alice")];
        // A check read version 1 just before this replica wrote version 2.
        let check = cache.lookup(&ids, now).unwrap();
        let write = cache.ticket(&ids);
        cache.wrote(&write, vec![known(2).unwrap()]);
        cache.fill(&check.ticket, vec![(0, failed_once())]);
        assert_eq!(cache.lookup(&ids, now).unwrap().found, vec![Some(known(2))]);
    }

    #[test]
    fn a_write_that_another_replica_may_have_followed_is_forgotten() {
        let now = Instant::now();
        let cache = trusted_at(now);
        let ids = [id("alice")];
        let l = cache.lookup(&ids, now).unwrap();
        cache.fill(&l.ticket, vec![(0, failed_once())]);
        let write = cache.ticket(&ids);
        // Another replica's write of alice was notified between this
        // replica's ticket and its own commit's answer.
        cache.invalidate(&[ids[0].hash]);
        cache.wrote(&write, vec![known(2).unwrap()]);
        assert_eq!(cache.lookup(&ids, now).unwrap().found, vec![None]);
    }

    #[test]
    fn notices_name_their_sender() {
        let payloads = invalidations("me", &[1, 0xabc]);
        assert_eq!(payloads, vec!["me|0000000000000001,0000000000000abc"]);
        assert_eq!(notice(&payloads[0], "me"), Notice::Own);
        assert_eq!(
            notice(&payloads[0], "you"),
            Notice::Invalidate(vec![1, 0xabc])
        );
        assert_eq!(notice(CLEAR_ALL, "you"), Notice::Clear);
        assert_eq!(notice("them|zz", "you"), Notice::Clear, "unreadable: clear");
    }

    #[test]
    fn trusted_only_while_a_recent_heartbeat_came_back_through_a_live_channel() {
        let start = Instant::now();
        let cache = KeyCache::new(100);
        assert!(!cache.trusted(start), "nothing heard yet");
        assert!(cache.lookup(&[id("alice")], start).is_none());

        let before_listen = cache.beat(start);
        let listened = start + Duration::from_millis(10);
        cache.listening(listened);
        cache.heard(before_listen);
        assert!(
            !cache.trusted(listened),
            "a beat sent before LISTEN proves nothing"
        );

        cache.heard(cache.beat(listened));
        assert!(cache.trusted(listened + STALENESS - Duration::from_millis(2)));
        assert!(!cache.trusted(listened + STALENESS + Duration::from_millis(1)));

        cache.heard(cache.beat(listened + STALENESS));
        assert!(cache.trusted(listened + STALENESS));
        cache.disconnected();
        assert!(!cache.trusted(listened + STALENESS), "dropped at once");
    }

    #[test]
    fn listening_again_forgets_everything_cached() {
        let now = Instant::now();
        let cache = trusted_at(now);
        let ids = [id("alice")];
        let l = cache.lookup(&ids, now).unwrap();
        cache.fill(&l.ticket, vec![(0, failed_once())]);
        cache.disconnected();
        cache.listening(now);
        cache.heard(cache.beat(now));
        assert_eq!(cache.lookup(&ids, now).unwrap().found, vec![None]);
    }

    #[test]
    fn key_hashes_are_the_same_in_every_build() {
        // Replicas of different builds share the channel during a rolling
        // upgrade: the hash is part of the wire format. (The value is
        // Python's hashlib.sha256 of the same bytes.)
        assert_eq!(
            column_name("login", "user_ip", "alice", "192.0.2.1", "").0,
            0x7ac7_b39d_fb33_9403
        );
        assert_ne!(
            column_name("login", "user", "ab", "", ""),
            column_name("login", "user", "a", "b", "")
        );
    }

    #[test]
    fn invalidation_payloads_fit_a_notification_and_read_back() {
        let hashes: Vec<u64> = (0..1000u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let sender = "0123456789abcdef0123456789abcdef";
        let payloads = invalidations(sender, &hashes);
        assert_eq!(payloads.len(), 3);
        assert!(payloads.iter().all(|p| p.len() < 8000));
        let back: Vec<u64> = payloads
            .iter()
            .flat_map(|p| match notice(p, "other") {
                Notice::Invalidate(h) => h,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(back, hashes);
    }
}
