//! One audio stream's life on this node: connect to the service, stream the call's tracks on the
//! 20 ms beat, play what the service sends back into the call, and end exactly once.
//!
//! One task runs the stream (`Session::serve`): it owns every piece of the stream's state and
//! the service's socket, so nothing here takes a lock, and a beat costs one wake-up and one
//! `send` per message. Writes never wait (`Link`): a message goes to the socket at once, and
//! when the socket cannot take more (the service reads slowly or not at all), media is dropped
//! and counted, control messages wait in a short queue, and a socket that makes no write
//! progress for `audio_service_stall_secs` ends the stream as dropped. The beat is never held
//! up by the service.
//!
//! Measured with 200 streams (docs/benchmarks.md, "Audio streams"): a separate writer task per
//! stream, fed through channels, and a wake-up for every frame from the runtime took 0.33 % of a
//! core per stream; draining the call's audio at the beat and writing from the stream's own
//! task took 0.22 %.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use callstream_audio::{Framer, MediaFormat, Transcoder};
use callstream_bus::{AudioSubscription, Resume, SubscribeOptions, Subscription, Topic};
use callstream_core::audio::{AudioFrame, Codec, Track};
use callstream_core::{Command, Payload, time};
use callstream_store::AudioStreamRecord;
use callstream_surfaces::audio_stream::{self, MediaWriter, ServiceMessage, Start};
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Sink, SinkExt, Stream};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::pacer::{PERIOD, Pacer};
use super::playout::Playout;
use crate::metrics::{DirectionLabels, Surface, SurfaceLabels};
use crate::state::AppState;

const LABELS: SurfaceLabels = SurfaceLabels {
    surface: Surface::audio_stream_ws,
};

/// The format a call's audio is assumed to have until its runtime sends some: telephony's.
const DEFAULT_CALL_FORMAT: MediaFormat = MediaFormat::MULAW_8K;
/// Audio frames from the bus that may wait for the stream's task.
const AUDIO_QUEUE: usize = 256;
/// Audio of one track that may wait for its turn on the beat (10 frames). More means the
/// runtime sends faster than real time; the excess is dropped.
const TRACK_BUFFER_FRAMES: usize = 10;
/// From this many frames waiting at a beat, a track sends two until it is back below: this
/// bounds the latency a runtime's clock running slightly fast would otherwise add for ever.
/// Not from two: a beat that runs a little late under load often finds the next frame already
/// there, and sending both would put a gap of a whole frame after them (measured: with two,
/// 180 of 400 streams on one busy core kept missing beats; docs/benchmarks.md).
const CATCH_UP_FRAMES: usize = 3;
/// Beats in a row that leave a whole frame waiting after sending (the stream runs a frame behind
/// its audio: lined up while the gateway was busy, or the runtime's clock runs slightly fast)
/// after which one extra frame is sent, putting the stream back on time (half a second).
const BEHIND_TICKS: u32 = 25;
/// Control messages (`playedStream`, `dtmf`, …) that may wait while the socket is full.
const CONTROL_QUEUE: usize = 64;
/// Scratch capacity a stream keeps between conversions (a frame of the widest format is 640
/// bytes).
const SCRATCH_KEEP: usize = 4096;
/// Bytes the client reads at a time: a service sends little (a `playAudio` now and then, read in
/// several reads), and tungstenite zeroes this much of its buffer on every read attempt, which
/// is after every wake-up of the stream.
const READ_CHUNK: usize = 1024;
/// Beats in a row without audio after which the first track's audio is taken as a new start (a
/// gap in the call's audio, 200 ms, not a late frame): the beat lines up with what follows.
/// Until then the beat never moves: every realignment is a jump of up to a frame that the
/// service hears, so a late frame is sent late, on arrival, and the beat kept.
const GAP_TICKS: u32 = 10;
/// A rest of less than a frame of played audio is padded and played once no more audio came for
/// this long (a service that sends 30 ms chunks in real time must not get a gap every chunk).
const REST_WAIT: Duration = Duration::from_millis(40);
/// How long a close waits to get out.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How a stream's run ended.
pub(super) enum End {
    /// Normally: the call ended, `stream_timeout` passed.
    Stopped(String),
    /// By a fault: unreachable, closed by the service, stopped reading.
    Dropped(String),
    /// `DELETE`: the handler did the bookkeeping.
    Deleted,
    /// The gateway is shutting down: the stream stays active for the next process to resume.
    ShuttingDown,
}

pub(super) struct Session {
    pub state: AppState,
    pub rec: AudioStreamRecord,
    /// The workspace's `auth_id` (`start.accountId`).
    pub account_id: String,
    /// The stream's format (its `content_type`).
    pub format: MediaFormat,
    pub deleted: CancellationToken,
    /// Audio waiting to be played, in milliseconds, for the REST view and the metric.
    pub queued_ms: Arc<AtomicU64>,
    /// Started again after a gateway restart: connect once the call's audio flows.
    pub resume: bool,
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl Session {
    fn dropped(&self, direction: &'static str) -> prometheus_client::metrics::counter::Counter {
        self.state
            .metrics()
            .audio
            .dropped
            .get_or_create(&DirectionLabels { direction })
            .clone()
    }

    fn sent(&self, direction: &'static str) -> prometheus_client::metrics::counter::Counter {
        self.state
            .metrics()
            .audio
            .sent
            .get_or_create(&DirectionLabels { direction })
            .clone()
    }

    /// Runs the stream until it ends, and says how.
    pub(super) async fn serve(&self) -> End {
        let state = &self.state;
        let (workspace, call) = (&self.rec.workspace_id, &self.rec.call_id);
        // Subscribe before anything else, so that no event or frame in between is missed.
        let mut events = match state
            .subscribe(&Topic::call(workspace, call), Resume::Live, &LABELS)
            .await
        {
            Ok(events) => events,
            Err(e) => return End::Dropped(format!("the call's events are unavailable: {e}")),
        };
        // Frames that queue here while the stream still connects are not the service's loss:
        // they are counted apart from `to_service` drops.
        let options = SubscribeOptions {
            queue_capacity: AUDIO_QUEUE,
            dropped: state.metrics().audio.listener_dropped.clone(),
        };
        let mut audio = match state.bus().subscribe_audio(workspace, call, options).await {
            Ok(audio) => audio,
            Err(e) => return End::Dropped(format!("the call's audio is unavailable: {e}")),
        };
        // The call may have ended before the subscription (the bus then cannot say so).
        match state.store().call(workspace, call).await {
            Ok(Some(c)) if c.status.is_active() => {}
            Ok(_) => return End::Stopped("the call ended".into()),
            Err(e) => return End::Dropped(format!("the store is unavailable: {e}")),
        }
        let deadline = self.deadline();

        let mut first = None;
        if self.resume {
            // After a restart: reconnect only once the call's audio flows again (its runtime
            // may be gone for good, and then the stale-call rules end the call).
            loop {
                tokio::select! {
                    biased;
                    () = state.shutdown().cancelled() => return End::ShuttingDown,
                    () = self.deleted.cancelled() => return End::Deleted,
                    () = tokio::time::sleep_until(deadline) => return End::Stopped("stream_timeout reached".into()),
                    event = events.next() => if event.is_none()
                        && let Err(end) = self.call_ended_or_resubscribe(&mut events).await
                    {
                        return end;
                    },
                    frame = audio.next() => match frame {
                        Some(frame) => { first = Some(frame); break; }
                        None => return End::Dropped("the call's audio is unavailable".into()),
                    },
                }
            }
        }

        let socket = match self.connect(deadline, &mut events).await {
            Ok(socket) => socket,
            Err(end) => return end,
        };
        if self.resume {
            state.metrics().audio.reconnects.inc();
        }
        let now = time::now();
        match state
            .store()
            .set_audio_stream_status(
                &self.rec.workspace_id,
                &self.rec.stream_id,
                callstream_core::audio::StreamStatus::InProgress,
                now,
                None,
            )
            .await
        {
            // Deleted while connecting: close at once.
            Ok(false) => {
                Link::new(socket)
                    .close(CloseCode::Normal, "stream deleted")
                    .await;
                return End::Deleted;
            }
            Ok(true) => {}
            Err(e) => {
                tracing::warn!(error = %e, stream_id = %self.rec.stream_id, "could not record a stream's start")
            }
        }
        super::callbacks::send(state, &self.rec, "StartStream", Vec::new());
        tracing::info!(stream_id = %self.rec.stream_id, call_id = %call, "audio stream connected");
        self.stream(socket, events, audio, first, deadline).await
    }

    fn deadline(&self) -> Instant {
        let since = self.rec.start_time.unwrap_or(self.rec.created_at);
        let end = since
            + chrono::Duration::seconds(
                i64::try_from(self.rec.stream_timeout_secs).unwrap_or(i64::MAX / 2_000),
            );
        let left = (end - time::now()).to_std().unwrap_or(Duration::ZERO);
        Instant::now() + left
    }

    /// After the call's event subscription ended: the call ended (`Err` to end the stream), or
    /// the subscription was interrupted and is made again.
    async fn call_ended_or_resubscribe(&self, events: &mut Subscription) -> Result<(), End> {
        if events.end() == callstream_bus::End::Finished {
            return Err(End::Stopped("the call ended".into()));
        }
        let topic = Topic::call(&self.rec.workspace_id, &self.rec.call_id);
        match self.state.subscribe(&topic, Resume::Live, &LABELS).await {
            Ok(again) => {
                *events = again;
                Ok(())
            }
            Err(e) => Err(End::Dropped(format!(
                "the call's events are unavailable: {e}"
            ))),
        }
    }

    fn stall(&self) -> Duration {
        Duration::from_secs(self.state.config().audio_service_stall_secs)
    }

    /// Connects to the service: the first attempt and `audio_connect_retries` more, a second
    /// apart and growing.
    async fn connect(&self, deadline: Instant, events: &mut Subscription) -> Result<Socket, End> {
        let config = self.state.config();
        let attempts = config.audio_connect_retries.saturating_add(1);
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                // The whole pause, however busy the call is meanwhile: its events are watched
                // only for its end.
                let retry_at = Instant::now() + Duration::from_secs(u64::from(attempt));
                loop {
                    tokio::select! {
                        biased;
                        () = self.state.shutdown().cancelled() => return Err(End::ShuttingDown),
                        () = self.deleted.cancelled() => return Err(End::Deleted),
                        event = events.next() => if event.is_none() {
                            self.call_ended_or_resubscribe(events).await?;
                        },
                        () = tokio::time::sleep_until(retry_at) => break,
                    }
                }
            }
            let try_once = self.connect_once();
            let result = tokio::select! {
                biased;
                () = self.state.shutdown().cancelled() => return Err(End::ShuttingDown),
                () = self.deleted.cancelled() => return Err(End::Deleted),
                () = tokio::time::sleep_until(deadline) => return Err(End::Stopped("stream_timeout reached".into())),
                result = tokio::time::timeout(config.audio_connect_timeout(), try_once) => result,
            };
            match result {
                Ok(Ok(socket)) => return Ok(socket),
                Ok(Err(Refused::Policy(reason))) => {
                    self.state.metrics().audio.connect_failures.inc();
                    return Err(End::Dropped(reason));
                }
                Ok(Err(Refused::Failed(reason))) => last = reason,
                Err(_) => {
                    last = format!(
                        "no connection within {} s",
                        config.audio_connect_timeout_secs
                    );
                }
            }
            self.state.metrics().audio.connect_failures.inc();
            tracing::debug!(stream_id = %self.rec.stream_id, attempt, reason = %last, "audio stream: connect failed");
        }
        Err(End::Dropped(format!(
            "could not connect to the service after {attempts} attempts: {last}"
        )))
    }

    async fn connect_once(&self) -> Result<Socket, Refused> {
        let config = self.state.config();
        let policy = config.target_policy();
        let url = policy
            .check_url(&self.rec.service_url, crate::targets::Kind::WebSocket)
            .map_err(|e| Refused::Policy(format!("service_url refused: {e}")))?;
        let addrs = match policy.connect_addrs(&url).await {
            Ok(addrs) => addrs,
            Err(e @ crate::targets::TargetError::Unresolved(..)) => {
                return Err(Refused::Failed(e.to_string()));
            }
            Err(e) => return Err(Refused::Policy(format!("service_url refused: {e}"))),
        };
        // Connect to an address that was checked, never to one resolved again.
        let mut tcp = None;
        let mut last = String::from("no address");
        for addr in addrs {
            match connect_tcp(addr, config.socket_send_buffer_bytes).await {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        let tcp = tcp.ok_or(Refused::Failed(last))?;
        // Frames are small and must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let request = tungstenite::client::IntoClientRequest::into_client_request(url.as_str())
            .map_err(|e| Refused::Failed(e.to_string()))?;
        // Writes go out eagerly (`write_buffer_size` 0): one `send` per message, nothing held
        // back; what a full socket cannot take waits in tungstenite's buffer, bounded.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_CHUNK)
            .write_buffer_size(0)
            .max_write_buffer_size(1024 * 1024)
            .max_message_size(Some(config.audio_max_service_message_bytes))
            .max_frame_size(Some(config.audio_max_service_message_bytes));
        let (socket, _) =
            tokio_tungstenite::client_async_tls_with_config(request, tcp, Some(ws_config), None)
                .await
                .map_err(|e| Refused::Failed(describe_ws_error(&e)))?;
        Ok(socket)
    }

    /// Streams until the end.
    async fn stream(
        &self,
        socket: Socket,
        mut events: Subscription,
        mut audio: AudioSubscription,
        first: Option<Arc<AudioFrame>>,
        deadline: Instant,
    ) -> End {
        let state = &self.state;
        let config = state.config();
        let _open = crate::metrics::OpenStream::new(
            state.metrics().open_streams.get_or_create(&LABELS).clone(),
        );
        let mut link = Link::new(socket);
        let mut live = Live::new(self, config.audio_playout_max_secs);
        let stall = self.stall();

        let start = audio_stream::start_message(
            live.next_seq(),
            &Start {
                call_id: self.rec.call_id.as_str(),
                stream_id: &self.rec.stream_id,
                account_id: &self.account_id,
                tracks: self.rec.audio_track.tracks(),
                format: self.format,
                extra_headers: &self.rec.extra_headers,
            },
        );
        link.control(start);
        if let Some(frame) = first {
            live.take_audio(self, &frame, Instant::now());
        }
        let beat = tokio::time::sleep_until(live.pacer.deadline());
        tokio::pin!(beat);
        let timeout = tokio::time::sleep_until(deadline);
        tokio::pin!(timeout);

        // How it ended, and the close to send the service (none when the socket is gone).
        let (end, close) = loop {
            // The call's audio is taken at the beat; the stream wakes for it in between only
            // while its beat is not lined up with the audio yet, or a track owes a frame, and
            // then before the beat: where a frame arrived in time is what lines the beat up.
            let listening = live.listening();
            tokio::select! {
                biased;
                // A child of the server's shutdown token: one check for both.
                () = self.deleted.cancelled() => {
                    if state.shutdown().is_cancelled() {
                        break (End::ShuttingDown, Some((CloseCode::Away, "the gateway is restarting")));
                    }
                    break (End::Deleted, Some((CloseCode::Normal, "stream deleted")));
                }
                () = &mut timeout => {
                    break (End::Stopped("stream_timeout reached".into()), Some((CloseCode::Normal, "stream_timeout reached")));
                }
                frame = audio.next(), if listening => match frame {
                    Some(frame) => {
                        let now = Instant::now();
                        live.take_audio(self, &frame, now);
                        while let Some(more) = audio.try_next() {
                            live.take_audio(self, &more, now);
                        }
                        live.send_owed(&mut link);
                        beat.as_mut().reset(live.pacer.deadline());
                    }
                    None => break (End::Dropped("the call's audio is unavailable".into()), Some((CloseCode::Error, "the call's audio is unavailable"))),
                },
                () = &mut beat => {
                    let now = Instant::now();
                    // While the beat is not lined up, audio is taken as it arrives (above), so
                    // that the beat lines up with when it came, not with this tick.
                    if !listening {
                        while let Some(frame) = audio.try_next() {
                            live.take_audio(self, &frame, now);
                        }
                    }
                    let due = live.pacer.due(now);
                    for _ in 0..due.ticks {
                        live.tick(self, &mut link, now);
                    }
                    beat.as_mut().reset(live.pacer.deadline());
                    if let Some(reason) = link.failed(stall) {
                        break (End::Dropped(reason), None);
                    }
                }
                event = events.next() => match event {
                    Some(event) => {
                        if let Payload::Dtmf(dtmf) = &event.envelope().payload {
                            for digit in dtmf.digits.chars() {
                                let message = audio_stream::dtmf_message(live.next_seq(), &self.rec.stream_id, digit);
                                link.control(message);
                            }
                        }
                    }
                    None => {
                        // The call ended, or its events were interrupted and are listened to
                        // again.
                        if let Err(end) = self.call_ended_or_resubscribe(&mut events).await {
                            let close = match end {
                                End::Stopped(_) => (CloseCode::Normal, "the call ended"),
                                _ => (CloseCode::Error, "the call's events are unavailable"),
                            };
                            break (end, Some(close));
                        }
                    }
                },
                io = link.io() => match io {
                    Io::Writable => {}
                    Io::Read(Message::Text(text)) => live.service_message(self, &mut link, text.as_str(), Instant::now()),
                    Io::Read(Message::Binary(_)) => {
                        state.metrics().audio.service_messages_refused.inc();
                        tracing::debug!(stream_id = %self.rec.stream_id, "audio stream: binary message ignored (the protocol is JSON text)");
                    }
                    Io::Read(Message::Close(frame)) => {
                        let how = frame.map_or_else(
                            || "without a code".to_owned(),
                            |f| format!("with {} {}", u16::from(f.code), f.reason).trim_end().to_owned(),
                        );
                        // tungstenite has queued the answering close frame: flush it out.
                        link.answer_close().await;
                        break (End::Dropped(format!("the service closed the connection {how}")), None);
                    }
                    Io::TooBig(reason) => break (End::Dropped(reason), Some((CloseCode::Size, "message too big"))),
                    Io::Read(_) => {}
                    Io::Failed(reason) => break (End::Dropped(reason), None),
                },
            }
        };
        live.retire(self);
        if let Some((code, reason)) = close {
            link.close(code, reason).await;
        }
        end
    }
}

/// What the socket had for the stream.
enum Io {
    /// A full socket can take writes again.
    Writable,
    Read(Message),
    /// The service sent a message over the limit (closed with 1009).
    TooBig(String),
    /// The connection failed or closed without a close frame.
    Failed(String),
}

// === impl Link ===

/// The service's socket, written without ever waiting.
struct Link {
    socket: Socket,
    /// Since when the socket has not taken what was written (`None`: it takes writes).
    blocked_since: Option<Instant>,
    /// Control messages waiting for the socket to take writes again.
    pending: VecDeque<Message>,
    /// Why writing failed, if it did.
    error: Option<String>,
}

impl Link {
    fn new(socket: Socket) -> Self {
        Self {
            socket,
            blocked_since: None,
            pending: VecDeque::new(),
            error: None,
        }
    }

    /// Writes a control message now, or queues it while the socket is full.
    fn control(&mut self, message: String) {
        let message = text(message);
        if self.blocked_since.is_some() {
            if self.pending.len() < CONTROL_QUEUE {
                self.pending.push_back(message);
            }
            return;
        }
        self.write(message);
    }

    /// Writes a media message now; `false` (dropped) while the socket is full.
    fn media(&mut self, message: String) -> bool {
        if self.blocked_since.is_some() || self.error.is_some() {
            return false;
        }
        self.write(text(message))
    }

    fn write(&mut self, message: Message) -> bool {
        if self.error.is_some() {
            return false;
        }
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        match Pin::new(&mut self.socket).poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => {
                self.error = Some(describe_ws_error(&e));
                return false;
            }
            Poll::Pending => {
                self.blocked_since.get_or_insert_with(Instant::now);
                return false;
            }
        }
        if let Err(e) = Pin::new(&mut self.socket).start_send(message) {
            self.error = Some(describe_ws_error(&e));
            return false;
        }
        // Taken whole or in part: what the socket could not take waits in tungstenite's buffer
        // and makes the next `poll_ready` wait until it is out.
        true
    }

    /// Why the stream must end: writing failed, or no progress for `stall`.
    fn failed(&self, stall: Duration) -> Option<String> {
        if let Some(e) = &self.error {
            return Some(format!("writing to the service failed: {e}"));
        }
        match self.blocked_since {
            Some(since) if since.elapsed() >= stall => Some(format!(
                "the service stopped reading (no write progress for {} s)",
                stall.as_secs()
            )),
            _ => None,
        }
    }

    /// The next thing the socket has: a message, or room to write again.
    fn io(&mut self) -> impl Future<Output = Io> + '_ {
        std::future::poll_fn(move |cx| {
            if self.blocked_since.is_some() {
                match Pin::new(&mut self.socket).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        self.blocked_since = None;
                        while let Some(m) = self.pending.pop_front() {
                            if !self.write(m) {
                                break;
                            }
                        }
                        return Poll::Ready(Io::Writable);
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Io::Failed(format!(
                            "writing to the service failed: {}",
                            describe_ws_error(&e)
                        )));
                    }
                    Poll::Pending => {}
                }
            }
            match Pin::new(&mut self.socket).poll_next(cx) {
                Poll::Ready(Some(Ok(m))) => Poll::Ready(Io::Read(m)),
                Poll::Ready(Some(Err(e @ tungstenite::Error::Capacity(_)))) => {
                    Poll::Ready(Io::TooBig(format!(
                        "the service sent a message over audio_max_service_message_bytes: {}",
                        describe_ws_error(&e)
                    )))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Io::Failed(format!(
                    "the connection to the service failed: {}",
                    describe_ws_error(&e)
                ))),
                Poll::Ready(None) => {
                    Poll::Ready(Io::Failed("the service closed the connection".into()))
                }
                Poll::Pending => Poll::Pending,
            }
        })
    }

    /// After the service's close frame: sends the answer tungstenite queued for it.
    async fn answer_close(&mut self) {
        let _ = tokio::time::timeout(CLOSE_WAIT, self.socket.flush()).await;
    }

    /// Sends a close frame after what is queued and waits a moment for it to go out.
    async fn close(mut self, code: CloseCode, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            for m in std::mem::take(&mut self.pending) {
                self.socket.feed(m).await?;
            }
            self.socket.close(Some(frame)).await
        })
        .await;
    }
}

/// A TCP connection with the same bounded send buffer as the server's own sockets: a service
/// that stops reading is noticed after about that much (left to autotuning, the kernel would
/// take megabytes, minutes of audio, first).
async fn connect_tcp(addr: std::net::SocketAddr, send_buffer: usize) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if send_buffer > 0 {
        socket.set_send_buffer_size(u32::try_from(send_buffer).unwrap_or(u32::MAX))?;
    }
    socket.connect(addr).await
}

enum Refused {
    /// The target policy refuses the URL: retrying cannot help.
    Policy(String),
    Failed(String),
}

/// A WebSocket error in words, without the request (which could carry a query with secrets).
fn describe_ws_error(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(response) => {
            format!(
                "the service answered HTTP {} instead of a WebSocket upgrade",
                response.status()
            )
        }
        tungstenite::Error::Io(io) => io.to_string(),
        tungstenite::Error::Tls(tls) => format!("TLS: {tls}"),
        tungstenite::Error::Capacity(c) => format!("message too big: {c}"),
        tungstenite::Error::Protocol(p) => format!("protocol: {p}"),
        other => other.to_string(),
    }
}

// === impl Live ===

/// One track on its way to the service.
struct TrackOut {
    track: Track,
    /// Converts the runtime's format (the key) to the stream's.
    transcoder: Option<(MediaFormat, Transcoder)>,
    framer: Framer,
    /// When the first byte waiting in `framer` was captured, epoch ms.
    base_ms: u64,
    /// `media.chunk`, per track.
    chunk: u64,
    scratch: Vec<u8>,
}

impl TrackOut {
    fn new(track: Track, format: MediaFormat) -> Option<Self> {
        // `TRACK_BUFFER_FRAMES` frames are more than the one frame a framer needs, so this
        // never fails.
        let framer = Framer::new(format, format.bytes_per_frame() * TRACK_BUFFER_FRAMES).ok()?;
        Some(Self {
            track,
            transcoder: None,
            framer,
            base_ms: 0,
            chunk: 0,
            scratch: Vec::new(),
        })
    }
}

/// What a connected stream keeps.
struct Live {
    seq: u64,
    media: MediaWriter,
    tracks: Vec<TrackOut>,
    pacer: Pacer,
    /// Whether the beat is lined up with the first track's audio.
    aligned: bool,
    /// Beats in a row the first track had nothing to send at.
    owed: u32,
    /// Beats in a row after which the first track still had a whole frame waiting.
    behind: u32,
    playout: Option<Playout>,
    /// Converts what the service plays (the key) to the call's format.
    play_in: Option<(MediaFormat, Transcoder)>,
    call_format: MediaFormat,
    /// When the service last sent audio to play.
    last_push: Instant,
    /// When the last frame was handed to the call (it plays for 20 ms from then).
    last_handout: Option<Instant>,
    scratch: Vec<u8>,
    sent_to_service: prometheus_client::metrics::counter::Counter,
    /// The surface-wide count of frames sent (`frames_sent_total{surface="audio_stream_ws"}`).
    surface_sent: prometheus_client::metrics::counter::Counter,
    dropped_to_service: prometheus_client::metrics::counter::Counter,
    sent_to_call: prometheus_client::metrics::counter::Counter,
    dropped_to_call: prometheus_client::metrics::counter::Counter,
    /// The depth last added to the process-wide gauge, to take it off again.
    published_ms: i64,
}

impl Live {
    fn new(session: &Session, playout_secs: u64) -> Self {
        let tracks = session
            .rec
            .audio_track
            .tracks()
            .iter()
            .filter_map(|t| TrackOut::new(*t, session.format))
            .collect();
        let playout = session.rec.bidirectional.then(|| {
            let frames = usize::try_from(playout_secs.saturating_mul(50)).unwrap_or(usize::MAX);
            Playout::new(DEFAULT_CALL_FORMAT, frames)
        });
        let now = Instant::now();
        Self {
            seq: 0,
            media: MediaWriter::new(&session.rec.stream_id, &session.rec.extra_headers),
            tracks,
            pacer: Pacer::new(now + PERIOD / 2),
            aligned: false,
            owed: 0,
            behind: 0,
            playout,
            play_in: None,
            call_format: DEFAULT_CALL_FORMAT,
            last_push: now,
            last_handout: None,
            scratch: Vec::new(),
            sent_to_service: session.sent("to_service"),
            surface_sent: session
                .state
                .metrics()
                .frames_sent
                .get_or_create(&LABELS)
                .clone(),
            dropped_to_service: session.dropped("to_service"),
            sent_to_call: session.sent("to_call"),
            dropped_to_call: session.dropped("to_call"),
            published_ms: 0,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A frame of the call's audio from its runtime.
    fn take_audio(&mut self, session: &Session, frame: &AudioFrame, now: Instant) {
        let Some(input) = frame_format(frame) else {
            return;
        };
        if frame.track == Track::Inbound && input != self.call_format {
            // The call's format is what its caller's audio arrives in: audio played into the
            // call is converted to it.
            self.call_format = input;
            if let Some(playout) = &mut self.playout
                && playout.queued_frames() == 0
                && !playout.has_remainder()
            {
                let frames = playout_frames(session);
                *playout = Playout::new(input, frames);
                self.play_in = None;
            }
        }
        let Some(index) = self.tracks.iter().position(|t| t.track == frame.track) else {
            return;
        };
        let realign = index == 0 && !self.aligned && !self.playing();
        let track = &mut self.tracks[index];
        let transcoder = match &mut track.transcoder {
            Some((from, t)) if *from == input => t,
            slot => {
                &mut slot
                    .insert((input, Transcoder::new(input, session.format)))
                    .1
            }
        };
        track.scratch.clear();
        if transcoder
            .transcode(&frame.payload, &mut track.scratch)
            .is_err()
        {
            return;
        }
        if session.rec.l16_big_endian
            && session.format.encoding() == callstream_audio::Encoding::L16
        {
            swap_bytes(&mut track.scratch);
        }
        // Lining the beat up again starts from this frame: whatever waited before it (audio that
        // queued while the stream connected, or before a gap) is late already and would keep
        // every frame after it as late.
        if realign {
            track.framer.clear();
        }
        if track.framer.buffered_len() == 0 {
            track.base_ms = frame.timestamp_ms;
        }
        if track.framer.push(&track.scratch).is_err() {
            self.dropped_to_service.inc();
            return;
        }
        // A long conversion (a second of played audio) leaves a large scratch buffer behind:
        // give it back rather than hold it for the whole call.
        if track.scratch.capacity() > SCRATCH_KEEP {
            track.scratch = Vec::new();
        }
        // The beat follows the first track's audio: lined up half a frame after it arrives, so
        // that the runtime's jitter either way falls inside a frame (never while audio is being
        // played into the call, whose pace the beat also keeps).
        if realign {
            self.pacer.realign(now + PERIOD / 2);
            self.aligned = true;
            self.owed = 0;
        }
    }

    fn playing(&self) -> bool {
        self.playout
            .as_ref()
            .is_some_and(|p| p.queued_frames() > 0 || p.has_remainder())
    }

    /// Whether the stream should wake for the call's audio as it arrives (instead of taking it
    /// at the beat): its beat is not lined up yet, or the first track missed its last beat and
    /// sends the frame the moment it comes.
    fn listening(&self) -> bool {
        !self.aligned || (self.owed > 0 && self.owed < GAP_TICKS)
    }

    /// After audio arrived: a frame the first track owes goes out now, a little late, rather than
    /// a whole beat late at the next tick (which would leave every later frame a beat late too).
    fn send_owed(&mut self, link: &mut Link) {
        if !(self.owed > 0 && self.owed < GAP_TICKS) {
            return;
        }
        // Every beat missed since the last frame owes one; send what has come.
        let sent = self.send_frames(0, self.owed as usize, link);
        self.owed = self
            .owed
            .saturating_sub(u32::try_from(sent).unwrap_or(u32::MAX));
    }

    /// Sends up to `n` frames of track `i`; how many were there.
    fn send_frames(&mut self, i: usize, n: usize, link: &mut Link) -> usize {
        let mut sent = 0;
        for _ in 0..n {
            let seq = self.seq + 1;
            let track = &mut self.tracks[i];
            let Some(frame) = track.framer.next_frame() else {
                break;
            };
            let message = self
                .media
                .media(seq, track.track, track.base_ms, track.chunk, frame);
            self.seq = seq;
            track.chunk += 1;
            track.base_ms += 20;
            sent += 1;
            if link.media(message) {
                self.sent_to_service.inc();
                self.surface_sent.inc();
            } else {
                self.dropped_to_service.inc();
            }
        }
        sent
    }

    /// One beat: a frame per track to the service, a frame into the call, checkpoints reached.
    fn tick(&mut self, session: &Session, link: &mut Link, now: Instant) {
        for i in 0..self.tracks.len() {
            let frame_len = self.tracks[i].framer.frame_len();
            let backlog = self.tracks[i].framer.buffered_len() / frame_len.max(1);
            let n = if backlog >= CATCH_UP_FRAMES { 2 } else { 1 };
            let sent = self.send_frames(i, n, link);
            if i == 0 {
                if sent == 0 {
                    // Missed: the frame goes out when it comes (`send_owed`); beats missed in a
                    // row are a gap in the audio, and the beat lines up again with what follows.
                    self.owed = self.owed.saturating_add(1);
                    if self.owed >= GAP_TICKS && !self.playing() {
                        self.aligned = false;
                    }
                } else {
                    self.owed = 0;
                    let waiting = self.tracks[0].framer.buffered_len() >= frame_len;
                    self.behind = if waiting { self.behind + 1 } else { 0 };
                    if self.behind >= BEHIND_TICKS {
                        self.behind = 0;
                        self.send_frames(0, 1, link);
                    }
                }
            }
        }
        self.play(session, link, now);
        self.publish_depth(session);
    }

    fn play(&mut self, session: &Session, link: &mut Link, now: Instant) {
        let Some(playout) = &mut self.playout else {
            return;
        };
        // Frames handed out before this beat have finished playing.
        let finished = playout.handed();
        for name in playout.reached(finished) {
            self.seq += 1;
            link.control(audio_stream::played_stream_message(
                self.seq,
                &session.rec.stream_id,
                &name,
            ));
            super::callbacks::send(
                &session.state,
                &session.rec,
                "PlayedStream",
                vec![("Name", name)],
            );
        }
        if playout.queued_frames() == 0
            && playout.has_remainder()
            && now.duration_since(self.last_push) >= REST_WAIT
        {
            playout.flush_remainder();
        }
        let Some(payload) = playout.next_frame() else {
            return;
        };
        self.last_handout = Some(now);
        let (codec, rate) = frame_codec(self.call_format);
        let frame = callstream_core::audio::encode(
            &session.rec.call_id,
            Track::Outbound,
            codec,
            rate,
            u64::try_from(time::now().timestamp_millis()).unwrap_or(0),
            &payload,
        );
        match session.state.commands().play_audio(
            &session.rec.workspace_id,
            &session.rec.call_id,
            frame,
        ) {
            Ok(()) => self.sent_to_call.inc(),
            Err(_) => self.dropped_to_call.inc(),
        };
    }

    /// One message from the service.
    fn service_message(&mut self, session: &Session, link: &mut Link, text: &str, now: Instant) {
        let metrics = &session.state.metrics().audio;
        let message = match audio_stream::parse_service_message(text, &session.rec.stream_id) {
            Ok(message) => message,
            Err(refusal) => {
                metrics.service_messages_refused.inc();
                tracing::debug!(stream_id = %session.rec.stream_id, reason = %refusal, "audio stream: service message ignored");
                return;
            }
        };
        match message {
            ServiceMessage::SendDtmf { digits } => {
                let (state, workspace, call) = (
                    session.state.clone(),
                    session.rec.workspace_id.clone(),
                    session.rec.call_id.clone(),
                );
                let stream_id = session.rec.stream_id.clone();
                tokio::spawn(async move {
                    let command = Command::SendDtmf { digits };
                    if let Err(err) =
                        crate::commands::execute(&state, &workspace, &call, command).await
                    {
                        tracing::debug!(%stream_id, error = %err.message, "audio stream: sendDTMF not carried out");
                    }
                });
            }
            other if self.playout.is_none() => {
                metrics.service_messages_refused.inc();
                tracing::debug!(stream_id = %session.rec.stream_id, message = ?kind(&other), "audio stream: not bidirectional; message ignored");
            }
            ServiceMessage::PlayAudio { format, payload } => {
                self.queue_audio(session, format, payload, now)
            }
            ServiceMessage::Checkpoint { name } => {
                let idle = self
                    .last_handout
                    .is_none_or(|at| now.duration_since(at) >= PERIOD);
                let Some(playout) = &mut self.playout else {
                    return;
                };
                playout.checkpoint(name);
                // Nothing queued and nothing playing: it has been reached already.
                if idle && playout.queued_frames() == 0 {
                    for name in playout.reached(playout.handed()) {
                        self.seq += 1;
                        link.control(audio_stream::played_stream_message(
                            self.seq,
                            &session.rec.stream_id,
                            &name,
                        ));
                        super::callbacks::send(
                            &session.state,
                            &session.rec,
                            "PlayedStream",
                            vec![("Name", name)],
                        );
                    }
                }
            }
            ServiceMessage::ClearAudio => {
                let Some(playout) = &mut self.playout else {
                    return;
                };
                playout.clear();
                // What was half-converted belongs to the cleared audio too.
                if let Some((_, t)) = &mut self.play_in {
                    t.reset();
                }
                self.seq += 1;
                link.control(audio_stream::cleared_audio_message(
                    self.seq,
                    &session.rec.stream_id,
                ));
                self.publish_depth(session);
            }
        }
    }

    fn queue_audio(
        &mut self,
        session: &Session,
        format: MediaFormat,
        mut payload: Vec<u8>,
        now: Instant,
    ) {
        let Some(playout) = &mut self.playout else {
            return;
        };
        if session.rec.l16_big_endian && format.encoding() == callstream_audio::Encoding::L16 {
            swap_bytes(&mut payload);
        }
        let transcoder = match &mut self.play_in {
            Some((from, t)) if *from == format && t.output_format() == self.call_format => t,
            slot => {
                &mut slot
                    .insert((format, Transcoder::new(format, self.call_format)))
                    .1
            }
        };
        self.scratch.clear();
        if transcoder.transcode(&payload, &mut self.scratch).is_err() {
            session.state.metrics().audio.service_messages_refused.inc();
            return;
        }
        self.last_push = now;
        let pushed = playout.push(&self.scratch);
        if self.scratch.capacity() > SCRATCH_KEEP {
            self.scratch = Vec::new();
        }
        for _ in 0..pushed.dropped {
            self.dropped_to_call.inc();
        }
        for level in pushed.degraded {
            super::callbacks::send(
                &session.state,
                &session.rec,
                "DegradedStream",
                vec![
                    ("BufferPercent", level.to_string()),
                    ("Error", format!("the play-out queue is {level} % full")),
                ],
            );
        }
        self.publish_depth(session);
    }

    /// Takes what this stream added to the process-wide depth off again: it has ended.
    fn retire(&mut self, session: &Session) {
        if let Some(playout) = &mut self.playout {
            playout.clear();
        }
        self.publish_depth(session);
    }

    /// Records the play-out depth for the REST view and the process-wide gauge.
    fn publish_depth(&mut self, session: &Session) {
        let ms = self
            .playout
            .as_ref()
            .map_or(0, |p| p.queued_frames() as u64 * 20);
        session.queued_ms.store(ms, Ordering::Relaxed);
        let ms = i64::try_from(ms).unwrap_or(i64::MAX);
        if ms != self.published_ms {
            session
                .state
                .metrics()
                .audio
                .playout_queued_ms
                .inc_by(ms - self.published_ms);
            self.published_ms = ms;
        }
    }
}

fn kind(message: &ServiceMessage) -> &'static str {
    match message {
        ServiceMessage::PlayAudio { .. } => "playAudio",
        ServiceMessage::Checkpoint { .. } => "checkpoint",
        ServiceMessage::ClearAudio => "clearAudio",
        ServiceMessage::SendDtmf { .. } => "sendDTMF",
    }
}

fn playout_frames(session: &Session) -> usize {
    usize::try_from(
        session
            .state
            .config()
            .audio_playout_max_secs
            .saturating_mul(50),
    )
    .unwrap_or(usize::MAX)
}

fn swap_bytes(l16: &mut [u8]) {
    for pair in l16.chunks_exact_mut(2) {
        pair.swap(0, 1);
    }
}

/// The media format of a runtime's frame.
fn frame_format(frame: &AudioFrame) -> Option<MediaFormat> {
    match (frame.codec, frame.sample_rate) {
        (Codec::Mulaw, 8000) => Some(MediaFormat::MULAW_8K),
        (Codec::Alaw, 8000) => Some(MediaFormat::ALAW_8K),
        (Codec::L16, 8000) => Some(MediaFormat::L16_8K),
        (Codec::L16, 16000) => Some(MediaFormat::L16_16K),
        _ => None,
    }
}

/// A runtime frame's codec and rate for a media format.
fn frame_codec(format: MediaFormat) -> (Codec, u32) {
    let codec = match format.encoding() {
        callstream_audio::Encoding::Mulaw => Codec::Mulaw,
        callstream_audio::Encoding::Alaw => Codec::Alaw,
        callstream_audio::Encoding::L16 => Codec::L16,
    };
    (codec, format.sample_rate().hz())
}

fn text(message: String) -> Message {
    Message::Text(tungstenite::Utf8Bytes::from(message))
}
