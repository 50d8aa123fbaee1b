//! Percentiles over the last minute and the last five minutes. The
//! histograms kept by `latency` and `holds` count since start (what
//! Prometheus wants); a snapshot of them every `STEP` lets a reader subtract
//! the one from a window ago. Nothing on the hot path changes.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// How often a snapshot is taken: windows are this much coarse.
pub const STEP: Duration = Duration::from_secs(10);

/// The windows shown, by name.
pub const WINDOWS: [(&str, Duration); 2] = [
    ("1m", Duration::from_secs(60)),
    ("5m", Duration::from_secs(300)),
];

const LONGEST: Duration = WINDOWS[1].1;

/// Snapshots of cumulative histograms, oldest first, reaching just past the
/// longest window.
#[derive(Default)]
pub struct Recent {
    ring: Mutex<VecDeque<(Instant, Vec<Histogram<u64>>)>>,
}

/// What one window's samples say, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// Samples in the window.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
}

impl Recent {
    /// Keeps `hists` (cumulative, in a fixed order) as taken at `at`, and
    /// forgets what no window reaches any more.
    pub fn push(&self, at: Instant, hists: Vec<Histogram<u64>>) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.push_back((at, hists));
        // The oldest stays while the next one is too young to serve the
        // longest window on its own.
        while ring
            .get(1)
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) >= LONGEST)
        {
            ring.pop_front();
        }
    }

    /// The samples of the last `window` up to `now`, where `current` are the
    /// cumulative histograms now (same order as pushed). A proxy younger than
    /// the window answers with everything since start.
    pub fn last(
        &self,
        current: &[Histogram<u64>],
        now: Instant,
        window: Duration,
    ) -> Vec<Histogram<u64>> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let times: Vec<Instant> = ring.iter().map(|(t, _)| *t).collect();
        let mut out = current.to_vec();
        if let Some(i) = base(&times, now, window) {
            for (h, old) in out.iter_mut().zip(&ring[i].1) {
                // Counts only grow, so the older snapshot always fits.
                let _ = h.subtract(old);
            }
        }
        out
    }
}

/// The newest snapshot at least `window` old, if any.
fn base(times: &[Instant], now: Instant, window: Duration) -> Option<usize> {
    times
        .iter()
        .rposition(|t| now.saturating_duration_since(*t) >= window)
}

/// `h`'s percentiles, µs samples shown in seconds.
pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let at = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1e6
        }
    };
    Percentiles {
        count: h.len(),
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        p999: at(0.999),
        max: if h.is_empty() {
            0.0
        } else {
            h.max() as f64 / 1e6
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(samples: &[u64]) -> Histogram<u64> {
        let mut h = super::super::latency::new_histogram();
        for &s in samples {
            h.record(s).unwrap();
        }
        h
    }

    #[test]
    fn the_base_is_the_newest_snapshot_old_enough() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let times = [t0, t0 + 10 * s, t0 + 20 * s];
        for (now, window, want) in [
            (t0 + 25 * s, 60 * s, None),
            (t0 + 70 * s, 60 * s, Some(1)),
            (t0 + 80 * s, 60 * s, Some(2)),
            (t0 + 15 * s, 5 * s, Some(1)),
            (t0 + 5 * s, 5 * s, Some(0)),
        ] {
            assert_eq!(base(&times, now, window), want, "{:?}", now - t0);
        }
    }

    #[test]
    fn a_window_holds_only_its_samples_and_old_snapshots_go() {
        let r = Recent::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        r.push(t0, vec![hist(&[1000; 5])]);
        r.push(t0 + 60 * s, vec![hist(&[1000; 8])]);
        let now = vec![hist(&[
            1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 90_000,
        ])];
        let last = r.last(&now, t0 + 65 * s, 60 * s);
        assert_eq!(last[0].len(), 4, "3 of the first minute's, then one slow");
        let p = percentiles(&last[0]);
        assert!((p.max - 0.09).abs() < 0.001, "{p:?}");
        assert_eq!(r.last(&now, t0 + 125 * s, 60 * s)[0].len(), 1);
        // Six minutes on, only what reaches back five minutes stays.
        for i in 2..40u32 {
            r.push(t0 + i * 10 * s, vec![hist(&[1000; 8])]);
        }
        let ring = r.ring.lock().unwrap();
        let span = ring.back().unwrap().0 - ring.front().unwrap().0;
        assert!(span >= LONGEST && span < LONGEST + STEP, "{span:?}");
    }

    #[test]
    fn empty_windows_read_as_zero() {
        let p = percentiles(&hist(&[]));
        assert_eq!((p.count, p.p99, p.max), (0, 0.0, 0.0));
    }
}
