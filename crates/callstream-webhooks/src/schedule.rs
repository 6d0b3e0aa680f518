//! When a failed delivery is tried again, and when the outbox gives up.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::outcome::Outcome;

/// How long after the first attempt a message may still be attempted: 24 hours, as the design
/// brief promises customers.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);

/// Default jitter: each retry delay is moved by up to ±10 %, so endpoints that failed together
/// (an outage) are not all retried in the same second.
pub const DEFAULT_JITTER_PERCENT: u8 = 10;

/// The default waits between attempts: Svix's schedule with its last 10 h wait shortened to
/// 6 h 24 min 55 s, so that the eighth and last attempt lands exactly 24 h after the first.
const DEFAULT_RETRY_DELAYS: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 60 * 60),
    Duration::from_secs(5 * 60 * 60),
    Duration::from_secs(10 * 60 * 60),
    Duration::from_secs(6 * 60 * 60 + 24 * 60 + 55),
];

/// The longest deadline a schedule may have. Nothing in callstream keeps a message for longer
/// than a few days; the bound also keeps every date computation far from chrono's limits.
const MAX_DEADLINE: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Largest accepted jitter. Beyond ±50 % a "5 minute" retry stops meaning anything.
const MAX_JITTER_PERCENT: u8 = 50;

// === impl RetrySchedule ===

/// The retry schedule of one webhook message: a list of waits between attempts and a deadline
/// after the first attempt past which nothing is attempted.
///
/// Attempts are numbered from 1. The first attempt is made as soon as the message is in the
/// outbox; after attempt `n` fails, attempt `n + 1` is due `retry_delays[n - 1]` after that
/// failure, moved by the jitter, and never later than `first_attempt_at + deadline`. When the
/// delays run out, or the deadline has passed, the message has failed for good.
///
/// # The default schedule
///
/// [`RetrySchedule::default`] makes 8 attempts over exactly 24 hours (times as if every attempt
/// failed instantly, before jitter):
///
/// | attempt | wait after the previous failure | time since the first attempt |
/// |--------:|---------------------------------|------------------------------|
/// | 1       | immediately                     | 00:00:00                     |
/// | 2       | 5 s                             | 00:00:05                     |
/// | 3       | 5 min                           | 00:05:05                     |
/// | 4       | 30 min                          | 00:35:05                     |
/// | 5       | 2 h                             | 02:35:05                     |
/// | 6       | 5 h                             | 07:35:05                     |
/// | 7       | 10 h                            | 17:35:05                     |
/// | 8       | 6 h 24 min 55 s                 | 24:00:00                     |
///
/// This is Svix's schedule (immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h) with the last
/// wait shortened so that the last attempt is at the 24 h mark instead of 27 h 35 min. Every wait
/// is jittered by up to ±[`DEFAULT_JITTER_PERCENT`] %; the deadline ([`DEFAULT_DEADLINE`], 24 h)
/// caps the result, so the last attempt is never after 24 h even when jitter or slow attempts
/// push it later.
#[derive(Clone, Debug)]
pub struct RetrySchedule {
    retry_delays: Vec<Duration>,
    deadline: Duration,
    jitter_percent: u8,
    jitter_source: JitterSource,
}

/// Why a retry schedule is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The deadline is longer than the 30 days any schedule may span.
    #[error("retry deadline of {deadline:?} is longer than the maximum of {MAX_DEADLINE:?}")]
    DeadlineTooLong {
        /// The deadline that was asked for.
        deadline: Duration,
    },
    /// The waits add up to more than the deadline, so the last attempts could never happen.
    #[error("retry delays add up to {total:?}, more than the {deadline:?} deadline")]
    DelaysExceedDeadline {
        /// Sum of the waits (saturating).
        total: Duration,
        /// The deadline they must fit in.
        deadline: Duration,
    },
    /// The jitter is larger than ±50 %.
    #[error("retry jitter of {percent} % is more than the maximum of {MAX_JITTER_PERCENT} %")]
    JitterTooLarge {
        /// The jitter that was asked for, in percent.
        percent: u8,
    },
}

/// What the outbox should do with a message after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextStep {
    /// The endpoint accepted it; nothing more to do.
    Delivered,
    /// The endpoint answered 410 Gone: stop sending it anything, this message included.
    DisableEndpoint,
    /// Attempt again at this time.
    RetryAt(DateTime<Utc>),
    /// The attempts or the deadline are used up (or the endpoint asked for a wait past the
    /// deadline): the message has failed for good.
    GiveUp,
}

impl Default for RetrySchedule {
    /// The 24-hour schedule described on [`RetrySchedule`], with ±10 % jitter from the OS RNG.
    fn default() -> Self {
        Self {
            retry_delays: DEFAULT_RETRY_DELAYS.to_vec(),
            deadline: DEFAULT_DEADLINE,
            jitter_percent: DEFAULT_JITTER_PERCENT,
            jitter_source: JitterSource::OS,
        }
    }
}

impl RetrySchedule {
    /// A schedule with the given waits between attempts (`retry_delays[0]` is the wait before the
    /// second attempt) and the given deadline after the first attempt, without jitter.
    ///
    /// An empty list means a single attempt and no retries.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::DeadlineTooLong`] past 30 days, and
    /// [`ScheduleError::DelaysExceedDeadline`] if the waits add up to more than the deadline.
    pub fn new(retry_delays: Vec<Duration>, deadline: Duration) -> Result<Self, ScheduleError> {
        if deadline > MAX_DEADLINE {
            return Err(ScheduleError::DeadlineTooLong { deadline });
        }
        let total = retry_delays
            .iter()
            .fold(Duration::ZERO, |sum, delay| sum.saturating_add(*delay));
        if total > deadline {
            return Err(ScheduleError::DelaysExceedDeadline { total, deadline });
        }
        Ok(Self {
            retry_delays,
            deadline,
            jitter_percent: 0,
            jitter_source: JitterSource::OS,
        })
    }

    /// The same schedule with each wait moved by up to ±`percent` %, drawn from `source`.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::JitterTooLarge`] above 50 %.
    pub fn with_jitter(self, percent: u8, source: JitterSource) -> Result<Self, ScheduleError> {
        if percent > MAX_JITTER_PERCENT {
            return Err(ScheduleError::JitterTooLarge { percent });
        }
        Ok(Self {
            jitter_percent: percent,
            jitter_source: source,
            ..self
        })
    }

    /// The same schedule without jitter: attempts fall exactly on the listed waits.
    pub fn without_jitter(self) -> Self {
        Self {
            jitter_percent: 0,
            ..self
        }
    }

    /// The waits between attempts, before jitter.
    pub fn retry_delays(&self) -> &[Duration] {
        &self.retry_delays
    }

    /// How long after the first attempt the last one may be made.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The most attempts a message gets, the first included.
    pub fn max_attempts(&self) -> usize {
        self.retry_delays.len() + 1
    }

    /// When to make the attempt after attempt number `attempt` (1-based) failed at `now`, for a
    /// message first attempted at `first_attempt_at`. `None` means give up: the attempts are used
    /// up, or `now` is already at or past the deadline.
    ///
    /// `attempt == 0` means nothing has been attempted yet, so the first attempt is due `now`.
    /// The result is never after `first_attempt_at + deadline`: a wait that would end later is cut
    /// short, so the last attempt happens at the deadline.
    pub fn next_attempt(
        &self,
        attempt: u32,
        first_attempt_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if attempt == 0 {
            return Some(now);
        }
        let index = usize::try_from(attempt - 1).ok()?;
        let delay = *self.retry_delays.get(index)?;
        let deadline_at =
            first_attempt_at.checked_add_signed(TimeDelta::from_std(self.deadline).ok()?)?;
        if now >= deadline_at {
            return None;
        }
        let delay = self.jittered(delay);
        let due = now
            .checked_add_signed(TimeDelta::from_std(delay).ok()?)
            .unwrap_or(deadline_at);
        Some(due.min(deadline_at))
    }

    /// What the outbox should do after attempt number `attempt` (1-based) ended at `now` with
    /// `outcome`.
    ///
    /// Retries follow [`RetrySchedule::next_attempt`]. When the endpoint asked to slow down with a
    /// `Retry-After` ([`Outcome::RetryLater`]), the retry is at the later of the schedule's time
    /// and the endpoint's; if the endpoint's time is past the deadline, the message is given up
    /// rather than sent before the endpoint said it is ready.
    pub fn next_step(
        &self,
        outcome: &Outcome,
        attempt: u32,
        first_attempt_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> NextStep {
        let not_before = match outcome {
            Outcome::Delivered { .. } => return NextStep::Delivered,
            Outcome::DisableEndpoint => return NextStep::DisableEndpoint,
            Outcome::Retry { .. } => None,
            Outcome::RetryLater { not_before, .. } => *not_before,
        };
        let Some(due) = self.next_attempt(attempt, first_attempt_at, now) else {
            return NextStep::GiveUp;
        };
        let Some(not_before) = not_before else {
            return NextStep::RetryAt(due);
        };
        let deadline_at = TimeDelta::from_std(self.deadline)
            .ok()
            .and_then(|deadline| first_attempt_at.checked_add_signed(deadline));
        match deadline_at {
            Some(deadline_at) if not_before <= deadline_at => {
                NextStep::RetryAt(due.max(not_before))
            }
            _ => NextStep::GiveUp,
        }
    }

    fn jittered(&self, delay: Duration) -> Duration {
        if self.jitter_percent == 0 || delay.is_zero() {
            return delay;
        }
        let sample = (self.jitter_source.0)();
        // A broken source (NaN, out of range) degrades to "no jitter" rather than to a wild delay.
        let sample = if sample.is_finite() {
            sample.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let factor = 1.0 + (2.0 * sample - 1.0) * f64::from(self.jitter_percent) / 100.0;
        // Whole milliseconds: float noise (7200 s × 1.1 = 7920.000000000001 s) should not leak
        // into stored due times. The factor is at least 0.5, so the cast cannot go negative, and
        // `as` saturates on the (impossible, given the 30-day bound) overflow.
        let millis = (delay.as_millis() as f64 * factor).round() as u64;
        Duration::from_millis(millis)
    }
}

// === impl JitterSource ===

/// Where retry jitter comes from: a function returning a uniform sample in `[0, 1)`, where `0.5`
/// means "no change", `0.0` the shortest wait and values near `1.0` the longest.
///
/// [`JitterSource::OS`] reads the operating system's RNG; tests pass a fixed function instead,
/// for example `JitterSource::new(|| 0.5)`.
#[derive(Clone, Copy)]
pub struct JitterSource(fn() -> f64);

impl JitterSource {
    /// Uniform samples from the operating system's RNG. If the RNG fails, the sample is `0.5`
    /// (no jitter): a retry at its nominal time is better than no retry.
    pub const OS: Self = Self(os_sample);

    /// A source backed by `sample`, which should return values in `[0, 1)`.
    pub const fn new(sample: fn() -> f64) -> Self {
        Self(sample)
    }
}

impl fmt::Debug for JitterSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JitterSource")
    }
}

fn os_sample() -> f64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        // 53 random bits make every representable f64 in [0, 1) with that spacing equally likely.
        Ok(()) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{RetryCause, TransportFailure};

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).expect("in range")
    }

    fn plus(at: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
        at + TimeDelta::seconds(secs)
    }

    const H: i64 = 60 * 60;
    const M: i64 = 60;

    #[test]
    fn default_schedule_ends_exactly_at_24_hours() {
        let schedule = RetrySchedule::default();
        let total: Duration = schedule.retry_delays().iter().sum();
        assert_eq!(total, DEFAULT_DEADLINE);
        assert_eq!(schedule.max_attempts(), 8);
        assert_eq!(schedule.deadline(), Duration::from_secs(24 * 60 * 60));
    }

    /// Every attempt failing instantly: (attempt that failed, its time since the first attempt,
    /// expected time of the next one since the first attempt).
    #[test]
    fn default_schedule_without_jitter_table() {
        let schedule = RetrySchedule::default().without_jitter();
        let cases: &[(u32, i64, Option<i64>)] = &[
            (0, 0, Some(0)),
            (1, 0, Some(5)),
            (2, 5, Some(5 * M + 5)),
            (3, 5 * M + 5, Some(35 * M + 5)),
            (4, 35 * M + 5, Some(2 * H + 35 * M + 5)),
            (5, 2 * H + 35 * M + 5, Some(7 * H + 35 * M + 5)),
            (6, 7 * H + 35 * M + 5, Some(17 * H + 35 * M + 5)),
            (7, 17 * H + 35 * M + 5, Some(24 * H)),
            (8, 24 * H, None),
            (9, 24 * H, None),
            (u32::MAX, 0, None),
        ];
        for &(attempt, failed_at, expected) in cases {
            let got = schedule.next_attempt(attempt, t0(), plus(t0(), failed_at));
            assert_eq!(
                got,
                expected.map(|secs| plus(t0(), secs)),
                "after attempt {attempt}"
            );
        }
    }

    #[test]
    fn slow_attempts_are_cut_at_the_deadline() {
        let schedule = RetrySchedule::default().without_jitter();
        // Attempt 7 was made 30 s late and timed out after another 30 s.
        let failed_at = plus(t0(), 17 * H + 35 * M + 5 + 60);
        assert_eq!(
            schedule.next_attempt(7, t0(), failed_at),
            Some(plus(t0(), 24 * H))
        );
        // Attempt 6 ran so late that its 10 h wait would pass the deadline.
        assert_eq!(
            schedule.next_attempt(6, t0(), plus(t0(), 20 * H)),
            Some(plus(t0(), 24 * H))
        );
        // A failure at or after the deadline ends the message, whatever attempts are left.
        assert_eq!(schedule.next_attempt(2, t0(), plus(t0(), 24 * H)), None);
        assert_eq!(schedule.next_attempt(2, t0(), plus(t0(), 25 * H)), None);
    }

    #[test]
    fn jitter_table() {
        // (sample, expected wait after attempt 4 (nominally 2 h) in seconds)
        let cases: &[(f64, i64)] = &[
            (0.5, 2 * H),
            (0.0, 2 * H - 12 * M),
            (0.75, 2 * H + 6 * M),
            (1.0, 2 * H + 12 * M),
            // Broken sources degrade to no jitter or to the edge of the range.
            (f64::NAN, 2 * H),
            (7.0, 2 * H + 12 * M),
            (-3.0, 2 * H - 12 * M),
        ];
        thread_local! {
            static SAMPLE: std::cell::Cell<f64> = const { std::cell::Cell::new(0.5) };
        }
        let source = JitterSource::new(|| SAMPLE.with(std::cell::Cell::get));
        let schedule = RetrySchedule::default()
            .with_jitter(10, source)
            .expect("10 % is allowed");
        for &(sample, expected) in cases {
            SAMPLE.with(|cell| cell.set(sample));
            let failed_at = plus(t0(), 35 * M + 5);
            let got = schedule.next_attempt(4, t0(), failed_at);
            assert_eq!(got, Some(plus(failed_at, expected)), "sample {sample}");
        }
    }

    #[test]
    fn jitter_never_pushes_the_last_attempt_past_the_deadline() {
        let schedule = RetrySchedule::default()
            .with_jitter(50, JitterSource::new(|| 0.999))
            .expect("50 % is allowed");
        let failed_at = plus(t0(), 17 * H + 35 * M + 5);
        assert_eq!(
            schedule.next_attempt(7, t0(), failed_at),
            Some(plus(t0(), 24 * H))
        );
    }

    #[test]
    fn os_jitter_stays_within_bounds() {
        let schedule = RetrySchedule::default();
        let failed_at = plus(t0(), 35 * M + 5);
        for _ in 0..100 {
            let due = schedule
                .next_attempt(4, t0(), failed_at)
                .expect("attempts left");
            let wait = (due - failed_at).num_seconds();
            assert!((2 * H - 12 * M..=2 * H + 12 * M).contains(&wait), "{wait}");
        }
    }

    #[test]
    fn construction_table() {
        let secs = Duration::from_secs;
        let cases: Vec<(Vec<Duration>, Duration, Result<usize, ScheduleError>)> = vec![
            (vec![], secs(0), Ok(1)),
            (vec![secs(1), secs(2)], secs(3), Ok(3)),
            (
                vec![secs(2), secs(2)],
                secs(3),
                Err(ScheduleError::DelaysExceedDeadline {
                    total: secs(4),
                    deadline: secs(3),
                }),
            ),
            (
                vec![Duration::MAX, Duration::MAX],
                MAX_DEADLINE,
                Err(ScheduleError::DelaysExceedDeadline {
                    total: Duration::MAX,
                    deadline: MAX_DEADLINE,
                }),
            ),
            (
                vec![],
                MAX_DEADLINE + secs(1),
                Err(ScheduleError::DeadlineTooLong {
                    deadline: MAX_DEADLINE + secs(1),
                }),
            ),
        ];
        for (delays, deadline, expected) in cases {
            let got = RetrySchedule::new(delays.clone(), deadline).map(|s| s.max_attempts());
            assert_eq!(got, expected, "delays {delays:?}, deadline {deadline:?}");
        }
        assert_eq!(
            RetrySchedule::default()
                .with_jitter(51, JitterSource::OS)
                .map(|_| ()),
            Err(ScheduleError::JitterTooLarge { percent: 51 })
        );
    }

    #[test]
    fn custom_schedule_without_retries_gives_up_after_one_attempt() {
        let schedule = RetrySchedule::new(vec![], DEFAULT_DEADLINE).expect("valid");
        assert_eq!(schedule.next_attempt(0, t0(), t0()), Some(t0()));
        assert_eq!(schedule.next_attempt(1, t0(), t0()), None);
    }

    #[test]
    fn next_step_table() {
        let schedule = RetrySchedule::default().without_jitter();
        let failed_at = plus(t0(), 5); // attempt 2 fails at 00:00:05
        let scheduled = plus(failed_at, 5 * M);
        let cases: Vec<(&str, Outcome, u32, DateTime<Utc>, NextStep)> = vec![
            (
                "delivered",
                Outcome::Delivered { status: 204 },
                2,
                failed_at,
                NextStep::Delivered,
            ),
            (
                "gone",
                Outcome::DisableEndpoint,
                2,
                failed_at,
                NextStep::DisableEndpoint,
            ),
            (
                "server error",
                Outcome::Retry {
                    cause: RetryCause::Status(500),
                },
                2,
                failed_at,
                NextStep::RetryAt(scheduled),
            ),
            (
                "timeout",
                Outcome::Retry {
                    cause: RetryCause::Transport(TransportFailure::Timeout),
                },
                2,
                failed_at,
                NextStep::RetryAt(scheduled),
            ),
            (
                "last attempt failed",
                Outcome::Retry {
                    cause: RetryCause::Status(500),
                },
                8,
                plus(t0(), 24 * H),
                NextStep::GiveUp,
            ),
            (
                "slow down without Retry-After",
                Outcome::RetryLater {
                    status: 429,
                    not_before: None,
                },
                2,
                failed_at,
                NextStep::RetryAt(scheduled),
            ),
            (
                "Retry-After later than the schedule wins",
                Outcome::RetryLater {
                    status: 503,
                    not_before: Some(plus(failed_at, 20 * M)),
                },
                2,
                failed_at,
                NextStep::RetryAt(plus(failed_at, 20 * M)),
            ),
            (
                "Retry-After sooner than the schedule is not a reason to hurry",
                Outcome::RetryLater {
                    status: 503,
                    not_before: Some(plus(failed_at, 10)),
                },
                2,
                failed_at,
                NextStep::RetryAt(scheduled),
            ),
            (
                "Retry-After past the deadline gives up",
                Outcome::RetryLater {
                    status: 429,
                    not_before: Some(plus(t0(), 24 * H + 1)),
                },
                7,
                plus(t0(), 23 * H + 30 * M),
                NextStep::GiveUp,
            ),
            (
                "Retry-After exactly at the deadline",
                Outcome::RetryLater {
                    status: 429,
                    not_before: Some(plus(t0(), 24 * H)),
                },
                7,
                plus(t0(), 23 * H + 30 * M),
                NextStep::RetryAt(plus(t0(), 24 * H)),
            ),
        ];
        for (name, outcome, attempt, now, expected) in cases {
            assert_eq!(
                schedule.next_step(&outcome, attempt, t0(), now),
                expected,
                "{name}"
            );
        }
    }
}
