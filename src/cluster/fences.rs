//! Fences with coordination: the shared record is where they live. A proxy
//! takes the record's fences before it routes anything, then, while it
//! does not lead, follows what the leader adds to or removes from them.
//! `READMIT` is the leader's: on a follower it is handed over through etcd.

use std::time::Duration;

use super::coord::gate::Held;
use super::coord::{fence_changes, Ask, Coordination};
use super::{Cluster, ReadmitError};
use crate::events::EventKind;

/// Fences what the shared record says is fenced, once it has been read;
/// true when done (or when `gave_up` waiting for etcd).
pub(super) fn restore(cluster: &Cluster, coord: Option<&Coordination>, gave_up: bool) -> bool {
    let Some(names) = coord.and_then(Coordination::fenced_by_record) else {
        if gave_up {
            let msg =
                "the shared record could not be read: fences set by other proxies are not known";
            cluster.events.record(EventKind::ActionFailed, None, msg);
        }
        return gave_up;
    };
    let nodes = cluster.nodes();
    for name in names {
        let Some(i) = nodes.iter().position(|n| n.name == name) else {
            continue;
        };
        if cluster.fence(i) {
            let msg = "fenced, as the shared record says (until re-admitted)";
            cluster
                .events
                .record(EventKind::NodeFenced, Some(&name), msg);
        }
    }
    true
}

/// Applies what changed in the record's fences since `seen`, while this
/// proxy does not lead (`held`). The leader's own fences are the record's
/// source, so it applies nothing: a record still in flight would undo a
/// newer decision.
pub(super) fn follow(
    cluster: &Cluster,
    coord: Option<&Coordination>,
    held: Option<&Held>,
    seen: &mut Option<Vec<String>>,
) {
    let Some(now) = coord.and_then(Coordination::fenced_by_record) else {
        return;
    };
    let Some(before) = seen.replace(now) else {
        return;
    };
    if held.is_none() {
        return;
    }
    let now = seen.as_deref().unwrap_or_default();
    let (added, removed) = fence_changes(&before, now);
    let nodes = cluster.nodes();
    let index = |name: &str| nodes.iter().position(|n| n.name == name);
    for i in added.into_iter().filter_map(index) {
        if cluster.fence(i) {
            let msg = "fenced by the leader, as the shared record says (until re-admitted)";
            cluster
                .events
                .record(EventKind::NodeFenced, Some(&nodes[i].name), msg);
        }
    }
    for i in removed.iter().filter_map(|n| index(n)) {
        if cluster.is_fenced(i) {
            cluster.unfence(i);
            let msg = "re-admitted through the shared record; routed again once its checks pass";
            cluster
                .events
                .record(EventKind::NodeReadmitted, Some(&nodes[i].name), msg);
        }
    }
}

/// Runs the queued `READMIT`s: here when this proxy acts alone or leads
/// (`held` is None), handed to the leader when another leads, refused
/// when nobody can change the record.
pub(super) fn readmit(
    cluster: &Cluster,
    coord: Option<&Coordination>,
    held: Option<&Held>,
    limit: Duration,
) {
    let nodes = cluster.nodes();
    for r in cluster.take_readmits() {
        let name = nodes[r.node].name.clone();
        match (held, coord) {
            (None, _) => {
                let outcome = match cluster.is_fenced(r.node) {
                    false => Err(ReadmitError::NotFenced(name)),
                    true => {
                        cluster.unfence(r.node);
                        let msg = "re-admitted by an operator (READMIT); routed again once its \
                                   checks pass";
                        cluster
                            .events
                            .record(EventKind::NodeReadmitted, Some(&name), msg);
                        Ok(())
                    }
                };
                let _ = r.reply.send(outcome);
            }
            (Some(Held::NotLeader(Some(_))), Some(c)) => {
                let reason = format!("READMIT on proxy {}", c.id());
                let asked = c.forward(Ask::Readmit(name), reason, limit);
                tokio::spawn(async move {
                    let outcome = asked.await.map(|_| ()).map_err(ReadmitError::AtLeader);
                    let _ = r.reply.send(outcome);
                });
            }
            (Some(why), _) => {
                let _ = r.reply.send(Err(ReadmitError::NoLeader(why.to_string())));
            }
        }
    }
}
