//! The reaper: ends live calls that nobody will ever end.
//!
//! A call ends when its runtime says so (`call.completed`, `call.failed`). A runtime that
//! crashed, lost its network or forgot a call never says so, and the call would stay live for
//! ever, holding its sequencer, its history and its viewers' streams. So, every few seconds:
//!
//! - the calls this node ingested for are written to the store with the time of their last
//!   event (`Store::touch_calls`: a batch of at most 1,024 calls per sweep, not a write per
//!   event; a busy call every eighth of `call_stale_secs`, a call that went quiet once more);
//! - a call whose runtime's socket closed `runtime_lost_grace_secs` ago (60), with no runtime
//!   claiming it since by sending an event or audio for it, ends as `call.failed` with reason
//!   `runtime_lost`;
//! - a call with no event for `call_stale_secs` (3600; 0 turns this off), whichever node
//!   ingested for it, ends as `call.failed` with reason `stale`.
//!
//! Ending is an ordinary append: the `call.failed` event is stored, published to every stream,
//! queued for webhooks, and what the call held is let go as for any end (the sequencer slot,
//! the command route, the audio streams; its history after `history_retention_secs`). On a
//! cluster two nodes may end the same stale call at once: the second append finds it ended
//! (409), which is not an error here.

use std::time::Duration;

use callstream_core::event::Failed;
use callstream_core::{CallId, Payload, WorkspaceId, time};
use callstream_store::NewEvent;

use crate::ingest;
use crate::state::AppState;

/// Stale calls ended per sweep at most (the rest wait for the next one).
const STALE_PER_SWEEP: u32 = 256;
/// Calls whose activity is recorded per sweep at most: one SQLite transaction of this many
/// updates holds the write lock for some 60 ms here, where 8,000 held it for 0.5 s.
const TOUCH_PER_SWEEP: usize = 1024;

/// How often a busy call's last event is written to the store: an eighth of the stale period
/// (the stored time may lag the truth by that much, which the stale rule can afford), between
/// one sweep and 10 minutes.
pub fn refresh(sweep: Duration, stale: Option<Duration>) -> Duration {
    let longest = Duration::from_secs(600);
    stale
        .map_or(longest, |s| s / 8)
        .clamp(sweep, longest.max(sweep))
}

/// How often the reaper looks: a quarter of the shorter of its two periods, between 200 ms and
/// 15 s.
pub fn period(grace: Duration, stale: Option<Duration>) -> Duration {
    let shortest = stale.map_or(grace, |s| s.min(grace));
    (shortest / 4).clamp(Duration::from_millis(200), Duration::from_secs(15))
}

/// Runs until shutdown.
pub async fn run(state: AppState) {
    let config = state.config();
    let grace = Duration::from_secs(config.runtime_lost_grace_secs);
    let stale = (config.call_stale_secs > 0).then(|| Duration::from_secs(config.call_stale_secs));
    let every = period(grace, stale);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = state.shutdown().clone();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => sweep(&state, every, grace, stale).await,
        }
    }
}

/// One look: record activity, then end the lost and the stale calls.
pub async fn sweep(state: &AppState, every: Duration, grace: Duration, stale: Option<Duration>) {
    let touched = state
        .live()
        .activity(refresh(every, stale), every * 2, TOUCH_PER_SWEEP);
    if let Err(err) = state.store().touch_calls(&touched).await {
        tracing::warn!(error = %err, "could not record the calls' last events");
    }
    for (workspace, call) in state.commands().lost(grace) {
        end(state, &workspace, &call, "runtime_lost").await;
    }
    let Some(stale) = stale else { return };
    let Ok(stale) = chrono::Duration::from_std(stale) else {
        return;
    };
    match state
        .store()
        .stale_calls(time::now() - stale, STALE_PER_SWEEP)
        .await
    {
        Ok(calls) => {
            for (workspace, call) in calls {
                end(state, &workspace, &call, "stale").await;
            }
        }
        Err(err) => tracing::warn!(error = %err, "could not look for stale calls"),
    }
}

/// Ends `call` as `call.failed` with `reason`.
async fn end(state: &AppState, workspace: &WorkspaceId, call: &CallId, reason: &'static str) {
    let failed = Payload::Failed(Failed {
        reason: reason.to_owned(),
    });
    match ingest::append_call_events(
        state,
        workspace,
        call,
        vec![NewEvent::new(time::now(), failed)],
    )
    .await
    {
        Ok(_) => {
            state.metrics().call_ended_by_gateway(reason);
            tracing::info!(call_id = %call, reason, "ended a call nobody else would end");
        }
        Err(err) if err.status.is_client_error() => {
            // Ended meanwhile (409) or gone (404): nothing to do, and nothing to keep.
            state.commands().forget(call).await;
        }
        Err(err) => {
            // The store or the bus is down: the next sweep tries again.
            tracing::warn!(call_id = %call, reason, error = %err.message, "could not end a call");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reaper_looks_four_times_per_shorter_period_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(period(s(60), Some(s(3600))), s(15));
        assert_eq!(period(s(8), Some(s(3600))), s(2));
        assert_eq!(period(s(60), Some(s(4))), s(1));
        assert_eq!(period(s(60), None), s(15));
        assert_eq!(period(s(0), None), Duration::from_millis(200));
    }

    #[test]
    fn a_busy_calls_activity_is_recorded_an_eighth_of_the_stale_period_apart() {
        let s = Duration::from_secs;
        assert_eq!(refresh(s(15), Some(s(3600))), s(450));
        assert_eq!(refresh(s(1), Some(s(4))), s(1));
        assert_eq!(refresh(s(15), Some(s(86_400))), s(600));
        assert_eq!(refresh(s(15), None), s(600));
    }
}
