//! Reading Patroni's view (`[coordination] backend = "patroni"`) from a real
//! Patroni's keys in etcd: the reader alone, `/status` of a proxy, and a
//! switchover Patroni makes, which the view and the timeline follow. One
//! Patroni cluster serves the three, in that order (the switchover last).
//! Another serves the same view read from Patroni's REST API instead.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::patroni::PatroniCluster;
use common::patroni_proxy::{status, RunningProxy};
use common::{http_request, wait_until};
use serde_json::Value;
use switchyard::cluster::patroni::{Member, Role};
use switchyard::cluster::Cluster;
use switchyard::events::{EventKind, Events};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patronis_view_is_read_shown_and_followed_through_a_switchover() {
    common::init_tracing();
    let patroni = tokio::task::spawn_blocking(PatroniCluster::start)
        .await
        .unwrap();
    let patroni = Arc::new(patroni);
    the_reader_sees_the_leader_and_both_members(&patroni).await;
    let proxy = RunningProxy::start(&toml(&patroni)).await;
    status_shows_patronis_view_beside_the_nodes(&patroni, proxy.http).await;
    the_view_follows_a_switchover(patroni.clone(), proxy.http).await;
    proxy.stop().await;
    // Its Drop waits for the postmasters to go: off the runtime.
    tokio::task::spawn_blocking(move || drop(patroni))
        .await
        .unwrap();
}

/// (a) The watcher on a cluster of its own, no proxy: its first view
/// names pg0 as leader, both members where the harness put them, and the
/// timeline says who leads.
async fn the_reader_sees_the_leader_and_both_members(patroni: &PatroniCluster) {
    let config = switchyard::config::load_str(&toml(patroni)).unwrap();
    let cluster = Arc::new(Cluster::new(config.nodes(), Arc::new(Events::new(100))));
    let stop = CancellationToken::new();
    let watcher = switchyard::cluster::patroni::watcher(&cluster, &config, stop.clone())
        .expect("backend = \"patroni\" starts a watcher");
    let task = tokio::spawn(watcher);
    wait_until(10, "the reader's first view", || async {
        cluster.patroni().is_some_and(|o| o.connected)
    })
    .await;
    let seen = cluster.patroni().unwrap();
    assert_eq!(seen.prefix, format!("/service/{}/", patroni.scope));
    assert_eq!(seen.view.leader.as_deref(), Some("pg0"), "{seen:?}");
    assert_eq!(seen.view.members.len(), 2, "{seen:?}");
    for (name, role) in [("pg0", Role::Primary), ("pg1", Role::Replica)] {
        let m: &Member = seen.view.members.iter().find(|m| m.name == name).unwrap();
        assert_eq!(m.host.as_deref(), Some("127.0.0.1"), "{m:?}");
        assert_eq!(m.port, Some(patroni.member(name).port), "{m:?}");
        assert_eq!((m.role, m.state.as_str()), (role, "running"), "{m:?}");
        assert_eq!(m.timeline, Some(1), "{m:?}");
    }
    let said: Vec<_> = cluster
        .events
        .since(0)
        .into_iter()
        .filter(|e| e.kind == EventKind::PatroniLeaderChanged)
        .map(|e| (e.node, e.message))
        .collect();
    assert_eq!(
        said,
        [(Some("pg0".into()), "Patroni's leader is pg0".into())]
    );
    stop.cancel();
    task.await.unwrap();
}

/// (c) `/status` has Patroni's view beside Switchyard's own nodes.
async fn status_shows_patronis_view_beside_the_nodes(patroni: &PatroniCluster, http: SocketAddr) {
    wait_until(10, "/status to show Patroni's view", || async {
        status(http).await["patroni"]["connected"] == true
    })
    .await;
    let s = status(http).await;
    let p = &s["patroni"];
    assert_eq!(p["leader"], "pg0", "{p}");
    assert_eq!(p["prefix"], format!("/service/{}/", patroni.scope), "{p}");
    assert!(p["failover"].is_null(), "{p}");
    let members = p["members"].as_array().expect("members");
    for (name, role) in [("pg0", "primary"), ("pg1", "replica")] {
        let m = members.iter().find(|m| m["name"] == name).expect(name);
        assert_eq!(m["host"], "127.0.0.1", "{m}");
        assert_eq!(m["port"], patroni.member(name).port, "{m}");
        assert_eq!((&m["role"], &m["state"]), (&role.into(), &"running".into()));
    }
    assert_eq!(s["nodes"].as_array().map(Vec::len), Some(2), "{s}");
}

/// (b) `patronictl switchover` moves the leader; the view names pg1 within
/// the watcher's reaction time, a `patroni_leader_changed` event says so,
/// and the view goes on to show pg1 promoted and pg0 back as its replica.
async fn the_view_follows_a_switchover(patroni: Arc<PatroniCluster>, http: SocketAddr) {
    let p = patroni.clone();
    let said = tokio::task::spawn_blocking(move || p.switchover("pg0", "pg1"))
        .await
        .unwrap();
    let moved = Instant::now();
    assert_eq!(patroni.leader().as_deref(), Some("pg1"), "{said}");
    while status(http).await["patroni"]["leader"] != "pg1" {
        assert!(
            moved.elapsed() < Duration::from_secs(2),
            "the view still names the old leader 2 s after the switchover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events: Value =
        serde_json::from_str(&http_request(http, "GET", "/events").await.1).unwrap();
    let changes: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "patroni_leader_changed")
        .collect();
    assert!(
        changes.iter().any(|e| e["node"] == "pg1"),
        "no patroni_leader_changed naming pg1: {changes:?}"
    );
    wait_until(
        30,
        "pg1 promoted and pg0 its replica, on timeline 2",
        || async {
            let s = status(http).await;
            let members = s["patroni"]["members"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let member = |n: &str| members.iter().find(|m| m["name"] == n).cloned();
            let is = |n: &str, role: &str| {
                member(n).is_some_and(|m| {
                    m["role"] == role && m["state"] == "running" && m["timeline"] == 2
                })
            };
            is("pg1", "primary") && is("pg0", "replica")
        },
    )
    .await;
    let last = &status(http).await["patroni"]["last_switch"];
    assert_eq!(
        (&last["timeline"], &last["leader"]),
        (&1.into(), &"pg1".into()),
        "{last}"
    );
}

/// Without Patroni, keys written as it writes them: while etcd is away the
/// last view stays, marked not current; once it is back the reader catches
/// up, and the leader it already recorded is not recorded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_keeps_the_last_view_while_etcd_is_away() {
    common::init_tracing();
    let etcd = tokio::task::spawn_blocking(Etcd::start).await.unwrap();
    let prefix = "/service/orders/";
    let member =
        r#"{"conn_url":"postgres://10.0.0.1:5432/postgres","role":"master","state":"running"}"#;
    put(&etcd, &format!("{prefix}members/pg0"), member).await;
    put(&etcd, &format!("{prefix}leader"), "pg0").await;
    let (cluster, stop, task) = watching(&etcd, "orders");
    let leader = |c: &Cluster| {
        c.patroni()
            .and_then(|o| o.connected.then(|| o.view.leader.clone()))
    };
    wait_until(10, "the first view", || async {
        leader(&cluster) == Some(Some("pg0".into()))
    })
    .await;

    let mut etcd = tokio::task::spawn_blocking(move || {
        let mut etcd = etcd;
        etcd.stop();
        etcd
    })
    .await
    .unwrap();
    wait_until(10, "the view marked not current", || async {
        cluster.patroni().is_some_and(|o| !o.connected)
    })
    .await;
    let away = cluster.patroni().unwrap();
    assert_eq!(
        away.view.leader.as_deref(),
        Some("pg0"),
        "the last view stays"
    );
    assert!(
        away.error.as_deref().is_some_and(|e| e.contains("etcd")),
        "{away:?}"
    );

    etcd = tokio::task::spawn_blocking(move || {
        etcd.restart();
        etcd
    })
    .await
    .unwrap();
    put(&etcd, &format!("{prefix}leader"), "pg1").await;
    wait_until(15, "the view after etcd came back", || async {
        leader(&cluster) == Some(Some("pg1".into()))
    })
    .await;
    let said: Vec<String> = cluster
        .events
        .since(0)
        .into_iter()
        .filter(|e| e.kind == EventKind::PatroniLeaderChanged)
        .map(|e| e.message)
        .collect();
    assert_eq!(
        said,
        [
            "Patroni's leader is pg0",
            "Patroni's leader moved from pg0 to pg1"
        ]
    );
    stop.cancel();
    task.await.unwrap();
    tokio::task::spawn_blocking(move || drop(etcd))
        .await
        .unwrap();
}

/// A watch on which nothing changes for a while (Patroni's default loop
/// writes every 10 s) stays one session: its keepalive pings stay within
/// what etcd tolerates (one per 5 s by default; more often, with no data
/// flowing, and etcd ends the connection as "too many pings").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_watch_keeps_its_session() {
    common::init_tracing();
    let etcd = tokio::task::spawn_blocking(Etcd::start).await.unwrap();
    put(&etcd, "/service/quiet/leader", "pg0").await;
    let (cluster, stop, task) = watching(&etcd, "quiet");
    wait_until(10, "the first view", || async {
        cluster.patroni().is_some_and(|o| o.connected)
    })
    .await;
    let quiet_until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < quiet_until {
        let o = cluster.patroni().unwrap();
        assert!(o.connected, "the session ended: {:?}", o.error);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop.cancel();
    task.await.unwrap();
    tokio::task::spawn_blocking(move || drop(etcd))
        .await
        .unwrap();
}

/// The watcher alone, on Patroni's keys of `scope` in `etcd`, with a
/// cluster of one node for it to keep the view in; cancel the token to stop.
fn watching(
    etcd: &Etcd,
    scope: &str,
) -> (Arc<Cluster>, CancellationToken, tokio::task::JoinHandle<()>) {
    let config = switchyard::config::load_str(&format!(
        "[cluster]\nnodes = [\"10.0.0.1:5432\"]\n[failover]\nmode = \"follow\"\n\
         [coordination]\nbackend = \"patroni\"\n\
         patroni = {{ scope = \"{scope}\", endpoints = [\"{}\"] }}\n",
        etcd.endpoint()
    ))
    .unwrap();
    let cluster = Arc::new(Cluster::new(config.nodes(), Arc::new(Events::new(100))));
    let stop = CancellationToken::new();
    let task = tokio::spawn(
        switchyard::cluster::patroni::watcher(&cluster, &config, stop.clone()).unwrap(),
    );
    (cluster, stop, task)
}

/// `patroni.rest`: the same view from Patroni's REST API (`GET /cluster`),
/// with no etcd endpoint given, so whatever `/status` shows came from it.
/// The first URL refuses connections: the poller goes on to the members.
/// A switchover is seen within a few polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patronis_view_is_read_from_its_rest_api() {
    common::init_tracing();
    let patroni = tokio::task::spawn_blocking(PatroniCluster::start)
        .await
        .unwrap();
    let patroni = Arc::new(patroni);
    let api = |name: &str| format!("http://127.0.0.1:{}", patroni.member(name).api);
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    let rest = format!("[\"{closed}\", \"{}\", \"{}\"]", api("pg0"), api("pg1"));
    let toml = toml(&patroni).replace(
        &format!("endpoints = [\"{}\"]", patroni.endpoint()),
        &format!("rest = {rest}"),
    );
    assert!(!toml.contains("endpoints"), "{toml}");
    let proxy = RunningProxy::start(&toml).await;
    wait_until(
        10,
        "/status to show Patroni's view from its REST API",
        || async { status(proxy.http).await["patroni"]["connected"] == true },
    )
    .await;
    let p = status(proxy.http).await["patroni"].clone();
    assert_eq!(p["leader"], "pg0", "{p}");
    assert!(
        p["error"].is_null() && p["revision"].as_i64() > Some(0),
        "{p}"
    );
    let members = p["members"].as_array().expect("members");
    assert_eq!(members.len(), 2, "{p}");
    for (name, role) in [("pg0", "primary"), ("pg1", "replica")] {
        let m = members.iter().find(|m| m["name"] == name).expect(name);
        assert_eq!(m["host"], "127.0.0.1", "{m}");
        assert_eq!(m["port"], patroni.member(name).port, "{m}");
        assert_eq!((&m["role"], &m["state"]), (&role.into(), &"running".into()));
        assert_eq!(m["timeline"], 1, "{m}");
        assert_eq!(m["api_url"], format!("{}/patroni", api(name)), "{m}");
    }

    let p = patroni.clone();
    let said = tokio::task::spawn_blocking(move || p.switchover("pg0", "pg1"))
        .await
        .unwrap();
    wait_until(5, "the view from the REST API to name pg1", || async {
        status(proxy.http).await["patroni"]["leader"] == "pg1"
    })
    .await;
    let events: Value =
        serde_json::from_str(&http_request(proxy.http, "GET", "/events").await.1).unwrap();
    let named_pg1 = events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "patroni_leader_changed" && e["node"] == "pg1");
    assert!(named_pg1, "no patroni_leader_changed naming pg1: {said}");
    proxy.stop().await;
    tokio::task::spawn_blocking(move || drop(patroni))
        .await
        .unwrap();
}

/// The harness's Patroni starts even when a PostgreSQL port it picked is
/// taken before PostgreSQL binds it: `free_port` finds a port free but
/// cannot hold it, and the tests beside this one bind ports too. pg0's
/// bootstrap fails (Patroni exits), pg1's replica keeps failing to start
/// (Patroni runs on); each is started again on fresh ports.
#[test]
fn the_harness_patroni_moves_to_other_ports_when_its_own_are_taken() {
    let taken = [(); 2].map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let ports = taken.each_ref().map(|t| t.local_addr().unwrap().port());
    let patroni = PatroniCluster::start_preferring(ports);
    for (m, port) in patroni.members.iter().zip(ports) {
        assert_ne!(m.port, port, "{}", m.name);
    }
    assert_eq!(patroni.leader().as_deref(), Some("pg0"));
    assert!(patroni.streams("pg1", "pg0"));
}

async fn put(etcd: &Etcd, key: &str, value: &str) {
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    client.put(key, value, None).await.unwrap();
}

/// A proxy in front of the members, reading Patroni's view.
fn toml(patroni: &PatroniCluster) -> String {
    format!(
        "[[users]]\nname = \"app\"\npassword = \"app\"\n\
         [cluster]\nnodes = [{nodes}]\nuser = \"postgres\"\npassword = \"postgres\"\n\
         [failover]\nmode = \"follow\"\n\
         [coordination]\nbackend = \"patroni\"\n\
         patroni = {{ scope = \"{scope}\", endpoints = [\"{etcd}\"] }}\n",
        nodes = patroni.nodes_toml(),
        scope = patroni.scope,
        etcd = patroni.endpoint(),
    )
}
