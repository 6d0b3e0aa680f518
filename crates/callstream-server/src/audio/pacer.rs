//! The 20 ms beat of an audio stream, kept by absolute deadlines.
//!
//! Tick `n` is due at `origin + n × 20 ms`, whatever happened before: a pacer that sleeps 20 ms
//! after each frame drifts by every wake-up's lateness, and one that sleeps less to compensate
//! drifts the other way (one measured 2.9 s per minute). A tick that wakes late sends what is
//! due, but at most [`MAX_BURST`] ticks' worth at once: after a long stall (a suspended VM, a
//! debugger) the missed ticks are skipped rather than sent as a burst the listener would hear as
//! stutter.

use std::time::Duration;

use tokio::time::Instant;

/// The length of one frame.
pub const PERIOD: Duration = Duration::from_millis(20);
/// The most ticks one late wake-up catches up.
pub const MAX_BURST: u64 = 3;

/// What a wake-up owes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// Ticks to run now, 0 to [`MAX_BURST`].
    pub ticks: u64,
    /// Ticks given up because the wake-up was later than [`MAX_BURST`] ticks.
    pub skipped: u64,
}

/// Absolute-deadline ticks.
#[derive(Debug, Clone)]
pub struct Pacer {
    origin: Instant,
    /// The index of the next tick to run.
    next: u64,
}

impl Pacer {
    /// Ticks from `origin` on (the first is due at `origin`).
    pub fn new(origin: Instant) -> Self {
        Self { origin, next: 0 }
    }

    /// When the next tick is due.
    pub fn deadline(&self) -> Instant {
        self.origin + tick_offset(self.next)
    }

    /// The ticks due at `now`, which the caller then runs; the pacer moves past them.
    pub fn due(&mut self, now: Instant) -> Due {
        if now < self.deadline() {
            return Due {
                ticks: 0,
                skipped: 0,
            };
        }
        let elapsed = now.duration_since(self.origin);
        // Every tick up to and including the one whose deadline has passed.
        let reached = u64::try_from(elapsed.as_nanos() / PERIOD.as_nanos()).unwrap_or(u64::MAX);
        let owed = reached.saturating_sub(self.next).saturating_add(1);
        let ticks = owed.min(MAX_BURST);
        let skipped = owed - ticks;
        self.next = reached.saturating_add(1);
        Due { ticks, skipped }
    }

    /// Starts the beat again at `origin` (to line it up with audio that arrives on a beat of its
    /// own).
    pub fn realign(&mut self, origin: Instant) {
        self.origin = origin;
        self.next = 0;
    }
}

fn tick_offset(n: u64) -> Duration {
    // u32 ticks of 20 ms cover 2.7 years; a stream ends long before.
    PERIOD * u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_are_absolute_and_lateness_never_accumulates() {
        let origin = Instant::now();
        let mut pacer = Pacer::new(origin);
        assert_eq!(pacer.deadline(), origin);
        let mut ran = 0;
        // Every wake-up 7 ms late: each tick still runs once, and deadlines stay on the grid.
        for n in 0..1000u32 {
            let wake = origin + PERIOD * n + Duration::from_millis(7);
            let due = pacer.due(wake);
            assert_eq!(
                due,
                Due {
                    ticks: 1,
                    skipped: 0
                },
                "tick {n}"
            );
            ran += due.ticks;
            assert_eq!(pacer.deadline(), origin + PERIOD * (n + 1));
        }
        assert_eq!(ran, 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn early_wakeups_run_nothing_and_late_ones_catch_up_a_little() {
        let origin = Instant::now();
        let mut pacer = Pacer::new(origin);
        assert_eq!(pacer.due(origin).ticks, 1);
        // Woken again before the next deadline: nothing.
        assert_eq!(
            pacer.due(origin + Duration::from_millis(19)),
            Due {
                ticks: 0,
                skipped: 0
            }
        );
        // 45 ms late for tick 1: ticks 1 and 2 (due at 20 and 40) run now, tick 3 is at 60.
        assert_eq!(
            pacer.due(origin + Duration::from_millis(45)),
            Due {
                ticks: 2,
                skipped: 0
            }
        );
        assert_eq!(pacer.deadline(), origin + Duration::from_millis(60));
        // A second-long stall: ticks 3 to 53 were due; three run, 48 are skipped, the grid stays.
        assert_eq!(
            pacer.due(origin + Duration::from_millis(1065)),
            Due {
                ticks: 3,
                skipped: 48
            }
        );
        assert_eq!(pacer.deadline(), origin + Duration::from_millis(1080));
    }

    #[tokio::test(start_paused = true)]
    async fn realigning_starts_a_new_grid() {
        let origin = Instant::now();
        let mut pacer = Pacer::new(origin);
        pacer.due(origin + Duration::from_millis(100));
        let new = origin + Duration::from_millis(133);
        pacer.realign(new);
        assert_eq!(pacer.deadline(), new);
        assert_eq!(pacer.due(new).ticks, 1);
        assert_eq!(pacer.deadline(), new + PERIOD);
    }
}
