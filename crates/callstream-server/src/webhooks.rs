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
//! (the process died mid-attempt) becomes due again when its lease ends.

use std::sync::Arc;
use std::time::Duration;

use callstream_core::time;
use callstream_store::{CallbackMethod, Delivery, DeliveryResult, DeliveryTarget};
use callstream_webhooks::{NextStep, Outcome, RetrySchedule, Secret, TransportFailure};
use tokio::sync::Semaphore;

use crate::state::AppState;

/// How long a claimed delivery is reserved for its attempt.
const LEASE: Duration = Duration::from_secs(120);
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

/// Runs until shutdown: polls the outbox (and wakes when told it got rows) and delivers, at
/// most `webhook_concurrency` at once.
pub async fn run(state: AppState, http: reqwest::Client, schedule: Arc<RetrySchedule>) {
    let config = state.config();
    let permits = Arc::new(Semaphore::new(config.webhook_concurrency));
    let mut every = tokio::time::interval(Duration::from_millis(config.webhook_poll_ms));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_look = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = state.shutdown().cancelled() => return,
            _ = every.tick() => {}
            () = state.outbox_wake() => {
                // Woken by a write: look now, but at most once per 20 ms however many writes
                // there are (they coalesce into one wake-up meanwhile).
                tokio::time::sleep_until(last_look + MIN_LOOK_INTERVAL).await;
            }
        }
        last_look = tokio::time::Instant::now();
        let now = time::now();
        let lease_until = now + chrono::Duration::from_std(LEASE).unwrap_or_default();
        let due = match state.store().due_deliveries(now, lease_until, BATCH).await {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!(error = %err, "webhook outbox unavailable");
                continue;
            }
        };
        for delivery in due {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (state, http, schedule) = (state.clone(), http.clone(), schedule.clone());
            let policy = state.config().target_policy();
            tokio::spawn(async move {
                let result = attempt(&http, &schedule, policy, &delivery).await;
                state.metrics().webhook(match &result {
                    DeliveryResult::Delivered { .. } => "delivered",
                    DeliveryResult::RetryAt { .. } => "retry",
                    DeliveryResult::Abandon { .. } => "abandoned",
                    DeliveryResult::DisableEndpoint { .. } => "endpoint_disabled",
                });
                if let Err(err) = state
                    .store()
                    .record_delivery(&delivery, time::now(), &result)
                    .await
                {
                    tracing::warn!(error = %err, event_id = %delivery.event_id, "could not record a webhook attempt");
                }
                drop(permit);
            });
        }
    }
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

/// One attempt and what to do next.
async fn attempt(
    http: &reqwest::Client,
    schedule: &RetrySchedule,
    policy: crate::targets::Policy,
    d: &Delivery,
) -> DeliveryResult {
    let now = time::now();
    let Ok(secret) = d.secret.parse::<Secret>() else {
        return DeliveryResult::Abandon {
            status: None,
            error: "the signing secret is unreadable".into(),
        };
    };
    // An address in the URL is checked here (the client's resolver sees only names). A refused
    // target is given up at once: retrying would be refused the same way.
    if let Err(err) = policy.check_url(&d.url, crate::targets::Kind::Http) {
        return DeliveryResult::Abandon {
            status: None,
            error: format!("target refused: {err}"),
        };
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
    let headers = callstream_webhooks::headers(&secret, &[], &d.event_id, now.timestamp(), signed);
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
    let (outcome, status, error) = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (
                callstream_webhooks::classify(status, retry_after.as_deref(), time::now()),
                Some(status),
                format!("HTTP {status}"),
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
            // The error's text names the host and the failure, never the payload or secret.
            (Outcome::from(failure), None, format!("{failure:?}"))
        }
    };
    let attempt_number = d.attempts + 1;
    let first = d.first_attempt_at.unwrap_or(now);
    match schedule.next_step(&outcome, attempt_number, first, time::now()) {
        NextStep::Delivered => DeliveryResult::Delivered {
            status: status.unwrap_or(200),
        },
        NextStep::DisableEndpoint => DeliveryResult::DisableEndpoint {
            status: status.unwrap_or(410),
        },
        NextStep::RetryAt(at) => DeliveryResult::RetryAt { at, status, error },
        NextStep::GiveUp => DeliveryResult::Abandon { status, error },
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
