//! Answers of `GET /cluster` captured from a two-member Patroni 3.0.2
//! cluster on etcd 3.4 (healthy; with synchronous mode; paused; with a
//! switchover set for a time; with tags; with a replica's PostgreSQL
//! stopped; and every distinct answer during `patronictl switchover`), and
//! the forms other Patroni versions write.

use super::*;
use crate::cluster::patroni::Tags;

const HEALTHY: &str = r#"{"members": [{"name": "pg0", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:38709/patroni", "host": "127.0.0.1", "port": 40791, "timeline": 1}, {"name": "pg1", "role": "replica", "state": "running", "api_url": "http://127.0.0.1:38053/patroni", "host": "127.0.0.1", "port": 33493, "timeline": 1, "lag": 0}]}"#;
const SYNC: &str = r#"{"members": [{"name": "pg0", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:38709/patroni", "host": "127.0.0.1", "port": 40791, "timeline": 1}, {"name": "pg1", "role": "sync_standby", "state": "running", "api_url": "http://127.0.0.1:38053/patroni", "host": "127.0.0.1", "port": 33493, "timeline": 1, "lag": 0}]}"#;
const PAUSED: &str = r#"{"members": [{"name": "pg0", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:38709/patroni", "host": "127.0.0.1", "port": 40791, "timeline": 1}, {"name": "pg1", "role": "sync_standby", "state": "running", "api_url": "http://127.0.0.1:38053/patroni", "host": "127.0.0.1", "port": 33493, "timeline": 1, "lag": 0}], "pause": true}"#;
const SCHEDULED: &str = r#"{"members": [{"name": "pg0", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:38709/patroni", "host": "127.0.0.1", "port": 40791, "timeline": 1}, {"name": "pg1", "role": "sync_standby", "state": "running", "api_url": "http://127.0.0.1:38053/patroni", "host": "127.0.0.1", "port": 33493, "timeline": 1, "lag": 0}], "scheduled_switchover": {"at": "2030-01-01T12:00:00+00:00", "from": "pg0", "to": "pg1"}}"#;
const TAGS: &str = r#"{"members": [{"name": "pg0", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:38709/patroni", "host": "127.0.0.1", "port": 40791, "timeline": 1}, {"name": "pg1", "role": "replica", "state": "running", "api_url": "http://127.0.0.1:38053/patroni", "host": "127.0.0.1", "port": 33493, "timeline": 1, "tags": {"nofailover": true, "noloadbalance": true, "nosync": true}, "lag": 0}]}"#;
/// pg1's PostgreSQL stopped by hand while paused: no position, no timeline.
const UNKNOWN_LAG: &str = r#"{"members": [{"name": "pg0", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:38709/patroni", "host": "127.0.0.1", "port": 40791, "timeline": 1}, {"name": "pg1", "role": "replica", "state": "running", "api_url": "http://127.0.0.1:38053/patroni", "host": "127.0.0.1", "port": 33493, "tags": {"nofailover": true, "noloadbalance": true, "nosync": true}, "lag": "unknown"}], "pause": true}"#;

fn read(body: &str) -> PatroniView {
    view(body.as_bytes(), "sy_21101_1").unwrap_or_else(|e| panic!("{body}: {e}"))
}

fn named<'v>(v: &'v PatroniView, name: &str) -> &'v Member {
    v.members
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no {name} in {v:?}"))
}

#[test]
fn a_healthy_cluster_names_its_leader_and_both_members() {
    let v = read(HEALTHY);
    assert_eq!(v.leader.as_deref(), Some("pg0"));
    assert!(!v.paused && v.failover.is_none() && v.sync.is_none());
    assert_eq!(
        (v.leader_lsn, &v.system_id, &v.last_switch),
        (None, &None, &None)
    );
    assert_eq!(
        v.members,
        [
            Member {
                name: "pg0".into(),
                host: Some("127.0.0.1".into()),
                port: Some(40791),
                role: Role::Primary,
                state: "running".into(),
                timeline: Some(1),
                lsn: None,
                lag_bytes: None,
                api_url: Some("http://127.0.0.1:38709/patroni".into()),
                tags: Tags::default(),
            },
            Member {
                name: "pg1".into(),
                host: Some("127.0.0.1".into()),
                port: Some(33493),
                role: Role::Replica,
                state: "running".into(),
                timeline: Some(1),
                lsn: None,
                lag_bytes: Some(0),
                api_url: Some("http://127.0.0.1:38053/patroni".into()),
                tags: Tags::default(),
            },
        ]
    );
}

#[test]
fn synchronous_standbys_pause_and_a_scheduled_switchover() {
    let in_sync = Some(SyncState {
        leader: "pg0".into(),
        standbys: vec!["pg1".into()],
        quorum: None,
    });
    let v = read(SYNC);
    assert_eq!(v.sync, in_sync);
    assert_eq!(named(&v, "pg1").role, Role::Replica);
    assert!(!v.paused);
    assert!(read(PAUSED).paused);
    let v = read(SCHEDULED);
    assert_eq!(
        v.failover,
        Some(ScheduledSwitchover {
            leader: Some("pg0".into()),
            candidate: Some("pg1".into()),
            scheduled_at: Some("2030-01-01T12:00:00+00:00".into()),
        })
    );
    assert_eq!((v.leader.as_deref(), v.sync), (Some("pg0"), in_sync));
}

#[test]
fn tags_and_a_lag_patroni_cannot_tell() {
    let all = Tags {
        nofailover: true,
        noloadbalance: true,
        nosync: true,
    };
    let v = read(TAGS);
    let pg1 = named(&v, "pg1");
    assert_eq!((&pg1.tags, pg1.lag_bytes), (&all, Some(0)));
    assert_eq!(named(&v, "pg0").tags, Tags::default());
    let v = read(UNKNOWN_LAG);
    let pg1 = named(&v, "pg1");
    assert_eq!((pg1.lag_bytes, pg1.timeline, &pg1.tags), (None, None, &all));
    assert!(v.paused);
}

#[test]
fn a_switchover_answer_by_answer() {
    // Each distinct answer, in order -> (leader, pg0's (role, state),
    // pg1's (role, timeline), the synchronous standby).
    type Step = (
        &'static str,
        Option<&'static str>,
        (Role, &'static str),
        (Role, Option<u32>),
        Option<&'static str>,
    );
    let steps: [Step; 10] = [
        (
            r#"{"members": [{"name": "pg0", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:38709/patroni", "host": "127.0.0.1", "port": 40791, "timeline": 1}, {"name": "pg1", "role": "sync_standby", "state": "running", "api_url": "http://127.0.0.1:38053/patroni", "host": "127.0.0.1", "port": 33493, "timeline": 1, "lag": 0}]}"#,
            Some("pg0"),
            (Role::Primary, "running"),
            (Role::Replica, Some(1)),
            Some("pg1"),
        ),
        (
            r#"{"members": [{"name": "pg0", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:38709/patroni", "host": "127.0.0.1", "port": 40791}, {"name": "pg1", "role": "sync_standby", "state": "running", "api_url": "http://127.0.0.1:38053/patroni", "host": "127.0.0.1", "port": 33493, "timeline": 1, "lag": 0}]}"#,
            Some("pg0"),
            (Role::Primary, "running"),
            (Role::Replica, Some(1)),
            Some("pg1"),
        ),
        (
            r#"{"members": [{"name": "pg0", "role": "leader", "state": "stopping", "api_url": "http://127.0.0.1:38709/patroni", "host": "127.0.0.1", "port": 40791}, {"name": "pg1", "role": "sync_standby", "state": "running", "api_url": "http://127.0.0.1:38053/patroni", "host": "127.0.0.1", "port": 33493, "timeline": 1, "lag": 0}]}"#,
            Some("pg0"),
            (Role::Primary, "stopping"),
            (Role::Replica, Some(1)),
            Some("pg1"),
        ),
        (
            r#"{"members": [{"name": "pg0", "role": "replica", "state": "stopping", "api_url": "http://127.0.0.1:38709/patroni", "host": "127.0.0.1", "port": 40791, "lag": "unknown"}, {"name": "pg1", "role": "sync_standby", "state": "running", "api_url": "http://127.0.0.1:38053/patroni", "host": "127.0.0.1", "port": 33493, "timeline": 1, "lag": 0}]}"#,
            None,
            (Role::Replica, "stopping"),
            (Role::Replica, Some(1)),
            None,
        ),
        (
            r#"{"members": [{"name": "pg0", "role": "replica", "state": "stopping", "api_url": "http://127.0.0.1:38709/patroni", "host": "127.0.0.1", "port": 40791, "lag": "unknown"}, {"name": "pg1", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:38053/patroni", "host": "127.0.0.1", "port": 33493, "timeline": 1}]}"#,
            Some("pg1"),
            (Role::Replica, "stopping"),
            (Role::Primary, Some(1)),
            None,
        ),
        (
            r#"{"members": [{"name": "pg0", "role": "replica", "state": "stopping", "api_url": "http://127.0.0.1:38709/patroni", "host": "127.0.0.1", "port": 40791, "lag": "unknown"}, {"name": "pg1", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:38053/patroni", "host": "127.0.0.1", "port": 33493, "timeline": 2}]}"#,
            Some("pg1"),
            (Role::Replica, "stopping"),
            (Role::Primary, Some(2)),
            None,
        ),
        (
            r#"{"members": [{"name": "pg0", "role": "replica", "state": "stopped", "api_url": "http://127.0.0.1:38709/patroni", "host": "127.0.0.1", "port": 40791, "lag": "unknown"}, {"name": "pg1", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:38053/patroni", "host": "127.0.0.1", "port": 33493, "timeline": 2}]}"#,
            Some("pg1"),
            (Role::Replica, "stopped"),
            (Role::Primary, Some(2)),
            None,
        ),
        (
            r#"{"members": [{"name": "pg0", "role": "replica", "state": "running", "api_url": "http://127.0.0.1:38709/patroni", "host": "127.0.0.1", "port": 40791, "timeline": 2, "lag": 0}, {"name": "pg1", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:38053/patroni", "host": "127.0.0.1", "port": 33493, "timeline": 2}]}"#,
            Some("pg1"),
            (Role::Replica, "running"),
            (Role::Primary, Some(2)),
            None,
        ),
        (
            r#"{"members": [{"name": "pg0", "role": "sync_standby", "state": "running", "api_url": "http://127.0.0.1:38709/patroni", "host": "127.0.0.1", "port": 40791, "timeline": 2, "lag": 0}, {"name": "pg1", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:38053/patroni", "host": "127.0.0.1", "port": 33493, "timeline": 2}]}"#,
            Some("pg1"),
            (Role::Replica, "running"),
            (Role::Primary, Some(2)),
            Some("pg0"),
        ),
        (
            r#"{"members": [{"name": "pg0", "role": "sync_standby", "state": "running", "api_url": "http://127.0.0.1:38709/patroni", "host": "127.0.0.1", "port": 40791, "timeline": 2, "lag": 56}, {"name": "pg1", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:38053/patroni", "host": "127.0.0.1", "port": 33493, "timeline": 2}]}"#,
            Some("pg1"),
            (Role::Replica, "running"),
            (Role::Primary, Some(2)),
            Some("pg0"),
        ),
    ];
    for (i, (body, leader, pg0, pg1, standby)) in steps.into_iter().enumerate() {
        let v = read(body);
        assert_eq!(v.leader.as_deref(), leader, "step {i}");
        let (m0, m1) = (named(&v, "pg0"), named(&v, "pg1"));
        assert_eq!((m0.role, m0.state.as_str()), pg0, "step {i}");
        assert_eq!((m1.role, m1.timeline), pg1, "step {i}");
        let sync = v.sync.as_ref().and_then(|s| s.standbys.first());
        assert_eq!(sync.map(String::as_str), standby, "step {i}");
    }
}

#[test]
fn forms_of_later_versions_and_of_a_standby_cluster() {
    // Patroni 4: `scope`, replication states, quorum standbys, LSNs as X/Y.
    let v4 = r#"{"members": [
        {"name": "pg0", "role": "leader", "state": "running", "host": "10.0.0.1", "port": 5432, "timeline": 3},
        {"name": "pg1", "role": "quorum_standby", "state": "streaming", "host": "10.0.0.2", "port": 5432,
         "timeline": 3, "lsn": "1/2A000060", "lag": 4096, "receive_lsn": "1/2A000060", "receive_lag": 0},
        {"name": "pg2", "role": "replica", "state": "stopped", "lsn": "unknown", "lag": "unknown",
         "tags": {"failover_priority": 0, "sync_priority": 1}}
    ], "scope": "orders"}"#;
    let v = view(v4.as_bytes(), "orders").unwrap();
    assert_eq!(v.leader.as_deref(), Some("pg0"));
    let standbys = v.sync.as_ref().map(|s| s.standbys.clone());
    assert_eq!(standbys, Some(vec!["pg1".to_string()]));
    let pg1 = named(&v, "pg1");
    assert_eq!(
        (pg1.role, pg1.state.as_str(), pg1.lsn, pg1.lag_bytes),
        (Role::Replica, "streaming", Some(0x1_2A00_0060), Some(4096))
    );
    let pg2 = named(&v, "pg2");
    assert_eq!((pg2.host.as_deref(), pg2.port, pg2.lsn), (None, None, None));
    assert!(pg2.tags.nofailover && !pg2.tags.nosync, "{:?}", pg2.tags);

    let standby = r#"{"members": [{"name": "s0", "role": "standby_leader", "state": "running"},
        {"name": "s1", "role": "replica", "state": ""}]}"#;
    let v = view(standby.as_bytes(), "orders").unwrap();
    assert_eq!(v.leader.as_deref(), Some("s0"));
    assert_eq!(named(&v, "s0").role, Role::StandbyLeader);
    assert_eq!(named(&v, "s1").state, "unknown");
}

#[test]
fn what_is_no_view_of_this_cluster() {
    // body -> error, or the members read
    let refused = [
        ("<html>502 Bad Gateway</html>", "not JSON"),
        ("[]", "not JSON"),
        (r#"{"state": "running", "role": "master"}"#, "no `members`"),
        (r#"{"members": {}}"#, "no `members`"),
        (
            r#"{"members": [], "scope": "billing"}"#,
            "scope is \"billing\", not \"orders\"",
        ),
    ];
    for (body, want) in refused {
        let err = view(body.as_bytes(), "orders").unwrap_err().to_string();
        assert!(err.contains(want), "{body}: {err}");
    }
    let odd = r#"{"members": [{"role": "leader"}, {"name": ""}, 7,
        {"name": "pg0", "role": "leader", "host": "h", "port": 70000, "timeline": -1},
        {"name": "pg1", "role": "cascade", "port": 5432}], "pause": false}"#;
    let v = view(odd.as_bytes(), "orders").unwrap();
    assert_eq!(
        v.leader.as_deref(),
        Some("pg0"),
        "a nameless member leads nothing"
    );
    let names: Vec<&str> = v.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["pg0", "pg1"]);
    let (pg0, pg1) = (named(&v, "pg0"), named(&v, "pg1"));
    assert_eq!((pg0.port, pg0.timeline), (None, None));
    assert_eq!(
        (pg1.role, pg1.port, pg1.host.as_deref()),
        (Role::Unknown, None, None)
    );
    assert!(!v.paused);
}

#[test]
fn positions_written_x_slash_y() {
    let cases = [
        (r#""0/3000060""#, Some(0x300_0060)),
        (r#""1/0""#, Some(1 << 32)),
        (r#""FFFFFFFF/FFFFFFFF""#, Some(u64::MAX)),
        ("50331744", Some(50331744)),
        (r#""unknown""#, None),
        (r#""1/2/3""#, None),
        (r#""100000000/0""#, None),
    ];
    for (json, want) in cases {
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(lsn(&v), want, "{json}");
    }
}
