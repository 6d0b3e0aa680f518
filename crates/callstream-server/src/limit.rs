//! The per-connection message rate limit: a token bucket, and the rule that closes a client that
//! keeps flooding.

use std::time::Duration;

use tokio::time::Instant;

/// Allows `rate` messages per second on average, in bursts of up to `rate`.
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until the next token.
    pub fn wait(&self) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
    }
}

/// What a socket does with one client message under its rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: serve it.
    Serve,
    /// Over the limit: refuse this message, keep the socket.
    Refuse,
    /// Over the limit for more than the allowed run of whole seconds: close the socket.
    Close,
}

/// A token bucket plus the flood rule: a client over the limit in more than `close_after`
/// consecutive seconds is closed; short bursts are only refused.
pub struct FloodGuard {
    bucket: TokenBucket,
    started: Instant,
    last_limited_second: Option<u64>,
    run: u32,
    close_after: u32,
}

impl FloodGuard {
    pub fn new(rate: u32, close_after_secs: u32) -> Self {
        Self {
            bucket: TokenBucket::new(rate),
            started: Instant::now(),
            last_limited_second: None,
            run: 0,
            close_after: close_after_secs,
        }
    }

    pub fn check(&mut self) -> Verdict {
        if self.bucket.take() {
            return Verdict::Serve;
        }
        let second = Instant::now().duration_since(self.started).as_secs();
        if self.last_limited_second != Some(second) {
            self.run = match self.last_limited_second {
                Some(prev) if prev + 1 == second => self.run + 1,
                _ => 1,
            };
            self.last_limited_second = Some(second);
        }
        if self.run > self.close_after {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_to_the_rate_then_refills_over_time() {
        let mut bucket = TokenBucket::new(100);
        let allowed = (0..250).filter(|_| bucket.take()).count();
        assert_eq!(allowed, 100);
        tokio::time::advance(Duration::from_millis(500)).await;
        let refilled = (0..250).filter(|_| bucket.take()).count();
        assert_eq!(refilled, 50);
        assert!(bucket.wait() > Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_refused_and_a_long_flood_is_closed() {
        let mut guard = FloodGuard::new(10, 2);
        let verdicts: Vec<Verdict> = (0..20).map(|_| guard.check()).collect();
        assert_eq!(
            verdicts.iter().filter(|v| **v == Verdict::Serve).count(),
            10
        );
        assert!(verdicts[10..].iter().all(|v| *v == Verdict::Refuse));
        // A pause resets the run.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(guard.check(), Verdict::Serve);
        let mut last = Verdict::Serve;
        for _ in 0..4 {
            tokio::time::advance(Duration::from_secs(1)).await;
            for _ in 0..50 {
                last = guard.check();
            }
        }
        assert_eq!(last, Verdict::Close);
    }
}
