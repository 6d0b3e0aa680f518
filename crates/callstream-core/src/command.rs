//! Commands: what a customer asks of a live call, travelling back to the call runtime.

use serde::{Deserialize, Serialize};

/// The longest DTMF string one command may carry.
pub const MAX_DTMF_DIGITS: usize = 32;

/// The longest user id a join may name.
pub const MAX_USER_ID: usize = 128;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("digits must be 1 to {MAX_DTMF_DIGITS} of 0-9, *, #, A-D (got {0:?})")]
    InvalidDigits(String),
    #[error("user_id must be 1 to {MAX_USER_ID} printable characters")]
    InvalidUserId,
}

/// Checks a DTMF digit string.
///
/// # Errors
/// When it is empty, too long or holds a character that is not a DTMF key.
pub fn check_dtmf(digits: &str) -> Result<(), CommandError> {
    let ok = !digits.is_empty()
        && digits.len() <= MAX_DTMF_DIGITS
        && digits
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'*' | b'#' | b'A'..=b'D'));
    if ok {
        Ok(())
    } else {
        Err(CommandError::InvalidDigits(digits.to_owned()))
    }
}

/// A command for one live call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Hang up.
    EndCall,
    /// Play DTMF tones into the call.
    SendDtmf { digits: String },
    /// Transfer the call to a user (a human operator joins).
    JoinCall { user_id: String },
}

impl Command {
    /// # Errors
    /// When a field's value is not acceptable (e.g. DTMF digits).
    pub fn validate(&self) -> Result<(), CommandError> {
        match self {
            Self::SendDtmf { digits } => check_dtmf(digits),
            Self::JoinCall { user_id } => {
                let ok = !user_id.is_empty()
                    && user_id.len() <= MAX_USER_ID
                    && !user_id.chars().any(char::is_control);
                if ok {
                    Ok(())
                } else {
                    Err(CommandError::InvalidUserId)
                }
            }
            Self::EndCall => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtmf_digits() {
        for (d, ok) in [
            ("123", true),
            ("*#AD", true),
            ("", false),
            ("12e", false),
            ("a", false),
        ] {
            assert_eq!(check_dtmf(d).is_ok(), ok, "{d}");
        }
        assert!(check_dtmf(&"1".repeat(33)).is_err());
        for (user, ok) in [("usr_1", true), ("", false), ("a\nb", false)] {
            assert_eq!(
                Command::JoinCall {
                    user_id: user.into()
                }
                .validate()
                .is_ok(),
                ok,
                "{user:?}"
            );
        }
        assert!(
            Command::JoinCall {
                user_id: "x".repeat(129)
            }
            .validate()
            .is_err()
        );
    }
}
