//! One task per node with a hardware probe: probe every `interval` (or at
//! once when the monitor asks: the node's health check is running late),
//! store the verdict in force on the cluster (a worse reading is in force
//! once `failing_after` readings in a row say so: `confirm`), and on a change
//! record an event and wake the monitor (which fails over from a failing
//! node, and switches over from a degraded primary when configured to).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::confirm::{shown, Readings};
use super::{probe, HardwareSpec, HardwareStatus, Verdict};
use crate::cluster::Cluster;
use crate::events::EventKind;

/// Starts a watcher for every live node with a probe and none running
/// (at start, and for nodes or probes a reload added).
pub fn spawn_new(cluster: &Arc<Cluster>, shutdown: &CancellationToken) {
    for (i, node) in cluster.nodes().iter().enumerate() {
        if node.hardware.is_some() && !cluster.is_removed(i) && cluster.claim_watch(i) {
            tokio::spawn(watch(cluster.clone(), i, shutdown.clone()));
        }
    }
}

/// The node's probe as configured now; `None` once it was removed.
fn spec(cluster: &Cluster, node: usize) -> Option<HardwareSpec> {
    if cluster.is_removed(node) {
        return None;
    }
    cluster.nodes()[node].hardware.clone()
}

async fn watch(cluster: Arc<Cluster>, node: usize, shutdown: CancellationToken) {
    let name = cluster.nodes()[node].name.clone();
    // The first verdict is always told: an unreachable probe is `unknown`
    // from the start, and the operator must hear of it.
    let mut first = true;
    let mut readings = Readings::default();
    // The spec is read each round, so a reload's change applies at once.
    while let Some(spec) = spec(&cluster, node) {
        let reading = tokio::select! {
            v = probe(&spec) => v,
            _ = shutdown.cancelled() => break,
        };
        let in_force = confirm(&mut readings, &name, reading, &spec);
        report(&cluster, node, &name, in_force, std::mem::take(&mut first));
        // The monitor asks early while the node's health check runs late:
        // the node's silence is evidence of its own, so then the readings
        // that confirm a finding come as fast as it asks. A node that
        // answers is never asked, and a finding about it is confirmed one
        // interval per reading.
        tokio::select! {
            _ = tokio::time::sleep(spec.interval) => {}
            _ = cluster.hardware_probe_asked(node) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    cluster.release_watch(node);
}

/// Adds `reading` to the node's readings; returns the verdict in force.
fn confirm(readings: &mut Readings, name: &str, reading: Verdict, spec: &HardwareSpec) -> Verdict {
    let needed = usize::try_from(spec.failing_after).unwrap_or(usize::MAX);
    let acted = readings.push(reading.status, needed);
    let verdict = shown(acted, reading, readings.streak(), needed);
    if verdict.status != readings_newest(readings) {
        tracing::warn!(node = %name, reasons = ?verdict.reasons, "hardware reading not acted on yet");
    }
    verdict
}

fn readings_newest(readings: &Readings) -> HardwareStatus {
    readings.newest().unwrap_or(HardwareStatus::Unknown)
}

/// Stores a verdict; a change (or the first one) is an event and wakes the monitor.
fn report(cluster: &Cluster, node: usize, name: &str, verdict: super::Verdict, first: bool) {
    let status = verdict.status;
    let reasons = verdict.reasons.join("; ");
    let before = cluster.set_hardware(node, verdict);
    if before == status && !first {
        return;
    }
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
    cluster.events.record(kind, Some(name), msg);
    cluster.nudge();
}
