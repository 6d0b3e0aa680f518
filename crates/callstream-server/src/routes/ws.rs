//! The one WebSocket driver of the viewer sockets (seed 000's call socket, seed 001's live-call
//! socket, seed 003's live transcript socket), and the toolkit every socket shares (the runtime
//! socket included): settings, reads, pings, closes.
//!
//! [`drive`] owns the loop and its rules, the same on every surface: shutdown closes with 1001,
//! a stream token's expiry with 1008, an interrupted subscription with 1013 (reconnect and
//! resume), the call's end with 1000 after the answers still owed; pings keep the socket alive;
//! client messages go through the flood rule (each one over the rate is refused, a client over
//! it in more than `ws_flood_close_secs` seconds in a row is closed with 1008) and count in the
//! metrics; commands run beside the loop, at most `ws_max_commands_in_flight` at once, their
//! answers written as they come; frames queued for a client that fell behind go out in one
//! write. A surface ([`SocketSurface`]) supplies only its seed's words: its frames, its answers
//! to client messages, its error frames and its close codes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocketUpgrade, close_code};
use bytes::Bytes;
use callstream_bus::{AudioSubscription, End, Event, Subscription};
use callstream_core::audio::{AudioFrame, Track};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::ApiError;
use crate::limit::{FloodGuard, Verdict};
use crate::metrics::SurfaceLabels;
use crate::routes::COALESCE_MAX_FRAMES;
use crate::state::AppState;

/// How much a socket reads at a time: for sockets whose clients send only small commands (the
/// streaming surfaces). tungstenite zeroes this much of its read buffer on every read attempt,
/// and a streaming socket is polled for reads after every frame it is sent: at 4 KiB that
/// zeroing was 41 % of the server's userspace instructions per WebSocket frame (callgrind,
/// docs/benchmarks.md). A larger message is still read whole, in more reads.
pub const COMMAND_READS: usize = 512;
/// How much the runtime socket reads at a time: its messages are batches of events.
pub const INGEST_READS: usize = 4096;

/// Bytes a socket gathers before it writes them out.
const WRITE_BUFFER: usize = 16 * 1024;

/// The WebSocket settings every socket surface shares: small read buffers (`reads`;
/// tungstenite's default is 128 KiB per connection), writes gathered up to 16 KiB between
/// flushes (so frames queued for a client that fell behind go out in one write), and the cap
/// on what a client may send.
///
/// What the server sends has no cap of its own: the sink accepts a frame only after it has
/// flushed what it held beyond `WRITE_BUFFER` (its `poll_ready` waits for that), so it never
/// holds more than `WRITE_BUFFER` plus one frame, and every frame is bounded by the event it
/// carries (`max_event_bytes`, checked at ingest). A cap here (`max_write_buffer_size`) could
/// only fail a frame the gateway had accepted, and tungstenite fails the whole socket then: a
/// cap of 256 KiB once closed every viewer of a call on a 300 KB transcript turn.
pub fn configure(upgrade: WebSocketUpgrade, state: &AppState, reads: usize) -> WebSocketUpgrade {
    let max = state.config().ws_max_message_bytes;
    upgrade
        .read_buffer_size(reads)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(max)
        .max_frame_size(max)
}

/// The upgrade, or a JSON 400 for a plain HTTP request.
pub fn require_upgrade(
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<WebSocketUpgrade, ApiError> {
    upgrade.map_err(|e| {
        ApiError::new(
            e.status(),
            "websocket_required",
            format!("this endpoint is a WebSocket: {}", e.body_text()),
        )
    })
}

/// How long until `expires_at` (a year when there is none: keys do not expire mid-stream).
pub fn until(expires_at: Option<chrono::DateTime<chrono::Utc>>) -> Duration {
    expires_at.map_or(Duration::from_secs(365 * 24 * 3600), |at| {
        (at - callstream_core::time::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
    })
}

/// What one read from a client's socket brought.
pub enum Incoming {
    Text(Utf8Bytes),
    Binary(Bytes),
    /// A ping or pong (tungstenite answers pings itself).
    Control,
    /// The client closed, or the connection is gone.
    Closed,
    /// A message over `ws_max_message_bytes`.
    TooBig,
    /// Any other violation of the WebSocket protocol.
    Broken,
}

impl Incoming {
    pub fn from_read(read: Option<Result<Message, axum::Error>>) -> Self {
        match read {
            None | Some(Ok(Message::Close(_))) => Self::Closed,
            Some(Ok(Message::Text(text))) => Self::Text(text),
            Some(Ok(Message::Binary(bytes))) => Self::Binary(bytes),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Self::Control,
            Some(Err(err)) => {
                let too_big = err
                    .into_inner()
                    .downcast::<tungstenite::Error>()
                    .is_ok_and(|e| matches!(*e, tungstenite::Error::Capacity(_)));
                if too_big { Self::TooBig } else { Self::Broken }
            }
        }
    }
}

/// The keep-alive ping every socket surface sends, then every period; a client that stops
/// reading them is found by the write stall guard.
///
/// The first ping comes at a random point in the second half of the first period, not one
/// period after the socket opened: sockets opened together (a reconnect storm after a deploy,
/// a benchmark's thousand subscribers) would otherwise ping together, every period, for life,
/// and each such burst of writes and pongs delays every stream's frames behind it.
pub fn ping_timer(state: &AppState) -> tokio::time::Interval {
    let period = state.config().ws_ping();
    let first = first_ping(period, getrandom::u32().unwrap_or(u32::MAX));
    let mut ping = tokio::time::interval_at(Instant::now() + first, period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping
}

/// When the first ping (or SSE heartbeat) is due: `random` spread over the second half of
/// `period`.
pub(crate) fn first_ping(period: Duration, random: u32) -> Duration {
    let half = period / 2;
    half + half.mul_f64(f64::from(random) / (f64::from(u32::MAX) + 1.0))
}

/// The close every socket surface sends when its subscription was interrupted rather than
/// finished (1013, try again later: reconnect and resume).
pub fn interrupted() -> Message {
    close(
        close_code::AGAIN,
        "the live stream was interrupted; reconnect to resume",
    )
}

/// The close every socket surface sends at shutdown (1001).
pub fn going_away() -> Message {
    close(close_code::AWAY, "the server is shutting down")
}

/// The close for a binary frame where JSON text is expected (1003).
pub fn binary_refused() -> Message {
    close(
        close_code::UNSUPPORTED,
        "binary frames are not accepted; send JSON text",
    )
}

pub fn text(bytes: Bytes) -> Message {
    // Every frame is serde_json output, which is always UTF-8.
    Message::Text(Utf8Bytes::try_from(bytes).unwrap_or_default())
}

pub fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// [`close`] with a reason made at run time (at most 123 bytes fit a close frame).
pub fn close_with(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
}

/// A surface's answer to a client message.
pub enum Reply {
    /// This frame, now.
    Frame(Bytes),
    /// A command to carry out beside the loop; the frame it gives is its answer. `if_busy` is
    /// the answer instead when too many commands already wait for the runtime.
    Command {
        run: BoxFuture<'static, Bytes>,
        if_busy: Bytes,
    },
    /// Nothing to send.
    Nothing,
    /// Close the socket with this frame.
    Close(Message),
}

/// One socket surface in its seed's words; [`drive`] does the rest.
pub trait SocketSurface: Send {
    /// The frame for one event of the call, if this surface sends one for it.
    fn frame(&mut self, event: &Arc<Event>) -> Option<Bytes>;

    /// The answer to a text message within the rate limit.
    fn text(&mut self, message: &str) -> impl Future<Output = Reply> + Send;

    /// The answer to a binary message (within the rate limit when [`Self::limits_binary`]).
    fn binary(&mut self) -> Reply {
        Reply::Close(binary_refused())
    }

    /// Whether binary messages count toward the rate limit (else they are answered at once).
    fn limits_binary(&self) -> bool {
        false
    }

    /// The error frame for a message over the rate limit (`message` when it was text).
    fn rate_limited(&self, message: Option<&str>) -> Bytes;

    /// The close for a message over `ws_max_message_bytes`.
    fn too_big(&self) -> Message {
        close(close_code::SIZE, "message too big")
    }

    /// The close for any other protocol violation (`None`: just drop the connection).
    fn broken(&self) -> Option<Message> {
        None
    }

    /// Whether the answers to commands in flight go out before the call's terminal event (a
    /// client that closes on the seed's end event must have its ack by then).
    fn answers_before_end(&self) -> bool {
        false
    }

    /// Frames to send once the call has ended, after the answers still owed, before the close.
    fn at_end(&mut self) -> impl Future<Output = Vec<Bytes>> + Send {
        async { Vec::new() }
    }
}

/// What one socket may do: its message rate, and when its credential stops working.
pub struct Limits {
    pub messages_per_sec: u32,
    /// The credential's expiry (a stream token's, a session's, a key's): 1008 then.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The key the socket was opened with (or that minted its token or session): its
    /// revocation closes the socket with 1008.
    pub key: callstream_core::id::KeyId,
}

/// A viewer's opt-in call audio (`?audio=` on the call socket): the call's frames of the chosen
/// tracks, sent as binary messages in the runtime socket's frame format (docs/native-api.md).
pub struct Listen {
    pub audio: AudioSubscription,
    pub inbound: bool,
    pub outbound: bool,
}

/// The next frame of a wanted track; never, once the subscription has ended or when there is
/// none.
async fn next_audio(listen: &mut Option<Listen>) -> Arc<AudioFrame> {
    loop {
        let Some(wanted) = listen.as_mut() else {
            return std::future::pending().await;
        };
        match wanted.audio.next().await {
            Some(frame) => {
                let want = match frame.track {
                    Track::Inbound => wanted.inbound,
                    Track::Outbound => wanted.outbound,
                };
                if want {
                    return frame;
                }
            }
            None => *listen = None,
        }
    }
}

/// What [`drive`] reads from and writes to: axum's [`WebSocket`](axum::extract::ws::WebSocket), or (in the tests, which run
/// the driver on tokio's paused clock, where no real socket can be used) a pair of channels.
pub trait Socket:
    futures::Sink<Message, Error = axum::Error>
    + futures::Stream<Item = Result<Message, axum::Error>>
    + Unpin
    + Send
{
}

impl<T> Socket for T where
    T: futures::Sink<Message, Error = axum::Error>
        + futures::Stream<Item = Result<Message, axum::Error>>
        + Unpin
        + Send
{
}

/// Runs a viewer socket until the call ends, the client leaves, the server shuts down or a rule
/// closes it.
pub async fn drive<S: SocketSurface>(
    state: &AppState,
    socket: &mut impl Socket,
    subscription: &mut Subscription,
    surface: &mut S,
    labels: &SurfaceLabels,
    limits: Limits,
    mut listen: Option<Listen>,
) {
    let config = state.config();
    let metrics = state.metrics();
    let sent = metrics.frames_sent.get_or_create(labels).clone();
    let limited = metrics.rate_limited.get_or_create(labels).clone();
    let mut guard = FloodGuard::new(limits.messages_per_sec, config.ws_flood_close_secs);
    let in_flight = Arc::new(Semaphore::new(config.ws_max_commands_in_flight));
    let (replies, mut reply_rx) = mpsc::channel::<Bytes>(config.ws_max_commands_in_flight.max(1));
    let mut ping = ping_timer(state);
    let shutdown = state.shutdown().clone();
    let expiry = tokio::time::sleep(until(limits.expires_at));
    tokio::pin!(expiry);
    let revoked = state.revocations().watch(&limits.key);

    loop {
        let outgoing = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                let _ = socket.send(going_away()).await;
                return;
            }
            () = &mut expiry => {
                let _ = socket.send(close(close_code::POLICY, "the credential has expired (stream token, session or key)")).await;
                return;
            }
            () = revoked.cancelled() => {
                let _ = socket.send(close(close_code::POLICY, "the key was revoked")).await;
                return;
            }
            Some(reply) = reply_rx.recv() => text(reply),
            event = subscription.next() => match event {
                Some(event) => {
                    // What is already queued behind this event goes out in the same write: a
                    // client that fell behind costs one write, not one per frame.
                    let mut next = Some(event);
                    let mut more = COALESCE_MAX_FRAMES;
                    while let Some(event) = next.take() {
                        if surface.answers_before_end() && event.envelope().payload.is_terminal() {
                            let owed = config.ws_max_commands_in_flight - in_flight.available_permits();
                            if !owe(socket, &mut reply_rx, owed, config.command_timeout()).await {
                                return;
                            }
                        }
                        if let Some(frame) = surface.frame(&event) {
                            sent.inc();
                            if socket.feed(text(frame)).await.is_err() {
                                return;
                            }
                        }
                        if more > 0 {
                            more -= 1;
                            next = subscription.try_next();
                        }
                    }
                    if socket.flush().await.is_err() {
                        return;
                    }
                    continue;
                }
                None if subscription.end() != End::Finished => {
                    // The bus lost what it cannot replay, or stopped: the client resumes.
                    let _ = socket.send(interrupted()).await;
                    return;
                }
                None => {
                    // The call ended: the answers still owed (an end command is typically one;
                    // each holds a sender of `replies`, so once ours is dropped the channel
                    // ends when they have all answered), the surface's last words, the close.
                    drop(replies);
                    let deadline = Instant::now() + config.command_timeout();
                    while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, reply_rx.recv()).await {
                        if socket.feed(text(reply)).await.is_err() {
                            return;
                        }
                    }
                    for frame in surface.at_end().await {
                        sent.inc();
                        if socket.feed(text(frame)).await.is_err() {
                            return;
                        }
                    }
                    let _ = socket.send(close(close_code::NORMAL, "the call has ended")).await;
                    return;
                }
            },
            incoming = socket.next() => {
                let incoming = Incoming::from_read(incoming);
                let verdict = match &incoming {
                    Incoming::Text(_) => guard.check(),
                    Incoming::Binary(_) if surface.limits_binary() => guard.check(),
                    _ => Verdict::Serve,
                };
                let reply = match incoming {
                    Incoming::Closed => return,
                    Incoming::Broken => {
                        if let Some(close) = surface.broken() {
                            let _ = socket.send(close).await;
                        }
                        return;
                    }
                    Incoming::TooBig => Reply::Close(surface.too_big()),
                    Incoming::Control => continue,
                    message if verdict != Verdict::Serve => {
                        limited.inc();
                        if verdict == Verdict::Close {
                            Reply::Close(close(close_code::POLICY, "too many messages"))
                        } else {
                            let text = match &message {
                                Incoming::Text(t) => Some(t.as_str()),
                                _ => None,
                            };
                            Reply::Frame(surface.rate_limited(text))
                        }
                    }
                    Incoming::Text(message) => surface.text(message.as_str()).await,
                    Incoming::Binary(_) => surface.binary(),
                };
                match reply {
                    Reply::Frame(frame) => text(frame),
                    Reply::Nothing => continue,
                    Reply::Close(close) => {
                        let _ = socket.send(close).await;
                        return;
                    }
                    Reply::Command { run, if_busy } => {
                        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                            if socket.send(text(if_busy)).await.is_err() {
                                return;
                            }
                            continue;
                        };
                        let replies = replies.clone();
                        tokio::spawn(async move {
                            let frame = run.await;
                            // The answer is queued before the permit is given back, so that a
                            // command still holding one always has its answer to come.
                            let _ = replies.send(frame).await;
                            drop(permit);
                        });
                        continue;
                    }
                }
            }
            frame = next_audio(&mut listen) => Message::Binary(frame.encode()),
            _ = ping.tick() => Message::Ping(Bytes::new()),
        };
        if socket.send(outgoing).await.is_err() {
            return;
        }
    }
}

/// Writes the answers of the `owed` commands in flight, waiting for each at most until
/// `within` has passed, then what else is ready; `false` when the socket failed.
async fn owe(
    socket: &mut impl Socket,
    replies: &mut mpsc::Receiver<Bytes>,
    owed: usize,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    for _ in 0..owed {
        match tokio::time::timeout_at(deadline, replies.recv()).await {
            Ok(Some(reply)) => {
                if socket.feed(text(reply)).await.is_err() {
                    return false;
                }
            }
            _ => break,
        }
    }
    while let Ok(reply) = replies.try_recv() {
        if socket.feed(text(reply)).await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    //! The driver's clock-bound rules on tokio's paused clock: a credential's expiry and the flood
    //! rule, exactly, in virtual time. The socket is a pair of channels (a real socket cannot be
    //! used on a paused clock: its peer runs on real time); everything else is real (a SQLite
    //! store, the in-process bus). The integration tests (`tests/it/sockets.rs`) prove the same
    //! rules over real sockets, without timing them.

    use std::pin::Pin;
    use std::task::{Context, Poll};

    use callstream_bus::{InProcessBus, InProcessCommands, InProcessConfig, Resume, Topic};
    use callstream_core::id::KeyId;
    use callstream_core::{CallId, WorkspaceId};
    use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::metrics::Surface;

    /// The server's end of an in-memory socket.
    struct Pipe {
        from_client: UnboundedReceiver<Result<Message, axum::Error>>,
        to_client: UnboundedSender<Message>,
    }

    impl futures::Stream for Pipe {
        type Item = Result<Message, axum::Error>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.from_client.poll_next_unpin(cx)
        }
    }

    impl futures::Sink<Message> for Pipe {
        type Error = axum::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), axum::Error> {
            self.to_client
                .unbounded_send(item)
                .map_err(axum::Error::new)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Every event as its seq; every message answered `ok`.
    struct Plain;

    impl SocketSurface for Plain {
        fn frame(&mut self, event: &Arc<Event>) -> Option<Bytes> {
            Some(Bytes::from(event.seq().to_string()))
        }
        async fn text(&mut self, _: &str) -> Reply {
            Reply::Frame(Bytes::from_static(b"ok"))
        }
        fn rate_limited(&self, _: Option<&str>) -> Bytes {
            Bytes::from_static(b"limited")
        }
    }

    const LABELS: SurfaceLabels = SurfaceLabels {
        surface: Surface::native_call_ws,
    };

    async fn state(dir: &tempfile::TempDir) -> AppState {
        let store = callstream_store::SqliteStore::open(&dir.path().join("t.db"))
            .await
            .unwrap();
        AppState::new(
            crate::Config::default(),
            crate::Backends {
                store: Arc::new(store),
                bus: Arc::new(InProcessBus::new(InProcessConfig::default())),
                commands: Arc::new(InProcessCommands::new()),
                nats: None,
            },
            CancellationToken::new(),
        )
    }

    /// Runs the driver over a fresh call's subscription; the client's ends of the pipe.
    async fn open(
        state: &AppState,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> (
        UnboundedSender<Result<Message, axum::Error>>,
        UnboundedReceiver<Message>,
        tokio::task::JoinHandle<()>,
    ) {
        let topic = Topic::call(&WorkspaceId::new(), &CallId::new());
        let mut subscription = state
            .subscribe(&topic, Resume::Live, &LABELS)
            .await
            .unwrap();
        let (client_tx, from_client) = unbounded();
        let (to_client, client_rx) = unbounded();
        let state = state.clone();
        let driver = tokio::spawn(async move {
            let mut pipe = Pipe {
                from_client,
                to_client,
            };
            let limits = Limits {
                messages_per_sec: state.config().ws_client_messages_per_sec,
                expires_at,
                key: KeyId::new(),
            };
            drive(
                &state,
                &mut pipe,
                &mut subscription,
                &mut Plain,
                &LABELS,
                limits,
                None,
            )
            .await;
        });
        (client_tx, client_rx, driver)
    }

    /// The next message that is not a ping.
    async fn next_message(rx: &mut UnboundedReceiver<Message>) -> Option<Message> {
        loop {
            match rx.next().await {
                Some(Message::Ping(_)) => {}
                other => return other,
            }
        }
    }

    fn close_code_of(message: Option<Message>) -> Option<u16> {
        match message {
            Some(Message::Close(Some(frame))) => Some(frame.code),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_socket_closes_with_1008_at_its_credentials_expiry_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(&dir).await;
        tokio::time::pause();
        let opened = Instant::now();
        let expires_at = callstream_core::time::now() + chrono::Duration::seconds(1);
        let (client, mut rx, driver) = open(&state, Some(expires_at)).await;
        // Served until then: a message half a second in is answered.
        tokio::time::sleep(Duration::from_millis(500)).await;
        client
            .unbounded_send(Ok(Message::Text("hello".into())))
            .unwrap();
        assert_eq!(
            next_message(&mut rx).await,
            Some(Message::Text("ok".into()))
        );
        let message = next_message(&mut rx).await;
        let closed_after = opened.elapsed();
        assert_eq!(close_code_of(message), Some(close_code::POLICY));
        // The expiry is on the wall clock, read when the driver starts (a few real
        // milliseconds after it was set); the wait is virtual, rounded up to tokio's millisecond.
        assert!(
            (Duration::from_millis(950)..=Duration::from_millis(1_001)).contains(&closed_after),
            "closed after {closed_after:?}"
        );
        driver.await.unwrap();
        drop(client);
    }

    #[tokio::test]
    async fn a_flooding_client_is_refused_each_extra_message_and_closed_after_the_flood_secs() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(&dir).await;
        let rate = state.config().ws_client_messages_per_sec;
        let flood_secs = state.config().ws_flood_close_secs;
        let (client, mut rx, driver) = open(&state, None).await;
        tokio::time::pause();
        let started = Instant::now();
        // Twice the rate, every second, until the socket closes: each second's first `rate`
        // messages are served and the rest refused, and the close comes once the client has
        // been over the rate in more than `flood_secs` seconds in a row.
        let (mut served, mut refused) = (0u64, 0u64);
        let closed_at = 'flood: loop {
            for _ in 0..2 * rate {
                if client
                    .unbounded_send(Ok(Message::Text("x".into())))
                    .is_err()
                {
                    break;
                }
            }
            let second_ends = Instant::now() + Duration::from_secs(1);
            loop {
                let next = tokio::time::timeout_at(second_ends, next_message(&mut rx)).await;
                match next {
                    Ok(Some(Message::Text(t))) if t.as_str() == "ok" => served += 1,
                    Ok(Some(Message::Text(t))) if t.as_str() == "limited" => refused += 1,
                    Ok(other) => {
                        assert_eq!(close_code_of(other), Some(close_code::POLICY));
                        break 'flood started.elapsed();
                    }
                    Err(_) => break,
                }
            }
            assert!(started.elapsed() < Duration::from_secs(60), "never closed");
        };
        let secs = u64::from(flood_secs);
        assert_eq!(closed_at.as_secs(), secs, "closed at {closed_at:?}");
        // The first second serves a full bucket; each later one what refilled.
        assert!(
            (secs * u64::from(rate)..=(secs + 1) * u64::from(rate)).contains(&served),
            "{served} served"
        );
        assert!(refused >= secs * u64::from(rate), "{refused} refused");
        let limited = state.metrics().rate_limited.get_or_create(&LABELS).get();
        assert_eq!(limited, refused + 1, "each refusal and the close counted");
        driver.await.unwrap();
    }

    #[test]
    fn first_pings_spread_over_the_second_half_of_the_period() {
        let period = Duration::from_secs(30);
        assert_eq!(first_ping(period, 0), Duration::from_secs(15));
        assert!(first_ping(period, u32::MAX) < period);
        assert!(first_ping(period, u32::MAX) > Duration::from_millis(29_999));
        assert_eq!(first_ping(period, 1 << 31), Duration::from_millis(22_500));
        assert_eq!(first_ping(Duration::ZERO, 12345), Duration::ZERO);
    }
}
