//! The webhook delivery worker: takes due rows from the store's outboxes, POSTs each payload (the
//! canonical envelope JSON, byte for byte what the call socket sends) with Standard Webhooks
//! signatures, and records the outcome: delivered, retry on the 24-hour schedule (honouring
//! `Retry-After`), given up, or the endpoint disabled on `410 Gone`.
//!
//! Status callbacks (seed 004's `StartStream`, …) ride the same worker and schedule: form fields
//! sent with `GET` (in the query) or `POST` (as the body), signed with the workspace's signing
//! secret over exactly those form fields.
//!
//! Every request goes only where the outbound-address policy allows (`targets`): an address in
//! the URL is checked here, a name by the client's resolver, at the moment of sending.
//!
//! The outbox rows are written in the same transaction as the events, so an accepted event is
//! never lost to a crash before its webhooks are queued; a claimed row that is never recorded
//! (the process died mid-attempt) becomes due again when its lease ends, 15 s after the request
//! timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callstream_core::WorkspaceId;
use callstream_core::time;
use callstream_store::{
    AttemptLog, Attempted, CallbackMethod, Delivery, DeliveryResult, DeliveryTarget, Skip,
};
use callstream_webhooks::{NextStep, Outcome, RetrySchedule, Secret, TransportFailure};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::state::AppState;

/// How much longer than the request timeout a claimed delivery stays reserved for its attempt.
/// A worker claims only what it starts at once, and an attempt ends by its timeout (the answer's
/// head and the first kilobyte of its body included), so a delivery is never claimed again while
/// its attempt can still be in flight; if its node died, it is due again this long after the
/// timeout (`webhook_timeout_secs` + 15 s: 25 s by default).
const LEASE_MARGIN: Duration = Duration::from_secs(15);
/// The shortest time between two looks at the outbox when writes wake the worker.
const MIN_LOOK_INTERVAL: Duration = Duration::from_millis(20);
/// Rows claimed per poll.
const BATCH: u32 = 64;

/// The HTTP client every delivery uses: no redirects, and names resolved only to addresses the
/// policy allows.
pub fn client(
    timeout: Duration,
    policy: crate::targets::Policy,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(crate::targets::PolicyResolver::shared(policy))
        .user_agent(concat!("callstream-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// In a cluster: wakes this node's worker whenever another node wrote to the outbox.
pub async fn listen_for_wakes(state: AppState) {
    let Some(nats) = state.nats().cloned() else {
        return;
    };
    loop {
        match nats.subscribe(crate::state::OUTBOX_WAKE_SUBJECT).await {
            Ok(mut wakes) => loop {
                tokio::select! {
                    () = state.shutdown().cancelled() => return,
                    wake = futures::StreamExt::next(&mut wakes) => match wake {
                        Some(_) => state.wake_outbox_here(),
                        None => break,
                    },
                }
            },
            Err(err) => tracing::warn!(error = %err, "outbox wake-ups unavailable; polling"),
        }
        tokio::select! {
            () = state.shutdown().cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// What one node's worker has in flight, per endpoint and per workspace, so that a slow or dead
/// endpoint (or a workspace with many) cannot take every request slot.
#[derive(Default)]
struct InFlight {
    endpoints: HashMap<String, usize>,
    workspaces: HashMap<WorkspaceId, usize>,
}

impl InFlight {
    fn key(d: &Delivery) -> Option<&str> {
        match &d.target {
            DeliveryTarget::Endpoint(id) => Some(id),
            DeliveryTarget::Callback(_) => None,
        }
    }

    /// Takes a place for `d` unless its endpoint or workspace is at its limit.
    fn take(&mut self, d: &Delivery, per_endpoint: usize, per_workspace: usize) -> bool {
        let workspace = self.workspaces.get(&d.workspace_id).copied().unwrap_or(0);
        let endpoint = Self::key(d).map_or(0, |e| self.endpoints.get(e).copied().unwrap_or(0));
        if workspace >= per_workspace || endpoint >= per_endpoint {
            return false;
        }
        *self.workspaces.entry(d.workspace_id.clone()).or_default() += 1;
        if let Some(e) = Self::key(d) {
            *self.endpoints.entry(e.to_owned()).or_default() += 1;
        }
        true
    }

    fn give_back(&mut self, d: &Delivery) {
        if let Some(n) = self.workspaces.get_mut(&d.workspace_id) {
            *n -= 1;
            if *n == 0 {
                self.workspaces.remove(&d.workspace_id);
            }
        }
        if let Some(e) = Self::key(d)
            && let Some(n) = self.endpoints.get_mut(e)
        {
            *n -= 1;
            if *n == 0 {
                self.endpoints.remove(e);
            }
        }
    }

    /// The endpoints and workspaces at their limits, for the next claim to leave out.
    fn full(&self, per_endpoint: usize, per_workspace: usize) -> Skip {
        Skip {
            endpoints: self
                .endpoints
                .iter()
                .filter(|(_, n)| **n >= per_endpoint)
                .map(|(e, _)| e.clone())
                .collect(),
            workspaces: self
                .workspaces
                .iter()
                .filter(|(_, n)| **n >= per_workspace)
                .map(|(w, _)| w.clone())
                .collect(),
        }
    }
}

/// Runs until shutdown: polls the outbox (and looks when told it got rows, at most once per
/// 20 ms, and at once when recorded attempts gave their places back) and delivers, at most
/// `webhook_concurrency` at once, at most `webhook_endpoint_concurrency` to one endpoint and
/// `webhook_workspace_concurrency` for one workspace. It claims only as many as it can start at once, leaving out the endpoints and
/// workspaces at their limits; a claimed delivery over a limit is given back unattempted.
pub async fn run(state: AppState, http: reqwest::Client, schedule: Arc<RetrySchedule>) {
    let config = state.config();
    let permits = Arc::new(Semaphore::new(config.webhook_concurrency));
    let (per_endpoint, per_workspace) = (
        config.webhook_endpoint_concurrency,
        config.webhook_workspace_concurrency,
    );
    let in_flight = Arc::new(Mutex::new(InFlight::default()));
    let lease = Duration::from_secs(config.webhook_timeout_secs) + LEASE_MARGIN;
    let mut every = tokio::time::interval(Duration::from_millis(config.webhook_poll_ms));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_look = tokio::time::Instant::now();
    let (finished, outcomes) = tokio::sync::mpsc::unbounded_channel();
    let freed = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(record(
        state.clone(),
        outcomes,
        in_flight.clone(),
        freed.clone(),
    ));
    loop {
        tokio::select! {
            () = state.shutdown().cancelled() => return,
            _ = every.tick() => {}
            // Places came free (one wake-up per recorded batch): what waits for them goes now.
            () = freed.notified() => {}
            () = state.outbox_wake() => {
                // Woken by a write: look now, but at most once per 20 ms however many there
                // are (they coalesce into one wake-up meanwhile).
                tokio::time::sleep_until(last_look + MIN_LOOK_INTERVAL).await;
            }
        }
        last_look = tokio::time::Instant::now();
        let room = u32::try_from(permits.available_permits())
            .unwrap_or(BATCH)
            .min(BATCH);
        if room == 0 {
            continue;
        }
        let now = time::now();
        let lease_until = now + chrono::Duration::from_std(lease).unwrap_or_default();
        let skip = lock(&in_flight).full(per_endpoint, per_workspace);
        let due = match state
            .store()
            .due_deliveries_except(now, lease_until, room, &skip)
            .await
        {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!(error = %err, "webhook outbox unavailable");
                continue;
            }
        };
        let mut over = Vec::new();
        for delivery in due {
            // Claimed no more than there were permits: this one is free, unless the claim
            // raced a finishing attempt's wake-up (then it goes back).
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                over.push(delivery);
                continue;
            };
            if !lock(&in_flight).take(&delivery, per_endpoint, per_workspace) {
                over.push(delivery);
                continue;
            }
            let (http, schedule, finished) = (http.clone(), schedule.clone(), finished.clone());
            let policy = state.config().target_policy();
            let state = state.clone();
            tokio::spawn(async move {
                let (result, log, exhausted) = attempt(&http, &schedule, policy, &delivery).await;
                state.metrics().webhook(match &result {
                    DeliveryResult::Delivered { .. } => "delivered",
                    DeliveryResult::RetryAt { .. } => "retry",
                    DeliveryResult::Abandon { .. } => "abandoned",
                    DeliveryResult::DisableEndpoint { .. } => "endpoint_disabled",
                });
                // The recorder outlives every sender: it ends when the last one is dropped.
                let _ = finished.send(Finished {
                    delivery,
                    at: time::now(),
                    result,
                    log,
                    exhausted,
                    permit,
                });
            });
        }
        if !over.is_empty()
            && let Err(err) = state.store().release_deliveries(&over, now).await
        {
            tracing::warn!(error = %err, "could not give back claimed webhook deliveries");
        }
    }
}

/// An attempt that ended, waiting to be recorded; its place (permit and in-flight counts) is
/// held until it is.
struct Finished {
    delivery: Delivery,
    at: chrono::DateTime<chrono::Utc>,
    result: DeliveryResult,
    log: AttemptLog,
    exhausted: bool,
    permit: OwnedSemaphorePermit,
}

/// The most outcomes recorded in one transaction.
const RECORD_BATCH: usize = 256;

/// Runs until every attempt's sender is gone: records the attempts that ended, all that ended
/// while the previous write was committing in one transaction (measured on this machine's disk
/// with `sqlite_synchronous = full`: one durable commit per attempt held the node at about 200
/// deliveries a second, whatever the number of endpoints; see docs/benchmarks.md, "Webhooks").
/// Then each one's place is given back and the worker woken for what waited for it.
async fn record(
    state: AppState,
    mut outcomes: tokio::sync::mpsc::UnboundedReceiver<Finished>,
    in_flight: Arc<Mutex<InFlight>>,
    freed: Arc<tokio::sync::Notify>,
) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while outcomes.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        let attempted: Vec<Attempted<'_>> = batch.iter().map(Finished::attempted).collect();
        let recorded = match state.store().record_deliveries(&attempted).await {
            Ok(()) => vec![true; batch.len()],
            // The store is away: one at a time would only wait out its timeout once per
            // attempt, holding every place meanwhile. Nothing is recorded; the deliveries are
            // due again when their leases end (at least once, as after a crash).
            Err(err) if err.is_unavailable() => {
                tracing::warn!(error = %err, attempts = batch.len(), "could not record webhook attempts; they will be sent again when their leases end");
                vec![false; batch.len()]
            }
            // One at a time, so that one outcome the store refuses does not send the others
            // again when their leases end.
            Err(err) if batch.len() > 1 => {
                tracing::warn!(error = %err, attempts = batch.len(), "could not record webhook attempts together; recording them one by one");
                let mut each = Vec::with_capacity(batch.len());
                for one in &attempted {
                    each.push(record_one(&state, one).await);
                }
                each
            }
            Err(_) => vec![record_one(&state, &attempted[0]).await],
        };
        drop(attempted);
        for (done, recorded) in batch.drain(..).zip(recorded) {
            lock(&in_flight).give_back(&done.delivery);
            drop(done.permit);
            // What follows a failure reads and writes the store: off the recorder's path.
            if recorded && !matches!(done.result, DeliveryResult::Delivered { .. }) {
                let state = state.clone();
                tokio::spawn(async move {
                    after_recorded(&state, &done.delivery, &done.result, done.exhausted).await;
                });
            }
        }
        // Places are free: what waited for them goes now, not at the next poll.
        freed.notify_one();
    }
}

impl Finished {
    fn attempted(&self) -> Attempted<'_> {
        Attempted {
            delivery: &self.delivery,
            at: self.at,
            result: &self.result,
            log: &self.log,
        }
    }
}

async fn record_one(state: &AppState, attempted: &Attempted<'_>) -> bool {
    match state
        .store()
        .record_deliveries(std::slice::from_ref(attempted))
        .await
    {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(error = %err, event_id = %attempted.delivery.event_id, "could not record a webhook attempt");
            false
        }
    }
}

/// The event type of the notice sent when a message is given up.
pub const DELIVERY_EXHAUSTED: &str = "webhook.delivery_exhausted";

/// What follows a recorded attempt to an endpoint: a message given up after its whole schedule
/// is counted and told to the workspace's other endpoints that ask for `webhook.delivery_exhausted`;
/// an endpoint whose attempts have all failed for `webhook_disable_after_failing_secs` is disabled.
async fn after_recorded(state: &AppState, d: &Delivery, result: &DeliveryResult, exhausted: bool) {
    let DeliveryTarget::Endpoint(endpoint) = &d.target else {
        return;
    };
    if matches!(result, DeliveryResult::DisableEndpoint { .. }) {
        state.metrics().webhook_endpoint_disabled("gone");
        state.live().webhooks_changed(&d.workspace_id);
    }
    if exhausted {
        state.metrics().webhook_exhausted();
        let now = time::now();
        let original: serde_json::Value = serde_json::from_slice(&d.payload).unwrap_or_default();
        let (status, error) = match result {
            DeliveryResult::Abandon { status, error } => (*status, Some(error.as_str())),
            _ => (None, None),
        };
        let notice_id = callstream_core::EventId::new();
        let notice = serde_json::json!({
            "event_id": notice_id.as_str(),
            "event_type": DELIVERY_EXHAUSTED,
            "workspace_id": d.workspace_id.as_str(),
            "timestamp": time::format(&now),
            "payload": {
                "endpoint_id": endpoint,
                "message_id": d.event_id,
                "event_type": original.get("event_type"),
                "attempts": d.attempts + 1,
                "first_attempt_at": d.first_attempt_at.as_ref().map(time::format),
                "last_status_code": status,
                "last_error": error,
            },
        });
        match state
            .store()
            .queue_webhook_notice(
                &d.workspace_id,
                endpoint,
                DELIVERY_EXHAUSTED,
                notice_id.as_str(),
                notice.to_string().as_bytes(),
                now,
            )
            .await
        {
            Ok(0) => {}
            Ok(_) => state.outbox_written(),
            Err(err) => {
                tracing::warn!(error = %err, "could not queue a webhook.delivery_exhausted notice");
            }
        }
    }
    let limit = state.config().webhook_disable_after_failing_secs;
    if limit == 0 || matches!(result, DeliveryResult::Delivered { .. }) {
        return;
    }
    let Ok(Some(found)) = state
        .store()
        .webhook_endpoint(&d.workspace_id, endpoint)
        .await
    else {
        return;
    };
    let now = time::now();
    let limit = chrono::Duration::seconds(i64::try_from(limit).unwrap_or(i64::MAX / 1000));
    if let Some(since) = found.failing_since
        && found.disabled_at.is_none()
        && now - since >= limit
    {
        let change = callstream_store::EndpointChange {
            enabled: Some(false),
            disabled_reason: Some(format!(
                "every attempt failed since {} (webhook_disable_after_failing_secs)",
                time::format(&since)
            )),
            ..callstream_store::EndpointChange::default()
        };
        if state
            .store()
            .change_webhook_endpoint(&d.workspace_id, endpoint, &change, now)
            .await
            .is_ok()
        {
            state.metrics().webhook_endpoint_disabled("failing");
            state.live().webhooks_changed(&d.workspace_id);
        }
    }
}

fn lock(in_flight: &Mutex<InFlight>) -> std::sync::MutexGuard<'_, InFlight> {
    in_flight
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A GET callback's URL and its query string: the URL's own query (if any) and the form
/// fields after it; a fragment is dropped (it is never sent).
fn get_callback_url(url: &str, fields: &[u8]) -> (String, String) {
    let fields = String::from_utf8_lossy(fields);
    let url = url.split('#').next().unwrap_or(url);
    let (base, query) = match url.split_once('?') {
        Some((base, own)) if !own.is_empty() => (base, format!("{own}&{fields}")),
        Some((base, _)) => (base, fields.into_owned()),
        None => (url, fields.into_owned()),
    };
    (format!("{base}?{query}"), query)
}

/// The most of an answer's body the delivery log keeps (and the gateway reads).
pub const RESPONSE_BODY_LOGGED: usize = 1024;

/// Reads at most [`RESPONSE_BODY_LOGGED`] bytes of `response`'s body, as text; the rest is
/// never read (the connection is dropped rather than drained).
async fn body_start(mut response: reqwest::Response) -> String {
    let mut kept = Vec::new();
    while kept.len() < RESPONSE_BODY_LOGGED {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = RESPONSE_BODY_LOGGED - kept.len();
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

fn given_up(error: String, kind: &str) -> (DeliveryResult, AttemptLog, bool) {
    (
        DeliveryResult::Abandon {
            status: None,
            error,
        },
        AttemptLog {
            error_kind: Some(kind.to_owned()),
            ..AttemptLog::default()
        },
        false,
    )
}

/// One attempt, what to do next, what the delivery log keeps of it, and whether the message
/// was given up at the end of its schedule.
async fn attempt(
    http: &reqwest::Client,
    schedule: &RetrySchedule,
    policy: crate::targets::Policy,
    d: &Delivery,
) -> (DeliveryResult, AttemptLog, bool) {
    let now = time::now();
    let Ok(secret) = d.secret.parse::<Secret>() else {
        return given_up("the signing secret is unreadable".into(), "other");
    };
    // An address in the URL is checked here (the client's resolver sees only names). A refused
    // target is given up at once: retrying would be refused the same way.
    if let Err(err) = policy.check_url(&d.url, crate::targets::Kind::Http) {
        return given_up(format!("target refused: {err}"), "target_refused");
    }
    // What is signed is exactly what is sent: the body, or for a GET callback the whole query
    // string after `?` (the URL's own parameters, then the callback's fields).
    let get_url = match d.target {
        DeliveryTarget::Callback(CallbackMethod::Get) => Some(get_callback_url(&d.url, &d.payload)),
        _ => None,
    };
    let signed: &[u8] = match &get_url {
        Some((_, query)) => query.as_bytes(),
        None => &d.payload,
    };
    // During a rotation's overlap the old secret signs too, a second `v1,` entry: receivers
    // that still hold it keep verifying until they switch.
    let previous: Vec<Secret> = d
        .previous_secret
        .as_deref()
        .and_then(|p| p.parse().ok())
        .into_iter()
        .collect();
    let headers =
        callstream_webhooks::headers(&secret, &previous, &d.event_id, now.timestamp(), signed);
    let mut request = match (&d.target, get_url) {
        (_, Some((url, _))) => http.get(url),
        (DeliveryTarget::Endpoint(_), None) => http
            .post(&d.url)
            .header("content-type", "application/json")
            .body(d.payload.clone()),
        (DeliveryTarget::Callback(_), None) => http
            .post(&d.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(d.payload.clone()),
    };
    for (name, value) in headers.pairs() {
        request = request.header(name, value);
    }
    let sent = std::time::Instant::now();
    let (outcome, status, error, mut log) = match request.send().await {
        Ok(response) => {
            let latency = sent.elapsed();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let log = AttemptLog {
                latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
                error_kind: (!response.status().is_success()).then(|| "http_status".to_owned()),
                response_body: body_start(response).await,
            };
            (
                callstream_webhooks::classify(status, retry_after.as_deref(), time::now()),
                Some(status),
                format!("HTTP {status}"),
                log,
            )
        }
        Err(err) => {
            let failure = if err.is_timeout() {
                TransportFailure::Timeout
            } else if err.is_connect() {
                TransportFailure::Connect
            } else {
                TransportFailure::Other
            };
            let kind = match failure {
                TransportFailure::Timeout => "timeout",
                TransportFailure::Connect => "connect",
                TransportFailure::Other => "other",
            };
            let log = AttemptLog {
                latency_ms: u64::try_from(sent.elapsed().as_millis()).unwrap_or(u64::MAX),
                error_kind: Some(kind.to_owned()),
                response_body: String::new(),
            };
            // The error is the failure's kind, the same word as the attempt log's `error_kind`
            // (it was `Connect` beside `connect`); never the payload, the host or a secret.
            (Outcome::from(failure), None, kind.to_owned(), log)
        }
    };
    let attempt_number = d.attempts + 1;
    let first = d.first_attempt_at.unwrap_or(now);
    let step = schedule.next_step(&outcome, attempt_number, first, time::now());
    let exhausted = step == NextStep::GiveUp;
    let result = match step {
        NextStep::Delivered => DeliveryResult::Delivered {
            status: status.unwrap_or(200),
        },
        NextStep::DisableEndpoint => DeliveryResult::DisableEndpoint {
            status: status.unwrap_or(410),
        },
        NextStep::RetryAt(at) => DeliveryResult::RetryAt { at, status, error },
        NextStep::GiveUp => DeliveryResult::Abandon { status, error },
    };
    if matches!(result, DeliveryResult::Delivered { .. }) {
        log.error_kind = None;
    }
    (result, log, exhausted)
}

/// How often done messages older than `webhook_retention_secs` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Runs until shutdown: every ten minutes, deletes the delivered and given-up messages (and
/// their logs) queued more than `webhook_retention_secs` ago. Pending ones always stay.
pub async fn prune(state: AppState) {
    let retention = state.config().webhook_retention_secs;
    if retention == 0 {
        return;
    }
    let retention = chrono::Duration::seconds(i64::try_from(retention).unwrap_or(i64::MAX / 1000));
    let mut every = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            () = state.shutdown().cancelled() => return,
            _ = every.tick() => {}
        }
        match state
            .store()
            .prune_webhook_messages(time::now() - retention)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "pruned webhook messages past their retention"),
            Err(err) => tracing::warn!(error = %err, "could not prune webhook messages"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn get_callbacks_append_their_fields_to_the_urls_own_query() {
        for (url, expect_url, expect_query) in [
            ("http://h/cb", "http://h/cb?Event=X", "Event=X"),
            ("http://h/cb?", "http://h/cb?Event=X", "Event=X"),
            ("http://h/cb?x=1", "http://h/cb?x=1&Event=X", "x=1&Event=X"),
            (
                "http://h/cb?x=1#top",
                "http://h/cb?x=1&Event=X",
                "x=1&Event=X",
            ),
        ] {
            let (url, query) = super::get_callback_url(url, b"Event=X");
            assert_eq!((url.as_str(), query.as_str()), (expect_url, expect_query));
        }
    }
}
