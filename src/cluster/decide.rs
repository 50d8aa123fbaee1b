//! Pure rules, each a small function of node views: which replica to promote,
//! whether a replica still witnesses a live primary, which nodes to fence,
//! which replica serves read traffic. No sockets, no clocks.

use super::view::{NodeView, Role};

/// Why no replica can be promoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// A replica still receives fresh WAL from the primary: the proxy, not the
    /// primary, is probably cut off.
    WitnessSeesPrimary(String),
    /// No reachable, unfenced replica within `max_lag_bytes`.
    NoCandidate,
}

/// The replica to promote: reachable, not fenced, lag within `max_lag` of the
/// old primary's last known position, highest WAL position, then highest
/// priority, then lowest name.
pub fn choose_candidate(nodes: &[NodeView], old: usize, max_lag: u64) -> Result<usize, Blocked> {
    if let Some(w) = nodes
        .iter()
        .enumerate()
        .find(|(i, n)| *i != old && n.witness_fresh && n.live_role() == Some(Role::Replica))
    {
        return Err(Blocked::WitnessSeesPrimary(w.1.name.clone()));
    }
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

/// Nodes that claim to be primary on a timeline lower than the highest seen
/// anywhere: an old primary back from the dead. They must never take writes.
pub fn to_fence(nodes: &[NodeView]) -> Vec<usize> {
    let highest = nodes.iter().map(NodeView::timeline).max().unwrap_or(0);
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            !n.fenced && n.live_role() == Some(Role::Primary) && n.timeline() < highest
        })
        .map(|(i, _)| i)
        .collect()
}

/// The node that should take writes among those reporting primary: the highest
/// timeline; on a tie, `current` keeps it (no flapping), else the lowest index.
pub fn reported_primary(nodes: &[NodeView], current: Option<usize>) -> Option<usize> {
    let primaries = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.live_role() == Some(Role::Primary));
    let best = primaries.clone().map(|(_, n)| n.timeline()).max()?;
    let on_best: Vec<usize> = primaries
        .filter(|(_, n)| n.timeline() == best)
        .map(|(i, _)| i)
        .collect();
    match current {
        Some(c) if on_best.contains(&c) => Some(c),
        _ => on_best.first().copied(),
    }
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
    fn a_replica_that_still_sees_the_primary_blocks_promotion() {
        let p = node("p", Role::Primary, 1, 1000);
        let mut a = node("a", Role::Replica, 1, 1000);
        a.witness_fresh = true;
        assert_eq!(
            choose_candidate(&[p, a], 0, 1 << 20),
            Err(Blocked::WitnessSeesPrimary("a".into()))
        );
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
        assert_eq!(reported_primary(&[old, new], None), Some(1));
    }

    #[test]
    fn the_current_primary_keeps_a_tie() {
        let a = node("a", Role::Primary, 3, 1);
        let b = node("b", Role::Primary, 3, 1);
        assert_eq!(reported_primary(&[a.clone(), b.clone()], Some(1)), Some(1));
        assert_eq!(reported_primary(&[a, b], None), Some(0));
        assert_eq!(
            reported_primary(&[node("r", Role::Replica, 1, 1)], None),
            None
        );
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
