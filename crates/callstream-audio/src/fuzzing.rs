//! The body of the `audio` fuzz target in `fuzz/` (cargo-fuzz): a content type as a client
//! announces it, then audio bytes as they arrive, through the framer and the transcoder. It
//! lives here so that the ordinary test suite replays the committed corpus
//! (`fuzz/corpus/audio/`) through the same code.

use crate::format::{Encoding, MediaFormat, SampleRate};
use crate::framer::Framer;
use crate::transcode::Transcoder;

/// `data` is `<content type>\0<audio bytes>`; must never panic.
pub fn audio(data: &[u8]) {
    let (head, bytes) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(content_type) = std::str::from_utf8(head) else {
        return;
    };
    let Ok(input) = MediaFormat::parse(content_type) else {
        return;
    };
    let outputs = [
        (Encoding::Mulaw, SampleRate::Hz8000),
        (Encoding::L16, SampleRate::Hz16000),
        (Encoding::L16, SampleRate::Hz8000),
    ];
    for (encoding, rate) in outputs {
        let Ok(output) = MediaFormat::new(encoding, rate) else {
            continue;
        };
        let Ok(mut framer) = Framer::new(input, 64 * 1024) else {
            return;
        };
        let mut transcoder = Transcoder::new(input, output);
        let mut out = Vec::new();
        // The bytes arrive in pieces of uneven size, as WebSocket messages do.
        for piece in bytes.chunks(97) {
            if framer.push(piece).is_err() {
                break;
            }
            while let Some(frame) = framer.next_frame() {
                let frame = frame.to_vec();
                let before = out.len();
                if let Ok(n) = transcoder.transcode(&frame, &mut out) {
                    assert_eq!(out.len() - before, n, "the count is what was appended");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn the_fuzz_corpus_replays_cleanly() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/audio");
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
            super::audio(&std::fs::read(entry.unwrap().path()).unwrap());
            inputs += 1;
        }
        assert!(inputs > 0, "the audio corpus is empty");
    }
}
