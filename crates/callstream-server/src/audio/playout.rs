//! The play-out queue of a bidirectional stream: audio a service sent, already in the call's
//! format and cut into 20 ms frames, waiting for its turn to be played into the call, with the
//! service's checkpoints between the frames.
//!
//! Pure state, driven by the stream's pacer: [`Playout::next_frame`] hands out one frame per
//! tick, and a checkpoint is reached once every frame queued before it has finished playing
//! ([`Playout::reached`]). [`Playout::clear`] drops everything at once, checkpoints included:
//! those are never reached, so never answered (as Plivo and Vobiz do; Twilio answers them).
//!
//! The queue is bounded ([`Playout::new`]'s `max_frames`): audio beyond it is dropped and
//! counted, and the fill level crossing 30, 60 and 90 % of the bound is reported once per
//! crossing (`DegradedStream`), again only after it fell back below.

use std::collections::VecDeque;

use bytes::Bytes;
use callstream_audio::MediaFormat;

/// Fill levels reported as they are crossed, in percent of the bound.
pub const DEGRADED_LEVELS: [u8; 3] = [30, 60, 90];

/// What one push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Whole frames queued.
    pub queued: usize,
    /// Whole frames dropped because the queue was full.
    pub dropped: usize,
    /// Levels of [`DEGRADED_LEVELS`] crossed upward by this push.
    pub degraded: Vec<u8>,
}

/// What a clear dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cleared {
    pub frames: usize,
    pub checkpoints: usize,
}

#[derive(Debug)]
pub struct Playout {
    frame_len: usize,
    silence: u8,
    frames: VecDeque<Bytes>,
    /// Less than a frame, waiting for more audio (or for a checkpoint to pad it out).
    remainder: Vec<u8>,
    /// `(position, name)`: reached once `position` frames have finished playing.
    checkpoints: VecDeque<(u64, String)>,
    /// Frames ever queued: the next frame's position.
    queued: u64,
    /// Frames ever handed out to be played.
    handed: u64,
    max_frames: usize,
    /// Whether each level of [`DEGRADED_LEVELS`] may be reported again.
    armed: [bool; 3],
}

impl Playout {
    /// An empty queue of `format` frames holding at most `max_frames` (at least one).
    pub fn new(format: MediaFormat, max_frames: usize) -> Self {
        Self {
            frame_len: format.bytes_per_frame(),
            silence: format.encoding().silence_byte(),
            frames: VecDeque::new(),
            remainder: Vec::new(),
            checkpoints: VecDeque::new(),
            queued: 0,
            handed: 0,
            max_frames: max_frames.max(1),
            armed: [true; 3],
        }
    }

    /// Appends audio (in the queue's format): whole frames join the queue, a rest waits.
    pub fn push(&mut self, mut audio: &[u8]) -> Pushed {
        let mut pushed = Pushed::default();
        if !self.remainder.is_empty() {
            let need = self.frame_len - self.remainder.len();
            let take = need.min(audio.len());
            self.remainder.extend_from_slice(&audio[..take]);
            audio = &audio[take..];
            if self.remainder.len() == self.frame_len {
                let frame = Bytes::from(std::mem::take(&mut self.remainder));
                self.enqueue(frame, &mut pushed);
            }
        }
        let mut frames = audio.chunks_exact(self.frame_len);
        for frame in &mut frames {
            self.enqueue(Bytes::copy_from_slice(frame), &mut pushed);
        }
        self.remainder.extend_from_slice(frames.remainder());
        pushed.degraded = self.crossed();
        pushed
    }

    fn enqueue(&mut self, frame: Bytes, pushed: &mut Pushed) {
        if self.frames.len() >= self.max_frames {
            pushed.dropped += 1;
            return;
        }
        self.frames.push_back(frame);
        self.queued += 1;
        pushed.queued += 1;
    }

    /// Pads a waiting rest out to a whole frame with silence and queues it: at a checkpoint, or
    /// when no more audio came for a while. `true` if there was one.
    pub fn flush_remainder(&mut self) -> bool {
        if self.remainder.is_empty() {
            return false;
        }
        let mut frame = std::mem::take(&mut self.remainder);
        frame.resize(self.frame_len, self.silence);
        let mut pushed = Pushed::default();
        self.enqueue(Bytes::from(frame), &mut pushed);
        true
    }

    /// Marks this point of the audio: `name` is reached when everything queued so far has
    /// played.
    pub fn checkpoint(&mut self, name: String) {
        self.flush_remainder();
        self.checkpoints.push_back((self.queued, name));
    }

    /// Drops everything queued, checkpoints included.
    pub fn clear(&mut self) -> Cleared {
        let cleared = Cleared {
            frames: self.frames.len() + usize::from(!self.remainder.is_empty()),
            checkpoints: self.checkpoints.len(),
        };
        self.frames.clear();
        self.remainder.clear();
        self.checkpoints.clear();
        // What was queued and never handed out will never play: positions continue from what
        // was handed out.
        self.queued = self.handed;
        self.armed = [true; 3];
        cleared
    }

    /// The next frame to play, if one is queued.
    pub fn next_frame(&mut self) -> Option<Bytes> {
        let frame = self.frames.pop_front()?;
        self.handed += 1;
        // Re-arm the levels the queue fell below.
        let percent = self.percent();
        for (armed, level) in self.armed.iter_mut().zip(DEGRADED_LEVELS) {
            if percent < usize::from(level) {
                *armed = true;
            }
        }
        Some(frame)
    }

    /// The checkpoints reached once `finished` frames have finished playing, in order.
    pub fn reached(&mut self, finished: u64) -> Vec<String> {
        let mut names = Vec::new();
        while let Some((position, _)) = self.checkpoints.front() {
            if *position > finished {
                break;
            }
            if let Some((_, name)) = self.checkpoints.pop_front() {
                names.push(name);
            }
        }
        names
    }

    /// Frames handed out so far.
    pub fn handed(&self) -> u64 {
        self.handed
    }

    /// Whole frames waiting.
    pub fn queued_frames(&self) -> usize {
        self.frames.len()
    }

    /// Whether a rest of less than a frame waits.
    pub fn has_remainder(&self) -> bool {
        !self.remainder.is_empty()
    }

    /// Whether checkpoints wait.
    pub fn has_checkpoints(&self) -> bool {
        !self.checkpoints.is_empty()
    }

    fn percent(&self) -> usize {
        self.frames.len() * 100 / self.max_frames
    }

    fn crossed(&mut self) -> Vec<u8> {
        let percent = self.percent();
        let mut crossed = Vec::new();
        for (armed, level) in self.armed.iter_mut().zip(DEGRADED_LEVELS) {
            if *armed && percent >= usize::from(level) {
                *armed = false;
                crossed.push(level);
            }
        }
        crossed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn playout(max: usize) -> Playout {
        Playout::new(MediaFormat::MULAW_8K, max)
    }

    #[test]
    fn audio_is_cut_into_frames_and_rests_wait_or_are_padded_with_silence() {
        let mut p = playout(100);
        let pushed = p.push(&[1u8; 400]);
        assert_eq!((pushed.queued, pushed.dropped), (2, 0));
        assert!(p.has_remainder());
        let pushed = p.push(&[2u8; 100]);
        assert_eq!(pushed.queued, 1, "the rest and the new audio make a frame");
        let third = {
            p.next_frame();
            p.next_frame();
            p.next_frame().unwrap()
        };
        assert_eq!(&third[..80], &[1u8; 80][..]);
        assert_eq!(&third[80..], &[2u8; 80][..]);
        // 20 bytes wait; a checkpoint pads them with mu-law silence (0xFF), not with 0 (loud).
        p.checkpoint("end".into());
        let padded = p.next_frame().unwrap();
        assert_eq!(&padded[..20], &[2u8; 20][..]);
        assert!(padded[20..].iter().all(|b| *b == 0xff));
        assert!(p.next_frame().is_none());
    }

    #[test]
    fn a_checkpoint_is_reached_when_everything_before_it_has_played() {
        let mut p = playout(100);
        p.push(&[0u8; 160 * 3]);
        p.checkpoint("a".into());
        p.push(&[0u8; 160]);
        p.checkpoint("b".into());
        assert!(p.reached(0).is_empty());
        for _ in 0..3 {
            p.next_frame();
        }
        // Three frames handed out, but only two have finished playing.
        assert!(p.reached(2).is_empty());
        assert_eq!(p.reached(3), ["a"]);
        p.next_frame();
        assert_eq!(p.reached(4), ["b"]);
        assert!(!p.has_checkpoints());
        // A checkpoint with nothing queued is reached as soon as what was handed out played.
        p.checkpoint("c".into());
        assert_eq!(p.reached(p.handed()), ["c"]);
    }

    #[test]
    fn clear_drops_audio_and_checkpoints_which_are_never_reached() {
        let mut p = playout(100);
        p.push(&[0u8; 160 * 10 + 7]);
        p.checkpoint("lost".into());
        p.next_frame();
        assert_eq!(
            p.clear(),
            Cleared {
                frames: 10,
                checkpoints: 1
            }
        );
        assert!(p.next_frame().is_none());
        assert!(p.reached(u64::MAX).is_empty());
        // New audio after the clear: its checkpoint counts from what was actually handed out.
        p.push(&[0u8; 160]);
        p.checkpoint("new".into());
        assert!(p.reached(1).is_empty());
        p.next_frame();
        assert_eq!(p.reached(2), ["new"]);
    }

    #[test]
    fn the_bound_drops_excess_and_levels_are_reported_once_per_crossing() {
        let mut p = playout(10);
        let pushed = p.push(&[0u8; 160 * 3]);
        assert_eq!(pushed.degraded, [30]);
        let pushed = p.push(&[0u8; 160 * 9]);
        assert_eq!((pushed.queued, pushed.dropped), (7, 2));
        assert_eq!(pushed.degraded, [60, 90]);
        // Still above every level: nothing new.
        assert!(p.push(&[0u8; 160]).degraded.is_empty());
        // Down to 5 frames (below 60 and 90), then up again: 60 and 90 are reported again.
        for _ in 0..5 {
            p.next_frame();
        }
        let pushed = p.push(&[0u8; 160 * 5]);
        assert_eq!(pushed.degraded, [60, 90]);
        assert_eq!(p.queued_frames(), 10);
    }
}
