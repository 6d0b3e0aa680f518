//! Decoding JSON from outside so that a refusal names the failing field (`payload.text`).
//!
//! `serde_path_to_error` knows the path because it copies every key it passes into a `String`;
//! on ingest's hot path that bookkeeping cost more than the decoding itself (criterion,
//! `cargo bench -p callstream-server --bench ingest`, see docs/benchmarks.md). So the text is
//! decoded plainly first, and only text that is refused is decoded again, tracked, to name the
//! field. Both passes refuse trailing characters.

use serde::Deserialize;

/// A refusal: the path of the failing field (`.` at the root, `events[2].payload` inside) and
/// serde_json's own message.
#[derive(Debug)]
pub struct Refused {
    pub path: String,
    pub error: serde_json::Error,
}

impl Refused {
    /// Whether the text is not JSON at all (rather than JSON of the wrong shape).
    pub fn is_syntax(&self) -> bool {
        self.error.is_syntax() || self.error.is_eof()
    }
}

/// Decodes `T` from JSON text.
///
/// # Errors
/// [`Refused`] naming the first failing field.
pub fn from_str<'a, T: Deserialize<'a>>(json: &'a str) -> Result<T, Refused> {
    serde_json::from_str(json).or_else(|_| tracked(serde_json::Deserializer::from_str(json)))
}

/// [`from_str`] for bytes (a request body).
///
/// # Errors
/// [`Refused`] naming the first failing field.
pub fn from_slice<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Result<T, Refused> {
    serde_json::from_slice(json).or_else(|_| tracked(serde_json::Deserializer::from_slice(json)))
}

fn tracked<'a, R: serde_json::de::Read<'a>, T: Deserialize<'a>>(
    mut de: serde_json::Deserializer<R>,
) -> Result<T, Refused> {
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| Refused {
        path: e.path().to_string(),
        error: e.into_inner(),
    })?;
    de.end().map_err(|error| Refused {
        path: ".".to_owned(),
        error,
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        items: Vec<Inner>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        n: u8,
    }

    #[test]
    fn refusals_name_the_field_and_good_text_decodes() {
        assert_eq!(
            from_str::<Outer>(r#"{"items":[{"n":1}]}"#).unwrap(),
            Outer {
                items: vec![Inner { n: 1 }]
            }
        );
        for (text, path, syntax) in [
            (r#"{"items":[{"n":1},{"n":300}]}"#, "items[1].n", false),
            (r#"{"items":[{"n":1,"m":2}]}"#, "items[0].m", false),
            (r#"{"items":5}"#, "items", false),
            (r#"{"items":[]} x"#, ".", true),
            (r#"{"items":["#, "items", true),
        ] {
            for refused in [
                from_str::<Outer>(text).unwrap_err(),
                from_slice::<Outer>(text.as_bytes()).unwrap_err(),
            ] {
                assert_eq!(refused.path, path, "{text}: {refused:?}");
                assert_eq!(refused.is_syntax(), syntax, "{text}: {refused:?}");
            }
        }
    }
}
