//! Connections: the listener wraps every accepted socket in a [`StallGuard`].
//!
//! Long-lived streams have no overall write timeout, but a client that stops reading entirely
//! must not hold its stream, its subscription and its task forever (nor hold up a graceful
//! shutdown waiting to flush). hyper has no write timeout of its own, and a body-level timeout
//! cannot help because hyper stops polling the body while the socket is full. So the guard sits
//! under hyper, on the socket: a write that makes no progress for `limit` fails with `TimedOut`,
//! and hyper closes the connection. A reader that is merely slow keeps making progress (and
//! loses frames to its bounded queue instead), so it is never cut off by this.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// A socket whose writes fail after `limit` without progress.
pub struct StallGuard<S> {
    inner: S,
    limit: Duration,
    /// Started when a write first returns `Pending`; cleared by any write that completes.
    stalled: Option<Pin<Box<Sleep>>>,
    /// The connection's place under the connection limits, given back when it closes.
    _slot: Option<Slot>,
}

impl<S> StallGuard<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
            _slot: None,
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

/// How many connections the process holds, in all and per source address. A connection over
/// either limit is closed as soon as it is accepted, before anything is read from it: a client
/// that opens connections faster than it uses them (or half-sends requests on each) then holds
/// at most its own share, and the process never runs out of descriptors for its streams.
pub struct ConnectionLimits {
    total: usize,
    /// 0: none.
    per_source: usize,
    state: Mutex<Held>,
    open: Gauge,
    refused_total: Counter,
    refused_per_source: Counter,
}

#[derive(Default)]
struct Held {
    open: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The process holds `max_connections` already.
    Total,
    /// Its source address holds `max_connections_per_source` already.
    PerSource,
}

impl ConnectionLimits {
    /// `open` and the refusal counters are the metrics this updates.
    pub fn new(
        total: usize,
        per_source: usize,
        open: Gauge,
        refused_total: Counter,
        refused_per_source: Counter,
    ) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_source,
            state: Mutex::new(Held::default()),
            open,
            refused_total,
            refused_per_source,
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // Every update leaves the counts consistent, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for a connection from `source`, or why there is none.
    ///
    /// # Errors
    /// [`Refusal`] when either limit is reached (and counts it).
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Slot, Refusal> {
        let mut held = self.held();
        if held.open >= self.total {
            self.refused_total.inc();
            return Err(Refusal::Total);
        }
        let mine = held.by_source.get(&source).copied().unwrap_or(0);
        if self.per_source != 0 && mine >= self.per_source {
            self.refused_per_source.inc();
            return Err(Refusal::PerSource);
        }
        held.open += 1;
        held.by_source.insert(source, mine + 1);
        self.open.set(i64::try_from(held.open).unwrap_or(i64::MAX));
        Ok(Slot {
            limits: self.clone(),
            source,
        })
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.held().open
    }
}

/// One connection's place; dropping it gives the place back.
pub struct Slot {
    limits: Arc<ConnectionLimits>,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.limits.held();
        held.open = held.open.saturating_sub(1);
        if let std::collections::hash_map::Entry::Occupied(mut mine) =
            held.by_source.entry(self.source)
        {
            *mine.get_mut() -= 1;
            if *mine.get() == 0 {
                mine.remove();
            }
        }
        self.limits
            .open
            .set(i64::try_from(held.open).unwrap_or(i64::MAX));
    }
}

/// The server's listener: TCP with `TCP_NODELAY` (small frames must not wait for Nagle), a
/// bounded send buffer when configured, the connection limits, and a [`StallGuard`] on every
/// connection.
pub struct GuardedListener {
    inner: TcpListener,
    limit: Duration,
    send_buffer: Option<usize>,
    limits: Arc<ConnectionLimits>,
}

impl GuardedListener {
    pub fn new(
        inner: TcpListener,
        limit: Duration,
        send_buffer: Option<usize>,
        limits: Arc<ConnectionLimits>,
    ) -> Self {
        Self {
            inner,
            limit,
            send_buffer,
            limits,
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = StallGuard<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own accept loop for TCP retries transient errors (like running out of file
        // descriptors) after a pause, so it never returns an error.
        let (stream, addr, slot) = loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            match self.limits.admit(addr.ip()) {
                Ok(slot) => break (stream, addr, slot),
                Err(refusal) => {
                    // Closed unread: a reset rather than a lingering close, so that the
                    // refused connection holds nothing here, not even a TIME_WAIT entry.
                    let _ = stream.set_zero_linger();
                    tracing::debug!(?refusal, "connection refused by the connection limits");
                }
            }
        };
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
        let mut guarded = StallGuard::new(stream, self.limit);
        guarded._slot = Some(slot);
        (guarded, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn connections_are_limited_per_source_and_in_all_and_closing_gives_places_back() {
        let (open, total, per_source) = (Gauge::default(), Counter::default(), Counter::default());
        let limits = ConnectionLimits::new(3, 2, open.clone(), total.clone(), per_source.clone());
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = limits.admit(a).unwrap();
        let _second = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).err(), Some(Refusal::PerSource));
        let _third = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).err(), Some(Refusal::Total));
        assert_eq!((open.get(), total.get(), per_source.get()), (3, 1, 1));
        drop(first);
        assert_eq!((limits.open(), open.get()), (2, 2));
        let _again = limits.admit(a).unwrap();
        // No per-source limit: one address may take every place.
        let limits = ConnectionLimits::new(2, 0, Gauge::default(), total, per_source);
        let _x = limits.admit(a).unwrap();
        let _y = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).err(), Some(Refusal::Total));
    }

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
