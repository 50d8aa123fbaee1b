//! What the monitor keeps per node between ticks ([`Track`]), how a probe
//! result updates it (the rules are pure, in `decide` and `witness`; this
//! applies them), and the node views the decision logic reads from it.
//! Shared by the monitor loop, the actions it runs and the planned
//! switchover, so none of them needs another.

use super::decide::{react, DownBecause, NodeEvent, Probed};
use super::health::{Checker, ProbeError};
use super::view::{Health, NodeView, Probe};
use super::witness::{Failure, Witness};
use super::Cluster;
use crate::events::EventKind;
use crate::server::Login;

/// What the monitor keeps per node.
pub(crate) struct Track {
    /// The node's check connection (probes and control statements).
    pub(crate) checker: Checker,
    pub(crate) health: Health,
    /// The last successful probe.
    pub(crate) probe: Option<Probe>,
    /// The primary it was last repointed at, and when.
    pub(crate) repointed: Option<(usize, std::time::Instant)>,
    /// What it witnesses of a primary that stopped answering us.
    witness: Witness,
    /// Probes failed in a row.
    failed_in_row: u32,
    /// Down on its replicas' silence alone, with fewer than
    /// `failure_threshold` probes failed: its connections are kept (it may
    /// be a live primary that stalled) until a promotion is sent, or the
    /// threshold is reached, or it answers again.
    pub(crate) down_on_silence: bool,
    /// `node_down` was recorded for the node's current time down (not
    /// while it was only suspect).
    down_said: bool,
}

impl Track {
    pub(super) fn new(
        node: &crate::config::Node,
        login: &Login,
        tls: &crate::tls::SharedConnector,
    ) -> Track {
        Track {
            checker: Checker::new(node.addr.clone(), login.clone(), tls.clone()),
            health: Health::Unknown,
            probe: None,
            repointed: None,
            witness: Witness::Idle,
            failed_in_row: 0,
            down_on_silence: false,
            down_said: false,
        }
    }

    /// Forgets what the node's checks said: unknown until the next one
    /// answers, as at start.
    pub(crate) fn forget(&mut self) {
        self.health = Health::Unknown;
        self.probe = None;
    }

    /// Counts the node down without a probe (the caller records why).
    pub(crate) fn mark_down(&mut self) {
        self.health = Health::Down;
        self.down_said = true;
    }

    /// Applies node `i`'s probe result: its health follows the
    /// [`react`] rules, a successful probe is kept (and read for
    /// witnessing), and changes are events. A node whose role changed, or
    /// that went down, has its connections closed. `corroborated`: the
    /// replicas heard nothing from this (serving primary) since its probe.
    /// `failure`: the primary's, while it fails.
    pub(super) fn record(
        &mut self,
        cluster: &Cluster,
        i: usize,
        result: Result<Probe, ProbeError>,
        corroborated: bool,
        threshold: u32,
        failure: Option<&Failure>,
    ) {
        let probed = match &result {
            Ok(p) => Probed::Answered(p.role),
            Err(_) => Probed::Failed { corroborated },
        };
        let last_role = self.probe.as_ref().map(|p| p.role);
        let reaction = react(self.health, last_role, probed, threshold);
        self.health = reaction.health();
        self.failed_in_row = match result {
            Ok(_) => 0,
            Err(_) => self.failed_in_row.saturating_add(1),
        };
        let silent = matches!(
            reaction.event(),
            Some(NodeEvent::Down(DownBecause::Corroborated))
        );
        self.down_on_silence = (self.down_on_silence || silent) && self.health == Health::Down;
        // Down on silence alone: its transactions in flight finish if it
        // only stalled. Past the threshold it is down by any measure.
        let past_threshold = self.down_on_silence && self.failed_in_row >= threshold;
        if past_threshold {
            self.down_on_silence = false;
        }
        if (reaction.retire() && !silent) || past_threshold {
            // Connections made under its old role, or to a node now down, are stale.
            cluster.retire(i);
        }
        let name = &cluster.nodes()[i].name;
        let failed = match result {
            Ok(probe) => {
                self.witness = self.witness.after(&probe, failure);
                self.probe = Some(probe);
                None
            }
            Err(e) => {
                tracing::debug!(node = %name, error = %e, "probe failed");
                Some(e)
            }
        };
        let (said, down_said) = say(
            reaction.event(),
            self.health == Health::Down && self.failed_in_row >= threshold,
            self.down_said,
        );
        self.down_said = down_said;
        let Some(kind) = said else {
            return;
        };
        // The failure itself, so that an operator reading the timeline
        // can tell a refused connection from a slow answer.
        let last = failed.map_or_else(String::new, |e| format!(" ({e})"));
        let why = match kind {
            EventKind::NodeSuspect => format!(
                "health check failed{last} and no replica has heard from it since: \
                 new transactions wait, the running ones go on"
            ),
            EventKind::NodeDown => format!("{threshold} consecutive health checks failed{last}"),
            _ => "health check passed".into(),
        };
        cluster.events.record(kind, Some(name), why);
    }
}

/// What the timeline says of a node after a probe (`reaction`, and
/// whether it is down with `failure_threshold` probes failed in a row),
/// and whether `node_down` now stands said for its time down. A primary
/// down on its replicas' silence alone is only `node_suspect`: it may have
/// stalled, and pages nobody. It is `node_down` at the threshold, like
/// any node, whether or not it was suspect first.
fn say(
    reaction: Option<NodeEvent>,
    down_by_threshold: bool,
    down_said: bool,
) -> (Option<EventKind>, bool) {
    match reaction {
        Some(NodeEvent::Up) => (Some(EventKind::NodeUp), false),
        Some(NodeEvent::Down(DownBecause::Corroborated)) => (Some(EventKind::NodeSuspect), false),
        Some(NodeEvent::Down(DownBecause::Threshold)) => (Some(EventKind::NodeDown), true),
        None if down_by_threshold && !down_said => (Some(EventKind::NodeDown), true),
        None => (None, down_said),
    }
}

/// What the decision logic sees of each node now.
pub(super) fn views(cluster: &Cluster, tracks: &[Track]) -> Vec<NodeView> {
    cluster
        .nodes()
        .iter()
        .zip(tracks)
        .enumerate()
        .map(|(i, (n, t))| NodeView {
            name: n.name.clone(),
            priority: n.priority,
            health: t.health,
            probe: t.probe.clone(),
            witness: t.witness.testimony(),
            // A removed node is out of every decision, like a fenced one.
            fenced: cluster.is_fenced(i) || cluster.is_removed(i),
            hardware_failing: cluster.hardware_gone(i),
            down_on_silence: t.down_on_silence,
            repointed: t.repointed,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primary_down_on_silence_is_suspect_until_the_threshold() {
        use EventKind::{NodeDown as Down, NodeSuspect as Suspect, NodeUp as Up};
        let corroborated = Some(NodeEvent::Down(DownBecause::Corroborated));
        let threshold = Some(NodeEvent::Down(DownBecause::Threshold));
        // (reaction, down by the threshold now, node_down said before)
        //   -> (event, node_down said after)
        let table = [
            ((corroborated, false, false), (Some(Suspect), false)),
            // Still failing, below the threshold: nothing more to say.
            ((None, false, false), (None, false)),
            // It reaches the threshold: down, once.
            ((None, true, false), (Some(Down), true)),
            ((None, true, true), (None, true)),
            // It answers again: up, whether it was suspect or down.
            ((Some(NodeEvent::Up), false, false), (Some(Up), false)),
            ((Some(NodeEvent::Up), false, true), (Some(Up), false)),
            // Any node down by the threshold straight away.
            ((threshold, true, false), (Some(Down), true)),
        ];
        for ((reaction, by_threshold, said), want) in table {
            assert_eq!(
                say(reaction, by_threshold, said),
                want,
                "{reaction:?} {by_threshold} {said}"
            );
        }
    }
}
