//! Exponential backoff with jitter, for every retry in pgfanout: sink
//! writes, dead letters, reconnecting to PostgreSQL and to sinks.

use std::time::Duration;

use tokio::sync::watch;

/// Delays that double from `first` up to `max`, each scaled by a random
/// factor in [0.5, 1.0) so that many clients retrying at once do not hit a
/// recovering server in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    upcoming: Duration,
    attempts: u32,
}

impl Backoff {
    /// Starts at `first`, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff { first, max, upcoming: first, attempts: 0 }
    }

    /// The next delay before jitter (for logs).
    pub fn upcoming(&self) -> Duration {
        self.upcoming
    }

    /// How many delays were taken since the start or the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The next delay, jittered; the one after it doubles, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = jittered(self.upcoming);
        self.upcoming = (self.upcoming * 2).min(self.max);
        self.attempts += 1;
        delay
    }

    /// Sleeps the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Sleeps the next delay unless `stop` turns (or is) true first;
    /// `false` when stopped.
    pub async fn wait_unless(&mut self, stop: &watch::Receiver<bool>) -> bool {
        let mut stop = stop.clone();
        if *stop.borrow() {
            return false;
        }
        let delay = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = stop.changed() => false,
        }
    }

    /// Starts over from the first delay (after something worked for a while).
    pub fn reset(&mut self) {
        self.upcoming = self.first;
        self.attempts = 0;
    }
}

/// `delay` scaled by a random factor in [0.5, 1.0).
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.5..1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let bounds = [(50, 100), (100, 200), (175, 350), (175, 350)];
        for (low, high) in bounds {
            let delay = backoff.next_delay();
            assert!(
                delay >= Duration::from_millis(low) && delay < Duration::from_millis(high),
                "{delay:?} not in [{low}, {high}) ms"
            );
        }
        assert_eq!(backoff.attempts(), 4);
        backoff.reset();
        assert_eq!((backoff.attempts(), backoff.upcoming()), (0, Duration::from_millis(100)));
    }

    #[tokio::test]
    async fn a_stop_signal_interrupts_the_wait() {
        let (stop, stopped) = watch::channel(true);
        let mut backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!backoff.wait_unless(&stopped).await, "already stopped: no sleep at all");
        drop(stop);
    }
}
