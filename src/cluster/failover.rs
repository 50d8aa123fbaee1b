//! The primary's state machine. `step` takes the current state and the node
//! views and returns the next state plus the actions to perform; the monitor
//! (async) gathers views and performs actions. Every safety rule in
//! docs/failover.md is a table test of `step` below.

use std::time::{Duration, Instant};

use super::decide::{
    choose_candidate, highest_timeline, reported_primary, split_primaries, stray_replicas,
    to_fence, Blocked,
};
use super::view::{Health, NodeView, Role};
use crate::config::FailoverMode;
use crate::events::EventKind;

/// Where the primary stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Primary {
    /// No primary known yet (startup): nothing is routed for writes.
    Discovering,
    /// This node takes writes.
    Serving(usize),
    /// The primary is down and no replacement serves yet.
    Lost {
        /// The node that was primary.
        old: usize,
        /// Why promotion is not running, once said (to avoid repeating it every tick).
        blocked: Option<Blocked>,
        /// A promotion was sent to this node since `old` was lost. From
        /// then on `old` never takes writes again: the promotion may still
        /// complete, and whatever `old` took meanwhile would be lost.
        promoted: Option<usize>,
        /// `failover_started` was recorded. Not while the primary is down
        /// on its replicas' silence alone with nothing sent in its place:
        /// it may only have stalled, and if it answers again it serves on
        /// with nothing on the timeline but `node_suspect` and `node_up`.
        started: bool,
    },
    /// Two or more nodes report primary on one timeline: none takes writes
    /// until only one is left (one stopped or fenced by an operator).
    Split(Vec<usize>),
    /// `pg_promote()` was started on `candidate`.
    Promoting {
        /// The node that was primary.
        old: usize,
        /// The replica being promoted.
        candidate: usize,
        /// When promotion started.
        since: Instant,
    },
}

impl Primary {
    /// The node that takes writes now, if any.
    pub fn serving(&self) -> Option<usize> {
        match self {
            Primary::Serving(p) => Some(*p),
            _ => None,
        }
    }
}

/// Something the monitor must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Before promoting `candidate`: wait, bounded, until it has replayed
    /// what the old primary, which still answers, has flushed.
    CatchUp {
        /// The replica about to be promoted.
        candidate: usize,
        /// The old primary.
        old: usize,
    },
    /// Run `pg_promote()` on this node.
    Promote(usize),
    /// Point this replica's `primary_conninfo` at `primary`.
    Repoint {
        /// The replica to repoint.
        replica: usize,
        /// The new primary.
        primary: usize,
    },
    /// Never route to this node again (until re-admitted).
    Fence(usize),
    /// Close every server connection to this node now.
    CloseConns(usize),
    /// Clear `synchronous_standby_names` on this new primary if no standby is connected.
    ClearSyncStandby(usize),
    /// Run `failover.fence_command` for this old primary.
    FenceCommand(usize),
    /// Record an event.
    Event(EventKind, Option<usize>, String),
}

/// The settings `step` needs.
#[derive(Debug, Clone)]
pub struct FailoverSettings {
    /// promote | follow | off.
    pub mode: FailoverMode,
    /// Largest lag (bytes) of a promotable replica.
    pub max_lag_bytes: u64,
    /// Repoint the other replicas after a promotion.
    pub repoint_replicas: bool,
    /// Clear `synchronous_standby_names` on the new primary.
    pub clear_sync_standby: bool,
    /// A fence command is configured.
    pub fence_command: bool,
    /// Give up on a promotion that has not shown after this long.
    pub promote_timeout: Duration,
    /// A promotion the leader sent, as the shared record says: while it
    /// stands, its old primary takes no writes from any proxy (it may
    /// still complete) and no other node is promoted.
    pub promotion_sent: Option<SentPromotion>,
    /// Something else (Patroni) appoints the primary: only this node may
    /// take writes, and Switchyard fences nothing of its own accord.
    pub appointed: Option<Appointed>,
}

/// The primary as another system appoints it (Patroni's leader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appointed {
    /// The node that may take writes once it reports primary (not while
    /// it drains); none while there is no leader.
    pub node: Option<usize>,
    /// It must report a timeline this high or higher.
    pub min_timeline: u32,
    /// A switchover was asked: no new transaction starts on the leader,
    /// and the ones running finish (their connections are not closed).
    pub draining: bool,
}

/// `pg_promote()` was sent to `candidate` in place of `old` (node indices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentPromotion {
    /// The primary being replaced.
    pub old: usize,
    /// The node the promotion was sent to.
    pub candidate: usize,
}

impl FailoverSettings {
    /// The node a promotion was sent to in place of `old`, if one was.
    fn sent_in_place_of(&self, old: usize) -> Option<usize> {
        self.promotion_sent
            .filter(|s| s.old == old && s.candidate != old)
            .map(|s| s.candidate)
    }

    /// Whether `i` may take writes as far as the appointing system says:
    /// its leader, not draining, on no timeline below one it published or
    /// one any node reports.
    fn may_write(&self, i: usize, nodes: &[NodeView]) -> bool {
        self.appointed.is_none_or(|a| {
            let floor = a.min_timeline.max(highest_timeline(nodes));
            a.node == Some(i) && !a.draining && nodes[i].timeline() >= floor
        })
    }

    /// The node that reports primary and may take writes: the appointed
    /// one, or the one on the highest timeline.
    fn writable_primary(&self, nodes: &[NodeView]) -> Option<usize> {
        reported_primary(nodes).filter(|&p| self.may_write(p, nodes))
    }
}

/// One decision step.
pub fn step(
    state: &Primary,
    nodes: &[NodeView],
    now: Instant,
    cfg: &FailoverSettings,
) -> (Primary, Vec<Action>) {
    let mut actions = vec![];
    // An appointing system demotes a primary it replaced itself, and the
    // node then serves again: a fence would need an operator.
    let fencing = if cfg.appointed.is_some() {
        vec![]
    } else {
        to_fence(nodes)
    };
    for i in fencing {
        let msg = format!(
            "node reports primary on timeline {} below the highest seen; fenced",
            nodes[i].timeline()
        );
        actions.extend([
            Action::Fence(i),
            Action::CloseConns(i),
            Action::Event(EventKind::NodeFenced, Some(i), msg),
        ]);
    }
    let fenced_now: Vec<usize> = actions
        .iter()
        .filter_map(|a| {
            if let Action::Fence(i) = a {
                Some(*i)
            } else {
                None
            }
        })
        .collect();
    let usable = |i: usize| {
        !fenced_now.contains(&i)
            && nodes[i].live_role() == Some(Role::Primary)
            && cfg.may_write(i, nodes)
    };
    let split: Vec<usize> = split_primaries(nodes)
        .into_iter()
        .filter(|i| !fenced_now.contains(i))
        .collect();
    if split.len() > 1 {
        return (split_brain(state, split, nodes, &mut actions), actions);
    }
    let next = match state {
        Primary::Discovering | Primary::Split(_) => {
            match reported_primary(nodes).filter(|&p| usable(p)) {
                // A proxy that starts (or ends a split) mid-failover does
                // not adopt the primary a promotion is replacing.
                Some(p) if cfg.sent_in_place_of(p).is_some() => {
                    // The failover is under way: joining it is not starting one.
                    let was = Was {
                        old: p,
                        blocked: None,
                        promoted: None,
                        started: true,
                    };
                    lost(was, nodes, now, cfg, &mut actions)
                }
                Some(p) => {
                    let msg = match state {
                        Primary::Split(_) => "the only primary on its timeline now",
                        _ => "primary discovered",
                    };
                    actions.push(Action::Event(EventKind::WritesResumed, Some(p), msg.into()));
                    Primary::Serving(p)
                }
                None => state.clone(),
            }
        }
        Primary::Serving(p) => serving(*p, nodes, &fenced_now, now, cfg, &mut actions),
        Primary::Lost {
            old,
            blocked,
            promoted,
            started,
        } => {
            let was = Was {
                old: *old,
                blocked: blocked.as_ref(),
                promoted: *promoted,
                started: *started,
            };
            lost(was, nodes, now, cfg, &mut actions)
        }
        Primary::Promoting {
            old,
            candidate,
            since,
        } => {
            if usable(*candidate) {
                took_over(*candidate, Some(*old), nodes, cfg, &mut actions)
            } else if now.duration_since(*since) > cfg.promote_timeout
                || nodes[*candidate].health == Health::Down
            {
                let msg = "promotion did not complete; choosing again".to_string();
                actions.push(Action::Event(
                    EventKind::ActionFailed,
                    Some(*candidate),
                    msg,
                ));
                Primary::Lost {
                    old: *old,
                    blocked: None,
                    promoted: Some(*candidate),
                    started: true,
                }
            } else {
                state.clone()
            }
        }
    };
    (next, actions)
}

fn serving(
    p: usize,
    nodes: &[NodeView],
    fenced_now: &[usize],
    now: Instant,
    cfg: &FailoverSettings,
    actions: &mut Vec<Action>,
) -> Primary {
    let node = &nodes[p];
    // The leader sent pg_promote() in place of it (another proxy saw it
    // down, or this one became leader since): whatever it takes now may be
    // lost when the promotion completes.
    let replaced = cfg.sent_in_place_of(p);
    let still_primary = replaced.is_none()
        && !fenced_now.contains(&p)
        && node.live_role() == Some(Role::Primary)
        && cfg.may_write(p, nodes);
    if !still_primary {
        let draining = cfg.appointed.is_some_and(|a| a.draining) && node.live_role().is_some();
        let why = match (
            node.fenced || fenced_now.contains(&p),
            node.health,
            node.probe.as_ref().map(|x| x.role),
        ) {
            _ if replaced.is_some() => "a promotion was sent in place of the primary",
            (true, _, _) => "primary fenced",
            // Gone, whether it still answers or not: nothing is asked of it
            // (no drain, no read-only step), its replacement is promoted.
            _ if node.hardware_failing => "primary hardware failing: the node counts as gone",
            (_, Health::Down, _) => "primary is down",
            (_, _, Some(Role::Replica)) => "primary is in recovery now",
            _ if draining => {
                "Patroni was asked to switch over: new transactions wait for its next leader"
            }
            _ if !cfg.may_write(p, nodes) => "Patroni no longer names the primary its leader",
            _ => "primary is not usable",
        };
        // A drain lets the running transactions finish: the switchover
        // ends them when it stops the old leader, if they have not. So does
        // a primary down on its replicas' silence alone, which may only have
        // stalled: its connections close when a promotion is sent ([`lost`])
        // or the failure threshold is reached (the track), whichever first.
        // Such a primary is only suspect: no failover is said to start
        // until something is done about it (`lost`).
        let stalled = !draining && may_have_stalled(node, replaced) && !fenced_now.contains(&p);
        if !draining && !stalled {
            actions.push(Action::CloseConns(p));
        }
        // A planned move is a switchover on the timeline (and in the
        // notifications), not a failover.
        let kind = if draining {
            EventKind::SwitchoverStarted
        } else {
            EventKind::FailoverStarted
        };
        if !stalled {
            actions.push(Action::Event(kind, Some(p), why.into()));
        }
        let was = Was {
            old: p,
            blocked: None,
            promoted: None,
            started: !stalled,
        };
        return lost(was, nodes, now, cfg, actions);
    }
    match cfg.writable_primary(nodes) {
        Some(q) if q != p => {
            // Someone promoted another node onto a higher timeline.
            actions.push(Action::CloseConns(p));
            took_over(q, Some(p), nodes, cfg, actions)
        }
        _ => {
            // Finishes what a promotion this proxy did not act on left
            // undone (it followed, or its leader died mid-way).
            if cfg.repoint_replicas {
                actions.extend(stray_replicas(nodes, p, now).into_iter().map(|replica| {
                    Action::Repoint {
                        replica,
                        primary: p,
                    }
                }));
            }
            Primary::Serving(p)
        }
    }
}

/// What [`lost`] knows of the failover so far.
struct Was<'a> {
    old: usize,
    blocked: Option<&'a Blocked>,
    promoted: Option<usize>,
    started: bool,
}

/// Down on its replicas' silence alone, with nothing sent in its place and
/// no verdict against it (fenced, hardware failing): it may be a live
/// primary that stalled for a probe's timeout.
fn may_have_stalled(node: &NodeView, replaced: Option<usize>) -> bool {
    node.down_on_silence && replaced.is_none() && !node.fenced && !node.hardware_failing
}

fn lost(
    was: Was<'_>,
    nodes: &[NodeView],
    now: Instant,
    cfg: &FailoverSettings,
    actions: &mut Vec<Action>,
) -> Primary {
    let Was {
        old,
        blocked,
        promoted,
        started,
    } = was;
    let promoted = promoted.or(cfg.sent_in_place_of(old));
    let writable = cfg.writable_primary(nodes);
    // Suspect only, and it answers as the primary again: it stalled, and
    // serves on. No failover was said to start, so none is said to end.
    if !started && promoted.is_none() && writable == Some(old) {
        return Primary::Serving(old);
    }
    // Said once it is down by more than its replicas' silence, or once
    // something is done about it (below).
    let quiet = !started && may_have_stalled(&nodes[old], promoted);
    let (started, blocked) = if started || quiet {
        (started, blocked)
    } else {
        actions.push(failover_started(old));
        // Its block, if it had one, was not said either.
        (true, None)
    };
    let act = |actions: &mut Vec<Action>| {
        if !started {
            actions.push(failover_started(old));
        }
    };
    // A promotion was sent (here or by the leader): whatever the old
    // primary takes from now on may be lost, so its connections close now
    // if they were kept (`serving`).
    let cut_off = |actions: &mut Vec<Action>| {
        if nodes[old].down_on_silence {
            actions.push(Action::CloseConns(old));
        }
    };
    if promoted.is_some() {
        cut_off(actions);
    }
    let held = |blocked: Option<Blocked>| Primary::Lost {
        old,
        blocked,
        promoted,
        started,
    };
    let mut block = |b: Blocked| {
        if started && blocked != Some(&b) {
            actions.push(Action::Event(
                EventKind::FailoverBlocked,
                Some(old),
                b.to_string(),
            ));
        }
        held(Some(b))
    };
    match (writable, promoted) {
        (Some(q), Some(c)) if q == old => {
            return block(Blocked::PromotionSent(nodes[c].name.clone()))
        }
        (Some(q), _) => {
            act(actions);
            return took_over(q, (q != old).then_some(old), nodes, cfg, actions);
        }
        (None, _) => {}
    }
    if cfg.mode != FailoverMode::Promote {
        return held(blocked.cloned());
    }
    // Once `pg_promote()` may have reached a node, only that node is
    // promoted: asking another could make two primaries.
    let chosen = match promoted {
        Some(c) if nodes[c].live_role() == Some(Role::Replica) => Ok(c),
        Some(c) => Err(Blocked::PromotionSent(nodes[c].name.clone())),
        None => choose_candidate(nodes, old, cfg.max_lag_bytes),
    };
    match chosen {
        Ok(c) => {
            let msg = format!(
                "candidate {} at {:X} (old primary last seen at {:X})",
                nodes[c].name,
                nodes[c].lsn(),
                nodes[old].lsn()
            );
            act(actions);
            if promoted.is_none() {
                cut_off(actions);
            }
            actions.push(Action::Event(EventKind::CandidateChosen, Some(c), msg));
            if nodes[old].health.usable() {
                // Its clients are cut off already (CloseConns comes first),
                // so what it flushed is final: let the candidate have it all
                // rather than lose acknowledged commits to replication lag.
                // Suspect counts: a probe cut short by the hardware verdict
                // says nothing about whether the database still answers.
                actions.push(Action::CatchUp { candidate: c, old });
            }
            actions.push(Action::Promote(c));
            Primary::Promoting {
                old,
                candidate: c,
                since: now,
            }
        }
        Err(b) => block(b),
    }
}

/// The event of a failover that starts in [`lost`]: the primary went
/// from suspect to down, or something is done about it.
fn failover_started(old: usize) -> Action {
    Action::Event(
        EventKind::FailoverStarted,
        Some(old),
        "primary is down".into(),
    )
}

/// Two or more primaries on one timeline: close every connection to them
/// and say so once, when it starts or when the set changes.
fn split_brain(
    state: &Primary,
    split: Vec<usize>,
    nodes: &[NodeView],
    actions: &mut Vec<Action>,
) -> Primary {
    if *state != Primary::Split(split.clone()) {
        let names: Vec<&str> = split.iter().map(|&i| nodes[i].name.as_str()).collect();
        let msg = format!(
            "{} all report primary on timeline {}: writes stopped until only one is left",
            names.join(", "),
            nodes[split[0]].timeline()
        );
        actions.extend(split.iter().map(|&i| Action::CloseConns(i)));
        actions.push(Action::Event(EventKind::SplitBrain, None, msg));
    }
    Primary::Split(split)
}

/// `new` takes writes: resume, fence the old primary, repoint the others.
fn took_over(
    new: usize,
    old: Option<usize>,
    nodes: &[NodeView],
    cfg: &FailoverSettings,
    actions: &mut Vec<Action>,
) -> Primary {
    let msg = format!(
        "{} takes writes on timeline {}",
        nodes[new].name,
        nodes[new].timeline()
    );
    actions.push(Action::Event(EventKind::WritesResumed, Some(new), msg));
    if let (Some(o), Some(_)) = (old, cfg.appointed) {
        // Not fenced: it serves again once the appointing system makes it
        // a replica (or its leader again); until then no write goes there.
        actions.push(Action::CloseConns(o));
    } else if let Some(o) = old {
        if !nodes[o].fenced {
            let msg = format!(
                "old primary {} replaced by {}",
                nodes[o].name, nodes[new].name
            );
            actions.extend([
                Action::Fence(o),
                Action::CloseConns(o),
                Action::Event(EventKind::NodeFenced, Some(o), msg),
            ]);
        }
        if cfg.fence_command {
            actions.push(Action::FenceCommand(o));
        }
    }
    if cfg.clear_sync_standby
        && nodes[new]
            .probe
            .as_ref()
            .is_some_and(|p| p.sync_standby_names)
    {
        actions.push(Action::ClearSyncStandby(new));
    }
    if cfg.repoint_replicas && old.is_some() {
        for (i, n) in nodes.iter().enumerate() {
            if i != new && Some(i) != old && n.live_role() == Some(Role::Replica) {
                actions.push(Action::Repoint {
                    replica: i,
                    primary: new,
                });
            }
        }
    }
    Primary::Serving(new)
}

#[cfg(test)]
mod tests;
