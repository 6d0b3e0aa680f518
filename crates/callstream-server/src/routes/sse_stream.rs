//! What every SSE stream shares: a prefix of frames (stored or resumed), then a live bus
//! subscription, with comment heartbeats, a closing frame on shutdown, the end of a stream
//! token, metrics, and the response head. Each surface decides only what an event becomes
//! ([`SseSurface`]).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use callstream_bus::{Event, Subscription};
use callstream_surfaces::{native, sse};
use chrono::{DateTime, Utc};
use futures::Stream;
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Interval, MissedTickBehavior, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::metrics::{OpenStream, SurfaceLabels};
use crate::routes::COALESCE_MAX_FRAMES;
use crate::routes::ws::{first_ping, until};
use crate::state::AppState;

/// What one event does to a stream.
pub enum Step {
    /// Send this frame.
    Send(Bytes),
    /// Nothing for this surface.
    Skip,
    /// Send this frame, then end the stream.
    Finish(Bytes),
}

/// A surface's last word once its subscription ends: a frame, if any.
pub type AtEnd = Pin<Box<dyn Future<Output = Option<Bytes>> + Send>>;

/// A surface's part of an SSE stream.
pub trait SseSurface: Send + Unpin + 'static {
    fn frame(&mut self, event: &Event) -> Step;

    /// Called when the subscription ends (the call ended): a last frame, if any.
    fn at_end(&mut self) -> AtEnd;
}

/// One open SSE stream.
///
/// A hand-written `Stream`: every future it waits on (shutdown, expiry, heartbeat, the
/// subscription's queue) lives in the struct and stays registered between frames. Written as
/// an `async` loop over `stream::unfold`, each frame moved the whole state in and out of a new
/// future and registered and removed a shutdown waiter; under callgrind, dropping that saved a
/// quarter of the userspace instructions per delivered frame (docs/benchmarks.md).
pub struct SseStream<S> {
    prefix: VecDeque<Bytes>,
    subscription: Option<Subscription>,
    heartbeat: Interval,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// A stream token's expiry: the stream ends then with `event: error` `token_expired`. Only
    /// streams opened with a token have one (a timer is memory every idle stream would pay).
    expiry: Option<Pin<Box<Sleep>>>,
    /// The revocation of the key the stream was opened with (or that minted its token or
    /// session): the stream ends then with `event: error` `key_revoked`.
    revoked: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// The surface's last frame being worked out, once the subscription has ended.
    ending: Option<AtEnd>,
    sent: Counter,
    /// A frame went out since the heartbeat last ticked: the stream is not idle, and that
    /// tick sends nothing.
    busy: bool,
    finished: bool,
    surface: S,
    _open: OpenStream,
}

impl<S: SseSurface> SseStream<S> {
    pub fn new(
        state: &AppState,
        labels: &SurfaceLabels,
        prefix: VecDeque<Bytes>,
        subscription: Option<Subscription>,
        expires_at: Option<DateTime<Utc>>,
        surface: S,
    ) -> Self {
        // The first tick at a random point in the second half of the period, as for WebSocket
        // pings: streams opened together (a reconnect storm, a benchmark's subscribers) would
        // otherwise tick together for life, a burst of writes every period.
        let period = state.config().heartbeat();
        let first = first_ping(period, getrandom::u32().unwrap_or(u32::MAX));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let metrics = state.metrics();
        Self {
            prefix,
            subscription,
            heartbeat,
            shutdown: Box::pin(state.shutdown().clone().cancelled_owned()),
            expiry: expires_at.map(|at| Box::pin(tokio::time::sleep(until(Some(at))))),
            revoked: None,
            ending: None,
            sent: metrics.frames_sent.get_or_create(labels).clone(),
            busy: false,
            finished: false,
            surface,
            _open: OpenStream::new(metrics.open_streams.get_or_create(labels).clone()),
        }
    }

    /// Ends the stream when `key` is revoked.
    #[must_use]
    pub fn revocable(mut self, state: &AppState, key: &callstream_core::id::KeyId) -> Self {
        self.revoked = Some(Box::pin(state.revocations().watch(key).cancelled_owned()));
        self
    }

    /// The `200 text/event-stream` response that streams this.
    pub fn into_response(self) -> Response {
        sse_response(Body::from_stream(self))
    }

    /// Ends the stream after `frame`.
    fn last(&mut self, frame: Bytes) -> Poll<Option<Result<Bytes, Infallible>>> {
        self.finished = true;
        Poll::Ready(Some(Ok(frame)))
    }
}

impl<S: SseSurface> Stream for SseStream<S> {
    type Item = Result<Bytes, Infallible>;

    /// In order: the prefix; then shutdown, the token's expiry, the next event, the heartbeat
    /// (the first of them that is ready); once the subscription ends, the surface's last frame.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(ending) = this.ending.as_mut() {
            let last = std::task::ready!(ending.as_mut().poll(cx));
            this.ending = None;
            this.finished = true;
            return Poll::Ready(last.map(Ok));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(frame) = this.prefix.pop_front() {
            this.sent.inc();
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(sub) = this.subscription.as_mut() else {
            return Poll::Ready(None);
        };
        if this.shutdown.as_mut().poll(cx).is_ready() {
            return this.last(native::error_sse(
                "going_away",
                "the server is shutting down; reconnect with Last-Event-ID to resume",
            ));
        }
        if let Some(revoked) = this.revoked.as_mut()
            && revoked.as_mut().poll(cx).is_ready()
        {
            return this.last(native::error_sse(
                "key_revoked",
                "the API key this stream was opened with was revoked",
            ));
        }
        if let Some(expiry) = this.expiry.as_mut()
            && expiry.as_mut().poll(cx).is_ready()
        {
            return this.last(native::error_sse(
                "token_expired",
                "the stream token, session or key this stream was opened with has expired",
            ));
        }
        loop {
            match sub.poll_next(cx) {
                Poll::Ready(Some(event)) => match this.surface.frame(&event) {
                    Step::Skip => {}
                    Step::Send(frame) => {
                        this.sent.inc();
                        this.busy = true;
                        let frame = this.coalesce(frame);
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Step::Finish(frame) => return this.last(frame),
                },
                Poll::Ready(None) if sub.end() != callstream_bus::End::Finished => {
                    // Interrupted, not finished: the client reconnects with Last-Event-ID (as
                    // EventSource does by itself) and is told what, if anything, is gone.
                    return this.last(native::error_sse(
                        "stream_interrupted",
                        "the live stream was interrupted; reconnect with Last-Event-ID to resume",
                    ));
                }
                Poll::Ready(None) => {
                    this.ending = Some(this.surface.at_end());
                    return Pin::new(this).poll_next(cx);
                }
                Poll::Pending => break,
            }
        }
        // A heartbeat only when nothing went out since the last tick: a busy stream needs none,
        // and 1,000 busy streams ticking together were a burst of writes. After a busy tick the
        // next look is half a period later, so an idle stream's longest silence stays under one
        // and a half periods (45 s by default, inside the common 60 s proxy read timeout).
        while this.heartbeat.poll_tick(cx).is_ready() {
            if !std::mem::take(&mut this.busy) {
                return Poll::Ready(Some(Ok(sse::comment("heartbeat"))));
            }
            let half = this.heartbeat.period() / 2;
            this.heartbeat.reset_after(half);
        }
        Poll::Pending
    }
}

/// Most bytes joined into one chunk.
const COALESCE_MAX_BYTES: usize = 32 * 1024;

impl<S: SseSurface> SseStream<S> {
    /// Joins `first` with the frames already queued behind it (up to a bound), so a subscriber
    /// that has fallen behind gets one chunk (one write, one chunk header) instead of many. A
    /// subscriber that keeps up has nothing queued and pays nothing.
    fn coalesce(&mut self, first: Bytes) -> Bytes {
        let Some(sub) = self.subscription.as_mut() else {
            return first;
        };
        let mut joined: Option<bytes::BytesMut> = None;
        let mut frames = 1;
        while frames < COALESCE_MAX_FRAMES
            && joined.as_ref().map_or(first.len(), |j| j.len()) < COALESCE_MAX_BYTES
        {
            let Some(event) = sub.try_next() else { break };
            match self.surface.frame(&event) {
                Step::Skip => continue,
                Step::Send(frame) => {
                    self.sent.inc();
                    frames += 1;
                    joined
                        .get_or_insert_with(|| bytes::BytesMut::from(&first[..]))
                        .extend_from_slice(&frame);
                }
                Step::Finish(frame) => {
                    // The end: send what is joined, then this frame, then close.
                    joined
                        .get_or_insert_with(|| bytes::BytesMut::from(&first[..]))
                        .extend_from_slice(&frame);
                    self.finished = true;
                    break;
                }
            }
        }
        joined.map_or(first, bytes::BytesMut::freeze)
    }
}

/// The response head every SSE stream shares. `X-Accel-Buffering: no` keeps nginx from
/// buffering the stream; `no-cache` keeps any proxy from caching it.
pub fn sse_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    //! The heartbeat rule on tokio's paused clock: what a real server shows in seconds of wall
    //! time (and with the timing of a loaded machine), shown here in virtual time, exactly.

    use std::sync::Arc;
    use std::time::Duration;

    use callstream_bus::{InProcessBus, InProcessCommands, InProcessConfig, Resume, Topic};
    use callstream_core::{CallId, Envelope, Payload, Subject, WorkspaceId};
    use futures::StreamExt;
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::metrics::Surface;

    /// Every event as a one-line frame.
    struct Every;

    impl SseSurface for Every {
        fn frame(&mut self, event: &Event) -> Step {
            Step::Send(Bytes::from(format!("data: {}\n\n", event.seq())))
        }

        fn at_end(&mut self) -> AtEnd {
            Box::pin(async { None })
        }
    }

    const LABELS: SurfaceLabels = SurfaceLabels {
        surface: Surface::native_transcript_sse,
    };

    async fn state(dir: &tempfile::TempDir) -> AppState {
        let store = callstream_store::SqliteStore::open(&dir.path().join("t.db"))
            .await
            .unwrap();
        let config = crate::Config {
            sse_heartbeat_secs: 30,
            ..crate::Config::default()
        };
        AppState::new(
            config,
            crate::Backends {
                store: Arc::new(store),
                bus: Arc::new(InProcessBus::new(InProcessConfig::default())),
                commands: Arc::new(InProcessCommands::new()),
                nats: None,
            },
            CancellationToken::new(),
        )
    }

    fn event(ws: &WorkspaceId, call: &CallId, seq: u64) -> Arc<Event> {
        Event::new(
            Envelope::new(
                ws.clone(),
                Subject::Call(call.clone()),
                seq,
                callstream_core::time::now(),
                Payload::parse("call.dtmf", serde_json::json!({"digits": "1"})).unwrap(),
            )
            .unwrap(),
        )
    }

    /// A stream of `topic`'s live events, ending at `expires_at` if given.
    async fn live_stream(
        state: &AppState,
        topic: &Topic,
        expires_at: Option<DateTime<Utc>>,
    ) -> SseStream<Every> {
        let subscription = state.subscribe(topic, Resume::Live, &LABELS).await.unwrap();
        SseStream::new(
            state,
            &LABELS,
            VecDeque::new(),
            Some(subscription),
            expires_at,
            Every,
        )
    }

    fn is_heartbeat(item: &Bytes) -> bool {
        item.as_ref() == sse::comment("heartbeat").as_ref()
    }

    #[tokio::test]
    async fn an_idle_stream_beats_each_period_and_a_busy_one_never_until_it_idles() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(&dir).await;
        let (ws, call) = (WorkspaceId::new(), CallId::new());
        let topic = Topic::call(&ws, &call);
        let subscription = state
            .subscribe(&topic, Resume::Live, &LABELS)
            .await
            .unwrap();
        tokio::time::pause();
        let mut stream = SseStream::new(
            &state,
            &LABELS,
            VecDeque::new(),
            Some(subscription),
            None,
            Every,
        );
        let period = Duration::from_secs(30);

        // Idle: the first beat in the second half of the first period, then one per period.
        let opened = Instant::now();
        let first = stream.next().await.unwrap().unwrap();
        assert!(is_heartbeat(&first));
        let waited = opened.elapsed();
        assert!(
            waited >= period / 2 && waited <= period,
            "first beat after {waited:?}"
        );
        let before = Instant::now();
        assert!(is_heartbeat(&stream.next().await.unwrap().unwrap()));
        assert_eq!(before.elapsed(), period);

        // Busy: a frame every 10 s for five periods: frames only.
        let bus = state.clone();
        let (ws2, call2) = (ws.clone(), call.clone());
        let publisher = tokio::spawn(async move {
            for seq in 1..=15 {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let _ = bus.bus().publish(event(&ws2, &call2, seq)).await;
            }
        });
        for seq in 1..=15u64 {
            let item = stream.next().await.unwrap().unwrap();
            assert_eq!(
                item,
                Bytes::from(format!("data: {seq}\n\n")),
                "no heartbeat while busy"
            );
        }
        publisher.await.unwrap();

        // Idle again: a beat within one and a half periods of the last frame.
        let idle_since = Instant::now();
        assert!(is_heartbeat(&stream.next().await.unwrap().unwrap()));
        assert!(
            idle_since.elapsed() <= period + period / 2,
            "{:?}",
            idle_since.elapsed()
        );
    }

    #[tokio::test]
    async fn a_stream_ends_at_its_tokens_expiry_and_at_its_keys_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(&dir).await;
        let (ws, call) = (WorkspaceId::new(), CallId::new());
        let topic = Topic::call(&ws, &call);
        let key = callstream_core::id::KeyId::new();
        tokio::time::pause();

        // A stream token of one second: the stream says so at that second, then ends.
        let expires_at = callstream_core::time::now() + chrono::Duration::seconds(1);
        let mut expiring = live_stream(&state, &topic, Some(expires_at)).await;
        let opened = Instant::now();
        let last = expiring.next().await.unwrap().unwrap();
        assert!(
            String::from_utf8_lossy(&last).contains("token_expired"),
            "{last:?}"
        );
        let lived = opened.elapsed();
        assert!(
            // tokio's timers tick in whole milliseconds, rounding up.
            lived <= Duration::from_millis(1_002) && lived > Duration::from_millis(900),
            "{lived:?}"
        );
        assert!(expiring.next().await.is_none());

        // A revoked key: the stream says so as soon as the revocation is known, then ends.
        let mut revocable = live_stream(&state, &topic, None)
            .await
            .revocable(&state, &key);
        let (state2, key2) = (state.clone(), key.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            state2.revocations().revoke(&key2);
        });
        let opened = Instant::now();
        let last = revocable.next().await.unwrap().unwrap();
        assert!(
            String::from_utf8_lossy(&last).contains("key_revoked"),
            "{last:?}"
        );
        let lived = opened.elapsed();
        assert!(
            lived >= Duration::from_secs(5) && lived <= Duration::from_millis(5_002),
            "{lived:?}"
        );
        assert!(revocable.next().await.is_none());
    }
}
