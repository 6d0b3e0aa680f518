use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc::{self, error::TrySendError};

use callstream_core::audio::AudioFrame;
use callstream_core::{CallId, WorkspaceId};

use crate::audio::AudioSubscription;
use crate::subscription::{End, EndSignal, Subscription};
use crate::{Bus, BusError, BusStats, Event, Gap, PublishReport, Resume, SubscribeOptions, Topic};

/// Sizes of the in-process backend.
#[derive(Debug, Clone)]
pub struct InProcessConfig {
    /// Events kept per topic for resume (`Last-Event-ID`, `since`).
    pub history_capacity: usize,
    /// Bytes kept per topic (events weighed by [`Event::weight`]); the newest event is kept
    /// whatever its size.
    pub history_max_bytes_per_topic: usize,
    /// Bytes kept over all topics: past it, the topics of ended calls give up their oldest
    /// events first (the earliest ended first), then the topic that publishes gives up its
    /// own; [`InProcessBus::sweep`] empties finished, then idle, topics.
    pub history_max_bytes: usize,
    /// How long a topic's history is kept after its call ended, so late reconnects can resume.
    pub ended_retention: Duration,
    /// How long a topic with no subscribers and no publishes keeps its history.
    pub idle_retention: Duration,
}

impl Default for InProcessConfig {
    fn default() -> Self {
        Self {
            history_capacity: 128,
            history_max_bytes_per_topic: 1024 * 1024,
            history_max_bytes: 128 * 1024 * 1024,
            ended_retention: Duration::from_secs(300),
            idle_retention: Duration::from_secs(3600),
        }
    }
}

/// The embedded bus: every topic lives in this process.
///
/// Topics sit in a sharded map (`DashMap`), so two calls never contend on one lock; each topic
/// has its own mutex, held only while a publish appends to the history and offers the event to
/// each subscriber's queue with `try_send` (no awaiting under the lock).
pub struct InProcessBus {
    config: InProcessConfig,
    topics: crate::FastMap<Topic, Arc<TopicState>>,
    audio: crate::audio::AudioTopics,
    /// The weight of every topic's history together.
    held: AtomicUsize,
    /// Events given up before their time to keep within a byte bound.
    trimmed: AtomicU64,
    /// Topics whose call ended, in the order they ended, that may still hold history: over
    /// `history_max_bytes`, a publish takes from these before its own topic's history, so
    /// that live calls stay resumable while the calls that just ended hold the bus's bytes.
    /// Measured in the soak (`bench/soak.sh`, docs/benchmarks.md): when 8,000 calls ended
    /// together, their histories held all 128 MiB for `ended_retention`, every live call kept
    /// one event (no resume), and the ~1 M events were freed together 300 s later, stalling
    /// every stream for seconds.
    ended: Mutex<VecDeque<Weak<TopicState>>>,
    /// `ended.len()`, readable without its lock.
    ended_len: AtomicUsize,
}

struct TopicState {
    inner: Mutex<TopicInner>,
}

struct TopicInner {
    history: VecDeque<Arc<Event>>,
    /// The weight of `history`.
    history_bytes: usize,
    last_seq: u64,
    subscribers: Vec<Subscriber>,
    ended: bool,
    /// Set by `sweep` when it takes the topic out of the map. Anyone who fetched the `Arc`
    /// before that and locks it after must fetch the topic again, or a publish or subscription
    /// would land on a topic nobody else can reach.
    removed: bool,
    touched: Instant,
}

struct Subscriber {
    tx: mpsc::Sender<Arc<Event>>,
    dropped: Counter,
    end: EndSignal,
}

impl TopicState {
    fn lock(&self) -> MutexGuard<'_, TopicInner> {
        // A panic while holding this lock cannot leave the history inconsistent (every update is
        // a push or a retain), so a poisoned lock is still safe to use.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl InProcessBus {
    pub fn new(config: InProcessConfig) -> Self {
        Self {
            config,
            topics: crate::FastMap::default(),
            audio: crate::audio::AudioTopics::default(),
            held: AtomicUsize::new(0),
            trimmed: AtomicU64::new(0),
            ended: Mutex::new(VecDeque::new()),
            ended_len: AtomicUsize::new(0),
        }
    }

    /// Bytes of history held over all topics, and events given up early to stay within the
    /// byte bounds since the bus started.
    pub fn history_usage(&self) -> (usize, u64) {
        (
            self.held.load(Ordering::Relaxed),
            self.trimmed.load(Ordering::Relaxed),
        )
    }

    /// Drops `inner`'s oldest event, keeping the byte counts true.
    fn pop_oldest(&self, inner: &mut TopicInner) {
        if let Some(old) = inner.history.pop_front() {
            let weight = old.weight();
            inner.history_bytes -= weight;
            self.held.fetch_sub(weight, Ordering::Relaxed);
        }
    }

    fn over_total(&self) -> bool {
        self.held.load(Ordering::Relaxed) > self.config.history_max_bytes
    }

    /// Keeps `inner`'s history within its bounds: the count, the topic's bytes and, while the
    /// bus is over its total, what ended calls hold, then everything but the newest event.
    fn trim(&self, inner: &mut TopicInner) {
        while inner.history.len() > self.config.history_capacity {
            self.pop_oldest(inner);
        }
        while inner.history.len() > 1
            && inner.history_bytes > self.config.history_max_bytes_per_topic
        {
            self.pop_oldest(inner);
            self.trimmed.fetch_add(1, Ordering::Relaxed);
        }
        if self.over_total() {
            self.take_from_ended();
        }
        while inner.history.len() > 1 && self.over_total() {
            self.pop_oldest(inner);
            self.trimmed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Gives up the oldest events of the earliest ended topics until the bus is within its
    /// total or none is left. Called with a publishing topic's lock held: an ended topic is
    /// only tried (never waited for), so no two locks are ever waited for in opposite orders.
    fn take_from_ended(&self) {
        if self.ended_len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut ended = self
            .ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while self.over_total() {
            let Some(state) = ended.front().map(Weak::upgrade) else {
                break;
            };
            let Some(state) = state else {
                ended.pop_front();
                continue;
            };
            let mut inner = match state.inner.try_lock() {
                Ok(inner) => inner,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                // Busy (a late subscriber reading it): the publisher gives up its own this time.
                Err(TryLockError::WouldBlock) => break,
            };
            if inner.history.is_empty() {
                drop(inner);
                ended.pop_front();
                continue;
            }
            self.pop_oldest(&mut inner);
            self.trimmed.fetch_add(1, Ordering::Relaxed);
        }
        self.ended_len.store(ended.len(), Ordering::Relaxed);
    }

    /// Empties histories, finished topics first, then the longest untouched, until the bus is
    /// within its total (each keeps its last seq, so a resume is told of the gap).
    fn shed(&self) {
        if !self.over_total() {
            return;
        }
        let mut holders: Vec<(bool, Instant, Arc<TopicState>)> = self
            .topics
            .iter()
            .filter_map(|entry| {
                let inner = entry.value().lock();
                (!inner.history.is_empty())
                    .then(|| (!inner.ended, inner.touched, entry.value().clone()))
            })
            .collect();
        holders.sort_by_key(|(live, touched, _)| (*live, *touched));
        for (_, _, state) in holders {
            if !self.over_total() {
                break;
            }
            let mut inner = state.lock();
            let n = inner.history.len() as u64;
            self.held.fetch_sub(inner.history_bytes, Ordering::Relaxed);
            inner.history.clear();
            inner.history_bytes = 0;
            self.trimmed.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The topic's state, locked, created on first use; never one that `sweep` removed.
    fn locked<R>(
        &self,
        topic: &Topic,
        f: impl FnOnce(&Arc<TopicState>, &mut TopicInner) -> R,
    ) -> R {
        loop {
            let state = self.topic(topic);
            let mut inner = state.lock();
            if !inner.removed {
                return f(&state, &mut inner);
            }
        }
    }

    fn topic(&self, topic: &Topic) -> Arc<TopicState> {
        if let Some(state) = self.topics.get(topic) {
            return state.clone();
        }
        self.topics
            .entry(topic.clone())
            .or_insert_with(|| {
                Arc::new(TopicState {
                    inner: Mutex::new(TopicInner {
                        history: VecDeque::new(),
                        history_bytes: 0,
                        last_seq: 0,
                        subscribers: Vec::new(),
                        ended: false,
                        removed: false,
                        touched: Instant::now(),
                    }),
                })
            })
            .clone()
    }

    /// What this bus holds of a topic: the oldest seq its history still has (`None` when it
    /// holds none) and the last seq published. `None` for a topic it does not know. A
    /// networked backend that keeps this bus as its local fan-out asks it whether a resume can
    /// be served from memory.
    pub fn bounds(&self, topic: &Topic) -> Option<(Option<u64>, u64)> {
        let state = self.topics.get(topic)?.clone();
        let inner = state.lock();
        if inner.removed {
            return None;
        }
        Some((inner.history.front().map(|e| e.seq()), inner.last_seq))
    }

    /// The last seq this bus holds for the topic whose subject is `subject`; `None` for a
    /// topic it does not know.
    pub fn last_seq(&self, subject: &str) -> Option<u64> {
        let state = self.topics.get(subject)?.clone();
        let inner = state.lock();
        (!inner.removed).then_some(inner.last_seq)
    }

    /// Forgets topics whose retention has passed. Runs from [`Bus::maintain`].
    pub fn sweep(&self, now: Instant) {
        let mut forgotten = Vec::new();
        self.topics.retain(|_, state| {
            let mut inner = state.lock();
            inner.subscribers.retain(|s| !s.tx.is_closed());
            let age = now.saturating_duration_since(inner.touched);
            let keep_for = if inner.ended {
                self.config.ended_retention
            } else {
                self.config.idle_retention
            };
            let expired = inner.subscribers.is_empty() && age >= keep_for;
            inner.removed = expired;
            if expired {
                self.held.fetch_sub(inner.history_bytes, Ordering::Relaxed);
                inner.history_bytes = 0;
                forgotten.push(std::mem::take(&mut inner.history));
            }
            !expired
        });
        self.shed();
        release(forgotten);
        let mut ended = self
            .ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ended.retain(|topic| topic.strong_count() > 0);
        self.ended_len.store(ended.len(), Ordering::Relaxed);
    }
}

/// Histories freed at a time by [`release`], with a pause after each batch.
const RELEASE_BATCH: usize = 64;

/// Frees forgotten histories a few at a time, with pauses between, outside the topics' locks.
/// Calls that ended together are forgotten together: measured in the soak (`bench/soak.sh`,
/// docs/benchmarks.md), freeing the ~1 M events of 8,000 such calls at once in the sweep stalled
/// every frame of the other calls for up to 2.3 s, 300 s after each window's end; freed at once
/// on a blocking thread, still 0.85 s (the frees contend with the workers' allocations).
fn release(histories: Vec<VecDeque<Arc<Event>>>) {
    if histories.is_empty() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async move {
                let mut rest = histories.into_iter();
                loop {
                    let batch: Vec<_> = rest.by_ref().take(RELEASE_BATCH).collect();
                    if batch.is_empty() {
                        break;
                    }
                    drop(batch);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
        Err(_) => drop(histories),
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, event: Arc<Event>) -> Result<PublishReport, BusError> {
        // Weighed (its JSON encoded, once) before the topic's lock is taken.
        let weight = event.weight();
        let report = self.locked(&Topic::of(event.envelope()), |state, inner| {
            let mut report = PublishReport::default();
            if event.seq() <= inner.last_seq || inner.ended {
                return report;
            }
            inner.last_seq = event.seq();
            inner.touched = Instant::now();
            inner.history.push_back(event.clone());
            inner.history_bytes += weight;
            self.held.fetch_add(weight, Ordering::Relaxed);
            self.trim(inner);
            inner
                .subscribers
                .retain(|sub| match sub.tx.try_send(event.clone()) {
                    Ok(()) => {
                        report.queued += 1;
                        true
                    }
                    Err(TrySendError::Full(_)) => {
                        sub.dropped.inc();
                        report.dropped += 1;
                        true
                    }
                    Err(TrySendError::Closed(_)) => false,
                });
            if event.envelope().payload.is_terminal() {
                // Dropping the senders ends every subscription once it has drained its queue, so
                // a subscriber learns that the call ended even if the terminal frame itself was
                // dropped.
                inner.ended = true;
                for sub in inner.subscribers.drain(..) {
                    sub.end.set(End::Finished);
                }
                let mut ended = self
                    .ended
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                ended.push_back(Arc::downgrade(state));
                self.ended_len.store(ended.len(), Ordering::Relaxed);
            }
            report
        });
        Ok(report)
    }

    async fn subscribe(
        &self,
        topic: &Topic,
        resume: Resume,
        options: SubscribeOptions,
    ) -> Result<Subscription, BusError> {
        Ok(self.locked(topic, |_, inner| {
            Self::subscribe_locked(inner, resume, options)
        }))
    }

    async fn publish_audio(
        &self,
        workspace: &WorkspaceId,
        frame: Arc<AudioFrame>,
    ) -> Result<PublishReport, BusError> {
        Ok(self
            .audio
            .publish(&Topic::audio(workspace, &frame.call), frame))
    }

    async fn subscribe_audio(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        options: SubscribeOptions,
    ) -> Result<AudioSubscription, BusError> {
        Ok(self
            .audio
            .subscribe(&Topic::audio(workspace, call), options))
    }

    async fn maintain(&self) {
        self.sweep(Instant::now());
        self.audio.sweep();
    }

    fn stats(&self) -> BusStats {
        let mut stats = BusStats {
            topics: self.topics.len(),
            subscribers: 0,
            audio_listeners: self.audio.listeners(),
            nats: None,
            history_bytes: self.held.load(Ordering::Relaxed) as u64,
            history_trimmed: self.trimmed.load(Ordering::Relaxed),
        };
        for state in &self.topics {
            stats.subscribers += state.lock().subscribers.len();
        }
        stats
    }
}

impl InProcessBus {
    fn subscribe_locked(
        inner: &mut TopicInner,
        resume: Resume,
        options: SubscribeOptions,
    ) -> Subscription {
        let mut gap = None;
        let backlog: VecDeque<Arc<Event>> = match resume {
            Resume::Live => VecDeque::new(),
            Resume::After(after) => {
                if let Some(first) = inner.history.front() {
                    if first.seq() > after.saturating_add(1) {
                        gap = Some(Gap {
                            requested_after: after,
                            first_available: first.seq(),
                        });
                    }
                } else if inner.last_seq > after {
                    gap = Some(Gap {
                        requested_after: after,
                        first_available: inner.last_seq.saturating_add(1),
                    });
                }
                inner
                    .history
                    .iter()
                    .filter(|e| e.seq() > after)
                    .cloned()
                    .collect()
            }
        };
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let end = EndSignal::default();
        if inner.ended {
            // `tx` is dropped here and the subscription ends after its backlog.
            end.set(End::Finished);
        } else {
            inner.touched = Instant::now();
            inner.subscribers.push(Subscriber {
                tx,
                dropped: options.dropped.clone(),
                end: end.clone(),
            });
        }
        Subscription::new(backlog, rx, gap, options.dropped, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;

    #[tokio::test]
    async fn the_bus_contract_holds() {
        let bus = InProcessBus::new(InProcessConfig::default());
        conformance::events_arrive_in_order_on_their_topic_only(&bus).await;
        conformance::resume_serves_history_then_live(&bus).await;
        conformance::a_terminal_event_ends_the_topic(&bus).await;
        conformance::a_full_queue_drops_for_its_subscriber_only(&bus).await;
        conformance::audio_reaches_its_calls_listeners_only(&bus).await;
    }
    use callstream_core::{CallId, Envelope, Payload, Subject, WorkspaceId, time};
    use serde_json::json;

    fn call() -> (WorkspaceId, CallId) {
        (WorkspaceId::new(), CallId::new())
    }

    fn event(ws: &WorkspaceId, call: &CallId, seq: u64, terminal: bool) -> Arc<Event> {
        let payload = if terminal {
            Payload::parse("call.completed", json!({})).unwrap()
        } else {
            Payload::parse("call.dtmf", json!({"digits": "1"})).unwrap()
        };
        Event::new(
            Envelope::new(
                ws.clone(),
                Subject::Call(call.clone()),
                seq,
                time::now(),
                payload,
            )
            .unwrap(),
        )
    }

    fn opts(cap: usize) -> SubscribeOptions {
        SubscribeOptions {
            queue_capacity: cap,
            dropped: Counter::default(),
        }
    }

    #[tokio::test]
    async fn full_queue_drops_newest_and_counts_without_blocking_others() {
        let bus = InProcessBus::new(InProcessConfig::default());
        let (ws, c) = call();
        let topic = Topic::call(&ws, &c);
        let mut slow = bus.subscribe(&topic, Resume::Live, opts(2)).await.unwrap();
        let mut fast = bus.subscribe(&topic, Resume::Live, opts(64)).await.unwrap();
        for seq in 1..=5 {
            bus.publish(event(&ws, &c, seq, false)).await.unwrap();
        }
        for seq in 1..=5 {
            assert_eq!(fast.next().await.unwrap().seq(), seq);
        }
        assert_eq!(slow.next().await.unwrap().seq(), 1);
        assert_eq!(slow.next().await.unwrap().seq(), 2);
        assert_eq!(slow.dropped().get(), 3);
        assert_eq!(fast.dropped().get(), 0);
    }

    /// A transcript turn of about `bytes` bytes of JSON.
    fn heavy(ws: &WorkspaceId, call: &CallId, seq: u64, bytes: usize) -> Arc<Event> {
        let payload = Payload::parse(
            "call.transcription",
            json!({"role": "user", "text": "x".repeat(bytes), "is_final": true, "turn_id": "trn_1"}),
        )
        .unwrap();
        Event::new(
            Envelope::new(
                ws.clone(),
                Subject::Call(call.clone()),
                seq,
                time::now(),
                payload,
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn history_is_bounded_in_bytes_per_topic_and_in_all() {
        let bus = InProcessBus::new(InProcessConfig {
            history_max_bytes_per_topic: 10_000,
            history_max_bytes: 25_000,
            ..Default::default()
        });
        let (ws, a) = call();
        let weight = heavy(&ws, &a, 10, 1_000).weight();
        for seq in 1..=30 {
            bus.publish(heavy(&ws, &a, seq, 1_000)).await.unwrap();
        }
        // The topic keeps as many of its newest events as fit in its bound, and a resume from
        // before them is told of the gap.
        let (held, trimmed) = bus.history_usage();
        assert!(held <= 10_000 && held + weight + 8 > 10_000, "held {held}");
        let topic = Topic::call(&ws, &a);
        let sub = bus
            .subscribe(&topic, Resume::After(0), opts(64))
            .await
            .unwrap();
        let first = trimmed + 1;
        assert!(first > 20, "kept {} events of {weight} bytes", 31 - first);
        assert_eq!(
            sub.gap(),
            Some(Gap {
                requested_after: 0,
                first_available: first
            })
        );
        assert_eq!(sub.first_backlog_seq(), Some(first));
        drop(sub);

        // Two more topics: together past the bus's bound, each publisher gives up its oldest.
        let (b, c) = (CallId::new(), CallId::new());
        for seq in 1..=30 {
            bus.publish(heavy(&ws, &b, seq, 1_000)).await.unwrap();
            bus.publish(heavy(&ws, &c, seq, 1_000)).await.unwrap();
        }
        let (held, _) = bus.history_usage();
        assert!(held <= 25_000 + weight, "held {held}");
        assert_eq!(bus.stats().history_bytes, held as u64);

        // An event larger than a topic's bound is still kept, alone: the newest always is.
        bus.publish(heavy(&ws, &a, 31, 20_000)).await.unwrap();
        let sub = bus
            .subscribe(&topic, Resume::After(30), opts(64))
            .await
            .unwrap();
        assert_eq!(sub.first_backlog_seq(), Some(31));

        // The sweep sheds finished topics' histories first when the bus is over its bound.
        bus.publish(event(&ws, &b, 31, true)).await.unwrap();
        bus.sweep(Instant::now());
        let (held, _) = bus.history_usage();
        assert!(held <= 25_000, "held {held}");
        assert_eq!(bus.bounds(&Topic::call(&ws, &b)), Some((None, 31)));
        assert!(
            bus.bounds(&topic).unwrap().0.is_some(),
            "a live topic kept its history"
        );
    }

    /// Calls that ended together (a campaign's end, a runtime's restart) must not leave the
    /// live calls without resume: over the bus's total, the ended ones give way first, the
    /// earliest ended first, and only then does a live call give up its own history.
    #[tokio::test]
    async fn over_the_total_ended_calls_give_way_to_live_ones() {
        let (ws, first) = call();
        let weight = heavy(&ws, &first, 1, 1_000).weight();
        let bus = InProcessBus::new(InProcessConfig {
            history_max_bytes: weight * 40,
            ..Default::default()
        });
        let second = CallId::new();
        for seq in 1..=20 {
            bus.publish(heavy(&ws, &first, seq, 1_000)).await.unwrap();
            bus.publish(heavy(&ws, &second, seq, 1_000)).await.unwrap();
        }
        bus.publish(event(&ws, &first, 21, true)).await.unwrap();
        bus.publish(event(&ws, &second, 21, true)).await.unwrap();

        let live = CallId::new();
        for seq in 1..=30 {
            bus.publish(heavy(&ws, &live, seq, 1_000)).await.unwrap();
        }
        let sub = bus
            .subscribe(&Topic::call(&ws, &live), Resume::After(0), opts(64))
            .await
            .unwrap();
        assert_eq!(sub.gap(), None, "the live call kept all it published");
        assert_eq!(sub.first_backlog_seq(), Some(1));
        let (held, _) = bus.history_usage();
        assert!(held <= weight * 40, "held {held} of {}", weight * 40);
        // The call that ended first gave up its events first, all of them, then the other
        // from its oldest.
        let (oldest_first, _) = bus.bounds(&Topic::call(&ws, &first)).unwrap();
        let (oldest_second, _) = bus.bounds(&Topic::call(&ws, &second)).unwrap();
        assert_eq!(oldest_first, None);
        assert!(
            oldest_second.is_some_and(|s| s > 1),
            "the second kept from {oldest_second:?}"
        );

        // Once nothing ended is left to give, the live call gives up its own oldest.
        for seq in 31..=60 {
            bus.publish(heavy(&ws, &live, seq, 1_000)).await.unwrap();
        }
        assert_eq!(bus.bounds(&Topic::call(&ws, &first)).unwrap().0, None);
        assert_eq!(bus.bounds(&Topic::call(&ws, &second)).unwrap().0, None);
        let (held, _) = bus.history_usage();
        assert!(held <= weight * 40, "held {held}");
        assert!(bus.bounds(&Topic::call(&ws, &live)).unwrap().0 > Some(20));

        // Ended topics the sweep forgot are not kept in the queue of those that may give.
        bus.sweep(Instant::now() + Duration::from_secs(301));
        assert_eq!(bus.ended_len.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn resume_serves_backlog_then_live_and_reports_gaps() {
        let bus = InProcessBus::new(InProcessConfig {
            history_capacity: 3,
            ..Default::default()
        });
        let (ws, c) = call();
        let topic = Topic::call(&ws, &c);
        for seq in 1..=5 {
            bus.publish(event(&ws, &c, seq, false)).await.unwrap();
        }
        let mut sub = bus
            .subscribe(&topic, Resume::After(3), opts(8))
            .await
            .unwrap();
        assert_eq!(sub.gap(), None);
        bus.publish(event(&ws, &c, 6, false)).await.unwrap();
        let seqs: Vec<u64> = [sub.next().await, sub.next().await, sub.next().await]
            .into_iter()
            .map(|e| e.unwrap().seq())
            .collect();
        assert_eq!(seqs, [4, 5, 6]);

        let old = bus
            .subscribe(&topic, Resume::After(1), opts(8))
            .await
            .unwrap();
        assert_eq!(
            old.gap(),
            Some(Gap {
                requested_after: 1,
                first_available: 4
            })
        );
    }

    #[tokio::test]
    async fn duplicates_are_ignored_and_terminal_ends_subscriptions() {
        let bus = InProcessBus::new(InProcessConfig::default());
        let (ws, c) = call();
        let topic = Topic::call(&ws, &c);
        let mut sub = bus.subscribe(&topic, Resume::Live, opts(1)).await.unwrap();
        bus.publish(event(&ws, &c, 1, false)).await.unwrap();
        let again = bus.publish(event(&ws, &c, 1, false)).await.unwrap();
        assert_eq!(again, PublishReport::default());
        // The queue (1) is full: the terminal frame is dropped, yet the subscription still ends.
        bus.publish(event(&ws, &c, 2, true)).await.unwrap();
        assert_eq!(sub.next().await.unwrap().seq(), 1);
        assert!(sub.next().await.is_none());

        // A late subscriber to an ended topic gets the history and then the end.
        let mut late = bus
            .subscribe(&topic, Resume::After(0), opts(4))
            .await
            .unwrap();
        assert_eq!(late.next().await.unwrap().seq(), 1);
        assert_eq!(late.next().await.unwrap().seq(), 2);
        assert!(late.next().await.is_none());
    }

    #[tokio::test]
    async fn encodings_are_computed_once_and_shared() {
        let (ws, c) = call();
        let e = event(&ws, &c, 1, false);
        let slot = crate::FormatSlot::new(0);
        let mut calls = 0;
        let a = e.encoded(slot, |env| {
            calls += 1;
            Some(bytes::Bytes::from(env.to_json()))
        });
        let b = e.encoded(slot, |_| unreachable!("encoded twice"));
        assert_eq!(calls, 1);
        assert_eq!(a.unwrap().as_ptr(), b.unwrap().as_ptr());
    }

    #[tokio::test]
    async fn resume_from_any_seq_is_safe() {
        let bus = InProcessBus::new(InProcessConfig::default());
        let (ws, c) = call();
        let topic = Topic::call(&ws, &c);
        bus.publish(event(&ws, &c, 1, false)).await.unwrap();
        let mut sub = bus
            .subscribe(&topic, Resume::After(u64::MAX), opts(4))
            .await
            .unwrap();
        assert_eq!(sub.gap(), None);
        assert!(sub.take_backlog().is_empty());
    }

    #[tokio::test]
    async fn a_swept_topic_is_recreated_for_late_users() {
        let bus = InProcessBus::new(InProcessConfig {
            idle_retention: Duration::from_secs(1),
            ..Default::default()
        });
        let (ws, c) = call();
        let topic = Topic::call(&ws, &c);
        bus.publish(event(&ws, &c, 1, false)).await.unwrap();
        // A handle fetched before the sweep must not be used after it.
        let stale = bus.topic(&topic);
        bus.sweep(Instant::now() + Duration::from_secs(2));
        assert!(stale.lock().removed);
        let mut sub = bus.subscribe(&topic, Resume::Live, opts(4)).await.unwrap();
        bus.publish(event(&ws, &c, 2, false)).await.unwrap();
        assert_eq!(sub.next().await.unwrap().seq(), 2);
        assert_eq!(bus.stats().topics, 1);
    }

    #[tokio::test]
    async fn sweep_forgets_ended_topics_after_retention() {
        let bus = InProcessBus::new(InProcessConfig {
            ended_retention: Duration::from_secs(10),
            ..Default::default()
        });
        let (ws, c) = call();
        bus.publish(event(&ws, &c, 1, true)).await.unwrap();
        assert_eq!(bus.stats().topics, 1);
        bus.sweep(Instant::now());
        assert_eq!(bus.stats().topics, 1);
        bus.sweep(Instant::now() + Duration::from_secs(11));
        assert_eq!(bus.stats().topics, 0);
    }
}
