//! Values captured from a two-member Patroni 3.0.2 cluster on etcd 3.4
//! (before, during and after `patronictl switchover`, with synchronous
//! mode and tags), and the forms other Patroni versions write.

use super::*;

/// Keys relative to the prefix, as `view` takes them.
fn keys(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

const CONFIG_3_0: &str = r#"{"ttl":10,"loop_wait":1,"retry_timeout":5,"maximum_lag_on_failover":1048576,"postgresql":{"use_pg_rewind":false,"use_slots":true,"parameters":{"wal_level":"replica","hot_standby":"on","max_wal_senders":10,"max_replication_slots":10}}}"#;
const PG0_LEADER: &str = r#"{"conn_url":"postgres://127.0.0.1:59913/postgres","api_url":"http://127.0.0.1:39037/patroni","state":"running","role":"master","version":"3.0.2","xlog_location":50331744,"timeline":1}"#;
const PG1_REPLICA: &str = r#"{"conn_url":"postgres://127.0.0.1:51283/postgres","api_url":"http://127.0.0.1:55719/patroni","state":"running","role":"replica","version":"3.0.2","xlog_location":50331744,"timeline":1}"#;

/// A healthy cluster: pg0 leads, pg1 streams from it.
fn healthy() -> BTreeMap<String, Vec<u8>> {
    keys(&[
        ("config", CONFIG_3_0),
        ("initialize", "7716031111667343110"),
        ("leader", "pg0"),
        ("members/pg0", PG0_LEADER),
        ("members/pg1", PG1_REPLICA),
        ("status", r#"{"optime":50331744}"#),
    ])
}

#[test]
fn a_healthy_cluster_names_its_leader_and_both_members() {
    let v = view(&healthy());
    assert_eq!(v.leader.as_deref(), Some("pg0"));
    assert_eq!(v.system_id.as_deref(), Some("7716031111667343110"));
    assert_eq!(v.leader_lsn, Some(50331744));
    assert!(!v.paused && v.failover.is_none() && v.sync.is_none());
    let pg0 = &v.members[0];
    assert_eq!(
        *pg0,
        Member {
            name: "pg0".into(),
            host: Some("127.0.0.1".into()),
            port: Some(59913),
            role: Role::Primary,
            state: "running".into(),
            timeline: Some(1),
            lsn: Some(50331744),
            lag_bytes: None,
            api_url: Some("http://127.0.0.1:39037/patroni".into()),
            tags: Tags::default(),
        }
    );
    let pg1 = &v.members[1];
    assert_eq!((pg1.name.as_str(), pg1.role), ("pg1", Role::Replica));
    assert_eq!((pg1.port, pg1.lag_bytes), (Some(51283), Some(0)));
}

#[test]
fn a_switchover_read_key_by_key() {
    // Each step as the watch saw it: (key, value or None for a delete) ->
    // (leader, pg0's role, pg1's role, failover asked).
    type Step = (
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        Role,
        Role,
        bool,
    );
    let steps: [Step; 8] = [
        (
            "failover",
            Some(r#"{"leader":"pg0","member":"pg1"}"#),
            Some("pg0"),
            Role::Primary,
            Role::Replica,
            true,
        ),
        (
            "members/pg0",
            Some(
                r#"{"conn_url":"postgres://127.0.0.1:59913/postgres","api_url":"http://127.0.0.1:39037/patroni","state":"stopping","role":"master","version":"3.0.2"}"#,
            ),
            Some("pg0"),
            Role::Primary,
            Role::Replica,
            true,
        ),
        ("leader", None, None, Role::Primary, Role::Replica, true),
        // The key moves before pg1 is promoted.
        (
            "leader",
            Some("pg1"),
            Some("pg1"),
            Role::Primary,
            Role::Replica,
            true,
        ),
        (
            "members/pg0",
            Some(
                r#"{"conn_url":"postgres://127.0.0.1:59913/postgres","api_url":"http://127.0.0.1:39037/patroni","state":"stopping","role":"demoted","version":"3.0.2"}"#,
            ),
            Some("pg1"),
            Role::Demoted,
            Role::Replica,
            true,
        ),
        (
            "failover",
            Some("{}"),
            Some("pg1"),
            Role::Demoted,
            Role::Replica,
            false,
        ),
        (
            "members/pg1",
            Some(
                r#"{"conn_url":"postgres://127.0.0.1:51283/postgres","api_url":"http://127.0.0.1:55719/patroni","state":"running","role":"promoted","version":"3.0.2","checkpoint_after_promote":false,"xlog_location":50332040,"timeline":1}"#,
            ),
            Some("pg1"),
            Role::Demoted,
            Role::Promoted,
            false,
        ),
        (
            "members/pg1",
            Some(
                r#"{"conn_url":"postgres://127.0.0.1:51283/postgres","api_url":"http://127.0.0.1:55719/patroni","state":"running","role":"master","version":"3.0.2","xlog_location":50332320,"timeline":2}"#,
            ),
            Some("pg1"),
            Role::Demoted,
            Role::Primary,
            false,
        ),
    ];
    let mut now = healthy();
    for (key, value, leader, pg0, pg1, asked) in steps {
        match value {
            Some(v) => now.insert(key.into(), v.as_bytes().to_vec()),
            None => now.remove(key),
        };
        let v = view(&now);
        let what = format!("after {key} = {value:?}");
        assert_eq!(v.leader.as_deref(), leader, "{what}");
        assert_eq!((v.members[0].role, v.members[1].role), (pg0, pg1), "{what}");
        assert_eq!(v.failover.is_some(), asked, "{what}");
    }
}

#[test]
fn after_the_switchover_history_sync_and_tags() {
    let mut now = healthy();
    for (k, v) in [
        ("leader", "pg1"),
        ("failover", "{}"),
        (
            "history",
            r#"[[1,50332040,"no recovery target specified","2026-12-06T03:42:04.892016+00:00","pg1"]]"#,
        ),
        (
            "members/pg0",
            r#"{"conn_url":"postgres://127.0.0.1:59913/postgres","api_url":"http://127.0.0.1:39037/patroni","state":"running","role":"replica","version":"3.0.2","tags":{"nofailover":true,"clonefrom":true,"noloadbalance":true},"xlog_location":50332416,"timeline":2}"#,
        ),
        (
            "members/pg1",
            r#"{"conn_url":"postgres://127.0.0.1:51283/postgres","api_url":"http://127.0.0.1:55719/patroni","state":"running","role":"master","version":"3.0.2","xlog_location":50332416,"timeline":2}"#,
        ),
        ("status", r#"{"optime":50332500}"#),
        ("sync", r#"{"leader":"pg1","sync_standby":"pg0"}"#),
    ] {
        now.insert(k.into(), v.as_bytes().to_vec());
    }
    let v = view(&now);
    assert_eq!(
        v.last_switch,
        Some(TimelineSwitch {
            timeline: 1,
            lsn: 50332040,
            at: Some("2026-12-06T03:42:04.892016+00:00".into()),
            leader: Some("pg1".into()),
        })
    );
    assert_eq!(
        v.sync,
        Some(SyncState {
            leader: "pg1".into(),
            standbys: vec!["pg0".into()],
            quorum: None,
        })
    );
    let (pg0, pg1) = (&v.members[0], &v.members[1]);
    let both = Tags {
        nofailover: true,
        noloadbalance: true,
        nosync: false,
    };
    assert_eq!(
        (&pg0.tags, pg0.lag_bytes, pg0.timeline),
        (&both, Some(84), Some(2))
    );
    assert_eq!(pg1.lag_bytes, None, "the leader's lag is not counted");
}

#[test]
fn a_scheduled_switchover_and_the_forms_of_the_failover_key() {
    let scheduled = |l: Option<&str>, c: Option<&str>, at: Option<&str>| {
        Some(ScheduledSwitchover {
            leader: l.map(Into::into),
            candidate: c.map(Into::into),
            scheduled_at: at.map(Into::into),
        })
    };
    let cases = [
        (
            r#"{"leader":"pg0","member":"pg1","scheduled_at":"2030-01-01T12:00:00+00:00"}"#,
            scheduled(Some("pg0"), Some("pg1"), Some("2030-01-01T12:00:00+00:00")),
        ),
        (r#"{"member":"pg1"}"#, scheduled(None, Some("pg1"), None)),
        ("pg0:pg1", scheduled(Some("pg0"), Some("pg1"), None)),
        ("pg0", scheduled(Some("pg0"), None, None)),
        ("{}", None),
        ("null", None),
        ("[]", None),
        ("", None),
    ];
    for (value, want) in cases {
        assert_eq!(failover(value), want, "{value}");
    }
}

#[test]
fn members_as_other_versions_and_odd_values_write_them() {
    // (value, host, port, role, state, lsn)
    type Case = (
        &'static str,
        Option<&'static str>,
        Option<u16>,
        Role,
        &'static str,
        Option<u64>,
    );
    let cases: [Case; 8] = [
        // Patroni 4: `primary`, `streaming`.
        (r#"{"conn_url":"postgres://10.0.0.7:5432/postgres","api_url":"http://10.0.0.7:8008/patroni","state":"streaming","role":"replica","version":"4.0.4","xlog_location":83886240,"replication_state":"streaming","timeline":3}"#,
            Some("10.0.0.7"), Some(5432), Role::Replica, "streaming", Some(83886240)),
        (r#"{"conn_url":"postgres://db-2.internal/postgres","state":"running","role":"primary"}"#,
            Some("db-2.internal"), Some(5432), Role::Primary, "running", None),
        (r#"{"conn_url":"postgres://[fd00::7]:6432/postgres","role":"standby_leader","xlog_location":"1024"}"#,
            Some("fd00::7"), Some(6432), Role::StandbyLeader, "unknown", Some(1024)),
        (r#"{"conn_kwargs":{"host":"10.0.0.8","port":5433},"role":"uninitialized","state":"creating replica"}"#,
            Some("10.0.0.8"), Some(5433), Role::Uninitialized, "creating replica", None),
        // The oldest form, with the password that must not be kept.
        ("postgres://replicator:s3cret@10.0.0.9:5432/postgres?application_name=http://10.0.0.9:8008/patroni",
            Some("10.0.0.9"), Some(5432), Role::Unknown, "unknown", None),
        (r#"{"conn_url":"postgres://10.0.0.7:notaport/postgres","role":"leader?"}"#,
            None, None, Role::Unknown, "unknown", None),
        ("{", None, None, Role::Unknown, "unknown", None),
        ("[1,2]", None, None, Role::Unknown, "unknown", None),
    ];
    for (value, host, port, role, state, lsn) in cases {
        let v = view(&keys(&[("members/m", value)]));
        let m = &v.members[0];
        assert_eq!(
            (m.host.as_deref(), m.port, m.role, m.state.as_str(), m.lsn),
            (host, port, role, state, lsn),
            "{value}"
        );
        assert!(!format!("{m:?}").contains("s3cret"));
    }
}

#[test]
fn tags_read_as_patroni_reads_them() {
    // (tags JSON, nofailover, noloadbalance, nosync)
    let cases = [
        ("{}", false, false, false),
        (r#"{"nofailover":true}"#, true, false, false),
        (
            r#"{"nofailover":false,"failover_priority":0}"#,
            false,
            false,
            false,
        ),
        (r#"{"failover_priority":0}"#, true, false, false),
        (r#"{"failover_priority":"-1"}"#, true, false, false),
        (r#"{"failover_priority":2}"#, false, false, false),
        (
            r#"{"nofailover":null,"failover_priority":0}"#,
            true,
            false,
            false,
        ),
        (r#"{"nofailover":"yes"}"#, true, false, false),
        (r#"{"noloadbalance":1,"nosync":true}"#, false, true, true),
        (r#"{"sync_priority":0}"#, false, false, true),
        (
            r#"{"clonefrom":true,"replicatefrom":"pg1"}"#,
            false,
            false,
            false,
        ),
    ];
    for (t, nofailover, noloadbalance, nosync) in cases {
        let value: Value = serde_json::from_str(t).unwrap();
        let want = Tags {
            nofailover,
            noloadbalance,
            nosync,
        };
        assert_eq!(tags(Some(&value)), want, "{t}");
    }
}

#[test]
fn what_is_read_and_what_is_not() {
    let cases = [
        ("leader", true),
        ("members/pg0", true),
        ("members/", false),
        ("members/pg0/extra", false),
        ("failover", true),
        ("sync", true),
        ("history", true),
        ("initialize", true),
        ("config", true),
        ("status", true),
        ("optime/leader", true),
        ("failsafe", false),
        ("1/leader", false),
        ("leader2", false),
    ];
    for (key, read) in cases {
        assert_eq!(is_read(key), read, "{key}");
    }
}

#[test]
fn the_prefix_is_built_as_patroni_builds_it() {
    let cases = [
        ("/service", "orders", "/service/orders/"),
        ("service", "orders", "/service/orders/"),
        ("/service/", "orders", "/service/orders/"),
        ("", "orders", "/orders/"),
        ("/db//prod/", "orders", "/db/prod/orders/"),
    ];
    for (namespace, scope, want) in cases {
        assert_eq!(prefix(namespace, scope), want, "{namespace:?} {scope:?}");
    }
}

#[test]
fn whole_views_of_unusual_clusters() {
    // A leader whose member key expired; an empty sync; a paused cluster
    // on the old optime key; an unreadable history.
    let v = view(&keys(&[
        ("leader", "pg9"),
        ("members/pg1", PG1_REPLICA),
        ("sync", r#"{"leader":null,"sync_standby":null}"#),
        ("config", r#"{"pause":true}"#),
        ("optime/leader", "50331800"),
        ("history", "not json"),
        ("initialize", ""),
    ]));
    assert_eq!(v.leader.as_deref(), Some("pg9"));
    assert_eq!((v.members.len(), v.members[0].lag_bytes), (1, Some(56)));
    assert!(v.paused && v.sync.is_none() && v.last_switch.is_none());
    assert_eq!((v.leader_lsn, v.system_id), (Some(50331800), None));
    let quorum = view(&keys(&[(
        "sync",
        r#"{"leader":"pg1","sync_standby":"pg0, pg2","quorum":1}"#,
    )]));
    assert_eq!(
        quorum.sync.map(|s| (s.standbys, s.quorum)),
        Some((vec!["pg0".to_string(), "pg2".to_string()], Some(1)))
    );
    assert_eq!(view(&BTreeMap::new()), PatroniView::default());
}

#[test]
fn scheduled_times_as_patroni_writes_them() {
    // 2026-12-06T05:30:00Z is 1_796_535_000 s after the epoch.
    let at = 1_796_535_000;
    let cases = [
        ("2026-12-06T05:30:00+00:00", Some(at)),
        ("2026-12-06T05:30:00.123456+00:00", Some(at)),
        ("2026-12-06T05:30:00Z", Some(at)),
        ("2026-12-06T06:30:00+01:00", Some(at)),
        ("2026-12-06T00:30:00-05:00", Some(at)),
        ("2026-12-06 05:30:00", Some(at)),
        ("1970-01-01T00:00:00Z", Some(0)),
        ("2024-02-29T00:00:00Z", Some(1_709_164_800)),
        ("2026-13-06T05:30:00Z", None),
        ("2026-12-06", None),
        ("tomorrow", None),
        ("", None),
    ];
    for (iso, want) in cases {
        assert_eq!(unix_seconds(iso), want, "{iso}");
    }
}
