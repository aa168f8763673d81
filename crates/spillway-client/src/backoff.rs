//! How long to wait before asking again, as a pure state machine: the
//! caller sleeps; tests need no clock.

use std::time::Duration;

/// Delays doubling from `first` up to `cap`, for at most `total` of waiting
/// in all; then `None` (give up).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    cap: Duration,
    left: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, cap: Duration, total: Duration) -> Backoff {
        Backoff {
            next: first,
            cap,
            left: total,
        }
    }

    /// The wait before the next try, `None` once the total is spent.
    pub(crate) fn next_delay(&mut self) -> Option<Duration> {
        if self.left.is_zero() {
            return None;
        }
        let d = self.next.min(self.cap).min(self.left);
        self.left -= d;
        self.next = self.next.saturating_mul(2);
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_stops_at_the_total() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(25), ms(400), ms(1500));
        let got: Vec<Duration> = std::iter::from_fn(|| b.next_delay()).collect();
        assert_eq!(
            got,
            [25, 50, 100, 200, 400, 400, 325].map(ms),
            "the last wait is cut to what is left"
        );
        assert_eq!(got.iter().sum::<Duration>(), ms(1500));
        assert_eq!(b.next_delay(), None);
        assert_eq!(
            Backoff::new(ms(1), ms(1), Duration::ZERO).next_delay(),
            None
        );
    }
}
