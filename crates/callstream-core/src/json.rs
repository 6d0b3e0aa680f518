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
    /// What was wrong, for a person: serde_json's message without its parser position or a
    /// repeat of the field's name (see [`message`]).
    pub fn message(&self) -> String {
        message(&self.error, &self.path)
    }

    /// Whether the text is not JSON at all (rather than JSON of the wrong shape).
    pub fn is_syntax(&self) -> bool {
        self.error.is_syntax() || self.error.is_eof()
    }
}

/// serde_json's message for a value refused at `path`, without its parser position (`at line 1
/// column 49` counts within whatever text was parsed, often a payload nested in a body, and means
/// nothing to the reader once the path names the field) and without the field's name when the
/// message starts with it (`phone: expected E.164` under `body.phone`).
pub fn message(error: &serde_json::Error, path: &str) -> String {
    let mut text = error.to_string();
    if error.line() > 0 {
        let position = format!(" at line {} column {}", error.line(), error.column());
        if let Some(bare) = text.strip_suffix(&position) {
            text = bare.to_owned();
        }
    }
    let field = path.rsplit('.').next().unwrap_or_default();
    if !field.is_empty()
        && let Some(rest) = text.strip_prefix(field).and_then(|r| r.strip_prefix(": "))
    {
        text = rest.to_owned();
    }
    text
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

/// A JSON value whose objects, at every depth, name each key once. serde_json keeps the last of
/// a repeated key, while the text carried verbatim keeps both, and readers of it disagree on
/// which one counts; payloads kept verbatim are therefore refused when a key repeats.
pub struct StrictValue(pub serde_json::Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Self)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "the key `{}` appears twice in one object",
                    key.escape_debug()
                )));
            }
            let StrictValue(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(serde_json::Value::Object(object))
    }
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
