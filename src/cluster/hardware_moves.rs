//! How the monitor acts on the serving primary's hardware: a `degraded`
//! verdict asks for a planned switchover (with
//! `failover.switchover_on_degraded`, once per episode), a `failing` one
//! lets the failover state machine count the primary as gone; and neither
//! moves a primary that changed less than `switchover.min_interval` ago
//! (the rule is [`pace`]'s; this applies it and tells the timeline, once per
//! held verdict).

use std::time::Instant;

use super::failover::Primary;
use super::hardware::pace::{move_for, Moves};
use super::hardware::HardwareStatus;
use super::switchover::{hardware_trigger, Request, Trigger};
use super::Cluster;
use crate::config::{duration, Config};
use crate::events::EventKind;

/// What the monitor remembers between ticks about hardware and the primary.
#[derive(Debug, Default)]
pub struct HardwareMoves {
    /// When the primary last changed.
    moves: Moves,
    /// The primary a degraded verdict already asked to move, this episode.
    acted: Option<usize>,
    /// The primary and verdict whose held move the timeline was told of.
    told: Option<(usize, HardwareStatus)>,
}

impl HardwareMoves {
    /// Notes who serves and holds back the failing hardware of a primary
    /// that changed less than `min_interval` ago. Before every decision.
    pub fn pace(&mut self, cluster: &Cluster, config: &Config, state: &Primary) {
        let now = Instant::now();
        self.moves.observe(state.serving(), now);
        let waiting = self
            .moves
            .wait(now, config.switchover.min_interval)
            .is_some();
        cluster.hold_hardware(state.serving().filter(|_| waiting));
    }

    /// Asks for the switchover a degraded primary gets, unless held; tells
    /// the timeline of a held move. After each tick's probes.
    pub fn react(&mut self, cluster: &Cluster, config: &Config, state: &Primary) {
        let Some(p) = state.serving() else { return };
        let verdict = cluster.hardware(p);
        let on_degraded = config.failover.switchover_on_degraded;
        let now = Instant::now();
        let wait = self.moves.wait(now, config.switchover.min_interval);
        match (move_for(verdict.status, on_degraded), wait) {
            (Some(what), Some(wait)) => {
                if self.told != Some((p, verdict.status)) {
                    self.told = Some((p, verdict.status));
                    let ago = self.moves.since(now).unwrap_or_default();
                    let msg = format!(
                        "primary hardware {}: no {what} yet, the primary changed {}s ago \
                         (switchover.min_interval = {}); hardware may move it in {}s \
                         (a primary that stops answering is failed over at any time)",
                        verdict.status,
                        ago.as_secs(),
                        duration::format(config.switchover.min_interval),
                        wait.as_secs().max(1)
                    );
                    let name = cluster.nodes()[p].name.clone();
                    cluster
                        .events
                        .record(EventKind::HardwareMoveHeld, Some(&name), msg);
                }
                return;
            }
            (None, _) => self.told = None,
            (Some(_), None) => {}
        }
        match hardware_trigger(verdict.status, on_degraded) {
            Trigger::Rearm => self.acted = None,
            Trigger::Switchover if self.acted != Some(p) => {
                self.acted = Some(p);
                cluster.request_switchover(Request {
                    target: None,
                    reason: format!(
                        "primary hardware {}: {}",
                        verdict.status,
                        verdict.reasons.join("; ")
                    ),
                    reply: None,
                });
            }
            Trigger::Switchover | Trigger::Hold => {}
        }
    }
}
