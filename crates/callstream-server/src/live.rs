//! Live calls: each in-progress call's sequencer and a snapshot of its record.
//!
//! The store stays the one authority for seqs, but hands them out in blocks (hi/lo):
//! `reserve_call_seqs` moves the stored `last_seq` a block ahead, and this node numbers that
//! many events in memory; once half of a block is used, the next one is reserved in a
//! background task, so that numbering never waits for the store's write lock. An event that
//! needs nothing durable (a partial transcript, a metric, with no webhook endpoint to queue for)
//! is then sequenced and published with no database round trip; final turns, the end of
//! screening, the call's end and webhook outbox rows are still written in one transaction
//! before the event is published. After a crash the next process reserves after the whole
//! block, so a seq is never reused (a client may see a gap, which resume reports). A clean
//! shutdown, and a call's end, give the unused rest of the block back.
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
    /// The next block, reserved in the background once half of this one is used, so that an
    /// event that needs nothing durable never waits on the store's write lock (which another
    /// writer may hold for a while). Yields the block's size and last seq.
    ahead: Option<tokio::task::JoinHandle<Result<(u64, u64), callstream_store::StoreError>>>,
    /// The size of the block in use.
    size: u64,
}

impl Sequencer {
    /// Starts reserving the next block when less than half of this one is left.
    fn reserve_ahead(&mut self, store: &Arc<dyn Store>, workspace: &WorkspaceId, call: &CallId) {
        if self.ahead.is_some() || self.reserved_end + 1 - self.next > self.size / 2 {
            return;
        }
        let size = block(1);
        let (store, workspace, call) = (store.clone(), workspace.clone(), call.clone());
        self.ahead = Some(tokio::spawn(async move {
            let (_, end) = store.reserve_call_seqs(&workspace, &call, size).await?;
            Ok((size, end))
        }));
    }

    /// The block reserved ahead, waiting for it if it is still on its way (`None`: none was
    /// asked for, or asking failed, and the error is logged).
    async fn take_ahead(&mut self, call: &CallId) -> Option<(u64, u64)> {
        match self.ahead.take()?.await {
            Ok(Ok(reserved)) => Some(reserved),
            Ok(Err(err)) => {
                tracing::debug!(error = %err, call_id = %call, "reserving seqs ahead failed");
                None
            }
            Err(_) => None,
        }
    }

    /// Moves on to a block of `size` seqs ending at `end`: contiguous with the one in use unless
    /// another node reserved in between; then numbering continues after it.
    fn switch_to(&mut self, size: u64, end: u64) {
        if end - size + 1 != self.reserved_end + 1 {
            self.next = end - size + 1;
        }
        self.reserved_end = end;
        self.size = size;
    }
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
                    // The store has the call's start, which is about now.
                    recorded_ms: AtomicI64::new(now_ms()),
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
        store: &Arc<dyn Store>,
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
                ahead: None,
                size: first,
            });
        }
        let Some(seq) = guard.as_mut() else {
            return Err(ApiError::internal());
        };
        if seq.call.workspace_id != *workspace {
            return Err(ApiError::not_found("call"));
        }
        let n = events.len() as u64;
        if seq.next + n - 1 > seq.reserved_end
            && let Some((size, end)) = seq.take_ahead(call_id).await
        {
            seq.switch_to(size, end);
        }
        if seq.next + n - 1 > seq.reserved_end {
            // Nothing reserved ahead, or a batch larger than what was: reserve now.
            let size = block(n);
            let (_, end) = store
                .reserve_call_seqs(workspace, call_id, size)
                .await
                .map_err(|e| ApiError::from_store(e, "call"))?;
            seq.switch_to(size, end);
        }
        let mut envelopes = Vec::with_capacity(events.len());
        for event in events {
            let env = event
                .into_envelope(workspace, Subject::Call(call_id.clone()), seq.next)
                .map_err(|e| ApiError::invalid_event(e.to_string()))?;
            seq.next += 1;
            envelopes.push(env);
        }
        let ends = envelopes.iter().any(|e| e.payload.is_terminal());
        if ends {
            // A reservation still on its way would land after the end is recorded; the end
            // sets the call's last seq, so let the reservation finish first.
            let _ = seq.take_ahead(call_id).await;
        } else {
            seq.reserve_ahead(store, workspace, call_id);
        }
        let durable =
            ends || envelopes.iter().any(|e| match &e.payload {
                Payload::Transcription(t) => t.is_final,
                Payload::ScreeningEnded(_) => true,
                _ => false,
            }) || self.has_webhooks(store.as_ref(), workspace).await?;
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

    /// The live calls whose last event the store should learn now, with when this node last
    /// appended for each: for the store's record (`Store::touch_calls`), which finds the calls
    /// that went stale. A call busy since it was last recorded is due every `refresh`; a call
    /// that went quiet (nothing for `quiet`) is due once more, so that the store holds its
    /// exact last event. At most `limit` calls per look, the rest at the next.
    ///
    /// Measured in the soak (docs/benchmarks.md): recording all 8,000 live calls every 15 s held
    /// SQLite's write lock about 0.5 s each time, and every durable write waited behind it.
    pub fn activity(
        &self,
        refresh: Duration,
        quiet: Duration,
        limit: usize,
    ) -> Vec<(WorkspaceId, CallId, chrono::DateTime<chrono::Utc>)> {
        let now = now_ms();
        let refresh = i64::try_from(refresh.as_millis()).unwrap_or(i64::MAX);
        let quiet = i64::try_from(quiet.as_millis()).unwrap_or(i64::MAX);
        let mut touched = Vec::new();
        for entry in self.slots.iter() {
            if touched.len() >= limit {
                break;
            }
            let slot = entry.value();
            let last = slot.last_event_ms.load(Ordering::Relaxed);
            let recorded = slot.recorded_ms.load(Ordering::Relaxed);
            if last == 0
                || last == recorded
                || (last.saturating_sub(recorded) < refresh && now.saturating_sub(last) < quiet)
            {
                continue;
            }
            if let (Some((workspace, _)), Some(at)) = (
                slot.known.get(),
                chrono::DateTime::from_timestamp_millis(last),
            ) {
                slot.recorded_ms.store(last, Ordering::Relaxed);
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
            let mut guard = slot.state.lock().await;
            let Some(seq) = guard.as_mut() else { continue };
            // A block reserved ahead is the stored end now.
            if let Some((size, end)) = seq.take_ahead(&id).await {
                seq.switch_to(size, end);
            }
            if let Err(err) = store
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

    fn dtmf() -> Vec<NewEvent> {
        let payload = Payload::parse("call.dtmf", serde_json::json!({"digits": "1"}));
        vec![NewEvent::new(
            callstream_core::time::now(),
            payload.unwrap(),
        )]
    }

    /// The soak's stall: a partial event of a call whose block ran out waited for SQLite's write
    /// lock behind another writer. The next block is reserved while half of this one is left,
    /// so numbering goes on, contiguous, while another connection holds the write lock (without
    /// the reservation ahead, the append waits out `busy_timeout` and fails "database is locked").
    #[tokio::test]
    async fn numbering_crosses_into_the_next_block_while_another_writer_holds_the_lock() {
        use sqlx::Connection;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("callstream.db");
        let store: Arc<dyn Store> =
            Arc::new(callstream_store::SqliteStore::open(&path).await.unwrap());
        let ws = store.ensure_workspace("a").await.unwrap().id;
        let call = callstream_store::conformance::new_call(&ws);
        store.create_call(&call).await.unwrap();
        let live = LiveCalls::default();
        let mut seqs = Vec::new();
        async fn one(live: &LiveCalls, store: &Arc<dyn Store>, call: &Call, seqs: &mut Vec<u64>) {
            let (published, _) = live
                .append(
                    store,
                    &call.workspace_id,
                    &call.id,
                    dtmf(),
                    |envelopes| async move { envelopes.iter().map(|e| e.seq).collect::<Vec<_>>() },
                )
                .await
                .expect("append");
            seqs.extend(published);
        }
        // Use the first block until the next one is asked for, and wait for it to be reserved.
        let first_end = loop {
            one(&live, &store, &call, &mut seqs).await;
            let slot = live.slot(&call.id);
            let state = slot.state.lock().await;
            let seq = state.as_ref().unwrap();
            if seq.ahead.is_some() {
                break seq.reserved_end;
            }
        };
        loop {
            let slot = live.slot(&call.id);
            let state = slot.state.lock().await;
            if state
                .as_ref()
                .unwrap()
                .ahead
                .as_ref()
                .unwrap()
                .is_finished()
            {
                break;
            }
            drop(state);
            tokio::task::yield_now().await;
        }
        let stored = store.call(&ws, &call.id).await.unwrap().unwrap().last_seq;
        assert!(
            stored > first_end,
            "the next block is reserved: {stored} > {first_end}"
        );

        // Another writer takes the write lock and keeps it.
        let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        while seqs.last().copied().unwrap_or(0) < first_end + 10 {
            one(&live, &store, &call, &mut seqs).await;
        }
        sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
        let expected: Vec<u64> = (1..=first_end + 10).collect();
        assert_eq!(seqs, expected, "one seq each, contiguous across the blocks");

        // The call's end records its exact last seq, the block reserved ahead notwithstanding.
        let completed = Payload::parse("call.completed", serde_json::json!({})).unwrap();
        let (_, ended) = live
            .append(
                &store,
                &ws,
                &call.id,
                vec![NewEvent::new(callstream_core::time::now(), completed)],
                |_| async {},
            )
            .await
            .unwrap();
        assert_eq!(ended.last_seq, first_end + 11);
        let stored = store.call(&ws, &call.id).await.unwrap().unwrap();
        assert_eq!(stored.last_seq, first_end + 11);
    }

    /// The reaper writes a busy call's last event every `refresh`, a call that went quiet once
    /// more, and no more than `limit` calls per look.
    #[test]
    fn activity_is_recorded_for_busy_calls_per_refresh_and_for_quiet_ones_once() {
        let live = LiveCalls::default();
        let ws = WorkspaceId::new();
        let calls: Vec<Call> = (0..3)
            .map(|_| callstream_store::conformance::new_call(&ws))
            .collect();
        for call in &calls {
            live.remember(call);
        }
        let (refresh, quiet) = (Duration::from_secs(60), Duration::from_secs(30));
        let now = now_ms();
        let set = |i: usize, last: i64, recorded: i64| {
            let slot = live.slot(&calls[i].id);
            slot.last_event_ms.store(last, Ordering::Relaxed);
            slot.recorded_ms.store(recorded, Ordering::Relaxed);
        };
        // 0: busy, recorded 10 s ago; 1: busy, recorded 61 s ago; 2: quiet for 31 s.
        set(0, now, now - 10_000);
        set(1, now, now - 61_000);
        set(2, now - 31_000, now - 40_000);
        let due: Vec<CallId> = live
            .activity(refresh, quiet, 10)
            .into_iter()
            .map(|(_, id, _)| id)
            .collect();
        assert!(!due.contains(&calls[0].id));
        assert!(due.contains(&calls[1].id) && due.contains(&calls[2].id));
        assert_eq!(due.len(), 2);
        // Recorded now: nothing is due until something happens.
        assert!(live.activity(refresh, quiet, 10).is_empty());
        // Three due, one at a time.
        for i in 0..3 {
            set(i, now, now - 61_000);
        }
        assert_eq!(live.activity(refresh, quiet, 1).len(), 1);
        assert_eq!(live.activity(refresh, quiet, 1).len(), 1);
        assert_eq!(live.activity(refresh, quiet, 1).len(), 1);
        assert!(live.activity(refresh, quiet, 1).is_empty());
    }
}
