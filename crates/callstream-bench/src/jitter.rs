//! `callstream-bench jitter`: how often, and for how long, this machine stops running a busy
//! thread. On a virtual machine the host may take a virtual CPU away for milliseconds at a time
//! (steal); every frame in flight then waits, whatever server is being measured, so a tail
//! latency is only as good as the host's pauses allow.
//!
//! One busy thread per core reads the monotonic clock in a loop; any gap between two readings
//! longer than [`PAUSE`] is a pause (the thread was not running). The probe reports, per thread,
//! the share of time lost in pauses, how many pauses of at least 1 ms and 5 ms there were per
//! second, the longest, and the share of time by which pauses exceeded 5 ms: during that time no
//! frame could have been delivered within 5 ms, by any server.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

/// The shortest gap counted as a pause (a clock read takes tens of nanoseconds).
const PAUSE: Duration = Duration::from_micros(100);

/// What one busy thread saw.
#[derive(Debug, Clone, Serialize)]
pub struct Pauses {
    pub thread: usize,
    pub seconds: f64,
    /// Share of the time spent in pauses (0.03 = 3 %).
    pub lost_share: f64,
    pub over_1ms_per_sec: f64,
    pub over_5ms_per_sec: f64,
    pub longest_ms: f64,
    /// Share of the time by which pauses exceeded 5 ms.
    pub beyond_5ms_share: f64,
}

impl Pauses {
    fn from_gaps(thread: usize, elapsed: Duration, gaps: &[Duration]) -> Self {
        let seconds = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        let five = Duration::from_millis(5);
        let count = |min: Duration| gaps.iter().filter(|g| **g >= min).count() as f64 / seconds;
        Self {
            thread,
            seconds,
            lost_share: gaps.iter().sum::<Duration>().as_secs_f64() / seconds,
            over_1ms_per_sec: count(Duration::from_millis(1)),
            over_5ms_per_sec: count(five),
            longest_ms: gaps.iter().max().map_or(0.0, |g| g.as_secs_f64() * 1e3),
            beyond_5ms_share: gaps
                .iter()
                .map(|g| g.saturating_sub(five))
                .sum::<Duration>()
                .as_secs_f64()
                / seconds,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "thread {}: {:.2} % of {:.0} s lost in pauses; {:.1}/s >= 1 ms, {:.2}/s >= 5 ms, longest {:.1} ms; {:.3} % of the time beyond 5 ms",
            self.thread,
            self.lost_share * 100.0,
            self.seconds,
            self.over_1ms_per_sec,
            self.over_5ms_per_sec,
            self.longest_ms,
            self.beyond_5ms_share * 100.0
        )
    }
}

/// Busy-loops `threads` threads for `duration` and returns what each saw.
pub fn measure(threads: usize, duration: Duration) -> Vec<Pauses> {
    let handles: Vec<_> = (0..threads.max(1))
        .map(|thread| {
            std::thread::spawn(move || {
                let mut gaps = Vec::new();
                let start = Instant::now();
                let mut last = start;
                loop {
                    let now = Instant::now();
                    let gap = now - last;
                    if gap >= PAUSE {
                        gaps.push(gap);
                    }
                    last = now;
                    if now - start >= duration {
                        return Pauses::from_gaps(thread, now - start, &gaps);
                    }
                }
            })
        })
        .collect();
    handles.into_iter().filter_map(|h| h.join().ok()).collect()
}

/// The `jitter` command: prints one line per thread, and the lines as JSON to `json` if given.
pub fn run(seconds: u64, threads: Option<usize>, json: Option<&std::path::Path>) -> Result<()> {
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let results = measure(threads, Duration::from_secs(seconds));
    for p in &results {
        println!("host jitter, {}", p.line());
    }
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_are_summed_and_counted_by_length() {
        let ms = Duration::from_millis;
        let p = Pauses::from_gaps(0, Duration::from_secs(2), &[ms(1), ms(2), ms(7), ms(20)]);
        assert!((p.lost_share - 0.015).abs() < 1e-9);
        assert!((p.over_1ms_per_sec - 2.0).abs() < 1e-9);
        assert!((p.over_5ms_per_sec - 1.0).abs() < 1e-9);
        assert!((p.longest_ms - 20.0).abs() < 1e-9);
        // (7 - 5) + (20 - 5) = 17 ms of 2 s.
        assert!((p.beyond_5ms_share - 0.0085).abs() < 1e-9);
    }

    #[test]
    fn a_short_probe_reports_every_thread() {
        let results = measure(2, Duration::from_millis(50));
        assert_eq!(results.len(), 2);
        for p in results {
            assert!(p.seconds >= 0.05);
            assert!(p.lost_share < 1.0);
        }
    }
}
