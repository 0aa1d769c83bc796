//! The service's only source of "now". Decision logic takes time as an
//! argument; this is where the argument comes from, so tests can move it.
//!
//! Replicas on one Postgres judge the same stored absolute times (a lock's
//! end, a window's start), so they must share one clock: the database's.
//! Reading it in every statement would put a round trip in front of every
//! cached check, so each replica reads it every `clock.sync_interval` and
//! carries it forward with its own monotonic clock, which no NTP step or
//! operator's `date -s` moves. The error of `now` is then half the reading's
//! round trip (well under a millisecond on a local network) plus the
//! monotonic clock's drift since (parts per million).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::domain::UnixMillis;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixMillis;
}

/// This host's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        UnixMillis(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A clock that moves only when told to: black-box tests use it to let a
/// lockout expire without sleeping.
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: UnixMillis) -> Self {
        ManualClock(AtomicI64::new(start.0))
    }

    pub fn set(&self, to: UnixMillis) {
        self.0.store(to.0, Ordering::SeqCst);
    }

    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.0.load(Ordering::SeqCst))
    }
}

/// A reading that took longer than this says less about the time than the
/// monotonic clock already knows (its error is half the round trip): it is
/// not adopted, and the previous one is carried on.
const MAX_ROUND_TRIP: Duration = Duration::from_millis(100);

/// What a time authority answered, between two instants of this process's
/// monotonic clock: the answer was true at some moment between them.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub at: UnixMillis,
    pub sent: Instant,
    pub received: Instant,
}

impl Reading {
    /// This host's wall clock, read now: the authority where no other
    /// clock is shared (SQLite).
    pub fn wall() -> Reading {
        let sent = Instant::now();
        Reading {
            at: SystemClock.now(),
            sent,
            received: sent,
        }
    }

    fn round_trip(&self) -> Duration {
        self.received.saturating_duration_since(self.sent)
    }

    /// The moment the answer is taken to be true at: the middle of the
    /// round trip bounds the error by half of it.
    fn midpoint(&self) -> Instant {
        self.sent + self.round_trip() / 2
    }

    /// How far `wall`, this host's wall clock read just after the answer
    /// arrived, is ahead of the authority (negative: behind).
    pub fn skew_of(&self, wall: UnixMillis) -> i64 {
        wall.0 - self.at.plus(self.round_trip() / 2).0
    }
}

/// The time every decision is made by: the latest adopted reading of the
/// authority, carried forward by the monotonic clock.
pub struct Authority {
    origin: Instant,
    /// The authority's time at `origin`, as the latest adopted reading
    /// puts it; `now` is this plus the monotonic time since `origin`.
    base: AtomicI64,
}

impl Authority {
    pub fn new(first: Reading) -> Self {
        Authority {
            origin: first.midpoint(),
            base: AtomicI64::new(first.at.0),
        }
    }

    /// Adopts `reading` unless its round trip makes it too imprecise, and
    /// tells how far the authority moved against the monotonic clock since
    /// the previous adopted reading (positive: forward). Re-anchoring on
    /// every reading lets a step of the authority in (it is the time, by
    /// definition) while nothing this host does to its wall clock gets in.
    pub fn adopt(&self, reading: Reading) -> Option<i64> {
        if reading.round_trip() > MAX_ROUND_TRIP {
            return None;
        }
        let since_origin = signed_millis(self.origin, reading.midpoint());
        let base = reading.at.0 - since_origin;
        Some(base - self.base.swap(base, Ordering::SeqCst))
    }
}

impl Clock for Authority {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.base.load(Ordering::SeqCst)).plus(self.origin.elapsed())
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `to - from` in milliseconds, negative when `to` is earlier.
fn signed_millis(from: Instant, to: Instant) -> i64 {
    match to.checked_duration_since(from) {
        Some(d) => millis(d),
        None => -millis(from.duration_since(to)),
    }
}

/// Whether a replica's clocks are within tolerance of the authority, told
/// once per change so a lasting skew is one log line, not one a second.
pub struct SkewWatch {
    tolerance_ms: i64,
    skewed: bool,
}

/// What changed with one reading, for the operator.
#[derive(Debug, PartialEq, Eq)]
pub enum Finding {
    /// The wall clock went further from the authority than tolerated.
    Skewed,
    /// It came back within tolerance.
    Recovered,
}

impl SkewWatch {
    pub fn new(tolerance: Duration) -> Self {
        SkewWatch {
            tolerance_ms: millis(tolerance),
            skewed: false,
        }
    }

    pub fn is_step(&self, moved_ms: i64) -> bool {
        moved_ms.abs() > self.tolerance_ms
    }

    /// Judges a skew of `skew_ms`; `Some` when that changed the verdict.
    pub fn judge(&mut self, skew_ms: i64) -> Option<Finding> {
        let skewed = skew_ms.abs() > self.tolerance_ms;
        if skewed == self.skewed {
            return None;
        }
        self.skewed = skewed;
        Some(if skewed {
            Finding::Skewed
        } else {
            Finding::Recovered
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_767_225_600_000;

    fn reading(at: i64, sent: Instant, rtt_ms: u64) -> Reading {
        Reading {
            at: UnixMillis(at),
            sent,
            received: sent + Duration::from_millis(rtt_ms),
        }
    }

    #[test]
    fn now_is_the_authority_carried_by_the_monotonic_clock() {
        let t0 = Instant::now();
        let a = Authority::new(reading(T, t0, 10));
        // Read half-way through the 10 ms round trip, so 5 ms before now.
        let expected = T + millis(Instant::now().duration_since(t0 + Duration::from_millis(5)));
        assert!(
            (a.now().0 - expected).abs() <= 2,
            "{} vs {expected}",
            a.now().0
        );
    }

    #[test]
    fn adopting_tells_how_far_the_authority_moved() {
        let t0 = Instant::now();
        let a = Authority::new(reading(T, t0, 0));
        let later = t0 + Duration::from_secs(1);
        assert_eq!(a.adopt(reading(T + 1000, later, 0)), Some(0), "no step");
        let step = 2 * 3600 * 1000;
        assert_eq!(
            a.adopt(reading(T + 2000 + step, later + Duration::from_secs(1), 0)),
            Some(step)
        );
        assert_eq!(
            a.adopt(reading(T + 3000, later + Duration::from_secs(2), 0)),
            Some(-step),
            "a step back is one too"
        );
    }

    #[test]
    fn a_slow_reading_is_not_adopted() {
        let t0 = Instant::now();
        let a = Authority::new(reading(T, t0, 0));
        let before = a.now();
        assert_eq!(a.adopt(reading(T + 99_999, t0, 500)), None);
        assert!(a.now().0 - before.0 < 1000, "the slow reading moved now");
    }

    #[test]
    fn skew_is_the_wall_clock_against_the_answer_at_its_arrival() {
        let r = reading(T, Instant::now(), 10);
        assert_eq!(r.skew_of(UnixMillis(T + 5)), 0);
        assert_eq!(r.skew_of(UnixMillis(T + 7_200_005)), 7_200_000);
        assert_eq!(r.skew_of(UnixMillis(T - 7_199_995)), -7_200_000);
    }

    #[test]
    fn skew_is_reported_once_per_change() {
        let mut w = SkewWatch::new(Duration::from_secs(2));
        assert_eq!(w.judge(1999), None);
        assert_eq!(w.judge(-2001), Some(Finding::Skewed));
        assert_eq!(w.judge(7_200_000), None, "still skewed");
        assert_eq!(w.judge(10), Some(Finding::Recovered));
        assert!(w.is_step(2001) && w.is_step(-2001) && !w.is_step(2000));
    }
}
