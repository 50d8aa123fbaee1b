//! Which nodes the cluster has, and how a reload changes that. Nodes are
//! never taken out of the vectors: a removed node's slot is marked removed,
//! its idle connections close and its busy ones finish their transaction
//! (drain), and it is no longer probed, routed to or shown. Added nodes get a
//! new slot at the end; the monitor starts probing them at its next tick.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::error::MembershipError;
use super::{hardware, lock, Cluster, Incarnation};
use crate::config::Node;
use crate::events::EventKind;

/// Per-node state shared with the pools.
pub(super) struct Slot {
    pub(super) addr: Arc<str>,
    /// Changed only through [`Slot::change`], which keeps `current` in step.
    pub(super) incarnation: Mutex<Incarnation>,
    /// The incarnation's epoch, doubled, plus one if the node may not be
    /// routed to (fenced or removed): what every checkout and checkin
    /// reads, in one load instead of the lock (two atomic read-modify-writes).
    current: AtomicU64,
    /// Server connections checked out (for least-outstanding replica choice, drains).
    pub(super) load: AtomicUsize,
    /// The last hardware verdict (`unknown` until probed or without a probe).
    pub(super) hardware: Mutex<hardware::Verdict>,
    /// Wakes the hardware watcher for a probe before its interval is up.
    pub(super) probe_now: tokio::sync::Notify,
    /// A hardware watcher runs for this node.
    watched: AtomicBool,
}

impl Slot {
    pub(super) fn new(node: &Node) -> Arc<Slot> {
        Arc::new(Slot {
            addr: Arc::from(node.addr.as_str()),
            incarnation: Mutex::new(Incarnation::new()),
            current: AtomicU64::new(0),
            load: AtomicUsize::new(0),
            hardware: Mutex::new(hardware::Verdict::unknown(match node.hardware {
                Some(_) => "the hardware probe has not answered yet",
                None => "no hardware probe configured",
            })),
            probe_now: tokio::sync::Notify::new(),
            watched: AtomicBool::new(false),
        })
    }
}

impl Slot {
    /// Changes the incarnation under its lock, and publishes the result.
    pub(super) fn change<R>(&self, f: impl FnOnce(&mut Incarnation) -> R) -> R {
        let mut inc = lock(&self.incarnation);
        let r = f(&mut inc);
        let blocked = inc.fenced || inc.removed;
        self.current
            .store(inc.epoch << 1 | u64::from(blocked), Ordering::Release);
        r
    }

    /// The current incarnation's epoch, and whether the node may be routed to.
    pub(super) fn current(&self) -> (u64, bool) {
        let c = self.current.load(Ordering::Acquire);
        (c >> 1, c & 1 == 0)
    }
}

/// What a reload changes in the node list, by name.
#[derive(Debug, Default, PartialEq)]
pub struct NodeChanges {
    /// Indices of nodes to remove.
    pub removed: Vec<usize>,
    /// Nodes to add.
    pub added: Vec<Node>,
    /// Indices and new settings of nodes that keep name and address.
    pub updated: Vec<(usize, Node)>,
}

/// Compares the live nodes with `wanted`. A node whose address changed is
/// removed and added again. Pure, for tests.
pub fn diff(current: &[Node], removed: &[bool], wanted: &[Node]) -> NodeChanges {
    let mut out = NodeChanges::default();
    let live = |i: usize| !removed.get(i).copied().unwrap_or(false);
    for (i, n) in current.iter().enumerate().filter(|(i, _)| live(*i)) {
        match wanted.iter().find(|w| w.name == n.name) {
            Some(w) if w.addr == n.addr => {
                if w != n {
                    out.updated.push((i, w.clone()));
                }
            }
            _ => out.removed.push(i),
        }
    }
    for w in wanted {
        let kept = current
            .iter()
            .enumerate()
            .any(|(i, n)| live(i) && n.name == w.name && n.addr == w.addr);
        if !kept {
            out.added.push(w.clone());
        }
    }
    out
}

impl Cluster {
    /// Whether `node` was removed by a reload.
    pub fn is_removed(&self, node: usize) -> bool {
        lock(&self.slots.load()[node].incarnation).removed
    }

    /// The index of the live node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        let nodes = self.nodes();
        (0..nodes.len()).find(|&i| nodes[i].name == name && !self.is_removed(i))
    }

    /// Applies a reloaded node list. Refuses to remove the node that takes
    /// writes (switch over first). Returns one line per change.
    pub fn apply_nodes(&self, wanted: &[Node]) -> Result<Vec<String>, MembershipError> {
        let current = self.nodes();
        let removed: Vec<bool> = (0..current.len()).map(|i| self.is_removed(i)).collect();
        let changes = diff(&current, &removed, wanted);
        if let Some(p) = self.snapshot().primary {
            if changes.removed.contains(&p) {
                return Err(MembershipError::RemovesPrimary(current[p].name.clone()));
            }
        }
        let mut report = vec![];
        let mut nodes = (*current).clone();
        for (i, n) in changes.updated {
            report.push(format!("node {} updated", n.name));
            nodes[i] = n;
        }
        for &i in &changes.removed {
            self.remove(i);
            let msg = "removed by a reload: no new connections; busy ones finish first";
            self.events
                .record(EventKind::NodeRemoved, Some(&current[i].name), msg);
            report.push(format!("node {} removed", current[i].name));
        }
        let mut slots = (**self.slots.load()).clone();
        for n in changes.added {
            self.events.record(
                EventKind::NodeAdded,
                Some(&n.name),
                format!("added by a reload at {}", n.addr),
            );
            report.push(format!("node {} added", n.name));
            slots.push(Slot::new(&n));
            nodes.push(n);
        }
        // Slots first: a reader that sees a node must find its slot.
        self.slots.store(Arc::new(slots));
        self.nodes.store(Arc::new(nodes));
        self.nudge();
        Ok(report)
    }

    /// Marks `node` removed and lets its connections drain: idle ones close
    /// at their next checkout, busy ones when their transaction ends.
    fn remove(&self, node: usize) {
        let slot = self.slot(node);
        slot.change(|inc| {
            inc.removed = true;
            inc.epoch += 1;
        });
    }

    /// Claims the hardware watcher of `node`; false when one already runs.
    pub(crate) fn claim_watch(&self, node: usize) -> bool {
        !self.slot(node).watched.swap(true, Ordering::Relaxed)
    }

    /// The hardware watcher of `node` stopped.
    pub(crate) fn release_watch(&self, node: usize) {
        self.slot(node).watched.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, addr: &str) -> Node {
        Node::plain(name, addr)
    }

    #[test]
    fn once_a_node_is_removed_no_checkout_gets_a_connection_to_it() {
        use crate::config::Target;
        let (a, b) = (node("a", "h:1"), node("b", "h:2"));
        let cluster = Cluster::new(vec![a.clone(), b], Arc::new(crate::events::Events::new(8)));
        cluster.publish(super::super::Snapshot {
            primary: Some(0),
            replicas: vec![1],
            usable: vec![1],
        });
        assert_eq!(cluster.route(Target::Replica).map(|r| r.node), Some(1));
        cluster.apply_nodes(&[a]).unwrap();
        // The monitor publishes the routing without b at its next tick; a
        // checkout meanwhile, on the snapshot that still names b, gets
        // nothing (and waits for that tick) rather than a connection that
        // would belong to the current incarnation of a removed node.
        for target in [Target::Replica, Target::Any] {
            let route = cluster.route(target);
            assert!(
                route.is_none(),
                "{target:?} routed to {:?}",
                route.map(|r| r.node)
            );
            assert_eq!(cluster.route_key(target), None, "{target:?}");
        }
        assert_eq!(cluster.route(Target::Primary).map(|r| r.node), Some(0));
    }

    /// The key a checkout picks an idle connection by (read without the
    /// incarnation's lock) names what a route names, through fences,
    /// retirements and their ends; a connection of an older incarnation
    /// is not current.
    #[test]
    fn the_checkout_key_follows_the_route_through_fences_and_retirements() {
        use crate::config::Target;
        let cluster = Cluster::new(
            vec![node("a", "h:1")],
            Arc::new(crate::events::Events::new(8)),
        );
        cluster.publish(super::super::Snapshot {
            primary: Some(0),
            replicas: vec![],
            usable: vec![0],
        });
        let key = |c: &Cluster| c.route_key(Target::Primary).map(|k| (k.node, k.epoch));
        let route = |c: &Cluster| c.route(Target::Primary).map(|r| (r.node, r.epoch));
        assert_eq!(key(&cluster), Some((0, 0)));
        let handle = cluster.route(Target::Primary).unwrap().handle;
        cluster.retire(0);
        assert_eq!(
            (key(&cluster), route(&cluster)),
            (Some((0, 1)), Some((0, 1)))
        );
        assert!(!handle.is_current(0) && handle.is_current(1));
        assert!(cluster.fence(0));
        assert_eq!((key(&cluster), route(&cluster)), (None, None));
        assert!(handle.is_current(2), "a fence retires the connections");
        cluster.unfence(0);
        assert_eq!(
            (key(&cluster), route(&cluster)),
            (Some((0, 2)), Some((0, 2)))
        );
    }

    #[test]
    fn nodes_are_matched_by_name_and_address() {
        let current = [node("a", "h:1"), node("b", "h:2"), node("c", "h:3")];
        let mut c2 = node("c", "h:3");
        c2.priority = 5;
        let wanted = [
            node("a", "h:1"),
            c2.clone(),
            node("d", "h:4"),
            node("b", "h:9"),
        ];
        let d = diff(&current, &[false; 3], &wanted);
        assert_eq!(d.removed, [1], "b moved: removed and added again");
        assert_eq!(d.updated, [(2, c2)]);
        assert_eq!(d.added, [node("d", "h:4"), node("b", "h:9")]);
        // A node removed earlier is not removed twice, and may come back.
        let d = diff(
            &current,
            &[false, true, false],
            &[node("a", "h:1"), node("c", "h:3"), node("b", "h:2")],
        );
        assert_eq!(d.removed, Vec::<usize>::new());
        assert_eq!(d.added, [node("b", "h:2")]);
    }
}
