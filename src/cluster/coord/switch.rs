//! A planned switchover across proxies, as a follower takes part in it, all
//! pure. The leader announces it in the shared record (`switching`: from
//! which node to which); every other proxy routing writes to `from` holds
//! its new transactions, drains its running ones and acknowledges in its
//! published view. Only then does the leader make `from` read-only and
//! promote, so no proxy's client is in a transaction when that happens. A
//! follower keeps holding until its own probes have moved its routing to
//! the record's primary, so no released transaction reaches the frozen
//! old primary.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Topology;

/// A switchover the leader announced and has not finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switching {
    /// Names this announcement; the acknowledgements carry it.
    pub id: u64,
    /// The primary being moved away from.
    pub from: String,
    /// The replica being promoted.
    pub to: String,
}

/// What a follower does about the record this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSwitch {
    /// Nothing is switching here: route as usual.
    Route,
    /// Hold new transactions, drain the running ones on `from`, then
    /// acknowledge this switchover.
    Drain(Switching),
    /// Keep new transactions held: the switchover is under way, or done and
    /// this proxy does not route to the new primary yet.
    Hold,
    /// Stop holding: the record's primary is ours again (the switchover was
    /// called off or we followed it), or the hold outlived its bound.
    Release {
        /// Released because the bound ran out, not because it finished.
        expired: bool,
    },
}

/// The follower's decision. `serving` is the primary this proxy routes
/// writes to, `drained` the switchover it last acknowledged, `held_since`
/// when it began holding (None: not holding).
pub fn peer_switch(
    record: Option<&Topology>,
    serving: Option<&str>,
    drained: Option<u64>,
    held_since: Option<Instant>,
    now: Instant,
    bound: Duration,
) -> PeerSwitch {
    let switching = record.and_then(|r| r.switching.as_ref());
    if let Some(sw) = switching.filter(|sw| serving == Some(sw.from.as_str())) {
        if drained != Some(sw.id) {
            return PeerSwitch::Drain(sw.clone());
        }
    }
    let Some(since) = held_since else {
        return PeerSwitch::Route;
    };
    if now.saturating_duration_since(since) >= bound {
        return PeerSwitch::Release { expired: true };
    }
    let record_primary = record.and_then(|r| r.primary.as_deref());
    let settled = switching.is_none() && serving.is_some() && serving == record_primary;
    if settled {
        PeerSwitch::Release { expired: false }
    } else {
        PeerSwitch::Hold
    }
}

/// Which live proxies have not yet acknowledged switchover `id`.
pub fn not_drained(peers: &[super::gate::PeerView], id: u64) -> Vec<&str> {
    peers
        .iter()
        .filter(|p| p.drained != Some(id))
        .map(|p| p.proxy.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(primary: &str, switching: Option<(u64, &str, &str)>) -> Topology {
        Topology {
            generation: 7,
            primary: Some(primary.into()),
            timeline: 1,
            fenced: vec![],
            promoting: None,
            switching: switching.map(|(id, from, to)| Switching {
                id,
                from: from.into(),
                to: to.into(),
            }),
        }
    }

    #[test]
    fn a_follower_drains_once_holds_until_it_routes_to_the_new_primary() {
        let t0 = Instant::now();
        let bound = Duration::from_secs(30);
        let later = t0 + Duration::from_secs(1);
        let announced = record("db1", Some((5, "db1", "db2")));
        let done = record("db2", None);
        let called_off = record("db1", None);
        let sw = Switching {
            id: 5,
            from: "db1".into(),
            to: "db2".into(),
        };
        let release = PeerSwitch::Release { expired: false };
        let cases = [
            (
                None,
                Some("db1"),
                None,
                None,
                PeerSwitch::Route,
                "no record",
            ),
            (
                Some(&called_off),
                Some("db1"),
                None,
                None,
                PeerSwitch::Route,
                "nothing switching",
            ),
            (
                Some(&announced),
                Some("db1"),
                None,
                None,
                PeerSwitch::Drain(sw.clone()),
                "announced: drain",
            ),
            (
                Some(&announced),
                Some("db1"),
                Some(4),
                Some(t0),
                PeerSwitch::Drain(sw),
                "an older acknowledgement does not count",
            ),
            (
                Some(&announced),
                Some("db1"),
                Some(5),
                Some(t0),
                PeerSwitch::Hold,
                "acknowledged, waiting for the leader",
            ),
            (
                Some(&announced),
                Some("db3"),
                None,
                None,
                PeerSwitch::Route,
                "not our primary",
            ),
            (
                Some(&done),
                Some("db1"),
                Some(5),
                Some(t0),
                PeerSwitch::Hold,
                "done, but we still route to the old primary",
            ),
            (
                Some(&done),
                None,
                Some(5),
                Some(t0),
                PeerSwitch::Hold,
                "done, we route nowhere yet",
            ),
            (
                Some(&done),
                Some("db2"),
                Some(5),
                Some(t0),
                release.clone(),
                "done and followed",
            ),
            (
                Some(&called_off),
                Some("db1"),
                Some(5),
                Some(t0),
                release,
                "called off: the old primary serves again",
            ),
        ];
        for (rec, serving, drained, since, want, what) in cases {
            assert_eq!(
                peer_switch(rec, serving, drained, since, later, bound),
                want,
                "{what}"
            );
        }
        assert_eq!(
            peer_switch(
                Some(&done),
                Some("db1"),
                Some(5),
                Some(t0),
                t0 + bound,
                bound
            ),
            PeerSwitch::Release { expired: true },
            "a leader that vanished mid-way does not hold writes for ever"
        );
    }

    #[test]
    fn only_live_proxies_without_this_acknowledgement_are_waited_for() {
        let peer = |name: &str, drained| super::super::gate::PeerView {
            proxy: name.into(),
            drained,
            ..Default::default()
        };
        let peers = [peer("a", Some(5)), peer("b", Some(4)), peer("c", None)];
        assert_eq!(not_drained(&peers, 5), vec!["b", "c"]);
        assert!(not_drained(&peers[..1], 5).is_empty());
    }
}
