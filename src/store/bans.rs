//! This replica's copy of the bans, which every check consults: read whole
//! from the store, so that a check costs no round trip for them, and read
//! again once a ban changes anywhere.
//!
//! A replica's own ban or lift replaces the copy before it answers. Another
//! replica's reaches it as a notice (Postgres: on the key channel, at
//! commit), which makes the next check read the bans again. Where notices
//! cannot be proven to arrive (the key cache is off, or it is not trusted:
//! see postgres/cache.rs), the copy is read again once it is older than
//! STALENESS, the bound on how stale a check may be either way.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::StoreError;
use crate::domain::{Ban, BanSet};

/// How old a copy may be when nothing proves it hears every change.
pub const STALENESS: Duration = Duration::from_secs(1);

struct Copy {
    set: Arc<BanSet>,
    /// The generation it was read at.
    generation: u64,
    /// When its read began.
    read_at: Instant,
}

#[derive(Default)]
pub struct BanCache {
    copy: RwLock<Option<Copy>>,
    /// Bumped by every change heard of; a copy read at an older one is
    /// read again.
    generation: AtomicU64,
    /// One read at a time: the checks that find the copy stale wait for
    /// the one read instead of each making their own.
    reading: tokio::sync::Mutex<()>,
}

impl BanCache {
    /// A ban changed somewhere, or may have unheard: the next check reads
    /// them all again.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn fresh(&self, trusted: bool, now: Instant) -> Option<Arc<BanSet>> {
        let copy = self.copy.read().unwrap_or_else(|e| e.into_inner());
        let copy = copy.as_ref()?;
        let current = copy.generation == self.generation.load(Ordering::SeqCst);
        let recent = now.saturating_duration_since(copy.read_at) < STALENESS;
        (current && (trusted || recent)).then(|| copy.set.clone())
    }

    /// The bans as of now: the copy while it is current, else what `read`
    /// gives. `trusted` says whether every change committed so far is
    /// certain to have been heard.
    pub async fn get<F>(&self, trusted: bool, read: F) -> Result<Arc<BanSet>, StoreError>
    where
        F: Future<Output = Result<Vec<Ban>, StoreError>>,
    {
        if let Some(set) = self.fresh(trusted, Instant::now()) {
            return Ok(set);
        }
        let _reading = self.reading.lock().await;
        if let Some(set) = self.fresh(trusted, Instant::now()) {
            return Ok(set);
        }
        // Taken before the read: a change heard while it runs makes the
        // next check read again.
        let generation = self.generation.load(Ordering::SeqCst);
        let read_at = Instant::now();
        let set = Arc::new(BanSet::new(read.await?));
        *self.copy.write().unwrap_or_else(|e| e.into_inner()) = Some(Copy {
            set: set.clone(),
            generation,
            read_at,
        });
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(n: usize, reads: &AtomicU64) -> Result<Vec<Ban>, StoreError> {
        reads.fetch_add(1, Ordering::SeqCst);
        let ban = |i: usize| Ban {
            target: crate::domain::BanTarget {
                context: None,
                key: crate::domain::Key::User(
                    crate::domain::UserId::parse("user_id", &format!("u{i}")).unwrap(),
                ),
            },
            reason: "r".into(),
            actor: String::new(),
            caller: String::new(),
            created_at: crate::domain::UnixMillis(0),
            until: None,
        };
        Ok((0..n).map(ban).collect())
    }

    #[tokio::test]
    async fn a_trusted_copy_is_kept_until_a_change_is_heard() {
        let cache = BanCache::default();
        let reads = AtomicU64::new(0);
        assert_eq!(cache.get(true, read(1, &reads)).await.unwrap().len(), 1);
        assert_eq!(cache.get(true, read(2, &reads)).await.unwrap().len(), 1);
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        cache.changed();
        assert_eq!(cache.get(true, read(2, &reads)).await.unwrap().len(), 2);
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_untrusted_copy_is_read_again_once_stale() {
        let cache = BanCache::default();
        let reads = AtomicU64::new(0);
        cache.get(false, read(1, &reads)).await.unwrap();
        cache.get(false, read(1, &reads)).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 1, "recent enough");
        let later = Instant::now() + STALENESS;
        assert!(cache.fresh(false, later).is_none());
        assert!(cache.fresh(true, later).is_some());
    }
}
