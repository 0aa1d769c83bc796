//! The connections the gRPC server serves. tonic's own accept loop retries a
//! failed accept at once, so at the file-descriptor limit (EMFILE) it spins
//! a core; it also serves a connection that never says a word for as long
//! as the peer keeps it open. This one backs off while accepting fails,
//! sets TCP_NODELAY (gRPC's small frames must not wait for Nagle), and hands
//! a connection on only once its first bytes have arrived, within the
//! handshake timeout.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The first pause after a failed accept; doubled while accepting keeps
/// failing, up to ACCEPT_BACKOFF_MAX.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Connections that have spoken, waiting for the server to take them.
const READY_QUEUE: usize = 128;

/// The accepted connections of `listener`, as a stream for tonic. Accepting
/// stops, and the listening socket closes, when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    handshake_timeout: Duration,
) -> ReceiverStream<io::Result<TcpStream>> {
    let (ready, stream) = mpsc::channel(READY_QUEUE);
    let listener = Arc::new(listener);
    tokio::spawn(accept_loop(
        move || {
            let listener = listener.clone();
            async move { listener.accept().await }
        },
        ready,
        handshake_timeout,
    ));
    ReceiverStream::new(stream)
}

/// Accepts with `accept` until the server stops listening.
async fn accept_loop<A, F>(
    mut accept: A,
    ready: mpsc::Sender<io::Result<TcpStream>>,
    handshake_timeout: Duration,
) where
    A: FnMut() -> F,
    F: Future<Output = io::Result<(TcpStream, SocketAddr)>>,
{
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        let accepted = tokio::select! {
            accepted = accept() => accepted,
            () = ready.closed() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff = ACCEPT_BACKOFF;
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                tokio::spawn(hand_over(stream, ready.clone(), handshake_timeout));
            }
            Err(e) => {
                tracing::warn!(error = %e, pause = ?backoff, "cannot accept a connection; pausing");
                crate::telemetry::metrics::accept_failed();
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = ready.closed() => return,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Passes `stream` to the server once it has sent something; a peer that
/// stays silent past `handshake_timeout`, or hangs up, is dropped.
async fn hand_over(
    stream: TcpStream,
    ready: mpsc::Sender<io::Result<TcpStream>>,
    handshake_timeout: Duration,
) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(handshake_timeout, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {
            let _ = ready.send(Ok(stream)).await;
        }
        Ok(_) => {}
        Err(_) => tracing::debug!("closing a connection that sent nothing"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Out of file descriptors, accept fails at once, every time: the loop
    /// must pause between attempts rather than spin.
    #[tokio::test(start_paused = true)]
    async fn failing_accepts_back_off() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let counted = attempts.clone();
        let accept = move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            assert!(n < 1000, "accept is retried without pause");
            async { Err(io::Error::from_raw_os_error(24)) }
        };
        let (ready, _stream) = mpsc::channel(1);
        let looping = accept_loop(accept, ready, Duration::from_secs(10));
        let _ = tokio::time::timeout(Duration::from_secs(10), looping).await;
        let made = attempts.load(Ordering::SeqCst);
        // 5 ms doubling to a 1 s ceiling: eight attempts in the first
        // 1.3 s, then one a second.
        assert!((10..=20).contains(&made), "{made} attempts in 10 s");
    }
}
