//! A subscription to one topic, the same for every backend: the resume backlog first, then live
//! events from a bounded queue the backend fills, then an explicit end.
//!
//! A backend builds one with [`Subscription::new`] from the events it found for the resume
//! point, the receiving end of the subscriber's queue, and an [`EndSignal`] it keeps: when it
//! stops feeding the queue it says why ([`End`]), then drops its sender. The subscriber reads
//! events until `None`, then [`Subscription::end`] tells a finished call from a stream that was
//! interrupted and should be resumed.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::{Event, Gap};

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The topic ended: its terminal event (`call.completed`, `call.failed`) was published, and
    /// every event before it was offered to the subscriber.
    Finished,
    /// The backend lost events it cannot replay (its history no longer reaches back that far):
    /// the subscriber should resume from its last seq, and will be told what is gone.
    Gap(Gap),
    /// The backend stopped (it was dropped, or the node is shutting down): resume elsewhere or
    /// later.
    Interrupted,
}

/// Where a backend records why it ended a subscription, before it drops the sender.
#[derive(Debug, Clone, Default)]
pub struct EndSignal(Arc<OnceLock<End>>);

impl EndSignal {
    /// Records the end (the first one recorded stays).
    pub fn set(&self, end: End) {
        let _ = self.0.set(end);
    }
}

/// One subscriber's view of a topic.
pub struct Subscription {
    backlog: VecDeque<Arc<Event>>,
    rx: mpsc::Receiver<Arc<Event>>,
    gap: Option<Gap>,
    dropped: Counter,
    end: EndSignal,
}

impl Subscription {
    /// A subscription that yields `backlog`, then what arrives on `rx`; `gap` when the resume
    /// point was older than the backlog reaches; `end` where the backend will say why it
    /// stopped.
    pub fn new(
        backlog: VecDeque<Arc<Event>>,
        rx: mpsc::Receiver<Arc<Event>>,
        gap: Option<Gap>,
        dropped: Counter,
        end: EndSignal,
    ) -> Self {
        Self {
            backlog,
            rx,
            gap,
            dropped,
            end,
        }
    }

    /// The next event, or `None` once the subscription has ended and everything queued was
    /// taken (then see [`Subscription::end`]).
    pub async fn next(&mut self) -> Option<Arc<Event>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// [`Subscription::next`] for a hand-written `Stream` or `Future`: `Pending` registers the
    /// task to be woken by the next publish.
    pub fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Arc<Event>>> {
        if let Some(e) = self.backlog.pop_front() {
            return std::task::Poll::Ready(Some(e));
        }
        self.rx.poll_recv(cx)
    }

    /// The next event if one is ready now, without waiting. `None` means nothing is queued (the
    /// subscription may still be open).
    pub fn try_next(&mut self) -> Option<Arc<Event>> {
        if let Some(e) = self.backlog.pop_front() {
            return Some(e);
        }
        self.rx.try_recv().ok()
    }

    /// Why the subscription ended; meaningful once [`Subscription::next`] returned `None` (a
    /// backend that went away without a word was interrupted).
    pub fn end(&self) -> End {
        self.end.0.get().copied().unwrap_or(End::Interrupted)
    }

    /// Takes the resume backlog out, leaving only live events to [`Subscription::next`]. Lets a
    /// surface pick from the history (say, only the in-flight turn) instead of replaying it all.
    pub fn take_backlog(&mut self) -> VecDeque<Arc<Event>> {
        std::mem::take(&mut self.backlog)
    }

    /// The seq the backlog starts with, if there is one.
    pub fn first_backlog_seq(&self) -> Option<u64> {
        self.backlog.front().map(|e| e.seq())
    }

    /// Puts `earlier` (events older than anything this subscription holds, in seq order) in
    /// front of the backlog and replaces the gap: for a backend that serves the newest history
    /// from memory and fills in what came before from storage.
    pub fn prepend(&mut self, earlier: Vec<Arc<Event>>, gap: Option<Gap>) {
        for event in earlier.into_iter().rev() {
            self.backlog.push_front(event);
        }
        self.gap = gap;
    }

    /// Set when the resume point was older than the history.
    pub fn gap(&self) -> Option<Gap> {
        self.gap
    }

    /// The drop counter this subscription was given.
    pub fn dropped(&self) -> &Counter {
        &self.dropped
    }
}
