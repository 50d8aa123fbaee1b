use super::*;
use crate::cluster::patroni::{ScheduledSwitchover, Tags, TimelineSwitch};

fn node(name: &str, addr: &str) -> Node {
    Node::plain(name, addr)
}

fn nodes() -> Vec<Node> {
    vec![
        node("a", "10.0.0.1:5432"),
        node("b", "db-B.example:5433"),
        node("pg2", "10.0.0.3:5432"),
    ]
}

fn member(name: &str, host: &str, port: u16, role: Role, state: &str) -> Member {
    Member {
        name: name.into(),
        host: Some(host.into()),
        port: Some(port),
        role,
        state: state.into(),
        timeline: Some(3),
        lsn: None,
        lag_bytes: None,
        api_url: None,
        tags: Tags::default(),
    }
}

/// pg0 leads on 10.0.0.1; pg1 streams on db-b; pg2 (matched by name only)
/// runs; an unknown member on an address no node has.
fn observed() -> Observed {
    let mut pg2 = member("pg2", "elsewhere", 1, Role::Replica, "running");
    pg2.host = None;
    Observed {
        prefix: "/service/orders/".into(),
        connected: true,
        error: None,
        revision: 7,
        view: PatroniView {
            leader: Some("pg0".into()),
            members: vec![
                member("pg0", "10.0.0.1", 5432, Role::Primary, "running"),
                member("pg1", "DB-b.example", 5433, Role::Replica, "streaming"),
                pg2,
                member("pg9", "10.0.0.9", 5432, Role::Replica, "running"),
            ],
            ..PatroniView::default()
        },
        failover_seen: None,
    }
}

const LIMIT: Duration = Duration::from_secs(30);
const UNIX_NOW: i64 = 1_796_535_000;

fn gate_of(o: &Observed) -> Gate {
    gate(Some(o), &nodes(), Instant::now(), UNIX_NOW, LIMIT)
}

#[test]
fn the_leader_and_the_readable_replicas_are_matched_to_nodes() {
    let g = gate_of(&observed());
    assert_eq!(g.leader, Some(0));
    assert_eq!(g.writer(), Some(0));
    assert_eq!(g.readable, [false, true, true]);
    assert_eq!(g.min_timeline, 3);
    assert!(!g.draining);
}

#[test]
fn nothing_is_allowed_before_a_view_or_without_a_leader() {
    let none = gate(None, &nodes(), Instant::now(), UNIX_NOW, LIMIT);
    assert_eq!((none.writer(), none.readable), (None, vec![false; 3]));
    let mut o = observed();
    o.view.leader = None;
    assert_eq!(gate_of(&o).writer(), None);
    // A leader that is no configured node, or whose member key is gone.
    o.view.leader = Some("pg9".into());
    assert_eq!(gate_of(&o).writer(), None);
    o.view.leader = Some("gone".into());
    assert_eq!(gate_of(&o).writer(), None);
}

#[test]
fn replicas_patroni_would_not_balance_to_take_no_reads() {
    type Change = fn(&mut Member);
    // (change to pg1) -> readable
    let cases: [(Change, bool); 6] = [
        (|_| {}, true),
        (|m| m.state = "starting".into(), false),
        (|m| m.state = "stopped".into(), false),
        (|m| m.tags.noloadbalance = true, false),
        (|m| m.tags.nofailover = true, true),
        (|m| m.role = Role::Demoted, false),
    ];
    for (change, want) in cases {
        let mut o = observed();
        change(&mut o.view.members[1]);
        assert_eq!(gate_of(&o).readable[1], want, "{:?}", o.view.members[1]);
    }
}

#[test]
fn the_timeline_floor_is_the_highest_patroni_published() {
    let mut o = observed();
    o.view.members[1].timeline = Some(5);
    assert_eq!(gate_of(&o).min_timeline, 5);
    o.view.last_switch = Some(TimelineSwitch {
        timeline: 6,
        lsn: 0,
        at: None,
        leader: None,
    });
    assert_eq!(gate_of(&o).min_timeline, 7);
}

fn asked(leader: Option<&str>, candidate: Option<&str>, at: Option<&str>) -> Observed {
    let mut o = observed();
    o.view.failover = Some(ScheduledSwitchover {
        leader: leader.map(Into::into),
        candidate: candidate.map(Into::into),
        scheduled_at: at.map(Into::into),
    });
    o.failover_seen = Some(Instant::now());
    o
}

#[test]
fn a_switchover_away_from_the_leader_drains_it() {
    let past = "2026-12-06T05:29:50+00:00";
    let future = "2026-12-06T05:31:00+00:00";
    let long_ago = "2026-12-06T05:00:00+00:00";
    // (leader in the key, candidate, scheduled at) -> draining
    let cases = [
        (Some("pg0"), Some("pg1"), None, true),
        (Some("pg0"), None, None, true),
        (None, Some("pg1"), None, true),
        (Some("pg0"), Some("pg1"), Some(past), true),
        (Some("pg0"), Some("pg1"), Some(future), false),
        (Some("pg0"), Some("pg1"), Some(long_ago), false),
        (Some("pg0"), Some("pg1"), Some("not a time"), true),
        // Done already (the key outlived the move), or not about this leader.
        (Some("pg1"), Some("pg0"), None, false),
        (Some("pg0"), Some("pg0"), None, false),
    ];
    for (leader, candidate, at, want) in cases {
        let g = gate_of(&asked(leader, candidate, at));
        assert_eq!(g.draining, want, "{leader:?} {candidate:?} {at:?}");
        assert_eq!(g.writer(), (!want).then_some(0));
        assert_eq!(g.leader, Some(0));
    }
}

#[test]
fn a_drain_ends_after_its_limit() {
    let mut o = asked(Some("pg0"), Some("pg1"), None);
    let now = Instant::now();
    o.failover_seen = Some(now);
    let at = |o: &Observed, after: Duration| {
        gate(Some(o), &nodes(), now + after, UNIX_NOW, LIMIT).draining
    };
    assert!(at(&o, Duration::ZERO));
    assert!(at(&o, LIMIT - Duration::from_millis(1)));
    assert!(!at(&o, LIMIT));
    // No leader: nothing to drain (writes are held anyway).
    o.view.leader = None;
    assert!(!at(&o, Duration::ZERO));
}

#[test]
fn addresses_compare_as_the_proxy_connects() {
    // (node addr, member host, port) -> same
    let cases = [
        ("10.0.0.1:5432", "10.0.0.1", 5432, true),
        ("10.0.0.1:5432", "10.0.0.1", 5433, false),
        ("DB.example:5432", "db.EXAMPLE", 5432, true),
        ("[::1]:5432", "::1", 5432, true),
        ("no-port", "no-port", 5432, false),
    ];
    for (addr, host, port, want) in cases {
        assert_eq!(same_addr(addr, host, port), want, "{addr} {host}:{port}");
    }
}
