//! A switchover run by another proxy, as this one takes part in it (with
//! coordination): hold new transactions, drain the running ones on the old
//! primary, acknowledge, and release once the routing follows the record.
//! The rule is pure ([`coord::switch::peer_switch`]); this is its I/O. A
//! proxy that comes to lead while a previous leader's switchover was left
//! half done tidies it up here too.

use std::time::{Duration, Instant};

use super::actuate::{drain, make_writable, publish};
use super::coord::switch::{peer_switch, PeerSwitch};
use super::coord::Coordination;
use super::failover::Primary;
use super::track::Track;
use super::Cluster;
use crate::config::Config;
use crate::events::EventKind;

/// Longest a promotion may take once announced (as in a switchover run here).
const PROMOTION_BOUND: Duration = Duration::from_secs(30);

/// This proxy's part in the other proxies' switchovers, across ticks.
#[derive(Debug, Default)]
pub(super) struct PeerSwitchover {
    /// The switchover we last drained for.
    drained: Option<u64>,
    /// Since when new transactions are held for it.
    held_since: Option<Instant>,
}

impl PeerSwitchover {
    /// One tick's part, after the monitor's decision: `leads` says whether
    /// this proxy is the one that runs switchovers.
    pub(super) async fn tick(
        &mut self,
        cluster: &Cluster,
        config: &Config,
        coord: &Coordination,
        tracks: &mut [Track],
        state: &Primary,
        leads: bool,
    ) {
        if leads {
            self.release(cluster, config, tracks, state, false);
            return;
        }
        let nodes = cluster.nodes();
        let serving = state.serving().map(|p| nodes[p].name.as_str());
        let record = coord.record();
        let s = &config.switchover;
        let bound = s.drain_timeout + s.catchup_timeout + PROMOTION_BOUND;
        let now = Instant::now();
        match peer_switch(
            record.as_ref(),
            serving,
            self.drained,
            self.held_since,
            now,
            bound,
        ) {
            PeerSwitch::Route | PeerSwitch::Hold => {}
            PeerSwitch::Drain(sw) => {
                let Some(old) = state.serving() else { return };
                cluster.set_writes_held(true);
                publish(cluster, config, tracks, state);
                self.held_since.get_or_insert(now);
                let busy = drain(cluster, old, s.drain_timeout).await;
                coord.acknowledge(sw.id);
                self.drained = Some(sw.id);
                let msg = match busy {
                    0 => format!("held for the leader's switchover to {}: running transactions finished", sw.to),
                    n => format!("held for the leader's switchover to {}: {n} transaction(s) still running after the drain timeout were cancelled", sw.to),
                };
                let name = &nodes[old].name;
                cluster
                    .events
                    .record(EventKind::SwitchoverStep, Some(name), msg);
            }
            PeerSwitch::Release { expired } => {
                self.release(cluster, config, tracks, state, expired)
            }
        }
    }

    fn release(
        &mut self,
        cluster: &Cluster,
        config: &Config,
        tracks: &[Track],
        state: &Primary,
        expired: bool,
    ) {
        if self.held_since.take().is_none() {
            return;
        }
        cluster.set_writes_held(false);
        publish(cluster, config, tracks, state);
        if expired {
            let msg = "the leader's switchover did not finish in time: new transactions are no longer held";
            cluster.events.record(EventKind::ActionFailed, None, msg);
        }
    }
}

/// As the new leader: a switchover a previous leader announced from the
/// primary we still serve never reached its promotion (or we would follow
/// the promoted node). The old primary may have been made read-only: make
/// it writable again, and the next record calls the switchover off.
pub(super) async fn finish_interrupted(
    cluster: &Cluster,
    config: &Config,
    coord: &Coordination,
    tracks: &mut [Track],
    state: &Primary,
) {
    let Some(p) = state.serving() else { return };
    let name = cluster.nodes()[p].name.clone();
    let interrupted = coord
        .record()
        .and_then(|r| r.switching)
        .filter(|sw| sw.from == name);
    let Some(sw) = interrupted else { return };
    let timeout = config.health.timeout;
    let msg = match make_writable(&mut tracks[p].checker, timeout).await {
        Ok(_) => format!(
            "a previous leader's switchover to {} stopped before its promotion: called off, {name} takes writes again",
            sw.to
        ),
        Err(e) => format!(
            "a previous leader's switchover to {} stopped before its promotion; making {name} writable again failed: {e}",
            sw.to
        ),
    };
    cluster
        .events
        .record(EventKind::SwitchoverFailed, Some(&name), msg);
}
