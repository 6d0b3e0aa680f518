//! The rules of webhook delivery, with no I/O: how a delivery is signed and verified
//! ([Standard Webhooks](https://www.standardwebhooks.com): `webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64>` over `{id}.{timestamp}.{body}` with a `whsec_` secret), when a
//! failed delivery is tried again (a retry schedule that ends 24 hours after the first attempt), and
//! what an endpoint's answer means for the outbox (delivered, retry, slow down, disable).
//!
//! This crate deliberately does not know how a webhook travels or where it is kept: there is no
//! HTTP client, no outbox table or store, no tokio and no clock. Every function that needs the time
//! takes `now` from its caller, so the outbox worker (which owns the HTTP client, the store and the
//! clock) can be tested with any time it likes. The only thing read from the operating system is
//! randomness, for new secrets ([`Secret::generate`]) and for retry jitter, and the jitter source
//! is replaceable ([`JitterSource`]). The body is opaque bytes: the canonical event envelope is
//! serialised once by the caller, and the exact bytes signed here are the bytes it must send.
//!
//! ```
//! use callstream_webhooks::{DEFAULT_TOLERANCE, Secret, headers, verify};
//! use chrono::DateTime;
//!
//! let secret: Secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".parse()?;
//! let body = br#"{"event_id":"evt_1","event_type":"call.started"}"#;
//! let signed = headers(&secret, &[], "evt_1", 1_700_000_000, body);
//!
//! let now = DateTime::from_timestamp(1_700_000_030, 0).ok_or("out of range")?;
//! verify(&[secret], signed.pairs(), body, now, DEFAULT_TOLERANCE)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod outcome;
mod schedule;
mod signature;

pub use outcome::{
    MAX_RETRY_AFTER, Outcome, RetryCause, TransportFailure, classify, parse_retry_after,
};
pub use schedule::{
    DEFAULT_DEADLINE, DEFAULT_JITTER_PERCENT, JitterSource, NextStep, RetrySchedule, ScheduleError,
};
pub use signature::{
    DEFAULT_TOLERANCE, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, Secret, SecretError,
    VerifyError, WebhookHeaders, headers, sign, verify,
};
