//! Work done on a caller's behalf that may be dropped while, and only
//! while, dropping it loses nothing: until it first touches the store.
//!
//! A call's work runs in a task of its own, so a caller that goes away
//! never interrupts a store transaction (the store runs what it starts to
//! completion). Work that has not reached the store yet has done nothing
//! worth finishing: for a caller that reset its call, hung up or ran out
//! of time, it is dropped instead of run to an answer no one reads. The
//! store marks the line: its one wrapper around every operation calls
//! `point_of_no_return` before it starts.

use std::cell::Cell;
use std::future::Future;

tokio::task_local! {
    /// Set once the work of the current call has touched the store.
    static COMMITTED: Cell<bool>;
}

/// Marks the current call's work as one that must run to completion. A
/// no-op outside `unless_abandoned` (background loops, start-up).
pub fn point_of_no_return() {
    let _ = COMMITTED.try_with(|committed| committed.set(true));
}

/// Runs `work` to its end, unless `gone` resolves (the caller went away)
/// before the work has passed its point of no return: then the work is
/// dropped where it stands and the answer is `None`.
pub async fn unless_abandoned<T>(
    work: impl Future<Output = T>,
    gone: impl Future<Output = ()>,
) -> Option<T> {
    COMMITTED
        .scope(Cell::new(false), async move {
            tokio::pin!(work);
            tokio::pin!(gone);
            let mut caller_left = false;
            loop {
                // The caller is looked at first: work whose caller left
                // before it was first polled never starts. The flag can
                // only change while the work is polled, so work dropped
                // here has not reached the store.
                tokio::select! {
                    biased;
                    () = &mut gone, if !caller_left => {
                        if !COMMITTED.with(Cell::get) {
                            return None;
                        }
                        caller_left = true;
                    }
                    answer = &mut work => return Some(answer),
                }
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::{Notify, oneshot};

    /// Work that waits for `step`, passes its point of no return, waits
    /// for `step` again, then records that it finished.
    async fn work(step: Arc<Notify>, finished: Arc<AtomicBool>, commits: bool) {
        step.notified().await;
        if commits {
            point_of_no_return();
        }
        step.notified().await;
        finished.store(true, Ordering::SeqCst);
    }

    #[tokio::test]
    async fn work_is_dropped_only_before_its_point_of_no_return() {
        for commits in [false, true] {
            let step = Arc::new(Notify::new());
            let finished = Arc::new(AtomicBool::new(false));
            let (leave, gone) = oneshot::channel::<()>();
            let running = tokio::spawn(unless_abandoned(
                work(step.clone(), finished.clone(), commits),
                async move {
                    let _ = gone.await;
                },
            ));
            step.notify_one();
            tokio::task::yield_now().await;
            drop(leave);
            tokio::task::yield_now().await;
            step.notify_one();
            let answer = running.await.unwrap();
            assert_eq!(answer.is_some(), commits, "commits: {commits}");
            assert_eq!(finished.load(Ordering::SeqCst), commits);
        }
    }

    #[tokio::test]
    async fn work_whose_caller_left_before_it_started_never_runs() {
        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        let answer =
            unless_abandoned(async move { flag.store(true, Ordering::SeqCst) }, async {}).await;
        assert!(answer.is_none());
        assert!(!started.load(Ordering::SeqCst));
    }

    #[test]
    fn outside_a_call_the_mark_is_harmless() {
        point_of_no_return();
    }
}
