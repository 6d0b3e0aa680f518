//! The send timestamp every benchmark event carries, and finding it again in whatever bytes a
//! server delivers (SSE frames, chunked bodies, WebSocket text): `~ts:<unix nanos>~`.
//! Publisher and subscribers run on the same machine, so one clock serves both.

use std::time::{SystemTime, UNIX_EPOCH};

const OPEN: &[u8] = b"~ts:";

pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A marker for "now", and the time it carries.
pub fn stamp() -> (String, u64) {
    let now = now_nanos();
    (format!("~ts:{now}~"), now)
}

/// Scans a byte stream for markers, across reads of any size.
#[derive(Default)]
pub struct Scanner {
    /// The end of the previous read that may hold the start of a marker.
    carry: Vec<u8>,
}

/// The longest marker: the prefix, 20 digits, the close.
const MAX_MARKER: usize = 4 + 20 + 1;

impl Scanner {
    /// Calls `found` with each timestamp that completes in `chunk`.
    pub fn feed(&mut self, chunk: &[u8], mut found: impl FnMut(u64)) {
        let joined;
        let data: &[u8] = if self.carry.is_empty() {
            chunk
        } else {
            let mut j = std::mem::take(&mut self.carry);
            j.extend_from_slice(chunk);
            joined = j;
            &joined
        };
        let mut i = 0;
        let mut last_open = None;
        while let Some(pos) = find(&data[i..], OPEN) {
            let start = i + pos;
            let digits_at = start + OPEN.len();
            let mut end = digits_at;
            while end < data.len() && data[end].is_ascii_digit() {
                end += 1;
            }
            if end == data.len() {
                last_open = Some(start);
                break;
            }
            if data[end] == b'~'
                && end > digits_at
                && let Some(ts) = std::str::from_utf8(&data[digits_at..end])
                    .ok()
                    .and_then(|t| t.parse().ok())
            {
                found(ts);
            }
            i = end;
        }
        // Keep what could be the start of a marker cut by the read boundary.
        let keep_from = last_open.unwrap_or_else(|| data.len().saturating_sub(OPEN.len() - 1));
        if data.len() - keep_from <= MAX_MARKER {
            self.carry = data[keep_from..].to_vec();
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Vec<u64> {
        let mut s = Scanner::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |t| out.push(t));
        }
        out
    }

    #[test]
    fn finds_markers_whatever_the_read_boundaries() {
        let text = b"data: {\"text\":\"~ts:123~\"}\n\ndata: {\"text\":\"~ts:4567~\"}\n\n";
        assert_eq!(scan(&[text]), [123, 4567]);
        for cut in 1..text.len() {
            assert_eq!(
                scan(&[&text[..cut], &text[cut..]]),
                [123, 4567],
                "cut at {cut}"
            );
        }
        assert_eq!(scan(&[b"~ts:~ ~ts:12x~ ~ts:9~"]), [9]);
    }
}
