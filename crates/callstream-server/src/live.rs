//! Live calls: each in-progress call's sequencer and a snapshot of its record.
//!
//! The store stays the one authority for seqs, but hands them out in blocks (hi/lo):
//! `reserve_call_seqs` moves the stored `last_seq` a block ahead, and this node numbers that many
//! events in memory. An event that needs nothing durable (a partial transcript, a metric, with no
//! webhook endpoint to queue for) is then sequenced and published with no database round trip;
//! final turns, the end of screening, the call's end and webhook outbox rows are still written
//! in one transaction before the event is published. After a crash the next process reserves after the whole block,
//! so a seq is never reused (a client may see a gap, which resume reports). A clean shutdown,
//! and a call's end, give the unused rest of the block back.
//!
//! Measured with `callstream-bench` (scenario wide, docs/benchmarks.md): one SQLite transaction per
//! event capped ingest at about 4,000 events/s on this machine; that is why this exists.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use callstream_bus::FastMap;
use callstream_core::{Call, CallId, Envelope, Payload, Subject, Transport, WorkspaceId};
use callstream_store::{NewEvent, Store, check_call_batch};
use tokio::sync::Mutex;

use crate::error::ApiError;

/// Seqs reserved at a time, on average: each reservation takes a random size between half and
/// one and a half of this, so that calls started together (a campaign, a benchmark, a node's
/// restart) do not all run out of their blocks at the same moment. Measured in the soak
/// (`bench/soak.sh`, docs/benchmarks.md): with one fixed size, 8,000 calls at 2.5 events/s each
/// reserved together every 410 s, a durable SQLite write each, and ingest stalled for 5 s.
const BLOCK: u64 = 1024;

/// The size of the next reservation: `BLOCK` / 2 up to 3 × `BLOCK` / 2, at least `n`.
fn block(n: u64) -> u64 {
    let spread = u64::from(getrandom::u32().unwrap_or(0)) % BLOCK;
    (BLOCK / 2 + spread).max(n)
}
/// How long "this workspace has (no) webhook endpoints" is trusted.
const WEBHOOK_CACHE: Duration = Duration::from_secs(2);
/// `last_published` before anything was published by this node.
const UNKNOWN: u64 = u64::MAX;

struct Slot {
    /// Held across the store calls of one append: it also orders the call's events.
    state: Mutex<Option<Sequencer>>,
    /// The call's workspace and transport, known once it was first reserved: ingest parsing
    /// needs them, and asking the store for every event would cost a round trip each.
    known: std::sync::OnceLock<(WorkspaceId, Transport)>,
    /// The last seq published, readable without the lock (for read paths).
    last_published: AtomicU64,
    /// When this node last appended for the call (Unix milliseconds; 0: never), and the last
    /// such time written to the store ([`LiveCalls::activity`]).
    last_event_ms: AtomicI64,
    recorded_ms: AtomicI64,
}

struct Sequencer {
    call: Call,
    next: u64,
    reserved_end: u64,
}

#[derive(Default)]
pub struct LiveCalls {
    slots: FastMap<CallId, Arc<Slot>>,
    webhooks: FastMap<WorkspaceId, (bool, Instant)>,
}

impl LiveCalls {
    fn slot(&self, call: &CallId) -> Arc<Slot> {
        // A live call's slot exists after its first event: a read lock and no copy of the id
        // (`entry` takes the key by value, so it cost an allocation per event).
        if let Some(slot) = self.slots.get(call) {
            return slot.clone();
        }
        self.slots
            .entry(call.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    state: Mutex::new(None),
                    known: std::sync::OnceLock::new(),
                    last_published: AtomicU64::new(UNKNOWN),
                    last_event_ms: AtomicI64::new(0),
                    recorded_ms: AtomicI64::new(0),
                })
            })
            .clone()
    }

    /// Sets the live `last_seq` on a call read from the store (which holds the end of a
    /// reservation while the call is live).
    pub fn overlay(&self, call: &mut Call) {
        if let Some(slot) = self.slots.get(&call.id) {
            let seq = slot.last_published.load(Ordering::Acquire);
            if seq != UNKNOWN {
                call.last_seq = seq;
            }
        }
    }

    /// The transport of a live call this node has numbered events for: `None` when this node
    /// does not know the call, 404 when it is another workspace's. Nothing is cloned: ingest
    /// asks this once per message.
    pub fn known(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
    ) -> Option<Result<Transport, ApiError>> {
        let slot = self.slots.get(call)?;
        let (owner, transport) = slot.known.get()?;
        Some(if owner == workspace {
            Ok(*transport)
        } else {
            Err(ApiError::not_found("call"))
        })
    }

    /// Remembers a call's workspace and transport (for [`LiveCalls::known`]) while it is live,
    /// for a node that does not number its events itself (in a cluster the store does).
    pub fn remember(&self, call: &Call) {
        if !call.status.is_active() {
            self.slots.remove(&call.id);
            return;
        }
        if let Some(slot) = self.slots.get(&call.id)
            && slot.known.get().is_some()
        {
            slot.last_event_ms.store(now_ms(), Ordering::Relaxed);
            return;
        }
        self.slot(&call.id)
            .last_event_ms
            .store(now_ms(), Ordering::Relaxed);
        let _ = self
            .slot(&call.id)
            .known
            .set((call.workspace_id.clone(), call.transport));
    }

    /// Whether an append for `workspace` may have queued webhooks: `false` only when the
    /// workspace is known, within the cache's life, to have no endpoint (then the webhook worker
    /// need not be woken; a wake per event was a look at the outbox 50 times a second, for
    /// nothing, on every busy node).
    pub fn may_queue_webhooks(&self, workspace: &WorkspaceId) -> bool {
        self.webhooks
            .get(workspace)
            .is_none_or(|entry| entry.0 || entry.1.elapsed() >= WEBHOOK_CACHE)
    }

    /// Forgets cached webhook presence for a workspace (its endpoints changed).
    pub fn webhooks_changed(&self, workspace: &WorkspaceId) {
        self.webhooks.remove(workspace);
    }

    async fn has_webhooks(
        &self,
        store: &dyn Store,
        workspace: &WorkspaceId,
    ) -> Result<bool, ApiError> {
        if let Some(entry) = self.webhooks.get(workspace)
            && entry.1.elapsed() < WEBHOOK_CACHE
        {
            return Ok(entry.0);
        }
        let has = store.has_webhook_endpoints(workspace).await?;
        self.webhooks
            .insert(workspace.clone(), (has, Instant::now()));
        Ok(has)
    }

    /// Numbers `events`, records what must be durable, and hands the envelopes to `publish`
    /// under the call's order (before the lock is released); returns what `publish` returned
    /// and the call after the append.
    ///
    /// # Errors
    /// 404 for an unknown or foreign call, 409 once it has ended, 400 for a bad batch.
    pub async fn append<F, Fut, T>(
        &self,
        store: &dyn Store,
        workspace: &WorkspaceId,
        call_id: &CallId,
        events: Vec<NewEvent>,
        publish: F,
    ) -> Result<(T, Call), ApiError>
    where
        F: FnOnce(Vec<Envelope>) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        check_call_batch(&events).map_err(|e| ApiError::from_store(e, "call"))?;
        let slot = self.slot(call_id);
        let mut guard = slot.state.lock().await;
        if guard.is_none() {
            let first = block(1);
            let (call, end) = match store.reserve_call_seqs(workspace, call_id, first).await {
                Ok(reserved) => reserved,
                Err(e) => {
                    drop(guard);
                    self.slots
                        .remove_if(call_id, |_, s| Arc::strong_count(s) <= 2);
                    return Err(ApiError::from_store(e, "call"));
                }
            };
            let _ = slot.known.set((call.workspace_id.clone(), call.transport));
            *guard = Some(Sequencer {
                next: end - first + 1,
                reserved_end: end,
                call,
            });
        }
        let Some(seq) = guard.as_mut() else {
            return Err(ApiError::internal());
        };
        if seq.call.workspace_id != *workspace {
            return Err(ApiError::not_found("call"));
        }
        let n = events.len() as u64;
        if seq.next + n - 1 > seq.reserved_end {
            let block = block(n);
            let (_, end) = store
                .reserve_call_seqs(workspace, call_id, block)
                .await
                .map_err(|e| ApiError::from_store(e, "call"))?;
            // Contiguous unless another node reserved in between; then continue after it.
            if end - block + 1 != seq.reserved_end + 1 {
                seq.next = end - block + 1;
            }
            seq.reserved_end = end;
        }
        let mut envelopes = Vec::with_capacity(events.len());
        for event in events {
            let env = event
                .into_envelope(workspace, Subject::Call(call_id.clone()), seq.next)
                .map_err(|e| ApiError::invalid_event(e.to_string()))?;
            seq.next += 1;
            envelopes.push(env);
        }
        let durable = envelopes.iter().any(|e| match &e.payload {
            Payload::Transcription(t) => t.is_final,
            Payload::ScreeningEnded(_) => true,
            p => p.is_terminal(),
        }) || self.has_webhooks(store, workspace).await?;
        if durable
            && let Some(ended) = store
                .record_call_events(workspace, call_id, &envelopes)
                .await?
        {
            seq.call = ended;
        }
        let last = seq.next - 1;
        seq.call.last_seq = last;
        let call = seq.call.clone();
        let published = publish(envelopes).await;
        slot.last_published.store(last, Ordering::Release);
        slot.last_event_ms.store(now_ms(), Ordering::Relaxed);
        if !call.status.is_active() {
            // The call ended (its last seq is recorded): nothing more to number.
            *guard = None;
            drop(guard);
            self.slots.remove(call_id);
        }
        Ok((published, call))
    }

    /// The live calls this node appended for since the last time it was asked, with when it
    /// last did: for the store's record of each call's last event (`Store::touch_calls`), which
    /// finds the calls that went stale. Written every few seconds, not per event.
    pub fn activity(&self) -> Vec<(WorkspaceId, CallId, chrono::DateTime<chrono::Utc>)> {
        let mut touched = Vec::new();
        for entry in self.slots.iter() {
            let slot = entry.value();
            let last = slot.last_event_ms.load(Ordering::Relaxed);
            if last == 0 || slot.recorded_ms.swap(last, Ordering::Relaxed) == last {
                continue;
            }
            if let (Some((workspace, _)), Some(at)) = (
                slot.known.get(),
                chrono::DateTime::from_timestamp_millis(last),
            ) {
                touched.push((workspace.clone(), entry.key().clone(), at));
            }
        }
        touched
    }

    /// Gives every live call's unused seqs back to the store (at a clean shutdown).
    pub async fn settle_all(&self, store: &dyn Store) {
        let slots: Vec<(CallId, Arc<Slot>)> = self
            .slots
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        for (id, slot) in slots {
            let guard = slot.state.lock().await;
            if let Some(seq) = guard.as_ref()
                && let Err(err) = store
                    .settle_call_seqs(&seq.call.workspace_id, &id, seq.reserved_end, seq.next - 1)
                    .await
            {
                tracing::warn!(error = %err, call_id = %id, "could not give back reserved seqs");
            }
        }
    }
}

fn now_ms() -> i64 {
    callstream_core::time::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls started together run out of their blocks at different moments: each reservation
    /// has its own size, between half and one and a half of `BLOCK`, and always room for the
    /// batch.
    #[test]
    fn reservations_vary_in_size_so_calls_started_together_do_not_reserve_together() {
        let sizes: std::collections::BTreeSet<u64> = (0..200).map(|_| block(1)).collect();
        assert!(sizes.len() > 100, "{} distinct sizes of 200", sizes.len());
        assert!(
            sizes
                .iter()
                .all(|s| (BLOCK / 2..BLOCK / 2 + BLOCK).contains(s))
        );
        assert_eq!(block(5_000), 5_000);
    }

    #[test]
    fn only_a_workspace_known_to_have_no_endpoint_skips_the_webhook_wake_up() {
        let live = LiveCalls::default();
        let (none, some) = (WorkspaceId::new(), WorkspaceId::new());
        // Not looked up yet: it may have endpoints.
        assert!(live.may_queue_webhooks(&none));
        live.webhooks.insert(none.clone(), (false, Instant::now()));
        live.webhooks.insert(some.clone(), (true, Instant::now()));
        assert!(!live.may_queue_webhooks(&none));
        assert!(live.may_queue_webhooks(&some));
        // Endpoints changed, or the cache is too old to trust: wake.
        live.webhooks_changed(&none);
        assert!(live.may_queue_webhooks(&none));
        let stale = Instant::now()
            .checked_sub(WEBHOOK_CACHE)
            .unwrap_or_else(Instant::now);
        live.webhooks.insert(none.clone(), (false, stale));
        assert!(live.may_queue_webhooks(&none));
    }
}
