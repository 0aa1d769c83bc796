//! The connections the gRPC server serves. tonic's own accept loop retries a
//! failed accept at once, so at the file-descriptor limit (EMFILE) it spins
//! a core; it also serves a connection that never says a word for as long
//! as the peer keeps it open. This one backs off while accepting fails,
//! sets TCP_NODELAY (gRPC's small frames must not wait for Nagle), and hands
//! a connection on only once its first bytes have arrived, within the
//! handshake timeout. It also caps the connections open at once: one
//! accepted past `server.max_connections` is closed at once, so a client
//! retries another replica rather than wait on one that will not serve it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::telemetry::metrics;

/// The first pause after a failed accept; doubled while accepting keeps
/// failing, up to ACCEPT_BACKOFF_MAX.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Connections that have spoken, waiting for the server to take them.
const READY_QUEUE: usize = 128;

/// A connection the server serves, counted against `server.max_connections`
/// until it closes. To tonic it is the TCP stream it wraps, with the same
/// connection info (the peer's address, and its certificate under TLS).
pub struct Connection {
    stream: TcpStream,
    _open: Open,
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The connections open, up to a maximum.
#[derive(Clone)]
struct Opened {
    count: Arc<AtomicUsize>,
    max: usize,
}

/// One open connection's place among them, given back when dropped.
struct Open(Arc<AtomicUsize>);

impl Opened {
    fn new(max: usize) -> Self {
        Opened {
            count: Arc::default(),
            max,
        }
    }

    /// A place for one more connection, unless `max` are open.
    fn open(&self) -> Option<Open> {
        let before = self
            .count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        metrics::connections(before + 1);
        Some(Open(self.count.clone()))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let before = self.0.fetch_sub(1, Ordering::SeqCst);
        metrics::connections(before - 1);
    }
}

/// The accepted connections of `listener`, at most `max_connections` open
/// at once, as a stream for tonic. Accepting stops, and the listening
/// socket closes, when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    handshake_timeout: Duration,
    max_connections: usize,
) -> ReceiverStream<io::Result<Connection>> {
    let (ready, stream) = mpsc::channel(READY_QUEUE);
    let listener = Arc::new(listener);
    tokio::spawn(accept_loop(
        move || {
            let listener = listener.clone();
            async move { listener.accept().await }
        },
        ready,
        handshake_timeout,
        Opened::new(max_connections),
    ));
    ReceiverStream::new(stream)
}

/// Accepts with `accept` until the server stops listening.
async fn accept_loop<A, F>(
    mut accept: A,
    ready: mpsc::Sender<io::Result<Connection>>,
    handshake_timeout: Duration,
    opened: Opened,
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
                // Closed at once (dropped): not logged, as a peer could
                // make that as many lines as connections it opens.
                let Some(open) = opened.open() else {
                    metrics::connection_refused();
                    continue;
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                let connection = Connection {
                    stream,
                    _open: open,
                };
                tokio::spawn(hand_over(connection, ready.clone(), handshake_timeout));
            }
            Err(e) => {
                tracing::warn!(error = %e, pause = ?backoff, "cannot accept a connection; pausing");
                metrics::accept_failed();
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = ready.closed() => return,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Passes `connection` to the server once it has sent something; a peer
/// that stays silent past `handshake_timeout`, or hangs up, is dropped.
async fn hand_over(
    connection: Connection,
    ready: mpsc::Sender<io::Result<Connection>>,
    handshake_timeout: Duration,
) {
    let mut first = [0u8; 1];
    let spoke = connection.stream.peek(&mut first);
    match tokio::time::timeout(handshake_timeout, spoke).await {
        Ok(Ok(n)) if n > 0 => {
            let _ = ready.send(Ok(connection)).await;
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
        let looping = accept_loop(accept, ready, Duration::from_secs(10), Opened::new(1));
        let _ = tokio::time::timeout(Duration::from_secs(10), looping).await;
        let made = attempts.load(Ordering::SeqCst);
        // 5 ms doubling to a 1 s ceiling: eight attempts in the first
        // 1.3 s, then one a second.
        assert!((10..=20).contains(&made), "{made} attempts in 10 s");
    }

    #[test]
    fn connections_past_the_maximum_find_no_place_until_one_closes() {
        let opened = Opened::new(2);
        let first = opened.open().expect("one");
        let _second = opened.open().expect("two");
        assert!(opened.open().is_none());
        drop(first);
        assert!(opened.open().is_some());
    }
}
