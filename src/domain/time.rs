use std::time::Duration;

/// A point in time as milliseconds since the Unix epoch, UTC.
///
/// Milliseconds rather than `SystemTime` because the same integer is stored
/// in both database dialects and compared across replicas; the clock itself
/// is always an input, never read here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// `self + d`, saturating: a duration too large to represent means
    /// "forever" for every comparison this crate makes.
    pub fn plus(self, d: Duration) -> UnixMillis {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        UnixMillis(self.0.saturating_add(ms))
    }

    /// How long from `self` until `later`; zero when `later` is not later.
    pub fn until(self, later: UnixMillis) -> Duration {
        Duration::from_millis(u64::try_from(later.0.saturating_sub(self.0)).unwrap_or(0))
    }

    /// Whole seconds from `self` until `later`, rounded up so a caller that
    /// waits that long is never early.
    pub fn seconds_until(self, later: UnixMillis) -> u64 {
        self.until(later).as_millis().div_ceil(1000) as u64
    }
}
