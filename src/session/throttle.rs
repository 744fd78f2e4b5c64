//! Reading a peer no faster than a set rate, as Prosody's `mod_limits` and ejabberd's shapers
//! do: past its burst, a connection is not read until its bucket has refilled, so TCP pushes
//! back on the sender and one flooding peer cannot take the CPU the others need. Nothing is
//! refused or lost; the peer is only slowed down.
//!
//! A token bucket of a few lines, written here because it has to sit inside the connection's
//! own poll function (see `XmlConn::poll_read_and_parse`); the rate-limiting crates (governor,
//! leaky-bucket) answer "wait this long" or hand out futures, and would add their own clock and
//! state to every read.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Seconds of its rate that a quiet connection may send at once.
const BURST_SECONDS: u64 = 2;
const NANOS_PER_SECOND: u64 = 1_000_000_000;

pub struct Throttle {
    per_second: u64,
    burst: i64,
    /// Bytes that may still be read; below zero after a read that took more than was left.
    tokens: i64,
    /// The time up to which tokens have been added.
    refilled: Instant,
    /// The end of the current pause, while reading is paused.
    pause: Option<Pin<Box<Sleep>>>,
    /// For the `/metrics` count of pauses.
    kind: &'static str,
}

impl Throttle {
    /// None for a rate of 0 (no limit). The burst holds at least one stanza of the largest
    /// size allowed, so that one always fits.
    pub fn new(kind: &'static str, per_second: u64, max_stanza_bytes: usize) -> Option<Throttle> {
        if per_second == 0 {
            return None;
        }
        let burst = per_second
            .saturating_mul(BURST_SECONDS)
            .max(u64::try_from(max_stanza_bytes).unwrap_or(u64::MAX));
        let burst = i64::try_from(burst).unwrap_or(i64::MAX);
        Some(Throttle {
            per_second,
            burst,
            tokens: burst,
            refilled: Instant::now(),
            pause: None,
            kind,
        })
    }

    /// Counts bytes that were read.
    pub fn spend(&mut self, bytes: usize) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.tokens = self.tokens.saturating_sub(bytes);
    }

    /// Ready when the connection may be read; Pending, with a wake-up set, while it is paused.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some(pause) = self.pause.as_mut() {
                ready!(pause.as_mut().poll(cx));
                self.pause = None;
            }
            self.refill(Instant::now());
            if self.tokens > 0 {
                return Poll::Ready(());
            }
            crate::metrics::read_paused(self.kind);
            let wait = self.until_positive();
            self.pause = Some(Box::pin(tokio::time::sleep(wait)));
        }
    }

    /// Runs on every read, so it keeps to 64-bit arithmetic (a 128-bit division is a library
    /// call); a product too large for it means the bucket has long been full.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled);
        let elapsed = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let room = u64::try_from(self.burst.saturating_sub(self.tokens)).unwrap_or(0);
        let earned = elapsed
            .checked_mul(self.per_second)
            .map_or(u64::MAX, |n| n / NANOS_PER_SECOND);
        if earned >= room {
            self.tokens = self.burst;
            self.refilled = now;
            return;
        }
        // Only the time that earned whole tokens is used up, so that short intervals between
        // reads add up instead of each losing its fraction of a byte. `earned` is below the
        // burst here, so the product fits.
        let used = earned.saturating_mul(NANOS_PER_SECOND) / self.per_second;
        self.refilled += Duration::from_nanos(used);
        self.tokens = self
            .tokens
            .saturating_add(i64::try_from(earned).unwrap_or(i64::MAX));
    }

    /// How long until at least one byte may be read again.
    fn until_positive(&self) -> Duration {
        let needed = u128::try_from(1 - self.tokens.min(0)).unwrap_or(1);
        let nanos = (needed * u128::from(NANOS_PER_SECOND)).div_ceil(u128::from(self.per_second));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rate_means_no_throttle() {
        assert!(Throttle::new("c2s", 0, 10_000).is_none());
    }

    #[test]
    fn burst_is_two_seconds_or_one_largest_stanza() {
        assert_eq!(
            Throttle::new("c2s", 100_000, 10_000).unwrap().burst,
            200_000
        );
        assert_eq!(Throttle::new("c2s", 1_000, 262_144).unwrap().burst, 262_144);
    }

    #[test]
    fn a_pause_lasts_until_one_byte_may_be_read() {
        let mut t = Throttle::new("c2s", 1_000, 2_000).unwrap();
        let start = t.refilled;
        // The burst and 500 more: 501 bytes' time, 501 ms.
        t.spend(2_500);
        assert_eq!(t.until_positive(), Duration::from_millis(501));
        t.refill(start + Duration::from_millis(400));
        assert_eq!(t.tokens, -100);
        t.refill(start + Duration::from_millis(502));
        assert_eq!(t.tokens, 2);
    }

    #[test]
    fn short_intervals_add_up() {
        let mut t = Throttle::new("c2s", 1_000, 0).unwrap();
        let start = t.refilled;
        t.tokens = 0;
        // A third of a byte's time, thirty times: ten bytes, not none.
        for i in 1..=30 {
            t.refill(start + Duration::from_nanos(333_334 * i));
        }
        assert_eq!(t.tokens, 10);
    }

    #[test]
    fn a_quiet_connection_saves_no_more_than_its_burst() {
        let mut t = Throttle::new("c2s", 1_000, 0).unwrap();
        let start = t.refilled;
        t.spend(1_500);
        t.refill(start + Duration::from_secs(60));
        assert_eq!(t.tokens, 2_000);
    }

    #[tokio::test]
    async fn reading_waits_out_the_pause() {
        let mut t = Throttle::new("c2s", 100_000, 0).unwrap();
        // 2 ms worth over the burst.
        t.spend(200_200);
        let started = Instant::now();
        std::future::poll_fn(|cx| t.poll_ready(cx)).await;
        assert!(started.elapsed() >= Duration::from_millis(2));
        assert!(t.tokens > 0);
        let waker = std::task::Waker::noop();
        assert!(t.poll_ready(&mut Context::from_waker(waker)).is_ready());
    }
}
