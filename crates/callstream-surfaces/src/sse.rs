//! Server-Sent Events framing (the `text/event-stream` format of the HTML standard).

use bytes::{BufMut, Bytes, BytesMut};

/// One SSE frame: optional `id:` and `event:` lines, then the data.
///
/// `data` must not contain a line break: JSON from `serde_json` never does (it escapes them),
/// and that is the only data callstream sends. Any stray line break is split into several
/// `data:` lines, which the SSE parser joins back with `\n`, so the frame is never corrupted.
pub fn frame(id: Option<u64>, event: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 48);
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id.to_string().as_bytes());
        out.put_u8(b'\n');
    }
    if let Some(event) = event {
        out.put_slice(b"event: ");
        out.put_slice(event.as_bytes());
        out.put_u8(b'\n');
    }
    for line in data.split(|b| *b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// A comment line: ignored by every SSE client, it keeps idle connections (and proxies) alive.
pub fn comment(text: &str) -> Bytes {
    Bytes::from(format!(": {text}\n\n"))
}

/// Parses a `Last-Event-ID` header value as a seq. Anything else (a peer's id format, garbage)
/// means "no resume point".
pub fn last_event_id(value: &str) -> Option<u64> {
    value.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let cases: &[(Option<u64>, Option<&str>, &str, &str)] = &[
            (Some(7), None, r#"{"a":1}"#, "id: 7\ndata: {\"a\":1}\n\n"),
            (None, Some("error"), "{}", "event: error\ndata: {}\n\n"),
            (None, None, "a\nb", "data: a\ndata: b\n\n"),
            (None, None, "a\r\nb", "data: a\ndata: b\n\n"),
        ];
        for (id, event, data, expect) in cases {
            assert_eq!(frame(*id, *event, data.as_bytes()), Bytes::from(*expect));
        }
        assert_eq!(comment("heartbeat"), Bytes::from(": heartbeat\n\n"));
    }

    #[test]
    fn last_event_ids() {
        assert_eq!(last_event_id(" 42 "), Some(42));
        assert_eq!(last_event_id("evt_1"), None);
        assert_eq!(last_event_id("-1"), None);
    }
}
