//! The witness rule, per replica: once the primary stops answering us, does
//! this replica show that it still lives (it heard from it, or its received
//! WAL moved)? A state machine fed every successful probe; pure. The
//! monitor keeps one per node and reads [`Witness::fresh`] into the node
//! views, where a fresh witness blocks a promotion.

use std::time::Instant;

use super::decide::witnesses;
use super::view::{Probe, Role};

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
