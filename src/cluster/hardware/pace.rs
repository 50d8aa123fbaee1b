//! How often hardware may move the primary. However many readings confirm
//! it, a hardware verdict is still the word of an exporter: one that lies,
//! or a fleet of them, must not be able to bounce the primary from node to
//! node. So a verdict that would move it (a failover for `failing`, a
//! switchover for `degraded` with `failover.switchover_on_degraded`) is held
//! while the primary changed less than `switchover.min_interval` ago, by
//! whatever cause. Health checks are not held: a primary that stops
//! answering is failed over as always. Pure: the monitor keeps [`Moves`].

use std::time::{Duration, Instant};

use super::HardwareStatus;

/// When the primary last changed, as the monitor saw it.
#[derive(Debug, Default, Clone)]
pub struct Moves {
    /// The last node seen serving.
    serving: Option<usize>,
    /// When a node other than the one before it was first seen serving.
    last: Option<Instant>,
}

impl Moves {
    /// Notes who serves at `now` (`None`: nobody, mid-failover). A node
    /// other than the last one seen serving is a move; the first one is not.
    pub fn observe(&mut self, serving: Option<usize>, now: Instant) {
        let Some(node) = serving else { return };
        if self.serving.is_some_and(|was| was != node) {
            self.last = Some(now);
        }
        self.serving = Some(node);
    }

    /// How long hardware must still wait before it may move the primary;
    /// `None` when it may now.
    pub fn wait(&self, now: Instant, min_interval: Duration) -> Option<Duration> {
        let since = now.saturating_duration_since(self.last?);
        min_interval.checked_sub(since).filter(|d| !d.is_zero())
    }

    /// How long ago the primary last changed.
    pub fn since(&self, now: Instant) -> Option<Duration> {
        self.last.map(|at| now.saturating_duration_since(at))
    }
}

/// What a hardware verdict on the serving primary would do to it:
/// `failover` for `failing`, `switchover` for `degraded` when configured so.
pub fn move_for(status: HardwareStatus, switchover_on_degraded: bool) -> Option<&'static str> {
    match status {
        HardwareStatus::Failing => Some("failover"),
        HardwareStatus::Degraded if switchover_on_degraded => Some("switchover"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_waits_min_interval_after_any_move() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let min = s(300);
        let mut m = Moves::default();
        // (who serves, seconds after t0, wait left then)
        let cases = [
            (Some(0), 0, None),   // the first primary is no move
            (Some(0), 400, None), // nor is the same one later
            (None, 401, None),    // a failover under way
            (Some(1), 402, Some(300)),
            (Some(1), 502, Some(200)),
            (Some(1), 702, None), // exactly min_interval later
            (Some(0), 800, Some(300)),
            (Some(0), 1099, Some(1)),
            (Some(0), 1100, None),
        ];
        for (serving, at, want) in cases {
            let now = t0 + s(at);
            m.observe(serving, now);
            assert_eq!(m.wait(now, min), want.map(s), "{serving:?} at {at}");
        }
        assert_eq!(m.since(t0 + s(1100)), Some(s(300)));
        // 0s holds nothing.
        m.observe(Some(1), t0 + s(1200));
        assert_eq!(m.wait(t0 + s(1200), Duration::ZERO), None);
    }

    #[test]
    fn which_verdicts_move_the_primary() {
        use HardwareStatus::*;
        let cases = [
            (Failing, false, Some("failover")),
            (Failing, true, Some("failover")),
            (Degraded, true, Some("switchover")),
            (Degraded, false, None),
            (Unknown, true, None),
            (Ok, true, None),
        ];
        for (status, on_degraded, want) in cases {
            assert_eq!(
                move_for(status, on_degraded),
                want,
                "{status} {on_degraded}"
            );
        }
    }
}
