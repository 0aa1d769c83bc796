//! Coalesces concurrent store calls into one statement.
//!
//! Every CheckAccess starts with a primary-key read and every RecordFailure
//! with a read and a compare-and-set write. At dozens of requests in flight,
//! one statement per request spends most of the database's time on round
//! trips, wake-ups and per-statement set-up rather than on the rows
//! themselves. Calls that arrive while every lane is busy wait in a queue,
//! and the next free lane takes all of them as one batch. There is no timer:
//! an idle service sends each call at once, and batches only form when the
//! database is already the bottleneck.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{Health, StoreError};

/// Calls waiting to join a batch; beyond this, callers wait to enqueue.
const QUEUE: usize = 1024;
/// The most calls one batch serves, to bound the statement's size (each
/// call names a handful of keys).
const MAX_BATCH: usize = 128;

type Waiting<T, R> = (T, oneshot::Sender<Result<R, StoreError>>);

pub struct Batcher<T, R> {
    queue: mpsc::Sender<Waiting<T, R>>,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts the dispatcher: it runs `run` on at most `lanes` batches at
    /// once, and stops when the batcher is dropped. `run` answers each call
    /// of its batch, in order. While `health` knows the store to be down, a
    /// batch is answered at once with the cause, rather than after waiting
    /// for a lane and then for a connection.
    pub fn start<F, Fut>(lanes: usize, health: Arc<Health>, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Result<R, StoreError>>> + Send + 'static,
    {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(dispatch(
            waiting,
            Arc::new(Semaphore::new(lanes.max(1))),
            health,
            run,
        ));
        Batcher { queue }
    }

    /// Runs `call` in the next batch and returns its answer.
    pub async fn call(&self, call: T) -> Result<R, StoreError> {
        let (reply, answer) = oneshot::channel();
        // The dispatcher only stops when this batcher is dropped or the
        // runtime shuts down: to the caller, the pool has closed.
        if self.queue.send((call, reply)).await.is_err() {
            return Err(sqlx::Error::PoolClosed.into());
        }
        answer
            .await
            .unwrap_or_else(|_| Err(sqlx::Error::PoolClosed.into()))
    }
}

async fn dispatch<T, R, F, Fut>(
    mut waiting: mpsc::Receiver<Waiting<T, R>>,
    lanes: Arc<Semaphore>,
    health: Arc<Health>,
    run: F,
) where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Vec<Result<R, StoreError>>> + Send + 'static,
{
    loop {
        // The lane is taken before the batch is formed, so that while every
        // lane is busy the queue fills and the next batch is larger.
        let Ok(lane) = lanes.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = waiting.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (calls, replies): (Vec<T>, Vec<_>) = batch.into_iter().unzip();
        if let Err(down) = health.refuse_while_down() {
            drop(lane);
            for reply in replies {
                let _ = reply.send(Err(down.clone()));
            }
            continue;
        }
        let answers = run(calls);
        tokio::spawn(async move {
            let answers = answers.await;
            drop(lane);
            for (reply, answer) in replies.into_iter().zip(answers) {
                // A caller whose RPC was cancelled has dropped its receiver;
                // what was written stays written, as for any cancelled call.
                let _ = reply.send(answer);
            }
        });
    }
}
