//! Standard Webhooks signatures: `whsec_` secrets, signing a delivery, verifying one.
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`, the MAC is HMAC-SHA256 keyed
//! with the decoded secret, and the `webhook-signature` header carries `v1,<base64 MAC>`; during a
//! secret rotation it carries one such entry per secret, separated by spaces.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

/// Header carrying the message id, stable across retries (the receiver's idempotency key).
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the attempt's time in whole seconds since the Unix epoch.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying the space-separated list of `v1,<base64>` signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// How far a `webhook-timestamp` may be from the receiver's clock, either way, before
/// [`verify`] refuses it. Five minutes, as in the Standard Webhooks libraries.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

const SECRET_PREFIX: &str = "whsec_";
const SIGNATURE_VERSION: &str = "v1";

/// Length of a freshly generated secret. The spec asks for at least 24 bytes; 32 bytes is a full
/// HMAC-SHA256 strength key.
const GENERATED_SECRET_LEN: usize = 32;
/// Shortest secret accepted: the spec's minimum (192 bits).
const MIN_SECRET_LEN: usize = 24;
/// Longest secret accepted: the spec's maximum (512 bits).
const MAX_SECRET_LEN: usize = 64;

/// Decoding accepts secrets and signatures with or without `=` padding, because other senders'
/// tooling does not agree on it; encoding always pads, as the spec's examples do.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type HmacSha256 = Hmac<Sha256>;

// === impl Secret ===

/// A symmetric signing secret for one webhook endpoint.
///
/// Written as `whsec_<base64>` ([`Secret::expose_whsec`], [`FromStr`]). It is never printed by
/// `Debug`, and it deliberately has no `Display`, so that `{}` in a log line cannot leak it; the
/// only way to see it is the explicitly named [`Secret::expose_whsec`]. Equality is constant time.
#[derive(Clone)]
pub struct Secret {
    key: Box<[u8]>,
    /// The HMAC keyed once at construction, so that signing is infallible and does not redo the
    /// key schedule on every delivery.
    mac: HmacSha256,
}

/// Why a secret could not be created or parsed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The text does not start with `whsec_`.
    #[error("webhook secret must start with `{SECRET_PREFIX}`")]
    MissingPrefix,
    /// The text after `whsec_` is not base64. The secret itself is not repeated in the message.
    #[error("webhook secret is not valid base64 after `{SECRET_PREFIX}`")]
    InvalidBase64(#[source] base64::DecodeError),
    /// The decoded key is shorter or longer than the spec allows.
    #[error("webhook secret is {len} bytes; it must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes")]
    InvalidLength {
        /// Length of the decoded key in bytes.
        len: usize,
    },
    /// The operating system's random number generator failed.
    #[error("could not read randomness for a new webhook secret")]
    Randomness(#[source] getrandom::Error),
}

impl Secret {
    /// Generates a new random 32-byte secret from the operating system's RNG.
    ///
    /// # Errors
    ///
    /// [`SecretError::Randomness`] if the operating system cannot provide randomness.
    pub fn generate() -> Result<Self, SecretError> {
        let mut key = [0u8; GENERATED_SECRET_LEN];
        getrandom::fill(&mut key).map_err(SecretError::Randomness)?;
        Self::from_bytes(&key)
    }

    /// Builds a secret from raw key bytes.
    ///
    /// # Errors
    ///
    /// [`SecretError::InvalidLength`] unless the key is 24 to 64 bytes long.
    pub fn from_bytes(key: &[u8]) -> Result<Self, SecretError> {
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&key.len()) {
            return Err(SecretError::InvalidLength { len: key.len() });
        }
        // HMAC accepts keys of any length, so this cannot fail; the length check above is the
        // real validation. The error is still mapped rather than unwrapped.
        let mac = HmacSha256::new_from_slice(key)
            .map_err(|_| SecretError::InvalidLength { len: key.len() })?;
        Ok(Self {
            key: key.into(),
            mac,
        })
    }

    /// The secret in its shareable form, `whsec_<base64>`: what an endpoint's owner is shown once
    /// and what the store keeps.
    pub fn expose_whsec(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// HMAC-SHA256 over `{msg_id}.{timestamp}.{body}`, fed in pieces so the body is never copied.
    fn mac(&self, msg_id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

impl FromStr for Secret {
    type Err = SecretError;

    /// Parses `whsec_<base64>` (padding optional).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let encoded = s
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = LENIENT_BASE64
            .decode(encoded)
            .map_err(SecretError::InvalidBase64)?;
        Self::from_bytes(&key)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(whsec_<redacted>)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.key.ct_eq(&other.key).into()
    }
}

impl Eq for Secret {}

// === signing ===

/// Signs one delivery attempt: `v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp_secs}.{body}">`.
///
/// `msg_id` must be the same for every attempt of one message and must not contain a `.` (the
/// spec forbids it, because a `.` would make the signed content ambiguous); callstream's ids are
/// `evt_…`/`msg_…` tokens, which never do. `timestamp_secs` is the time of this attempt, not of
/// the event. `body` must be exactly the bytes sent.
pub fn sign(secret: &Secret, msg_id: &str, timestamp_secs: i64, body: &[u8]) -> String {
    sign_with_timestamp_text(secret, msg_id, &timestamp_secs.to_string(), body)
}

fn sign_with_timestamp_text(secret: &Secret, msg_id: &str, timestamp: &str, body: &[u8]) -> String {
    let tag = secret.mac(msg_id, timestamp, body);
    format!("{SIGNATURE_VERSION},{}", STANDARD.encode(tag))
}

/// The three Standard Webhooks headers for one delivery attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookHeaders {
    /// Value of `webhook-id`.
    pub id: String,
    /// Value of `webhook-timestamp` (seconds since the Unix epoch).
    pub timestamp: String,
    /// Value of `webhook-signature`: one `v1,<base64>` entry per secret, space separated.
    pub signature: String,
}

impl WebhookHeaders {
    /// The headers as `(name, value)` pairs, ready to put on a request (and accepted as-is by
    /// [`verify`]).
    pub fn pairs(&self) -> [(&'static str, &str); 3] {
        [
            (HEADER_ID, &self.id),
            (HEADER_TIMESTAMP, &self.timestamp),
            (HEADER_SIGNATURE, &self.signature),
        ]
    }
}

/// Builds the headers for one delivery attempt, signed with `current` and with each of
/// `previous`.
///
/// `previous` holds the endpoint's older secrets while a rotation is in progress, so receivers
/// that have not switched yet still find a signature they can check; it is usually empty. The
/// requirements on `msg_id` and `body` are those of [`sign`].
pub fn headers(
    current: &Secret,
    previous: &[Secret],
    msg_id: &str,
    timestamp_secs: i64,
    body: &[u8],
) -> WebhookHeaders {
    let timestamp = timestamp_secs.to_string();
    let signature = std::iter::once(current)
        .chain(previous)
        .map(|secret| sign_with_timestamp_text(secret, msg_id, &timestamp, body))
        .collect::<Vec<_>>()
        .join(" ");
    WebhookHeaders {
        id: msg_id.to_owned(),
        timestamp,
        signature,
    }
}

// === verification ===

/// Which verification check failed. Each variant names one check, so a receiver can log or count
/// why it refused a delivery without ever logging a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A required header is absent.
    #[error("missing `{0}` header")]
    MissingHeader(&'static str),
    /// `webhook-id` is empty or contains a `.`, which would make the signed content ambiguous.
    #[error("`webhook-id` header is empty or contains a '.'")]
    InvalidId,
    /// `webhook-timestamp` is not a whole number of seconds since the Unix epoch.
    #[error("`webhook-timestamp` header is not a whole number of seconds")]
    InvalidTimestamp,
    /// The timestamp is older than the tolerance allows (a replay, or a very slow delivery).
    #[error("`webhook-timestamp` is {age_secs} s old, more than the {tolerance_secs} s tolerance")]
    TimestampTooOld {
        /// How many seconds before `now` the timestamp is.
        age_secs: i64,
        /// The tolerance that was applied.
        tolerance_secs: i64,
    },
    /// The timestamp is further in the future than the tolerance allows (a clock far off).
    #[error(
        "`webhook-timestamp` is {ahead_secs} s in the future, more than the {tolerance_secs} s tolerance"
    )]
    TimestampInFuture {
        /// How many seconds after `now` the timestamp is.
        ahead_secs: i64,
        /// The tolerance that was applied.
        tolerance_secs: i64,
    },
    /// The verifier was given no secrets, so nothing could ever match.
    #[error("no secrets to verify the signature with")]
    NoSecrets,
    /// `webhook-signature` holds no `v1,<base64>` entry (only other schemes, or nothing usable).
    #[error("`webhook-signature` header has no `v1` signature")]
    NoSupportedSignature,
    /// There are `v1` signatures, but none matches any of the secrets: wrong secret, or the id,
    /// timestamp or body were changed.
    #[error("no `v1` signature matches any of the {secrets} secret(s)")]
    SignatureMismatch {
        /// How many secrets were tried.
        secrets: usize,
    },
}

/// Verifies a received webhook against the endpoint's secrets.
///
/// `headers` is any list of `(name, value)` pairs (names are matched case-insensitively; the
/// first occurrence wins), for example [`WebhookHeaders::pairs`] or an HTTP header map mapped to
/// `(&str, &str)`. `secrets` holds every secret currently accepted, so a receiver can accept both
/// sides of a rotation. The timestamp must be within `tolerance` of `now`, either way
/// ([`DEFAULT_TOLERANCE`] is the usual choice). Every signature is compared with every expected
/// MAC in constant time, without stopping at the first match.
///
/// # Errors
///
/// A [`VerifyError`] naming the first check that failed, in this order: headers present, id
/// well-formed, timestamp well-formed, timestamp within tolerance, at least one secret, at least
/// one `v1` signature, a signature that matches.
pub fn verify<K, V>(
    secrets: &[Secret],
    headers: impl IntoIterator<Item = (K, V)>,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), VerifyError>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let received = ReceivedHeaders::collect(headers)?;

    let id = received.id.trim();
    if id.is_empty() || id.contains('.') {
        return Err(VerifyError::InvalidId);
    }
    let timestamp = received.timestamp.trim();
    let timestamp_secs = parse_timestamp(timestamp)?;
    check_timestamp(timestamp_secs, now, tolerance)?;

    if secrets.is_empty() {
        return Err(VerifyError::NoSecrets);
    }

    let candidates: Vec<Vec<u8>> = received
        .signature
        .split_ascii_whitespace()
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == SIGNATURE_VERSION)
        .filter_map(|(_, encoded)| LENIENT_BASE64.decode(encoded).ok())
        .collect();
    if candidates.is_empty() {
        return Err(VerifyError::NoSupportedSignature);
    }

    // Fold every comparison into one `Choice` rather than returning on the first match, so the
    // time taken does not depend on which signature (or how much of it) matched.
    let mut matched = Choice::from(0);
    for secret in secrets {
        let expected = secret.mac(id, timestamp, body);
        for candidate in &candidates {
            matched |= expected.as_slice().ct_eq(candidate);
        }
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(VerifyError::SignatureMismatch {
            secrets: secrets.len(),
        })
    }
}

/// The three header values, copied out of whatever header representation the caller has.
struct ReceivedHeaders {
    id: String,
    timestamp: String,
    signature: String,
}

impl ReceivedHeaders {
    fn collect<K, V>(headers: impl IntoIterator<Item = (K, V)>) -> Result<Self, VerifyError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let (mut id, mut timestamp, mut signature) = (None, None, None);
        for (name, value) in headers {
            let name = name.as_ref();
            let slot = if name.eq_ignore_ascii_case(HEADER_ID) {
                &mut id
            } else if name.eq_ignore_ascii_case(HEADER_TIMESTAMP) {
                &mut timestamp
            } else if name.eq_ignore_ascii_case(HEADER_SIGNATURE) {
                &mut signature
            } else {
                continue;
            };
            if slot.is_none() {
                *slot = Some(value.as_ref().to_owned());
            }
        }
        Ok(Self {
            id: id.ok_or(VerifyError::MissingHeader(HEADER_ID))?,
            timestamp: timestamp.ok_or(VerifyError::MissingHeader(HEADER_TIMESTAMP))?,
            signature: signature.ok_or(VerifyError::MissingHeader(HEADER_SIGNATURE))?,
        })
    }
}

/// Only plain ASCII digits are accepted: `+12`, `-5` or `012` would parse as integers but are not
/// what a sender signs, and the MAC is computed over the header text exactly as received.
fn parse_timestamp(text: &str) -> Result<i64, VerifyError> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return Err(VerifyError::InvalidTimestamp);
    }
    text.parse().map_err(|_| VerifyError::InvalidTimestamp)
}

fn check_timestamp(
    timestamp_secs: i64,
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let tolerance_secs = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    let age_secs = now.timestamp().saturating_sub(timestamp_secs);
    if age_secs > tolerance_secs {
        Err(VerifyError::TimestampTooOld {
            age_secs,
            tolerance_secs,
        })
    } else if age_secs < tolerance_secs.saturating_neg() {
        Err(VerifyError::TimestampInFuture {
            ahead_secs: age_secs.saturating_neg(),
            tolerance_secs,
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published test vector, from the Standard Webhooks reference libraries
    /// (`standard-webhooks/standard-webhooks`, `libraries/rust/src/lib.rs`, `test_sign`; the same
    /// vector appears in the other languages' tests).
    const SPEC_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const SPEC_MSG_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const SPEC_TIMESTAMP: i64 = 1_649_367_553;
    const SPEC_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SPEC_SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn spec_secret() -> Secret {
        SPEC_SECRET.parse().expect("spec secret parses")
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("timestamp in range")
    }

    fn secret_of(byte: u8) -> Secret {
        Secret::from_bytes(&[byte; 32]).expect("32 bytes is a valid length")
    }

    #[test]
    fn spec_test_vector_signs() {
        assert_eq!(
            sign(&spec_secret(), SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
    }

    #[test]
    fn spec_test_vector_verifies() {
        let headers = [
            (HEADER_ID, SPEC_MSG_ID),
            (HEADER_TIMESTAMP, "1649367553"),
            (HEADER_SIGNATURE, SPEC_SIGNATURE),
        ];
        let now = at(SPEC_TIMESTAMP + 10);
        assert_eq!(
            verify(&[spec_secret()], headers, SPEC_BODY, now, DEFAULT_TOLERANCE),
            Ok(())
        );
    }

    #[test]
    fn secret_round_trips_through_whsec_text() {
        let secret = spec_secret();
        assert_eq!(secret.expose_whsec(), SPEC_SECRET);
        assert_eq!(secret.expose_whsec().parse::<Secret>().ok(), Some(secret));
    }

    #[test]
    fn generated_secrets_are_32_bytes_and_distinct() {
        let a = Secret::generate().expect("OS randomness");
        let b = Secret::generate().expect("OS randomness");
        assert_ne!(a, b);
        let text = a.expose_whsec();
        assert!(text.starts_with("whsec_"));
        assert_eq!(a.key.len(), 32);
        assert_eq!(text.parse::<Secret>().ok(), Some(a));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let secret = spec_secret();
        let debug = format!("{secret:?} {:?}", std::slice::from_ref(&secret));
        assert!(!debug.contains("C2FVsBQ"), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
    }

    #[test]
    fn secret_parsing_table() {
        // (input, expected outcome as a short label)
        let cases: &[(&str, &str)] = &[
            (SPEC_SECRET, "ok"),
            // Same 24 bytes, no prefix.
            ("C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "missing prefix"),
            ("whsec_not base64!", "invalid base64"),
            // 16 bytes: too short for the spec.
            ("whsec_AAAAAAAAAAAAAAAAAAAAAA==", "invalid length 16"),
            // 32 bytes, unpadded and padded.
            ("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "ok"),
            ("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "ok"),
            ("", "missing prefix"),
            ("whsec_", "invalid length 0"),
        ];
        for (input, expected) in cases {
            let got = match input.parse::<Secret>() {
                Ok(_) => "ok".to_owned(),
                Err(SecretError::MissingPrefix) => "missing prefix".to_owned(),
                Err(SecretError::InvalidBase64(_)) => "invalid base64".to_owned(),
                Err(SecretError::InvalidLength { len }) => format!("invalid length {len}"),
                Err(SecretError::Randomness(_)) => "randomness".to_owned(),
            };
            assert_eq!(&got, expected, "input {input:?}");
        }
        assert!(matches!(
            Secret::from_bytes(&[7; 65]),
            Err(SecretError::InvalidLength { len: 65 })
        ));
        assert!(Secret::from_bytes(&[7; 64]).is_ok());
    }

    #[test]
    fn headers_carry_one_signature_per_secret() {
        let (current, old) = (secret_of(1), secret_of(2));
        let h = headers(
            &current,
            std::slice::from_ref(&old),
            "evt_1",
            1_700_000_000,
            b"{}",
        );
        assert_eq!(h.id, "evt_1");
        assert_eq!(h.timestamp, "1700000000");
        let expected = format!(
            "{} {}",
            sign(&current, "evt_1", 1_700_000_000, b"{}"),
            sign(&old, "evt_1", 1_700_000_000, b"{}")
        );
        assert_eq!(h.signature, expected);
        assert_eq!(
            h.pairs().map(|(name, _)| name),
            ["webhook-id", "webhook-timestamp", "webhook-signature"]
        );
    }

    /// One row of the verification table: how the sender signed, what the receiver holds and
    /// sees, and the expected result.
    struct Case {
        name: &'static str,
        /// Secrets the sender signs with (first is current).
        sender: Vec<Secret>,
        /// Secrets the receiver accepts.
        receiver: Vec<Secret>,
        /// Body the receiver sees (the sender always signs `{"ok":true}`).
        body: &'static [u8],
        /// Receiver's clock minus the signed timestamp, in seconds.
        skew_secs: i64,
        /// Rewrites the headers before the receiver sees them.
        tamper: fn(&mut Vec<(String, String)>),
        expected: Result<(), VerifyError>,
    }

    fn no_tamper(_: &mut Vec<(String, String)>) {}

    fn set(headers: &mut [(String, String)], name: &str, value: &str) {
        for (n, v) in headers.iter_mut() {
            if n == name {
                *v = value.to_owned();
            }
        }
    }

    #[test]
    fn verify_table() {
        let (a, b, c) = (secret_of(0xa), secret_of(0xb), secret_of(0xc));
        let signed_body: &[u8] = br#"{"ok":true}"#;
        let base = || Case {
            name: "",
            sender: vec![a.clone()],
            receiver: vec![a.clone()],
            body: signed_body,
            skew_secs: 0,
            tamper: no_tamper,
            expected: Ok(()),
        };
        let cases = vec![
            Case {
                name: "round trip",
                ..base()
            },
            Case {
                name: "receiver knows old and new secret",
                receiver: vec![b.clone(), a.clone()],
                ..base()
            },
            Case {
                name: "rotation: sender signs with new and old, receiver knows only old",
                sender: vec![b.clone(), a.clone()],
                ..base()
            },
            Case {
                name: "rotation: receiver knows only new",
                sender: vec![b.clone(), a.clone()],
                receiver: vec![b.clone()],
                ..base()
            },
            Case {
                name: "wrong secret",
                receiver: vec![c.clone()],
                expected: Err(VerifyError::SignatureMismatch { secrets: 1 }),
                ..base()
            },
            Case {
                name: "no secrets",
                receiver: vec![],
                expected: Err(VerifyError::NoSecrets),
                ..base()
            },
            Case {
                name: "tampered body",
                body: br#"{"ok":false}"#,
                expected: Err(VerifyError::SignatureMismatch { secrets: 1 }),
                ..base()
            },
            Case {
                name: "tampered id",
                tamper: |h| set(h, HEADER_ID, "evt_other"),
                expected: Err(VerifyError::SignatureMismatch { secrets: 1 }),
                ..base()
            },
            Case {
                name: "id with a dot",
                tamper: |h| set(h, HEADER_ID, "evt.1"),
                expected: Err(VerifyError::InvalidId),
                ..base()
            },
            Case {
                name: "at the edge of the tolerance, old side",
                skew_secs: 300,
                ..base()
            },
            Case {
                name: "at the edge of the tolerance, future side",
                skew_secs: -300,
                ..base()
            },
            Case {
                name: "stale timestamp",
                skew_secs: 301,
                expected: Err(VerifyError::TimestampTooOld {
                    age_secs: 301,
                    tolerance_secs: 300,
                }),
                ..base()
            },
            Case {
                name: "future timestamp",
                skew_secs: -301,
                expected: Err(VerifyError::TimestampInFuture {
                    ahead_secs: 301,
                    tolerance_secs: 300,
                }),
                ..base()
            },
            Case {
                name: "timestamp not a number",
                tamper: |h| set(h, HEADER_TIMESTAMP, "soon"),
                expected: Err(VerifyError::InvalidTimestamp),
                ..base()
            },
            Case {
                name: "timestamp with sign",
                tamper: |h| set(h, HEADER_TIMESTAMP, "+1700000000"),
                expected: Err(VerifyError::InvalidTimestamp),
                ..base()
            },
            Case {
                name: "timestamp with leading zero",
                tamper: |h| set(h, HEADER_TIMESTAMP, "01700000000"),
                expected: Err(VerifyError::InvalidTimestamp),
                ..base()
            },
            Case {
                name: "missing signature header",
                tamper: |h| h.retain(|(n, _)| n != HEADER_SIGNATURE),
                expected: Err(VerifyError::MissingHeader(HEADER_SIGNATURE)),
                ..base()
            },
            Case {
                name: "missing id header",
                tamper: |h| h.retain(|(n, _)| n != HEADER_ID),
                expected: Err(VerifyError::MissingHeader(HEADER_ID)),
                ..base()
            },
            Case {
                name: "missing timestamp header",
                tamper: |h| h.retain(|(n, _)| n != HEADER_TIMESTAMP),
                expected: Err(VerifyError::MissingHeader(HEADER_TIMESTAMP)),
                ..base()
            },
            Case {
                name: "header names are case-insensitive",
                tamper: |h| h.iter_mut().for_each(|(n, _)| *n = n.to_ascii_uppercase()),
                ..base()
            },
            Case {
                name: "only an asymmetric signature",
                tamper: |h| set(h, HEADER_SIGNATURE, "v1a,aGVsbG8="),
                expected: Err(VerifyError::NoSupportedSignature),
                ..base()
            },
            Case {
                name: "garbage signature entries",
                tamper: |h| set(h, HEADER_SIGNATURE, "v1 nonsense v1,%%% ,"),
                expected: Err(VerifyError::NoSupportedSignature),
                ..base()
            },
            Case {
                name: "valid signature among unknown and invalid entries, extra spaces",
                tamper: |h| {
                    let good = h
                        .iter()
                        .find(|(n, _)| n == HEADER_SIGNATURE)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    let mixed = format!("v1a,aGVsbG8=  v1,AAAA   {good} v2,xyz");
                    set(h, HEADER_SIGNATURE, &mixed);
                },
                ..base()
            },
            Case {
                name: "signature with padding removed",
                tamper: |h| {
                    h.iter_mut()
                        .filter(|(n, _)| n == HEADER_SIGNATURE)
                        .for_each(|(_, v)| *v = v.trim_end_matches('=').to_owned());
                },
                ..base()
            },
            Case {
                name: "truncated signature",
                tamper: |h| {
                    h.iter_mut()
                        .filter(|(n, _)| n == HEADER_SIGNATURE)
                        .for_each(|(_, v)| *v = v[..v.len() - 8].to_owned());
                },
                expected: Err(VerifyError::SignatureMismatch { secrets: 1 }),
                ..base()
            },
        ];

        let signed_at: i64 = 1_700_000_000;
        for case in cases {
            let (current, previous) = case
                .sender
                .split_first()
                .expect("every case has a sender secret");
            let sent = headers(current, previous, "evt_1", signed_at, signed_body);
            let mut received: Vec<(String, String)> = sent
                .pairs()
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect();
            (case.tamper)(&mut received);
            let got = verify(
                &case.receiver,
                received,
                case.body,
                at(signed_at + case.skew_secs),
                DEFAULT_TOLERANCE,
            );
            assert_eq!(got, case.expected, "case: {}", case.name);
        }
    }

    #[test]
    fn verify_accepts_sender_headers_directly() {
        let secret = secret_of(9);
        let h = headers(&secret, &[], "evt_9", 1_700_000_000, b"body");
        let now = at(1_700_000_001);
        assert_eq!(
            verify(&[secret], h.pairs(), b"body", now, DEFAULT_TOLERANCE),
            Ok(())
        );
    }

    #[test]
    fn errors_say_which_check_failed() {
        let stale = VerifyError::TimestampTooOld {
            age_secs: 900,
            tolerance_secs: 300,
        };
        assert_eq!(
            stale.to_string(),
            "`webhook-timestamp` is 900 s old, more than the 300 s tolerance"
        );
        assert_eq!(
            VerifyError::MissingHeader(HEADER_SIGNATURE).to_string(),
            "missing `webhook-signature` header"
        );
    }
}
