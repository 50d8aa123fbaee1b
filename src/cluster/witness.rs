//! The witness rule, all pure. The primary counts as failing once it misses
//! a probe, is not up, or its hardware fails ([`primary_failing`], from
//! [`failure_start`] on); from then each replica is watched for signs that it
//! still lives: the replica heard from it, or its received WAL moved.
//! [`Witness`] is that watch, a state machine fed every successful probe of
//! the replica. The monitor keeps one per node and reads [`Witness::fresh`]
//! into the node views, where a fresh witness blocks a promotion.

use std::time::Instant;

use super::decide::witnesses;
use super::failover::Primary;
use super::view::{Probe, Role};

/// Whether the primary counts as failing this tick (and the replicas are
/// watched for signs of it). A serving one does if its probe failed
/// (`answered`: `None` when it was not probed, having been removed by a
/// reload), if it was not up before this probe, or if its hardware says
/// failing; a lost one always does.
pub fn primary_failing(
    state: &Primary,
    answered: Option<bool>,
    up: bool,
    hardware_failing: bool,
) -> bool {
    match (state, answered) {
        (Primary::Serving(_), Some(ok)) => !ok || !up || hardware_failing,
        (Primary::Serving(_), None) | (Primary::Lost { .. }, _) => true,
        (Primary::Discovering | Primary::Promoting { .. } | Primary::Split(_), _) => false,
    }
}

/// When the primary began failing, after a tick that found it `failing`:
/// `quiet_from` when it starts, the same instant while it lasts, none once
/// it serves again.
pub fn failure_start(
    failing: bool,
    before: Option<Instant>,
    quiet_from: Instant,
) -> Option<Instant> {
    match (failing, before) {
        (false, _) => None,
        (true, Some(since)) => Some(since),
        (true, None) => Some(quiet_from),
    }
}

/// One replica's witness state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Witness {
    /// The primary serves (or this node is no replica): nothing to witness.
    #[default]
    Idle,
    /// The primary began failing. `base` is the replica's WAL position at
    /// its first probe since (movement is measured from there); `seen`
    /// whether it has witnessed a live primary since, which holds until the
    /// primary serves again: a primary heard once may be cut off from us only.
    Watching {
        /// WAL position at the first probe after the failure began.
        base: u64,
        /// Witnessed a live primary since.
        seen: bool,
    },
}

impl Witness {
    /// The state after a successful `probe`; `failing_since` is when the
    /// primary began failing, `None` while it serves.
    pub fn after(self, probe: &Probe, failing_since: Option<Instant>) -> Witness {
        let Some(since) = failing_since.filter(|_| probe.role == Role::Replica) else {
            return Witness::Idle;
        };
        let (base, seen) = match self {
            Witness::Idle => (probe.lsn, false),
            Witness::Watching { base, seen } => (base, seen),
        };
        Witness::Watching {
            base,
            seen: seen || witnesses(probe, Some(base), since),
        }
    }

    /// Whether this replica witnesses a live primary.
    pub fn fresh(self) -> bool {
        matches!(self, Witness::Watching { seen: true, .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::view::test_node;
    use std::time::Duration;
    use Witness::*;

    #[test]
    fn the_primary_fails_when_it_misses_a_probe_was_not_up_or_its_hardware_fails() {
        let lost = Primary::Lost {
            old: 0,
            blocked: None,
            promoted: None,
        };
        let promoting = Primary::Promoting {
            old: 0,
            candidate: 1,
            since: Instant::now(),
        };
        let serving = Primary::Serving(0);
        // (state, answered, up before, hardware failing) -> failing
        let cases = [
            (&serving, Some(true), true, false, false, "answered, up"),
            (&serving, Some(false), true, false, true, "missed its probe"),
            (&serving, Some(true), false, false, true, "suspect before"),
            (&serving, Some(true), true, true, true, "hardware failing"),
            (&serving, None, true, false, true, "not probed (removed)"),
            (&lost, None, false, false, true, "lost"),
            (&promoting, None, false, false, false, "promoting"),
            (
                &Primary::Discovering,
                None,
                false,
                false,
                false,
                "no primary yet",
            ),
        ];
        for (state, answered, up, hardware, want, what) in cases {
            assert_eq!(
                primary_failing(state, answered, up, hardware),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn a_failure_starts_once_and_ends_when_the_primary_serves() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        // (failing, started before, quiet from) -> started
        let cases = [
            (false, None, t1, None, "serving"),
            (false, Some(t0), t1, None, "serving again"),
            (true, None, t1, Some(t1), "starts"),
            (true, Some(t0), t1, Some(t0), "goes on"),
        ];
        for (failing, before, quiet_from, want, what) in cases {
            assert_eq!(failure_start(failing, before, quiet_from), want, "{what}");
        }
    }

    #[test]
    fn a_replica_witnesses_from_the_failure_on_until_the_primary_serves() {
        let t0 = Instant::now();
        let since = Some(t0 + Duration::from_secs(1));
        let (before, after) = (Some(t0), Some(t0 + Duration::from_secs(2)));
        let w = |base, seen| Watching { base, seen };
        let probe = |role, lsn, streaming, heard| {
            let mut p = test_node("r", role, 1, lsn).probe.unwrap();
            p.streaming = streaming;
            p.last_heard = heard;
            p
        };
        let replica = |lsn, streaming, heard| probe(Role::Replica, lsn, streaming, heard);
        // (state, probe, primary failing since) -> next state
        let cases = [
            (
                Idle,
                replica(100, true, after),
                None,
                Idle,
                "primary serves",
            ),
            (
                w(100, true),
                replica(100, true, None),
                None,
                Idle,
                "serves again: reset",
            ),
            (
                w(100, true),
                probe(Role::Primary, 100, false, None),
                since,
                Idle,
                "promoted",
            ),
            (
                Idle,
                replica(100, true, before),
                since,
                w(100, false),
                "first probe: the base",
            ),
            (
                Idle,
                replica(100, true, after),
                since,
                w(100, true),
                "first probe, heard since",
            ),
            (
                w(100, false),
                replica(150, true, None),
                since,
                w(100, true),
                "its WAL moved",
            ),
            (
                w(100, false),
                replica(150, false, None),
                since,
                w(100, false),
                "not streaming",
            ),
            (
                w(100, false),
                replica(100, true, before),
                since,
                w(100, false),
                "silent",
            ),
            (
                w(100, true),
                replica(100, true, before),
                since,
                w(100, true),
                "once seen, it holds",
            ),
        ];
        for (state, probe, failing_since, want, what) in cases {
            let next = state.after(&probe, failing_since);
            assert_eq!(next, want, "{what}");
            assert_eq!(next.fresh(), matches!(want, Watching { seen: true, .. }));
        }
    }
}
