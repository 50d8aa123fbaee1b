//! One task per node with a hardware probe: probe every `interval`, store
//! the verdict on the cluster, and on a change record an event and wake the
//! monitor (which fails over from a failing node, and switches over from a
//! degraded primary when configured to).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{probe, HardwareSpec, HardwareStatus};
use crate::cluster::Cluster;
use crate::events::EventKind;

/// Starts a watcher for every node that has a probe configured.
pub fn spawn_all(cluster: &Arc<Cluster>, shutdown: &CancellationToken) {
    for (i, node) in cluster.nodes().iter().enumerate() {
        if let Some(spec) = node.hardware.clone() {
            tokio::spawn(watch(cluster.clone(), i, spec, shutdown.clone()));
        }
    }
}

async fn watch(
    cluster: Arc<Cluster>,
    node: usize,
    spec: HardwareSpec,
    shutdown: CancellationToken,
) {
    let name = cluster.nodes()[node].name.clone();
    // The first verdict is always told: an unreachable probe is `unknown`
    // from the start, and the operator must hear of it.
    let mut first = true;
    loop {
        let verdict = tokio::select! {
            v = probe(&spec) => v,
            _ = shutdown.cancelled() => return,
        };
        let status = verdict.status;
        let reasons = verdict.reasons.join("; ");
        let before = cluster.set_hardware(node, verdict);
        if before != status || std::mem::take(&mut first) {
            let kind = match status {
                HardwareStatus::Ok => EventKind::HardwareOk,
                HardwareStatus::Degraded => EventKind::HardwareDegraded,
                HardwareStatus::Failing => EventKind::HardwareFailing,
                HardwareStatus::Unknown => EventKind::HardwareUnknown,
            };
            let msg = if reasons.is_empty() {
                format!("hardware {status} (was {before})")
            } else {
                format!("hardware {status} (was {before}): {reasons}")
            };
            cluster.events.record(kind, Some(&name), msg);
            cluster.nudge();
        }
        tokio::select! {
            _ = tokio::time::sleep(spec.interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
