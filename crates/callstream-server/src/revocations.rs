//! Revoked keys close their streams: every stream opened with a key, or with a stream token or
//! session that key minted, watches the key here, and is closed within a second of its
//! revocation, whichever process revoked it (the command line while the server runs, another
//! node, or this node's REST API).
//!
//! Each node asks the store every `POLL` for keys revoked since it last asked (with a margin for
//! clocks), and cancels their watches; a revocation made through this node's REST API cancels
//! them at once.

use std::time::Duration;

use callstream_core::id::KeyId;
use callstream_core::time;
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// How often each node looks for revoked keys.
const POLL: Duration = Duration::from_millis(400);
/// How far back each look reaches before the previous one (clocks of nodes and of the
/// database differ by this much at most).
const MARGIN: Duration = Duration::from_secs(5);

/// The keys streams are watching: one small entry per key that opened a stream on this node
/// (bounded by the keys that exist), removed when the key is revoked.
#[derive(Default)]
pub struct Revocations {
    keys: DashMap<KeyId, CancellationToken>,
}

impl Revocations {
    /// A token cancelled when `key` is revoked.
    pub fn watch(&self, key: &KeyId) -> CancellationToken {
        self.keys.entry(key.clone()).or_default().child_token()
    }

    /// Closes every stream watching `key`.
    pub fn revoke(&self, key: &KeyId) {
        if let Some((_, token)) = self.keys.remove(key) {
            token.cancel();
        }
    }
}

/// Runs until shutdown: asks the store for keys revoked since the last look and closes their
/// streams.
pub async fn run(state: AppState) {
    let mut since = time::now() - chrono::Duration::from_std(MARGIN).unwrap_or_default();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = state.shutdown().clone();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = time::now();
        match state.store().keys_revoked_since(since).await {
            Ok(keys) => {
                for key in keys {
                    state.revocations().revoke(&key);
                }
                since = now - chrono::Duration::from_std(MARGIN).unwrap_or_default();
            }
            Err(err) => tracing::warn!(error = %err, "could not look for revoked keys"),
        }
    }
}
