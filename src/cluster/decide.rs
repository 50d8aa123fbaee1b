//! Pure rules, each a small function of node views: which replica to promote,
//! whether a replica still witnesses a live primary, which nodes to fence,
//! which replica serves read traffic, what one probe result changes for its
//! node. No sockets, no clocks.

use std::time::{Duration, Instant};

use super::view::{Health, NodeView, Probe, Role, Testimony};

/// Why no replica can be promoted (or the old primary not re-adopted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    /// A replica still receives fresh WAL from the primary: the proxy, not the
    /// primary, is probably cut off.
    #[error("not promoting: replica {0} still receives WAL from the primary")]
    WitnessSeesPrimary(String),
    /// A replica's WAL receiver still looks connected to the primary and
    /// has heard nothing yet; a live primary with nothing to send is heard
    /// only once per keepalive period, so silence proves nothing before
    /// that. Blocks until it hears the primary (which then lives) or the
    /// window passes.
    #[error("not promoting yet: replica {replica} still streams from the primary; {}", keepalive_due(.window))]
    AwaitingKeepalive {
        /// The replica.
        replica: String,
        /// How long after the last thing it heard it is waited for.
        window: Option<Duration>,
    },
    /// No reachable, unfenced replica within `max_lag_bytes`.
    #[error("not promoting: no reachable replica within failover.max_lag_bytes")]
    NoCandidate,
    /// The old primary answers again, but a promotion was sent to this node.
    #[error("the old primary answers again, but a promotion was sent to {0}: writes stay held until {0} completes it or an operator decides")]
    PromotionSent(String),
}

/// The replica to promote: reachable, not fenced, lag within `max_lag` of the
/// old primary's last known position, highest WAL position, then highest
/// priority, then lowest name.
pub fn choose_candidate(nodes: &[NodeView], old: usize, max_lag: u64) -> Result<usize, Blocked> {
    witnessed(nodes, old)?;
    let reference = nodes.get(old).map_or(0, NodeView::lsn);
    nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| *i != old && n.live_role() == Some(Role::Replica))
        .filter(|(_, n)| reference.saturating_sub(n.lsn()) <= max_lag)
        .max_by(|(_, a), (_, b)| {
            (a.lsn(), a.priority)
                .cmp(&(b.lsn(), b.priority))
                .then_with(|| b.name.cmp(&a.name))
        })
        .map(|(i, _)| i)
        .ok_or(Blocked::NoCandidate)
}

/// Whether the replicas let the primary `old` be replaced: none witnessed
/// it alive, and none still listens for it. A primary whose hardware fails
/// counts as gone whether it lives or not, so it is not listened for.
fn witnessed(nodes: &[NodeView], old: usize) -> Result<(), Blocked> {
    let replicas = || {
        nodes
            .iter()
            .enumerate()
            .filter(move |(i, n)| *i != old && n.live_role() == Some(Role::Replica))
            .map(|(_, n)| n)
    };
    if let Some(n) = replicas().find(|n| n.witness == Testimony::Alive) {
        return Err(Blocked::WitnessSeesPrimary(n.name.clone()));
    }
    if nodes.get(old).is_some_and(|o| o.hardware_failing) {
        return Ok(());
    }
    let listening = replicas().find_map(|n| match n.witness {
        Testimony::Listening { window } => Some(Blocked::AwaitingKeepalive {
            replica: n.name.clone(),
            window,
        }),
        _ => None,
    });
    listening.map_or(Ok(()), Err)
}

/// When a keepalive is due, for [`Blocked::AwaitingKeepalive`].
fn keepalive_due(window: &Option<Duration>) -> String {
    match window {
        Some(w) => {
            format!("alive and idle, it would send a keepalive within {w:?} of its last message")
        }
        None => "with wal_sender_timeout and wal_receiver_timeout 0 a live, idle primary \
                 sends it nothing, so its silence proves nothing: promote by hand"
            .into(),
    }
}

/// Whether the replicas corroborate that `primary` fell silent at `since`
/// (when its failed probe was sent): at least one replica probed after
/// `since` has a running WAL receiver, and every such replica has heard
/// nothing from upstream (WAL or keepalive) since then, for at least `span`.
/// The span makes a probe that failed fast (a refused connection) prove
/// nothing: the replicas must have had the time to hear a live primary's
/// traffic. A replica not probed since `since` says nothing either way.
pub fn replicas_silent_since(
    nodes: &[NodeView],
    primary: usize,
    since: Instant,
    span: Duration,
) -> bool {
    let fresh: Vec<&Probe> = nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| *i != primary && n.live_role() == Some(Role::Replica))
        .filter_map(|(_, n)| n.probe.as_ref())
        .filter(|p| p.at >= since && p.last_heard.is_some())
        .collect();
    let silent = |p: &&Probe| {
        p.last_heard
            .is_some_and(|h| h <= since && p.at.saturating_duration_since(h) >= span)
    };
    !fresh.is_empty() && fresh.iter().all(silent)
}

/// Whether a replica's probe witnesses a live primary that began failing at
/// `since`: its WAL receiver heard from upstream after `since`, or its
/// received WAL moved past `base` (its position at its first probe after
/// `since`). A hung or dead primary sends nothing, so neither happens.
pub fn witnesses(probe: &Probe, base: Option<u64>, since: Instant) -> bool {
    if probe.role != Role::Replica {
        return false;
    }
    let heard = probe.last_heard.is_some_and(|h| h > since);
    let moved = probe.streaming && base.is_some_and(|b| probe.lsn > b);
    heard || moved
}

/// A probe's outcome, as [`react`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probed {
    /// The node answered, reporting this role.
    Answered(Role),
    /// No answer. `corroborated`: the node is the serving primary and the
    /// replicas heard nothing from it meanwhile ([`replicas_silent_since`]).
    Failed {
        /// The replicas corroborate the silence.
        corroborated: bool,
    },
}

/// What one probe result changes for its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaction {
    health: Health,
    retire: bool,
    event: Option<NodeEvent>,
}

impl Reaction {
    /// Its health from now on.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Its connections must close: their role changed under them (a
    /// promotion, or a primary that came back as a replica), or it went down.
    pub fn retire(&self) -> bool {
        self.retire
    }

    /// What goes on the timeline.
    pub fn event(&self) -> Option<NodeEvent> {
        self.event
    }
}

/// A node's health change worth an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEvent {
    /// It passed a check after being unknown or down.
    Up,
    /// It went down.
    Down(DownBecause),
}

/// Why a node went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownBecause {
    /// `health.failure_threshold` checks in a row failed.
    Threshold,
    /// Its check failed and the replicas heard nothing from it since.
    Corroborated,
}

/// The reaction to a probe of a node whose health was `before` and whose
/// last successful probe reported `last_role`.
pub fn react(before: Health, last_role: Option<Role>, probed: Probed, threshold: u32) -> Reaction {
    let (health, role_changed, because) = match probed {
        Probed::Answered(role) => (
            before.after(true, threshold),
            last_role.is_some_and(|r| r != role),
            DownBecause::Threshold,
        ),
        Probed::Failed { corroborated } => (
            before.after_corroborated(false, corroborated, threshold),
            false,
            if corroborated {
                DownBecause::Corroborated
            } else {
                DownBecause::Threshold
            },
        ),
    };
    let event = match (before, health) {
        (Health::Unknown | Health::Down, Health::Up) => Some(NodeEvent::Up),
        (b, Health::Down) if b != Health::Down => Some(NodeEvent::Down(because)),
        _ => None,
    };
    let went_down = matches!(event, Some(NodeEvent::Down(_)));
    Reaction {
        health,
        retire: role_changed || went_down,
        event,
    }
}

/// Nodes that claim to be primary on a timeline lower than the highest seen
/// anywhere: an old primary back from the dead. They must never take writes.
pub fn to_fence(nodes: &[NodeView]) -> Vec<usize> {
    let highest = highest_timeline(nodes);
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            !n.fenced && n.live_role() == Some(Role::Primary) && n.timeline() < highest
        })
        .map(|(i, _)| i)
        .collect()
}

/// The highest timeline any node was last seen on.
pub fn highest_timeline(nodes: &[NodeView]) -> u32 {
    nodes.iter().map(NodeView::timeline).max().unwrap_or(0)
}

/// Usable nodes reporting primary on the highest timeline seen anywhere. A
/// primary below that timeline never counts, on any path (discovery, a
/// failover, a node re-admitted by an operator): it is an old primary back
/// from the dead, or a data directory replaced by an older one.
fn primaries_on_top(nodes: &[NodeView]) -> Vec<usize> {
    let top = highest_timeline(nodes);
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.live_role() == Some(Role::Primary) && n.timeline() == top)
        .map(|(i, _)| i)
        .collect()
}

/// The node that should take writes: the one usable node reporting primary
/// on the highest timeline seen. None when there is none, or when there are
/// several ([`split_primaries`]): no tie is ever broken by a pick, since two
/// proxies could pick differently.
pub fn reported_primary(nodes: &[NodeView]) -> Option<usize> {
    match primaries_on_top(nodes)[..] {
        [p] => Some(p),
        _ => None,
    }
}

/// Two or more usable nodes reporting primary on the same, highest
/// timeline: a split brain (two promotions on one timeline). Writes must go
/// to none of them until only one is left.
pub fn split_primaries(nodes: &[NodeView]) -> Vec<usize> {
    let on_top = primaries_on_top(nodes);
    if on_top.len() > 1 {
        on_top
    } else {
        vec![]
    }
}

/// How long a replica repointed at a primary gets to stream from it before
/// it is repointed again: a standby whose stream broke retries only every
/// `wal_retrieve_retry_interval` (5 s by default), then switches timeline.
pub const REPOINT_RETRY: Duration = Duration::from_secs(15);

/// Replicas that follow no primary: usable, not streaming, on a timeline
/// below the serving `primary`'s. A proxy that did not lead when the
/// primary changed left them pointing at the old one, or they were down
/// while the others were repointed. Not one repointed at `primary` less
/// than [`REPOINT_RETRY`] before `now`: it may still be switching.
pub fn stray_replicas(nodes: &[NodeView], primary: usize, now: Instant) -> Vec<usize> {
    let top = nodes[primary].timeline();
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.live_role() == Some(Role::Replica))
        .filter(|(_, n)| n.timeline() < top && !n.probe.as_ref().is_some_and(|p| p.streaming))
        .filter(|(_, n)| {
            !n.repointed
                .is_some_and(|(to, at)| to == primary && now.duration_since(at) < REPOINT_RETRY)
        })
        .map(|(i, _)| i)
        .collect()
}

/// Replicas fit for read traffic: usable, not fenced, on the primary's
/// timeline, within `max_lag` bytes of the primary's position.
pub fn fit_replicas(nodes: &[NodeView], primary: Option<usize>, max_lag: u64) -> Vec<usize> {
    let reference = primary.and_then(|p| nodes.get(p));
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.live_role() == Some(Role::Replica))
        .filter(|(_, n)| {
            reference.is_none_or(|p| {
                n.timeline() >= p.timeline() && p.lsn().saturating_sub(n.lsn()) <= max_lag
            })
        })
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::view::{test_node as node, Health};

    #[test]
    fn replicas_following_no_primary_are_found_once_per_retry() {
        let now = Instant::now();
        let stray = |n: &mut NodeView| n.probe.as_mut().unwrap().streaming = false;
        let p = node("p", Role::Primary, 2, 1000);
        // (replica, stray?)
        let mut left = node("left", Role::Replica, 1, 900);
        stray(&mut left);
        let follows = node("follows", Role::Replica, 2, 990);
        let mut idle_on_top = node("idle", Role::Replica, 2, 990);
        stray(&mut idle_on_top);
        let streams_old = node("streams", Role::Replica, 1, 900);
        let mut just_repointed = left.clone();
        just_repointed.repointed = Some((0, now - Duration::from_secs(3)));
        let mut repointed_long_ago = left.clone();
        repointed_long_ago.repointed = Some((0, now - REPOINT_RETRY));
        let mut repointed_elsewhere = left.clone();
        repointed_elsewhere.repointed = Some((9, now));
        let mut down = left.clone();
        down.health = Health::Down;
        let mut fenced = left.clone();
        fenced.fenced = true;
        let cases = [
            (left, true),
            (follows, false),
            (idle_on_top, false),
            (streams_old, false),
            (just_repointed, false),
            (repointed_long_ago, true),
            (repointed_elsewhere, true),
            (down, false),
            (fenced, false),
        ];
        for (r, want) in cases {
            let name = r.name.clone();
            let got = stray_replicas(&[p.clone(), r], 0, now);
            assert_eq!(got == vec![1], want, "{name}: {got:?}");
        }
    }

    #[test]
    fn candidate_is_the_most_advanced_reachable_replica() {
        let p = node("p", Role::Primary, 1, 1000);
        let a = node("a", Role::Replica, 1, 900);
        let b = node("b", Role::Replica, 1, 990);
        let mut c = node("c", Role::Replica, 1, 999);
        c.health = Health::Down;
        let mut d = node("d", Role::Replica, 1, 1000);
        d.fenced = true;
        let nodes = vec![p, a, b, c, d];
        assert_eq!(choose_candidate(&nodes, 0, 1 << 20), Ok(2));
        assert_eq!(choose_candidate(&nodes, 0, 50), Ok(2), "b is 10 behind");
        assert_eq!(
            choose_candidate(&nodes, 0, 5),
            Err(Blocked::NoCandidate),
            "all too far behind"
        );
    }

    #[test]
    fn ties_go_to_priority_then_name() {
        let mut a = node("b-node", Role::Replica, 1, 500);
        let mut b = node("a-node", Role::Replica, 1, 500);
        let p = node("p", Role::Primary, 1, 500);
        assert_eq!(
            choose_candidate(&[p.clone(), a.clone(), b.clone()], 0, 0),
            Ok(2),
            "name"
        );
        a.priority = 5;
        assert_eq!(
            choose_candidate(&[p.clone(), a.clone(), b.clone()], 0, 0),
            Ok(1),
            "priority"
        );
        b.priority = 5;
        b.probe.as_mut().unwrap().lsn = 400;
        assert_eq!(
            choose_candidate(&[p, a, b], 0, 1000),
            Ok(1),
            "position first"
        );
    }

    #[test]
    fn a_replica_that_sees_or_may_yet_hear_the_primary_blocks_promotion() {
        let window = Some(Duration::from_millis(2500));
        let listening = Testimony::Listening { window };
        let replica = |name, witness| {
            let mut r = node(name, Role::Replica, 1, 1000);
            r.witness = witness;
            r
        };
        let awaiting = |name: &str| Blocked::AwaitingKeepalive {
            replica: name.into(),
            window,
        };
        let mut down = replica("d", Testimony::Alive);
        down.health = Health::Down;
        let mut failing = node("p", Role::Primary, 1, 1000);
        failing.hardware_failing = true;
        let p = node("p", Role::Primary, 1, 1000);
        let nothing = || replica("a", Testimony::Nothing);
        // (old primary, replicas) -> the candidate, or why none
        let cases = [
            (
                &p,
                vec![nothing()],
                Ok(1),
                "nothing heard, nothing to wait for",
            ),
            (
                &p,
                vec![replica("a", Testimony::Alive)],
                Err(Blocked::WitnessSeesPrimary("a".into())),
                "it heard the primary",
            ),
            (
                &p,
                vec![nothing(), replica("b", listening)],
                Err(awaiting("b")),
                "still streaming, a keepalive is due",
            ),
            (
                &p,
                vec![replica("b", listening), replica("c", Testimony::Alive)],
                Err(Blocked::WitnessSeesPrimary("c".into())),
                "alive says more than listening",
            ),
            (
                &p,
                vec![nothing(), down],
                Ok(1),
                "a down replica says nothing",
            ),
            (
                &failing,
                vec![nothing(), replica("b", listening)],
                Ok(1),
                "failing hardware: gone, alive or not",
            ),
            (
                &failing,
                vec![replica("a", Testimony::Alive)],
                Err(Blocked::WitnessSeesPrimary("a".into())),
                "failing hardware, but heard: the rule is wrong, not the host",
            ),
        ];
        for (old, replicas, want, what) in cases {
            let mut nodes = vec![old.clone()];
            nodes.extend(replicas);
            assert_eq!(choose_candidate(&nodes, 0, 1 << 20), want, "{what}");
        }
    }

    fn heard(mut n: NodeView, at: Instant, heard: Option<Instant>) -> NodeView {
        let p = n.probe.as_mut().unwrap();
        p.at = at;
        p.last_heard = heard;
        n
    }

    #[test]
    fn silence_needs_a_fresh_replica_that_heard_nothing_long_enough() {
        let t0 = Instant::now();
        let since = t0 + Duration::from_secs(1);
        let after = since + Duration::from_secs(1);
        let span = Duration::from_secs(1);
        let p = node("p", Role::Primary, 1, 100);
        let r = |probed, h| heard(node("r", Role::Replica, 1, 100), probed, h);
        let soon = since + Duration::from_millis(5);
        let cases = [
            (
                vec![r(after, Some(t0))],
                true,
                "heard last before the failure",
            ),
            (
                vec![r(after, Some(after))],
                false,
                "heard during the failed probe",
            ),
            (
                vec![r(soon, Some(since - Duration::from_millis(20)))],
                false,
                "the probe failed fast: 25 ms of silence prove nothing",
            ),
            (vec![r(t0, Some(t0))], false, "probed before: says nothing"),
            (vec![r(after, None)], false, "no WAL receiver: says nothing"),
            (vec![], false, "no replica"),
            (
                vec![r(after, Some(t0)), r(after, Some(after))],
                false,
                "one replica still hears it",
            ),
            (
                vec![r(after, Some(t0)), r(t0, Some(after))],
                true,
                "a replica not probed since is ignored",
            ),
        ];
        for (replicas, want, what) in cases {
            let mut nodes = vec![p.clone()];
            nodes.extend(replicas);
            assert_eq!(
                replicas_silent_since(&nodes, 0, since, span),
                want,
                "{what}"
            );
        }
        let mut down = r(after, Some(t0));
        down.health = Health::Down;
        assert!(
            !replicas_silent_since(&[p, down], 0, since, span),
            "a down replica"
        );
    }

    #[test]
    fn a_replica_witnesses_only_what_it_heard_after_the_failure_began() {
        let t0 = Instant::now();
        let since = t0 + Duration::from_secs(1);
        let probe = |lsn, h: Option<Instant>| {
            let mut p = node("r", Role::Replica, 1, lsn).probe.unwrap();
            p.last_heard = h;
            p
        };
        assert!(
            !witnesses(&probe(100, Some(t0)), Some(100), since),
            "heard before"
        );
        assert!(witnesses(
            &probe(100, Some(since + Duration::from_millis(5))),
            Some(100),
            since
        ));
        assert!(
            witnesses(&probe(101, None), Some(100), since),
            "its WAL moved"
        );
        assert!(
            !witnesses(&probe(101, None), None, since),
            "first probe: no base yet"
        );
        let mut stopped = probe(101, None);
        stopped.streaming = false;
        assert!(!witnesses(&stopped, Some(100), since), "not streaming");
        let primary = node("p", Role::Primary, 1, 500).probe.unwrap();
        assert!(!witnesses(&primary, Some(100), since));
    }

    #[test]
    fn a_probe_result_changes_health_connections_and_the_timeline() {
        use DownBecause::*;
        use Health::*;
        use Role::*;
        let ok = Probed::Answered;
        let failed = |corroborated| Probed::Failed { corroborated };
        let down = |b| Some(NodeEvent::Down(b));
        // (health before, last role, probe) -> (health, retire, event)
        let cases = [
            (
                Unknown,
                None,
                ok(Primary),
                (Up, false, Some(NodeEvent::Up)),
                "first check",
            ),
            (
                Down,
                Some(Replica),
                ok(Replica),
                (Up, false, Some(NodeEvent::Up)),
                "back",
            ),
            (
                Up,
                Some(Replica),
                ok(Replica),
                (Up, false, None),
                "nothing new",
            ),
            (
                Suspect(2),
                Some(Replica),
                ok(Replica),
                (Up, false, None),
                "recovered quietly",
            ),
            (Up, Some(Replica), ok(Primary), (Up, true, None), "promoted"),
            (Up, Some(Primary), ok(Replica), (Up, true, None), "demoted"),
            (
                Down,
                Some(Primary),
                ok(Replica),
                (Up, true, Some(NodeEvent::Up)),
                "back demoted",
            ),
            (
                Up,
                Some(Primary),
                failed(false),
                (Suspect(1), false, None),
                "one failure",
            ),
            (
                Suspect(2),
                Some(Primary),
                failed(false),
                (Down, true, down(Threshold)),
                "threshold",
            ),
            (
                Up,
                Some(Primary),
                failed(true),
                (Down, true, down(Corroborated)),
                "corroborated",
            ),
            (
                Suspect(2),
                Some(Primary),
                failed(true),
                (Down, true, down(Corroborated)),
                "both",
            ),
            (
                Down,
                Some(Primary),
                failed(true),
                (Down, false, None),
                "already down",
            ),
            (
                Unknown,
                None,
                failed(true),
                (Unknown, false, None),
                "never up",
            ),
        ];
        for (before, last_role, probed, (health, retire, event), what) in cases {
            let want = Reaction {
                health,
                retire,
                event,
            };
            assert_eq!(react(before, last_role, probed, 3), want, "{what}");
        }
    }

    #[test]
    fn an_old_primary_on_a_lower_timeline_is_fenced() {
        let old = node("old", Role::Primary, 1, 5000);
        let new = node("new", Role::Primary, 2, 100);
        let lagging_replica = node("r", Role::Replica, 1, 90);
        assert_eq!(
            to_fence(&[old.clone(), new.clone(), lagging_replica]),
            vec![0]
        );
        assert_eq!(reported_primary(&[old, new]), Some(1));
    }

    #[test]
    fn a_tie_between_primaries_is_never_broken() {
        let a = node("a", Role::Primary, 3, 1);
        let b = node("b", Role::Primary, 3, 1);
        let mut down = b.clone();
        down.health = Health::Down;
        let mut fenced = b.clone();
        fenced.fenced = true;
        let old = node("c", Role::Primary, 2, 9);
        let r = node("r", Role::Replica, 3, 1);
        // (nodes, the primary, the split set, what)
        type Case = (Vec<NodeView>, Option<usize>, Vec<usize>, &'static str);
        let cases: [Case; 6] = [
            (
                vec![a.clone(), b.clone()],
                None,
                vec![0, 1],
                "two on one timeline",
            ),
            (vec![a.clone(), down], Some(0), vec![], "the other is down"),
            (
                vec![a.clone(), fenced],
                Some(0),
                vec![],
                "the other is fenced",
            ),
            (
                vec![old.clone(), a.clone()],
                Some(1),
                vec![],
                "a lower timeline does not count",
            ),
            (
                vec![old, r.clone()],
                None,
                vec![],
                "the only primary is below a replica's timeline",
            ),
            (vec![r], None, vec![], "no primary"),
        ];
        for (nodes, primary, split, what) in cases {
            assert_eq!(reported_primary(&nodes), primary, "{what}");
            assert_eq!(split_primaries(&nodes), split, "{what}");
        }
    }

    #[test]
    fn replicas_fit_for_reads_respect_lag_health_and_timeline() {
        let p = node("p", Role::Primary, 2, 1000);
        let a = node("a", Role::Replica, 2, 990);
        let b = node("b", Role::Replica, 2, 1000);
        let mut c = node("c", Role::Replica, 2, 1000);
        c.health = Health::Down;
        let old_tl = node("d", Role::Replica, 1, 1000);
        let nodes = vec![p, a, b, c, old_tl];
        assert_eq!(fit_replicas(&nodes, Some(0), 100), vec![1, 2]);
        assert_eq!(fit_replicas(&nodes, Some(0), 5), vec![2], "a lags");
        assert!(
            fit_replicas(&nodes[..1], Some(0), 5).is_empty(),
            "none: use the primary"
        );
    }
}
