//! The gate between decide and act, all pure: whether this proxy may act on
//! what [`step`](super::super::failover::step) decided, given what the
//! coordination task knows of the other proxies. Only the leader acts, only
//! while its lease holds, and it starts a failover only when a majority of
//! the live proxies' views (its own included) agree that the primary is down.
//! Held back, a proxy runs as `follow`: it moves its own routing to a node
//! someone else promoted, and asks nothing of any node.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::config::coordination::Quorum;
use crate::config::FailoverMode;

use super::super::failover::FailoverSettings;

/// One proxy's view, as it publishes it (bound to its lease, so a proxy that
/// vanished drops out of everyone's count within `lease_ttl`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// The proxy's id.
    pub proxy: String,
    /// Nodes this proxy counts as down (health checks or failing hardware).
    pub down: Vec<String>,
    /// The node it routes writes to, if any.
    pub primary: Option<String>,
    /// That primary's timeline.
    pub timeline: u32,
    /// The fingerprint of its node list and failover settings
    /// ([`fingerprint`](super::fingerprint)).
    #[serde(default)]
    pub config: String,
    /// The leader's switchover this proxy has drained for (its
    /// acknowledgement).
    #[serde(default)]
    pub drained: Option<u64>,
    /// Its `proxy.peer_id` and the address a CancelRequest carrying that
    /// id is sent on to ([`Config::cancel_route`](crate::config::Config::cancel_route)).
    #[serde(default)]
    pub cancel_route: Option<(u8, String)>,
}

/// What this proxy knows of the others, from the coordination task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    /// etcd answered and our lease is alive.
    pub connected: bool,
    /// We hold the leader key under our live lease.
    pub leader: bool,
    /// Who leads, when known.
    pub leader_id: Option<String>,
    /// Our lease lapses then unless renewed: past it we hold nothing, even
    /// before the coordination task notices.
    pub lease_until: Option<Instant>,
    /// The other live proxies' views.
    pub peers: Vec<PeerView>,
    /// Why this proxy is refused: its configuration differs from the
    /// leader's.
    pub refused: Option<String>,
    /// The shared record as last read (after the first read, even if none).
    pub record: Option<super::Topology>,
    /// The record has been read at least once this session.
    pub record_read: bool,
}

/// Why this proxy does not act now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Held {
    /// Our node list or failover settings differ from the leader's.
    #[error("{0}")]
    Refused(String),
    /// No live lease: nobody can tell whether another proxy acts.
    #[error("etcd is unreachable: not acting, following the nodes' own roles")]
    Disconnected,
    /// Another proxy leads (or nobody yet).
    #[error("not the leader ({}): the leader acts", .0.as_deref().unwrap_or("none yet"))]
    NotLeader(Option<String>),
    /// Too few live proxies see the primary down.
    #[error("{agree} of {live} live proxies see {primary} down: no majority, no failover")]
    NoQuorum {
        /// The primary in question.
        primary: String,
        /// Views that count it down, ours included.
        agree: usize,
        /// Live proxies, ours included.
        live: usize,
    },
}

/// Whether this proxy may run actions at all (promote, repoint, fence) at
/// `now`.
pub fn may_act(standing: &Standing, now: Instant) -> Result<(), Held> {
    if let Some(why) = &standing.refused {
        return Err(Held::Refused(why.clone()));
    }
    let alive = standing.connected && standing.lease_until.is_some_and(|t| now < t);
    match (alive, standing.leader) {
        (false, _) => Err(Held::Disconnected),
        (true, false) => Err(Held::NotLeader(standing.leader_id.clone())),
        (true, true) => Ok(()),
    }
}

/// Whether this proxy may start a failover of `primary`, which its own view
/// counts as down.
pub fn may_fail_over(
    standing: &Standing,
    quorum: Quorum,
    primary: &str,
    now: Instant,
) -> Result<(), Held> {
    may_act(standing, now)?;
    if quorum == Quorum::Leader {
        return Ok(());
    }
    let live = standing.peers.len() + 1;
    let agree = 1 + standing
        .peers
        .iter()
        .filter(|p| p.down.iter().any(|n| n == primary))
        .count();
    if agree * 2 > live {
        Ok(())
    } else {
        Err(Held::NoQuorum {
            primary: primary.into(),
            agree,
            live,
        })
    }
}

/// The settings `step` runs with: unchanged when acting; otherwise
/// `follow`, and with no action on any node (a leader held only by the
/// quorum still repoints, clears and fences after someone else's promotion).
pub fn gated(mut s: FailoverSettings, verdict: &Result<(), Held>) -> FailoverSettings {
    match verdict {
        Ok(()) => s,
        Err(held) => {
            if s.mode == FailoverMode::Promote {
                s.mode = FailoverMode::Follow;
            }
            if !matches!(held, Held::NoQuorum { .. }) {
                s.repoint_replicas = false;
                s.clear_sync_standby = false;
                s.fence_command = false;
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn peer(name: &str, down: &[&str]) -> PeerView {
        PeerView {
            proxy: name.into(),
            down: down.iter().map(|s| s.to_string()).collect(),
            primary: None,
            timeline: 1,
            config: String::new(),
            drained: None,
            cancel_route: None,
        }
    }

    fn standing(connected: bool, leader: bool, peers: Vec<PeerView>) -> Standing {
        Standing {
            connected,
            leader,
            leader_id: Some("a".into()),
            lease_until: Some(Instant::now() + Duration::from_secs(3)),
            peers,
            refused: None,
            record: None,
            record_read: true,
        }
    }

    #[test]
    fn only_a_connected_leader_with_a_majority_fails_over() {
        let all_down = vec![peer("b", &["db1"]), peer("c", &["db1"])];
        let one_down = vec![peer("b", &["db1"]), peer("c", &[])];
        let none_down = vec![peer("b", &[]), peer("c", &["db2"])];
        let m = Quorum::Majority;
        let cases = [
            (standing(true, true, all_down.clone()), m, true, "all agree"),
            (standing(true, true, one_down.clone()), m, true, "2 of 3"),
            (standing(true, true, none_down.clone()), m, false, "1 of 3"),
            (
                standing(true, true, none_down.clone()),
                Quorum::Leader,
                true,
                "leader alone",
            ),
            (
                standing(true, true, vec![peer("b", &[])]),
                m,
                false,
                "1 of 2 is no majority",
            ),
            (standing(true, true, vec![]), m, true, "alone: 1 of 1"),
            (
                standing(true, false, all_down.clone()),
                m,
                false,
                "not the leader",
            ),
            (
                standing(false, true, all_down.clone()),
                m,
                false,
                "lease lost",
            ),
            (
                Standing {
                    lease_until: Some(Instant::now() - Duration::from_millis(1)),
                    ..standing(true, true, all_down)
                },
                m,
                false,
                "lease lapsed before the task noticed",
            ),
            (
                Standing {
                    refused: Some("configuration differs".into()),
                    ..standing(true, true, vec![])
                },
                m,
                false,
                "refused: its configuration differs",
            ),
        ];
        for (s, quorum, want, what) in cases {
            let got = may_fail_over(&s, quorum, "db1", Instant::now());
            assert_eq!(got.is_ok(), want, "{what}: {got:?}");
        }
    }

    #[test]
    fn a_held_proxy_follows_and_touches_no_node() {
        let s = FailoverSettings {
            mode: FailoverMode::Promote,
            max_lag_bytes: 0,
            repoint_replicas: true,
            clear_sync_standby: true,
            fence_command: true,
            promote_timeout: Duration::from_secs(30),
            promotion_sent: None,
            appointed: None,
        };
        let acting = gated(s.clone(), &Ok(()));
        assert_eq!(acting.mode, FailoverMode::Promote);
        let follower = gated(s.clone(), &Err(Held::NotLeader(None)));
        assert_eq!(follower.mode, FailoverMode::Follow);
        assert!(
            !follower.repoint_replicas && !follower.clear_sync_standby && !follower.fence_command
        );
        let no_quorum = Held::NoQuorum {
            primary: "db1".into(),
            agree: 1,
            live: 3,
        };
        let leader = gated(s.clone(), &Err(no_quorum));
        assert_eq!(leader.mode, FailoverMode::Follow);
        assert!(
            leader.repoint_replicas,
            "the leader still tidies up after a promotion"
        );
        let off = FailoverSettings {
            mode: FailoverMode::Off,
            ..s
        };
        assert_eq!(gated(off, &Err(Held::Disconnected)).mode, FailoverMode::Off);
    }
}
