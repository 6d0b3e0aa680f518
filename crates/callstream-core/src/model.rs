//! Workspaces, keys, calls and conversations: the records callstream keeps.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::id::{CallId, ConversationId, WorkspaceId};
use crate::time;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("phone: expected E.164, a `+` then 2 to 15 digits with no leading zero (got {0:?})")]
    Phone(String),
}

/// A tenant. `auth_id` is the account id that the Plivo-style audio stream API puts in its
/// paths (`/v1/Account/{auth_id}/…`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    pub id: WorkspaceId,
    pub name: String,
    pub auth_id: String,
    #[serde(with = "time::millis")]
    pub created_at: DateTime<Utc>,
}

impl Workspace {
    /// Mints an `auth_id` in the Plivo style: `MA` followed by 18 upper-case letters and digits.
    pub fn new_auth_id() -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let mut bytes = [0u8; 18];
        crate::id::random_bytes(&mut bytes);
        let mut out = String::from("MA");
        // 36 does not divide 256, so a plain modulo is slightly biased; the auth id is an
        // account label, not a secret, so that bias is harmless.
        out.extend(
            bytes
                .iter()
                .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char),
        );
        out
    }
}

/// What a key may do. The secret's prefix says its kind, so a key pasted in the wrong place is
/// refused before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// `pk_live_…`: read streams, read calls, control calls. Held by the platform's customers.
    Api,
    /// `rk_live_…`: ingest calls and events, receive commands. Held by the call runtime.
    Runtime,
}

impl KeyKind {
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::Api => "pk_live_",
            Self::Runtime => "rk_live_",
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Runtime => "runtime",
        }
    }

    /// The kind a presented secret claims by its prefix, if any.
    pub fn of_secret(secret: &str) -> Option<Self> {
        [Self::Api, Self::Runtime]
            .into_iter()
            .find(|k| secret.starts_with(k.prefix()))
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Api, Self::Runtime]
            .into_iter()
            .find(|k| k.as_str() == text)
    }
}

/// A phone number in E.164 (`+14155550123`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Phone(String);

impl Phone {
    /// # Errors
    /// When the text is not E.164.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let digits = text.strip_prefix('+').unwrap_or("");
        let valid = (2..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(ModelError::Phone(text.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Phone {
    type Error = ModelError;
    fn try_from(text: String) -> Result<Self, ModelError> {
        Self::parse(&text)
    }
}

impl From<Phone> for String {
    fn from(p: Phone) -> String {
        p.0
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        // utoipa does not see a `$text` inside `serde(rename)` here (it reaches the derive in an
        // invisible group), so the schema is told the name again.
        pub enum $name { $($(#[$vdoc])* #[serde(rename = $text)] #[schema(rename = $text)] $variant),* }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant),*];

            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),* }
            }

            pub fn parse(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == text)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// Who placed the call.
    Direction { Inbound = "inbound", Outbound = "outbound" }
}

text_enum! {
    /// How the call reaches the runtime. Barge-in exists only on phone transports.
    Transport { Sip = "sip", Esl = "esl", Webrtc = "webrtc" }
}

impl Transport {
    /// Phone transports (SIP, FreeSWITCH ESL) report barge-in; WebRTC browser calls never do.
    pub const fn is_phone(self) -> bool {
        matches!(self, Self::Sip | Self::Esl)
    }
}

text_enum! {
    /// Where a call is in its life. `in_progress` until `call.completed` or `call.failed`.
    CallStatus { InProgress = "in_progress", Completed = "completed", Failed = "failed" }
}

impl CallStatus {
    pub const fn is_active(self) -> bool {
        matches!(self, Self::InProgress)
    }
}

text_enum! {
    /// A messaging conversation's channel.
    Channel { Sms = "sms", Whatsapp = "whatsapp" }
}

text_enum! {
    /// Who answers a conversation: the AI agent or a human operator after a handoff.
    ConversationMode { Ai = "ai", Human = "human" }
}

/// One call, as the call log shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Call {
    #[schema(value_type = String, pattern = "^call_", example = "call_4bfd2a0c9e1f7b3a6d5c8e21")]
    pub id: CallId,
    #[schema(value_type = String, pattern = "^ws_", example = "ws_0a1b2c3d4e5f60718293a4b5")]
    pub workspace_id: WorkspaceId,
    /// E.164.
    #[schema(value_type = String, example = "+14155550123")]
    pub phone: Phone,
    pub direction: Direction,
    pub transport: Transport,
    /// The runtime's own id for the call, e.g. a Twilio Call SID.
    #[schema(required = true)]
    pub external_id: Option<String>,
    pub status: CallStatus,
    /// Opaque token that opens the live-call control socket for this call.
    pub live_conversation_token: String,
    #[serde(with = "time::millis")]
    pub started_at: DateTime<Utc>,
    #[serde(with = "time::millis_opt")]
    #[schema(required = true)]
    pub ended_at: Option<DateTime<Utc>>,
    /// Why the call ended: its `call.failed` reason, or its `call.completed` reason when it gave
    /// one (`None` while it is live).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// The seq of the last event published for this call (0 before any).
    pub last_seq: u64,
    /// How the call's screening phase ended; `None` while the call is still being screened
    /// (every call starts in its screening phase) or had none.
    #[schema(required = true)]
    pub screening: Option<Screening>,
}

/// The end of a call's screening phase, from its `call.screening_ended` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Screening {
    #[serde(with = "time::millis")]
    pub ended_at: DateTime<Utc>,
    pub msg: String,
}

impl Call {
    /// Mints a live conversation token: 32 random bytes, hex. It is a capability for one call,
    /// so it is as long as an API key.
    pub fn new_live_conversation_token() -> String {
        let mut bytes = [0u8; 32];
        crate::id::random_bytes(&mut bytes);
        format!("lct_{}", hex::encode(bytes))
    }
}

/// One messaging conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Conversation {
    #[schema(value_type = String, pattern = "^conv_", example = "conv_9c1e5a7b3d2f4e6a8b0c1d2e")]
    pub id: ConversationId,
    #[schema(value_type = String, pattern = "^ws_", example = "ws_0a1b2c3d4e5f60718293a4b5")]
    pub workspace_id: WorkspaceId,
    pub channel: Channel,
    pub participants: Vec<String>,
    pub mode: ConversationMode,
    #[serde(with = "time::millis")]
    pub created_at: DateTime<Utc>,
    pub last_seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_accepts_e164_only() {
        let cases = [
            ("+14155550123", true),
            ("+44", true),
            ("+4", false),
            ("14155550123", false),
            ("+04155550123", false),
            ("+1415555012345678", false),
            ("+1 415 555", false),
            ("", false),
        ];
        for (input, ok) in cases {
            assert_eq!(Phone::parse(input).is_ok(), ok, "{input}");
        }
    }

    #[test]
    fn key_kind_from_secret_prefix() {
        assert_eq!(KeyKind::of_secret("pk_live_abc"), Some(KeyKind::Api));
        assert_eq!(KeyKind::of_secret("rk_live_abc"), Some(KeyKind::Runtime));
        assert_eq!(KeyKind::of_secret("sk_live_abc"), None);
    }

    #[test]
    fn auth_id_shape() {
        let a = Workspace::new_auth_id();
        assert_eq!(a.len(), 20);
        assert!(a.starts_with("MA"));
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        );
    }

    #[test]
    fn enums_round_trip_text() {
        for t in Transport::ALL {
            assert_eq!(Transport::parse(t.as_str()), Some(*t));
        }
        assert_eq!(Transport::parse("pstn"), None);
        assert!(
            Transport::Sip.is_phone() && Transport::Esl.is_phone() && !Transport::Webrtc.is_phone()
        );
    }
}
