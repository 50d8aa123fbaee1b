//! What the monitor keeps per node between ticks ([`Track`]), and the node
//! views the decision logic reads from it. Shared by the monitor loop, the
//! actions it runs and the planned switchover, so none of them needs another.

use std::time::Instant;

use super::decide::witnesses;
use super::hardware::HardwareStatus;
use super::health::Checker;
use super::view::{Health, NodeView, Probe, Role};
use super::Cluster;
use crate::pool::server_conn::Login;

/// What the monitor keeps per node.
pub(crate) struct Track {
    /// The node's check connection (probes and control statements).
    pub(crate) checker: Checker,
    pub(crate) health: Health,
    /// The last successful probe.
    pub(crate) probe: Option<Probe>,
    /// Never routed to until re-admitted.
    pub(crate) fenced: bool,
    /// The replica's position at its first probe after the primary began failing.
    witness_base: Option<u64>,
    witness_fresh: bool,
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
            fenced: false,
            witness_base: None,
            witness_fresh: false,
        }
    }

    /// A replica witnesses a live primary if, after the primary began
    /// failing, it heard from upstream or its received WAL moved (see
    /// [`witnesses`]). Once seen, it holds until the primary serves again.
    pub(super) fn update_witness(&mut self, probe: &Probe, failing_since: Option<Instant>) {
        let Some(since) = failing_since.filter(|_| probe.role == Role::Replica) else {
            self.witness_base = None;
            self.witness_fresh = false;
            return;
        };
        let base = *self.witness_base.get_or_insert(probe.lsn);
        self.witness_fresh |= witnesses(probe, Some(base), since);
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
            witness_fresh: t.witness_fresh,
            // A removed node is out of every decision, like a fenced one.
            fenced: t.fenced || cluster.is_removed(i),
            hardware_failing: cluster.hardware(i).status == HardwareStatus::Failing,
        })
        .collect()
}
