//! Server-Sent Events framing (the `text/event-stream` format of the HTML standard).

use bytes::{BufMut, Bytes, BytesMut};

/// One SSE frame: optional `id:` and `event:` lines, then the data.
///
/// `data` must not contain a line break: JSON from `serde_json` never does (it escapes them),
/// and that is the only data callstream sends. Any stray line break is split into several
/// `data:` lines, which the SSE parser joins back with `\n`, so the frame is never corrupted.
pub fn frame(id: Option<u64>, event: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 48);
    head(&mut out, id, event);
    // JSON never holds a line break: one `data:` line, found with a word-at-a-time search
    // rather than a byte-at-a-time split (under callgrind the split was most of this function's
    // cost, which is paid once per event and surface).
    if data.contains(&b'\n') {
        for line in data.split(|b| *b == b'\n') {
            out.put_slice(b"data: ");
            out.put_slice(line.strip_suffix(b"\r").unwrap_or(line));
            out.put_u8(b'\n');
        }
    } else {
        out.put_slice(b"data: ");
        out.put_slice(data.strip_suffix(b"\r").unwrap_or(data));
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// One SSE frame whose data is `value` as JSON, serialised straight into the frame (one buffer,
/// one `data:` line: `serde_json` escapes every line break). Serialising into a `Vec` of its
/// own and copying that into the frame grew and copied the text several times. The buffer is
/// a `Vec`, not a `BytesMut`: serde_json writes in many small pieces, and through
/// `BytesMut`'s writer each piece cost about three times as much (callgrind, per event).
pub fn json_frame<T: serde::Serialize>(id: Option<u64>, event: Option<&str>, value: &T) -> Bytes {
    let mut out = Vec::with_capacity(384);
    head(&mut out, id, event);
    out.extend_from_slice(b"data: ");
    // Plain structs with string keys always serialise; were one to fail, its data would be
    // cut short, so send an empty object rather than a fragment.
    if serde_json::to_writer(&mut out, value).is_err() {
        out.clear();
        head(&mut out, id, event);
        out.extend_from_slice(b"data: {}");
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// [`json_frame`] for a value that may carry JSON text as it arrived from outside (a payload kept
/// verbatim), which may hold line breaks between its tokens: a line break inside `data:` would
/// end the field, and a blank line the whole event, leaving a client a fragment. Each line goes
/// into a `data:` line of its own, which every SSE client joins back with `\n`: the same JSON.
/// (JSON strings cannot hold a raw line break, so only whitespace between tokens is split.)
pub fn json_frame_verbatim<T: serde::Serialize>(
    id: Option<u64>,
    event: Option<&str>,
    value: &T,
) -> Bytes {
    let frame = json_frame(id, event, value);
    let Some(start) = find(&frame, b"data: ") else {
        return frame;
    };
    let data = &frame[start + 6..frame.len() - 2];
    if !data.iter().any(|b| matches!(b, b'\n' | b'\r')) {
        return frame;
    }
    let mut out = Vec::with_capacity(frame.len() + 64);
    out.extend_from_slice(&frame[..start]);
    let mut rest = data;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|b| matches!(b, b'\n' | b'\r'))
            .unwrap_or(rest.len());
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest[..end]);
        out.push(b'\n');
        // A CRLF is one line break.
        let skip = match rest.get(end..end + 2) {
            Some(b"\r\n") => 2,
            _ => 1,
        };
        rest = rest.get(end + skip..).unwrap_or_default();
    }
    out.push(b'\n');
    Bytes::from(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn head(out: &mut impl BufMut, id: Option<u64>, event: Option<&str>) {
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(itoa::Buffer::new().format(id).as_bytes());
        out.put_u8(b'\n');
    }
    if let Some(event) = event {
        out.put_slice(b"event: ");
        out.put_slice(event.as_bytes());
        out.put_u8(b'\n');
    }
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
    fn json_frames_match_frames_of_the_same_json() {
        #[derive(serde::Serialize)]
        struct Data<'a> {
            text: &'a str,
            n: u32,
        }
        let long = "x".repeat(1000);
        for (id, event, text) in [
            (Some(7), None, "a line\nbreak and a \r"),
            (None, Some("error"), ""),
            (Some(u64::MAX), Some("e"), long.as_str()),
        ] {
            let value = Data { text, n: 3 };
            let json = serde_json::to_vec(&value).unwrap();
            assert_eq!(json_frame(id, event, &value), frame(id, event, &json));
        }
    }

    #[test]
    fn last_event_ids() {
        assert_eq!(last_event_id(" 42 "), Some(42));
        assert_eq!(last_event_id("evt_1"), None);
        assert_eq!(last_event_id("-1"), None);
    }
}
