//! A token bucket: the per-connection message rate limit.

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
}
