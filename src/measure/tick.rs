//! Monotonic time as nanoseconds in one `u64`, for the times a transaction
//! reads and compares: its start and end, and its server's idle and
//! lifetime expiry. `Instant` is the same clock (`CLOCK_MONOTONIC`), but
//! each `duration_since` is a checked subtraction of two (seconds,
//! nanoseconds) pairs, about 37 instructions, and a transaction made four;
//! here it is one subtraction. 2⁶⁴ ns is 584 years of uptime.

use std::time::Duration;

/// A reading of the monotonic clock, in nanoseconds since its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tick(u64);

impl Tick {
    /// The clock now.
    #[inline]
    pub fn now() -> Tick {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec. CLOCK_MONOTONIC
        // cannot fail on Linux with a valid pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Tick((ts.tv_sec as u64).wrapping_mul(1_000_000_000) + ts.tv_nsec as u64)
    }

    /// Nanoseconds from `earlier` to this reading (0 when `earlier` is later).
    #[inline]
    pub fn nanos_since(self, earlier: Tick) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Microseconds from `earlier` to this reading, truncated.
    #[inline]
    pub fn micros_since(self, earlier: Tick) -> u64 {
        self.nanos_since(earlier) / 1_000
    }

    /// The time from `earlier` to this reading (0 when `earlier` is later).
    pub fn since(self, earlier: Tick) -> Duration {
        Duration::from_nanos(self.nanos_since(earlier))
    }

    /// The reading `d` after this one (saturating).
    pub fn plus(self, d: Duration) -> Tick {
        Tick(self.0.saturating_add(nanos(d)))
    }
}

/// A duration in nanoseconds, the longest (584 years) for anything longer.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn ticks_advance_with_the_clock_instant_reads() {
        let (i0, t0) = (Instant::now(), Tick::now());
        std::thread::sleep(Duration::from_millis(20));
        let (t1, i1) = (Tick::now(), Instant::now());
        assert!(t1 > t0);
        let ticked = t1.since(t0);
        // The tick pair lies within the Instant pair around it.
        assert!(ticked >= Duration::from_millis(20), "{ticked:?}");
        assert!(ticked <= i1.duration_since(i0), "{ticked:?}");
        assert_eq!(t1.micros_since(t0), t1.nanos_since(t0) / 1000);
    }

    #[test]
    fn time_never_runs_backwards_in_a_difference() {
        let (a, b) = (Tick(5_000), Tick(7_500));
        assert_eq!(b.nanos_since(a), 2_500);
        assert_eq!(b.micros_since(a), 2);
        assert_eq!(a.nanos_since(b), 0);
        assert_eq!(a.since(b), Duration::ZERO);
        assert_eq!(a.plus(Duration::from_nanos(2_500)), b);
        assert_eq!(b.plus(Duration::MAX), Tick(u64::MAX));
    }

    #[test]
    fn durations_beyond_the_range_saturate() {
        assert_eq!(nanos(Duration::from_secs(1)), 1_000_000_000);
        assert_eq!(nanos(Duration::MAX), u64::MAX);
    }
}
