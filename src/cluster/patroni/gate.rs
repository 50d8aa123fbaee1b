//! What Patroni's view allows, pure: which configured node may take writes
//! (Patroni's leader, once it reports primary on Patroni's timeline or a
//! later one), whether a switchover asked of Patroni is draining the
//! leader (new transactions wait; running ones finish), and which nodes
//! Patroni lists as replicas fit for reads. The monitor hands this to the
//! failover step; Switchyard's own probes still decide whether the node
//! answers and what it reports.

use std::time::{Duration, Instant};

use super::{Member, Observed, PatroniView, Role};
use crate::config::Node;

/// What Patroni allows now, per configured node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// The configured node Patroni's leader key names; none without a
    /// leader, or when no configured node is that member.
    pub leader: Option<usize>,
    /// The lowest timeline the leader may report primary on: what Patroni
    /// last published for any member or its history.
    pub min_timeline: u32,
    /// A switchover away from the leader was asked of Patroni: no new
    /// transaction starts there.
    pub draining: bool,
    /// Per configured node: a member Patroni reports as a running replica
    /// that takes read traffic.
    pub readable: Vec<bool>,
}

impl Gate {
    /// The node that may take writes, if its probe agrees.
    pub fn writer(&self) -> Option<usize> {
        self.leader.filter(|_| !self.draining)
    }
}

/// The gate `observed` gives for `nodes`. `now`/`unix_now` time a
/// switchover request; one drains for at most `drain_limit` after it was
/// first seen (or after the time it was scheduled for).
pub fn gate(
    observed: Option<&Observed>,
    nodes: &[Node],
    now: Instant,
    unix_now: i64,
    drain_limit: Duration,
) -> Gate {
    let Some(o) = observed else {
        return Gate {
            leader: None,
            min_timeline: 0,
            draining: false,
            readable: vec![false; nodes.len()],
        };
    };
    let view = &o.view;
    let leader_member = view
        .leader
        .as_deref()
        .and_then(|l| view.members.iter().find(|m| m.name == l));
    let mut readable = vec![false; nodes.len()];
    for m in view.members.iter().filter(|m| takes_reads(m)) {
        if let Some(i) = node_of(m, nodes) {
            readable[i] = true;
        }
    }
    Gate {
        leader: leader_member.and_then(|m| node_of(m, nodes)),
        min_timeline: min_timeline(view),
        draining: draining(o, now, unix_now, drain_limit),
        readable,
    }
}

/// A replica that Patroni runs and load-balances to (its `/replica` check
/// would answer 200).
fn takes_reads(m: &Member) -> bool {
    m.role == Role::Replica
        && matches!(m.state.as_str(), "running" | "streaming")
        && !m.tags.noloadbalance
}

/// The configured node that is `member`: the same address (where the
/// proxy connects), else the same name.
pub fn node_of(member: &Member, nodes: &[Node]) -> Option<usize> {
    let by_addr = match (&member.host, member.port) {
        (Some(h), Some(p)) => nodes.iter().position(|n| same_addr(&n.addr, h, p)),
        _ => None,
    };
    by_addr.or_else(|| nodes.iter().position(|n| n.name == member.name))
}

/// `host:port` (or `[v6]:port`) names `host` and `port`; host names
/// compare without case.
fn same_addr(addr: &str, host: &str, port: u16) -> bool {
    let Some((h, p)) = addr.rsplit_once(':') else {
        return false;
    };
    let h = h.trim_start_matches('[').trim_end_matches(']');
    p.parse() == Ok(port) && h.eq_ignore_ascii_case(host)
}

fn min_timeline(view: &PatroniView) -> u32 {
    let members = view.members.iter().filter_map(|m| m.timeline);
    let ended = view.last_switch.as_ref().map(|s| s.timeline + 1);
    members.chain(ended).max().unwrap_or(0)
}

/// A switchover (or failover) asked of Patroni away from its current
/// leader, due now and seen less than `limit` ago. Bounded, because a
/// request Patroni never acts on must not hold writes for good.
fn draining(o: &Observed, now: Instant, unix_now: i64, limit: Duration) -> bool {
    let view = &o.view;
    let (Some(ask), Some(leader)) = (&view.failover, &view.leader) else {
        return false;
    };
    let from_leader = ask.leader.as_ref().is_none_or(|l| l == leader);
    let elsewhere = ask.candidate.as_ref() != Some(leader);
    if !from_leader || !elsewhere {
        return false;
    }
    let due = match ask.scheduled_at.as_deref().map(super::parse::unix_seconds) {
        // Not yet: nothing drains before the time Patroni acts.
        Some(Some(at)) if at > unix_now => return false,
        Some(Some(at)) => Some(unix_now - at),
        _ => None,
    };
    let waited = match (due, o.failover_seen) {
        (Some(since_due), _) => Duration::from_secs(since_due.unsigned_abs()),
        (None, Some(seen)) => now.saturating_duration_since(seen),
        (None, None) => Duration::ZERO,
    };
    waited < limit
}

#[cfg(test)]
mod tests;
