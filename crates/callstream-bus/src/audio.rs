//! Call audio on the bus: frames from a call's runtime to whoever listens to the call (its audio
//! streams to customer services, a browser monitoring it).
//!
//! Audio is not history: nothing is kept for resume, and a listener gets only what is published
//! after it subscribed. Each listener has its own bounded queue; a full queue drops that frame for
//! that listener and counts it, and the publisher never waits.

use std::sync::{Arc, Mutex, MutexGuard};

use callstream_core::audio::AudioFrame;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::{PublishReport, SubscribeOptions, Topic};

/// One listener's frames, in the order they were published.
pub struct AudioSubscription {
    rx: mpsc::Receiver<Arc<AudioFrame>>,
}

impl AudioSubscription {
    /// A subscription fed by `rx`: for backends that deliver into a channel of their own.
    pub fn from_receiver(rx: mpsc::Receiver<Arc<AudioFrame>>) -> Self {
        Self { rx }
    }

    /// The next frame; `None` once the bus has gone away.
    pub async fn next(&mut self) -> Option<Arc<AudioFrame>> {
        self.rx.recv().await
    }

    /// A frame if one is queued now.
    pub fn try_next(&mut self) -> Option<Arc<AudioFrame>> {
        self.rx.try_recv().ok()
    }
}

struct Listener {
    tx: mpsc::Sender<Arc<AudioFrame>>,
    dropped: Counter,
}

/// The in-process audio fan-out: one list of listeners per call.
#[derive(Default)]
pub(crate) struct AudioTopics {
    topics: crate::FastMap<Topic, Arc<Mutex<Vec<Listener>>>>,
}

fn lock(listeners: &Mutex<Vec<Listener>>) -> MutexGuard<'_, Vec<Listener>> {
    // Every update is a push or a retain: a panic elsewhere cannot leave the list half-changed.
    listeners
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AudioTopics {
    pub(crate) fn publish(&self, topic: &Topic, frame: Arc<AudioFrame>) -> PublishReport {
        let Some(listeners) = self.topics.get(topic).map(|l| l.clone()) else {
            return PublishReport::default();
        };
        let mut report = PublishReport::default();
        let mut listeners = lock(&listeners);
        listeners.retain(|l| match l.tx.try_send(frame.clone()) {
            Ok(()) => {
                report.queued += 1;
                true
            }
            Err(TrySendError::Full(_)) => {
                report.dropped += 1;
                l.dropped.inc();
                true
            }
            Err(TrySendError::Closed(_)) => false,
        });
        report
    }

    pub(crate) fn subscribe(&self, topic: &Topic, options: SubscribeOptions) -> AudioSubscription {
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let listeners = self.topics.entry(topic.clone()).or_default().clone();
        lock(&listeners).push(Listener {
            tx,
            dropped: options.dropped,
        });
        AudioSubscription { rx }
    }

    /// Forgets listeners that went away, and calls nobody listens to.
    pub(crate) fn sweep(&self) {
        self.topics.retain(|_, listeners| {
            let mut listeners = lock(listeners);
            listeners.retain(|l| !l.tx.is_closed());
            !listeners.is_empty()
        });
    }

    /// Live listeners of one call's audio on this node.
    pub(crate) fn listeners_of(&self, topic: &Topic) -> usize {
        self.topics.get(topic).map_or(0, |listeners| {
            lock(&listeners)
                .iter()
                .filter(|l| !l.tx.is_closed())
                .count()
        })
    }

    pub(crate) fn listeners(&self) -> usize {
        self.topics.iter().map(|t| lock(t.value()).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use callstream_core::audio::{Codec, Track};
    use callstream_core::{CallId, WorkspaceId};

    fn frame(call: &CallId, n: u8) -> Arc<AudioFrame> {
        Arc::new(AudioFrame {
            call: call.clone(),
            track: Track::Inbound,
            codec: Codec::Mulaw,
            sample_rate: 8000,
            timestamp_ms: u64::from(n),
            payload: Bytes::from(vec![n; 160]),
        })
    }

    fn options(capacity: usize) -> (SubscribeOptions, Counter) {
        let dropped = Counter::default();
        (
            SubscribeOptions {
                queue_capacity: capacity,
                dropped: dropped.clone(),
            },
            dropped,
        )
    }

    #[tokio::test]
    async fn listeners_get_their_calls_frames_and_a_full_queue_drops_only_for_itself() {
        let topics = AudioTopics::default();
        let (ws, call, other) = (WorkspaceId::new(), CallId::new(), CallId::new());
        let topic = Topic::audio(&ws, &call);
        let (fast_options, _) = options(8);
        let (slow_options, slow_dropped) = options(1);
        let mut fast = topics.subscribe(&topic, fast_options);
        let mut slow = topics.subscribe(&topic, slow_options);
        let (elsewhere_options, _) = options(8);
        let mut elsewhere = topics.subscribe(&Topic::audio(&ws, &other), elsewhere_options);
        // Another workspace's call of the same id is another topic.
        let (foreign_options, _) = options(8);
        let mut foreign =
            topics.subscribe(&Topic::audio(&WorkspaceId::new(), &call), foreign_options);

        for n in 0..3u8 {
            topics.publish(&topic, frame(&call, n));
        }
        for n in 0..3u64 {
            assert_eq!(fast.next().await.unwrap().timestamp_ms, n);
        }
        assert_eq!(slow.next().await.unwrap().timestamp_ms, 0);
        assert!(slow.try_next().is_none());
        assert_eq!(slow_dropped.get(), 2);
        assert!(elsewhere.try_next().is_none());
        assert!(foreign.try_next().is_none());

        drop(fast);
        drop(slow);
        let report = topics.publish(&topic, frame(&call, 9));
        assert_eq!(
            report,
            PublishReport::default(),
            "closed listeners are forgotten"
        );
        topics.sweep();
        assert_eq!(topics.listeners(), 2);
        drop(elsewhere);
        drop(foreign);
        topics.sweep();
        assert_eq!(topics.listeners(), 0);
        assert!(topics.topics.is_empty());
    }
}
