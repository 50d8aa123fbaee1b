//! What the drill decides from `SHOW NODES` and `SHOW EVENTS`: which
//! nodes to move between, whether a rebuilt node is back, whether writes
//! resumed after a crash. Pure.

use super::console::{Event, Node};
use super::DrillError;

/// The serving primary and the replica to move to: the one healthy
/// unfenced replica nearest the primary (least lag, then name). The
/// console shows a fenced node as `fenced`, so `up` means unfenced.
pub(super) fn choose(nodes: &[Node]) -> Result<(Node, Node), DrillError> {
    let listing = || {
        let all: Vec<String> = nodes
            .iter()
            .map(|n| format!("{} {} {}", n.name(), n.role(), n.state()))
            .collect();
        if all.is_empty() {
            "no nodes".to_string()
        } else {
            all.join(", ")
        }
    };
    let primaries: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.role() == "primary" && n.state() == "up")
        .collect();
    let primary = match primaries.as_slice() {
        [one] => (*one).clone(),
        [] => return Err(DrillError::NoPrimary(format!("SHOW NODES: {}", listing()))),
        _ => {
            let why = format!("more than one serving primary (SHOW NODES: {})", listing());
            return Err(DrillError::NoPrimary(why));
        }
    };
    let target = nodes
        .iter()
        .filter(|n| is_healthy_replica(n))
        .min_by_key(|n| (n.lag_bytes().unwrap_or(u64::MAX), n.name().to_string()))
        .ok_or_else(|| DrillError::NoReplica(listing()))?;
    Ok((primary, target.clone()))
}

fn is_healthy_replica(n: &Node) -> bool {
    n.role() == "replica" && n.state() == "up"
}

/// Where a node stands after its rebuild command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rebuilt {
    /// Not back yet: still fenced with the proxy's last check of it from
    /// before the rebuild (or none), or unfenced but not healthy yet.
    Waiting,
    /// Fenced, and the proxy's last check found a replica: time for
    /// `READMIT`. Re-admitted while its last check still said primary, on
    /// the old timeline, the proxy would fence it again.
    Readmit,
    /// A healthy unfenced replica: a switchover may move the primary to it.
    Rejoined,
}

/// Where `name` stands, from `SHOW NODES` (whose role column is the last
/// successful check's, fenced or not).
pub(super) fn after_rebuild(nodes: &[Node], name: &str) -> Rebuilt {
    match nodes.iter().find(|n| n.name() == name) {
        Some(n) if is_healthy_replica(n) => Rebuilt::Rejoined,
        Some(n) if n.state() == "fenced" && n.role() == "replica" => Rebuilt::Readmit,
        _ => Rebuilt::Waiting,
    }
}

/// Whether, after a crash of `old`, the timeline says writes resumed and
/// another node serves as the primary.
pub(super) fn resumed_elsewhere(events: &[Event], nodes: &[Node], old: &str) -> bool {
    let resumed = events.iter().any(|e| e.kind() == "writes_resumed");
    let elsewhere = nodes
        .iter()
        .any(|n| n.name() != old && n.role() == "primary" && n.state() == "up");
    resumed && elsewhere
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, role: &str, state: &str, lag: Option<u64>) -> Node {
        Node::new(name, role, state, lag)
    }

    #[test]
    fn the_primary_and_the_nearest_healthy_replica_are_chosen() {
        let p = || node("db1", "primary", "up", None);
        type Case = (
            Vec<Node>,
            Result<(&'static str, &'static str), &'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                vec![p(), node("db2", "replica", "up", Some(0))],
                Ok(("db1", "db2")),
            ),
            (
                vec![
                    p(),
                    node("db2", "replica", "up", Some(900)),
                    node("db3", "replica", "up", Some(10)),
                ],
                Ok(("db1", "db3")),
            ),
            (
                vec![
                    p(),
                    node("db3", "replica", "up", Some(0)),
                    node("db2", "replica", "up", Some(0)),
                ],
                Ok(("db1", "db2")),
            ),
            (
                vec![
                    p(),
                    node("db2", "replica", "fenced", Some(0)),
                    node("db3", "replica", "suspect", Some(0)),
                    node("db4", "unknown", "down", None),
                ],
                Err("no healthy unfenced replica"),
            ),
            (
                vec![
                    node("db1", "primary", "fenced", None),
                    node("db2", "replica", "up", Some(0)),
                ],
                Err("no primary"),
            ),
            (
                vec![p(), node("db2", "primary", "up", None)],
                Err("more than one"),
            ),
            (vec![], Err("no nodes")),
        ];
        for (nodes, want) in cases {
            let got = choose(&nodes);
            match (got, want) {
                (Ok((p, t)), Ok((wp, wt))) => assert_eq!((p.name(), t.name()), (wp, wt)),
                (Err(e), Err(why)) => assert!(e.to_string().contains(why), "{e} vs {why}"),
                (got, want) => panic!("{nodes:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_rebuilt_node_is_readmitted_once_seen_as_a_replica() {
        use Rebuilt::*;
        let cases = [
            ("primary", "fenced", Waiting), // the check from before the rebuild
            ("unknown", "fenced", Waiting),
            ("replica", "fenced", Readmit),
            ("replica", "up", Rejoined),
            ("replica", "suspect", Waiting),
            ("primary", "up", Waiting), // re-admitted unrebuilt: fenced again soon
            ("unknown", "down", Waiting),
        ];
        for (role, state, want) in cases {
            let nodes = [node("db1", role, state, None)];
            assert_eq!(after_rebuild(&nodes, "db1"), want, "{role} {state}");
            assert_eq!(after_rebuild(&nodes, "db9"), Waiting, "no such node");
        }
    }

    #[test]
    fn writes_resume_elsewhere_with_the_event_and_another_primary() {
        let resumed = [Event::new(7, 0, "writes_resumed", "db2")];
        let started = [Event::new(6, 0, "failover_started", "db1")];
        let moved = [
            node("db1", "unknown", "fenced", None),
            node("db2", "primary", "up", None),
        ];
        let stayed = [
            node("db1", "primary", "up", None),
            node("db2", "replica", "up", Some(0)),
        ];
        let cases: [(&[Event], &[Node], bool); 4] = [
            (&resumed, &moved, true),
            (&started, &moved, false),
            (&resumed, &stayed, false),
            (&[], &stayed, false),
        ];
        for (i, (events, nodes, want)) in cases.into_iter().enumerate() {
            assert_eq!(resumed_elsewhere(events, nodes, "db1"), want, "case {i}");
        }
    }
}
