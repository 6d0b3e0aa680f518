//! Prefixed random identifiers (`call_…`, `ws_…`): the prefix says what an id names, so that an
//! id pasted in the wrong place is refused before any lookup.

use std::fmt;
use std::marker::PhantomData;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Number of random bytes in a minted id (96 bits: collisions are not a concern at any scale
/// callstream targets, and ids stay short enough for URLs and logs).
const RANDOM_BYTES: usize = 12;
/// The longest id accepted from outside; longer input is refused without allocation games.
const MAX_LEN: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("expected an id starting with `{0}`")]
    Prefix(&'static str),
    #[error("an id may only hold ASCII letters, digits, `_` and `-`, at most {MAX_LEN} characters")]
    Charset,
}

/// Fills `buf` from the operating system's CSPRNG.
///
/// # Panics
/// Only if the OS has no randomness source at all, in which case nothing safe can be done.
pub fn random_bytes(buf: &mut [u8]) {
    #[allow(clippy::expect_used)]
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

/// What kind of thing an [`Id`] names: its prefix.
pub trait Kind {
    const PREFIX: &'static str;
}

/// An identifier of one kind, e.g. `Id<CallKind>` printed as `call_5f1c…`.
pub struct Id<K: Kind> {
    text: String,
    kind: PhantomData<fn() -> K>,
}

impl<K: Kind> Id<K> {
    /// Mints a new random id.
    pub fn new() -> Self {
        // Ids are minted per event, so they come from the thread's ChaCha generator (seeded and
        // reseeded from the OS) rather than a getrandom syscall each: at 20k events/s the
        // syscall was 1.4 % of the server's CPU. Secrets (keys, tokens) use `random_bytes`.
        // Written into one allocation: `format!` with `hex::encode` (two strings and the
        // formatting machinery) was about 930 instructions per id under callgrind, and ingest
        // mints two per event.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bytes: [u8; RANDOM_BYTES] = rand::random();
        let mut text = String::with_capacity(K::PREFIX.len() + 2 * RANDOM_BYTES);
        text.push_str(K::PREFIX);
        for b in bytes {
            text.push(char::from(HEX[usize::from(b >> 4)]));
            text.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        Self {
            text,
            kind: PhantomData,
        }
    }

    /// Accepts an id from outside (a path, a body, the store).
    ///
    /// # Errors
    /// When the prefix is not this kind's or the rest holds unexpected characters.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let rest = text
            .strip_prefix(K::PREFIX)
            .ok_or(IdError::Prefix(K::PREFIX))?;
        let valid = !rest.is_empty()
            && text.len() <= MAX_LEN
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(IdError::Charset);
        }
        Ok(Self {
            text: text.to_owned(),
            kind: PhantomData,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl<K: Kind> Default for Id<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Kind> Clone for Id<K> {
    fn clone(&self) -> Self {
        Self {
            text: self.text.clone(),
            kind: PhantomData,
        }
    }
}

impl<K: Kind> PartialEq for Id<K> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl<K: Kind> Eq for Id<K> {}

impl<K: Kind> std::hash::Hash for Id<K> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl<K: Kind> fmt::Display for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<K: Kind> fmt::Debug for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<K: Kind> Serialize for Id<K> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de, K: Kind> Deserialize<'de> for Id<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

macro_rules! id_kinds {
    ($($(#[$doc:meta])* $alias:ident / $kind:ident = $prefix:literal;)*) => {$(
        #[derive(Debug)]
        pub enum $kind {}
        impl Kind for $kind {
            const PREFIX: &'static str = $prefix;
        }
        $(#[$doc])*
        pub type $alias = Id<$kind>;
    )*};
}

id_kinds! {
    /// A tenant. Everything else belongs to exactly one workspace.
    WorkspaceId / WorkspaceKind = "ws_";
    /// One live or finished phone/WebRTC call.
    CallId / CallKind = "call_";
    /// One messaging conversation (SMS or WhatsApp).
    ConversationId / ConversationKind = "conv_";
    /// One event envelope; also the webhook message id.
    EventId / EventKind = "evt_";
    /// One transcript turn: partials and the final share it.
    TurnId / TurnKind = "trn_";
    /// One API or runtime key (the id, not the secret).
    KeyId / KeyIdKind = "key_";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_parse_back_and_differ() {
        let a = CallId::new();
        let b = CallId::new();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("call_"));
        assert_eq!(CallId::parse(a.as_str()).unwrap(), a);
        // The prefix, then 12 random bytes as 24 lowercase hex digits.
        let rest = &a.as_str()["call_".len()..];
        assert_eq!(rest.len(), 24, "{a}");
        assert!(
            rest.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{a}"
        );
    }

    #[test]
    fn parse_refuses_wrong_prefix_and_charset() {
        let cases: &[(&str, Option<IdError>)] = &[
            ("call_abc123", None),
            ("call_ABC-def_9", None),
            ("conv_abc", Some(IdError::Prefix("call_"))),
            ("call_", Some(IdError::Charset)),
            ("call_a/b", Some(IdError::Charset)),
            ("call_é", Some(IdError::Charset)),
        ];
        for (input, expect) in cases {
            assert_eq!(CallId::parse(input).err(), *expect, "{input}");
        }
        let long = format!("call_{}", "a".repeat(MAX_LEN));
        assert_eq!(CallId::parse(&long).err(), Some(IdError::Charset));
    }
}
