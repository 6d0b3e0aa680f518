//! What an endpoint's answer (or the lack of one) means for the message.
//!
//! The rules follow the Standard Webhooks spec: only `2xx` is success, `3xx` is a failure (the
//! endpoint's URL should be fixed, not followed), `410 Gone` asks the sender to stop, and `429`,
//! `502`, `503` and `504` are an overloaded endpoint asking for a slower pace, with `Retry-After`
//! honoured when present.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};

/// The longest wait a `Retry-After` header can impose. A longer value is cut to this, so that a
/// misconfigured or hostile endpoint cannot park messages past the retry schedule's intent; the
/// schedule's own waits still apply on top (see [`crate::RetrySchedule::next_step`]).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// The meaning of one delivery attempt's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A `2xx` answer: the message is delivered.
    Delivered {
        /// The status the endpoint answered with.
        status: u16,
    },
    /// `410 Gone`: the endpoint no longer wants webhooks; disable it.
    DisableEndpoint,
    /// `429`, `502`, `503` or `504`: the endpoint is overloaded. Retry, no sooner than
    /// `not_before` when the endpoint sent a usable `Retry-After`, and the worker may also slow
    /// down its other deliveries to this endpoint.
    RetryLater {
        /// The status the endpoint answered with.
        status: u16,
        /// The time from `Retry-After`, between `now` and `now + MAX_RETRY_AFTER`.
        not_before: Option<DateTime<Utc>>,
    },
    /// Any other failure: retry on the normal schedule.
    Retry {
        /// What went wrong, for the attempt log and metrics.
        cause: RetryCause,
    },
}

/// Why an attempt is retried on the normal schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryCause {
    /// The endpoint answered with a status that is neither success nor one of the special cases
    /// (`1xx`, `3xx`, most `4xx` and `5xx`, or a number outside `100..=599`).
    Status(u16),
    /// No usable HTTP answer at all.
    Transport(TransportFailure),
}

/// A delivery attempt that got no HTTP answer. The HTTP worker maps its client's errors to these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportFailure {
    /// The request (connect, send or waiting for the answer) took longer than the timeout.
    Timeout,
    /// No connection: refused, DNS failure, unreachable, TLS handshake failed.
    Connect,
    /// The connection broke mid-request, or the answer was not valid HTTP.
    Other,
}

impl From<TransportFailure> for Outcome {
    /// Every transport failure is retried on the normal schedule.
    fn from(failure: TransportFailure) -> Self {
        Outcome::Retry {
            cause: RetryCause::Transport(failure),
        }
    }
}

/// Classifies an endpoint's HTTP answer. `retry_after` is the raw `Retry-After` header, if any;
/// it is only read for the statuses that ask the sender to slow down. For attempts that got no
/// answer, use `Outcome::from(TransportFailure::…)`.
pub fn classify(status: u16, retry_after: Option<&str>, now: DateTime<Utc>) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered { status },
        410 => Outcome::DisableEndpoint,
        429 | 502 | 503 | 504 => Outcome::RetryLater {
            status,
            not_before: retry_after.and_then(|value| parse_retry_after(value, now)),
        },
        _ => Outcome::Retry {
            cause: RetryCause::Status(status),
        },
    }
}

/// Reads a `Retry-After` value (RFC 9110 §10.2.3): either delta-seconds (`120`) or an HTTP-date
/// in any of its three forms (`Sun, 06 Nov 1994 08:49:37 GMT`, the obsolete RFC 850
/// `Sunday, 06-Nov-94 08:49:37 GMT` and asctime `Sun Nov  6 08:49:37 1994`).
///
/// The result is clamped to `now ..= now + MAX_RETRY_AFTER`: a date in the past means "now", and
/// anything further than [`MAX_RETRY_AFTER`] is cut to it. `None` if the value is neither form.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let value = value.trim();
    let cap = TimeDelta::from_std(MAX_RETRY_AFTER).ok()?;
    let latest = now.checked_add_signed(cap)?;
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits but too large for u64 is still "a very long time", so it saturates to the cap.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        let wait = TimeDelta::try_seconds(i64::try_from(secs).unwrap_or(i64::MAX)).unwrap_or(cap);
        return Some(now.checked_add_signed(wait.min(cap)).unwrap_or(latest));
    }
    let at = parse_http_date(value)?;
    Some(at.clamp(now, latest))
}

/// The three HTTP-date forms a recipient must accept (RFC 9110 §5.6.7), all in GMT.
fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    const FORMATS: [&str; 3] = [
        // IMF-fixdate, the only form senders should use.
        "%a, %d %b %Y %H:%M:%S GMT",
        // Obsolete RFC 850 form, two-digit year.
        "%A, %d-%b-%y %H:%M:%S GMT",
        // ANSI C asctime(), day padded with a space.
        "%a %b %e %H:%M:%S %Y",
    ];
    FORMATS
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(value, format).ok())
        .map(|naive| naive.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        // Fri, 15 May 2026 14:32:01 GMT
        DateTime::from_timestamp(1_778_855_521, 0).expect("in range")
    }

    fn after(secs: i64) -> Option<DateTime<Utc>> {
        Some(now() + TimeDelta::seconds(secs))
    }

    fn retry(status: u16) -> Outcome {
        Outcome::Retry {
            cause: RetryCause::Status(status),
        }
    }

    fn later(status: u16, not_before: Option<DateTime<Utc>>) -> Outcome {
        Outcome::RetryLater { status, not_before }
    }

    #[test]
    fn now_is_the_date_the_tests_assume() {
        assert_eq!(
            now().format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
            "Fri, 15 May 2026 14:32:01 GMT"
        );
    }

    #[test]
    fn classify_table() {
        let cases: &[(u16, Option<&str>, Outcome)] = &[
            (200, None, Outcome::Delivered { status: 200 }),
            (201, None, Outcome::Delivered { status: 201 }),
            (204, Some("120"), Outcome::Delivered { status: 204 }),
            (299, None, Outcome::Delivered { status: 299 }),
            (100, None, retry(100)),
            (301, None, retry(301)),
            (302, Some("10"), retry(302)),
            (400, None, retry(400)),
            (401, None, retry(401)),
            (404, None, retry(404)),
            (408, None, retry(408)),
            (410, None, Outcome::DisableEndpoint),
            (410, Some("60"), Outcome::DisableEndpoint),
            (413, None, retry(413)),
            (429, None, later(429, None)),
            (429, Some("120"), later(429, after(120))),
            (429, Some("soon"), later(429, None)),
            (500, None, retry(500)),
            // Retry-After is only honoured on the slow-down statuses.
            (500, Some("120"), retry(500)),
            (501, None, retry(501)),
            (502, Some("0"), later(502, after(0))),
            (503, None, later(503, None)),
            (
                503,
                Some("Fri, 15 May 2026 14:42:01 GMT"),
                later(503, after(600)),
            ),
            (504, Some("30"), later(504, after(30))),
            (505, None, retry(505)),
            (599, None, retry(599)),
            (0, None, retry(0)),
            (999, None, retry(999)),
        ];
        for &(status, retry_after, expected) in cases {
            assert_eq!(
                classify(status, retry_after, now()),
                expected,
                "status {status}, Retry-After {retry_after:?}"
            );
        }
    }

    #[test]
    fn transport_failures_are_retried() {
        for failure in [
            TransportFailure::Timeout,
            TransportFailure::Connect,
            TransportFailure::Other,
        ] {
            assert_eq!(
                Outcome::from(failure),
                Outcome::Retry {
                    cause: RetryCause::Transport(failure)
                }
            );
        }
    }

    #[test]
    fn retry_after_table() {
        let hour = 60 * 60;
        let cases: &[(&str, Option<i64>)] = &[
            // delta-seconds
            ("0", Some(0)),
            ("1", Some(1)),
            ("120", Some(120)),
            (" 120 ", Some(120)),
            ("3600", Some(hour)),
            ("3601", Some(hour)),
            ("86400", Some(hour)),
            ("99999999999999999999999999", Some(hour)),
            ("-5", None),
            ("+5", None),
            ("1.5", None),
            ("12 s", None),
            ("", None),
            // IMF-fixdate
            ("Fri, 15 May 2026 14:33:01 GMT", Some(60)),
            ("Fri, 15 May 2026 14:32:01 GMT", Some(0)),
            ("Fri, 15 May 2026 16:00:00 GMT", Some(hour)),
            ("Sun, 06 Nov 1994 08:49:37 GMT", Some(0)),
            // obsolete RFC 850
            ("Friday, 15-May-26 14:34:01 GMT", Some(120)),
            ("Sunday, 06-Nov-94 08:49:37 GMT", Some(0)),
            // asctime, single-digit day padded with a space
            ("Fri May 15 14:32:31 2026", Some(30)),
            ("Sun Nov  6 08:49:37 1994", Some(0)),
            // not dates
            ("Fri, 15 May 2026 14:33:01 PST", None),
            ("Thu, 15 May 2026 14:33:01 GMT", None),
            ("2026-05-15T14:33:01Z", None),
            ("tomorrow", None),
        ];
        for &(value, expected) in cases {
            assert_eq!(
                parse_retry_after(value, now()),
                expected.and_then(after),
                "Retry-After {value:?}"
            );
        }
    }
}
