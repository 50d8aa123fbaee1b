//! Requests held for a routable node (a failover or switchover under way):
//! how long each one waited, and for how long writes were unavailable, the
//! time a write-availability SLO counts against. Holds happen only while
//! the topology moves, so one mutex is fine.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::latency::{new_histogram, MAX_MICROS};

/// Hold durations and write unavailability.
pub struct Holds {
    state: Mutex<State>,
}

struct State {
    /// How long each hold lasted, µs.
    durations: Histogram<u64>,
    /// Holds under way for a primary.
    wanting_primary: usize,
    /// Since when at least one request has waited for a primary.
    since: Option<Instant>,
    /// Closed periods of waiting for a primary, summed.
    unavailable: Duration,
}

impl Default for Holds {
    fn default() -> Self {
        Holds {
            state: Mutex::new(State {
                durations: new_histogram(),
                wanting_primary: 0,
                since: None,
                unavailable: Duration::ZERO,
            }),
        }
    }
}

/// One request held; recorded when dropped.
#[must_use = "the hold is recorded when this is dropped"]
pub struct Hold<'a> {
    holds: &'a Holds,
    start: Instant,
    wants_primary: bool,
}

impl Holds {
    /// A request starts waiting for a routable node; `wants_primary` when
    /// that node is the primary (its wait is write unavailability).
    pub fn begin(&self, wants_primary: bool) -> Hold<'_> {
        self.begin_at(wants_primary, Instant::now())
    }

    fn begin_at(&self, wants_primary: bool, start: Instant) -> Hold<'_> {
        if wants_primary {
            let mut s = self.lock();
            if s.wanting_primary == 0 {
                s.since = Some(start);
            }
            s.wanting_primary += 1;
        }
        Hold {
            holds: self,
            start,
            wants_primary,
        }
    }

    fn end_at(&self, hold: &Hold<'_>, now: Instant) {
        let mut s = self.lock();
        let micros = now.saturating_duration_since(hold.start).as_micros() as u64;
        // Clamped to the histogram's range, so recording cannot fail.
        let _ = s.durations.record(micros.clamp(1, MAX_MICROS));
        if hold.wants_primary {
            s.wanting_primary -= 1;
            if s.wanting_primary == 0 {
                if let Some(since) = s.since.take() {
                    s.unavailable += now.saturating_duration_since(since);
                }
            }
        }
    }

    /// Time during which at least one request waited for a primary, up to
    /// `now` (a period still open counts as far as it has gone).
    pub fn unavailable(&self, now: Instant) -> Duration {
        let s = self.lock();
        s.unavailable
            + s.since
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// Every hold's duration so far, µs.
    pub fn durations(&self) -> Histogram<u64> {
        self.lock().durations.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.holds.end_at(self, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn overlapping_holds_for_a_primary_count_once_and_others_not_at_all() {
        let holds = Holds::default();
        let t0 = Instant::now();
        let a = holds.begin_at(true, t0);
        let b = holds.begin_at(true, t0 + S);
        let replica = holds.begin_at(false, t0 + S);
        holds.end_at(&a, t0 + 2 * S);
        std::mem::forget(a);
        // Still one waiting: the period is open.
        assert_eq!(holds.unavailable(t0 + 3 * S), 3 * S);
        holds.end_at(&b, t0 + 4 * S);
        std::mem::forget(b);
        holds.end_at(&replica, t0 + 9 * S);
        std::mem::forget(replica);
        // Closed at 4 s; the replica's wait is not write unavailability.
        assert_eq!(holds.unavailable(t0 + 20 * S), 4 * S);
        let d = holds.durations();
        assert_eq!(d.len(), 3);
        assert!(d.max() >= 7_900_000, "{}", d.max());
        // A later period adds to the first.
        let c = holds.begin_at(true, t0 + 30 * S);
        holds.end_at(&c, t0 + 31 * S);
        std::mem::forget(c);
        assert_eq!(holds.unavailable(t0 + 40 * S), 5 * S);
    }

    #[test]
    fn a_dropped_hold_is_recorded() {
        let holds = Holds::default();
        drop(holds.begin(true));
        assert_eq!(holds.durations().len(), 1);
        assert!(holds.unavailable(Instant::now()) < S);
    }
}
