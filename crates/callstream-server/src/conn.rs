//! Connections: the listener wraps every accepted socket in a [`StallGuard`].
//!
//! Long-lived streams have no overall write timeout, but a client that stops reading entirely
//! must not hold its stream, its subscription and its task forever (nor hold up a graceful
//! shutdown waiting to flush). hyper has no write timeout of its own, and a body-level timeout
//! cannot help because hyper stops polling the body while the socket is full. So the guard sits
//! under hyper, on the socket: a write that makes no progress for `limit` fails with `TimedOut`,
//! and hyper closes the connection. A reader that is merely slow keeps making progress (and
//! loses frames to its bounded queue instead), so it is never cut off by this.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// A socket whose writes fail after `limit` without progress.
pub struct StallGuard<S> {
    inner: S,
    limit: Duration,
    /// Started when a write first returns `Pending`; cleared by any write that completes.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> StallGuard<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    /// Maps a write's outcome: progress resets the clock; `Pending` runs it, and registers the
    /// timer with the same waker so the task wakes when it expires.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        outcome: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match outcome {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing for the write stall timeout",
                )))
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, outcome)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, outcome)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, outcome)
    }
}

/// The server's listener: TCP with `TCP_NODELAY` (small frames must not wait for Nagle), a
/// bounded send buffer when configured, and a [`StallGuard`] on every connection.
pub struct GuardedListener {
    inner: TcpListener,
    limit: Duration,
    send_buffer: Option<usize>,
}

impl GuardedListener {
    pub fn new(inner: TcpListener, limit: Duration, send_buffer: Option<usize>) -> Self {
        Self {
            inner,
            limit,
            send_buffer,
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = StallGuard<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own accept loop for TCP retries transient errors (like running out of file
        // descriptors) after a pause, so it never returns an error.
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY");
        }
        // A fixed size also turns off the kernel's send-buffer autotuning for this socket,
        // which is the point: a client that stops reading is noticed after this much, not
        // after the megabytes autotuning would grant it (see `socket_send_buffer_bytes`).
        if let Some(size) = self.send_buffer
            && let Err(err) = socket2::SockRef::from(&stream).set_send_buffer_size(size)
        {
            tracing::debug!(error = %err, "could not set SO_SNDBUF");
        }
        (StallGuard::new(stream, self.limit), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_without_progress_fails_after_the_limit_and_progress_resets_it() {
        // A duplex pipe with room for 8 bytes and nobody reading the other end.
        let (near, far) = tokio::io::duplex(8);
        let mut guarded = StallGuard::new(near, Duration::from_secs(5));
        guarded.write_all(b"12345678").await.unwrap();
        let started = tokio::time::Instant::now();
        let err = guarded.write_all(b"more").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));

        // Once the reader drains, writing works again.
        let (near, mut far2) = tokio::io::duplex(8);
        let mut guarded = StallGuard::new(near, Duration::from_secs(5));
        guarded.write_all(b"12345678").await.unwrap();
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            let mut buf = [0u8; 8];
            tokio::io::AsyncReadExt::read_exact(&mut far2, &mut buf)
                .await
                .unwrap();
            far2
        });
        guarded.write_all(b"abcd").await.unwrap();
        drop(reader.await.unwrap());
        drop(far);
    }
}
