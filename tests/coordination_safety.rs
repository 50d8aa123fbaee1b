//! The safety rules of docs/failover.md end to end, each with one proxy
//! deciding alone and then with three proxies coordinating through a real
//! etcd: two primaries on one timeline stop every write (rule 3); once
//! `pg_promote()` was sent the old primary never takes writes again (rule
//! 4); an old primary re-admitted while it still runs on its old timeline
//! is fenced again (rule 2); a live, idle primary cut off from the proxy is
//! not replaced while its replicas hear it (rule 5; with three proxies and
//! one cut off, see coordination_faults.rs). Real PostgreSQL nodes (a
//! primary and two streaming replicas per test); what is checked is what a
//! user would: where writes land, which nodes left recovery, what each
//! node's table holds, and what the proxies' `/events`, `/status` and
//! `/metrics` say.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::coord::{
    every_proxy_writes_to_one_node, in_recovery, promoted, promotions, proxies, psql, readyz,
    replicated, settled, start_etcd, status, stop, three_nodes, values_on, write_lands, Toml,
};
use common::etcd::Etcd;
use common::relay::Relay;
use common::{http_request, sqlstate, wait_until, Proxy, USERS};
use futures_util::future::join_all;
use switchyard::local_cluster::{LocalCluster, PgNode, CLUSTER_PASSWORD, CLUSTER_USER};
use tokio_postgres::Client;

/// Held writes fail after this: short, so a held write answers within the test.
const HOLD: &str = "[failover]\nhold_timeout = \"2s\"\n";

/// The roles every proxy of these tests logs in as: its health checks and
/// promotions, and its clients' sessions. Cutting both cuts a node off
/// from every proxy.
const PROXY_ROLES: [&str; 2] = [CLUSTER_USER, "app"];

type Fleet = Vec<(Proxy, SocketAddr)>;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `(name, address)` of every node of `cluster`, primary first.
fn addrs(cluster: &LocalCluster) -> Vec<(String, String)> {
    cluster
        .nodes()
        .iter()
        .map(|n| (n.name().to_string(), n.addr()))
        .collect()
}

/// A proxy configuration without coordination: it decides alone.
fn alone(nodes: &[(String, String)], extra: &str) -> String {
    let nodes = nodes
        .iter()
        .map(|(name, addr)| format!("{{ name = \"{name}\", addr = \"{addr}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{USERS}\n{extra}\n[health]\ninterval = \"500ms\"\ntimeout = \"1s\"\n\
         [cluster]\nnodes = [{nodes}]\nuser = \"{CLUSTER_USER}\"\npassword = \"{CLUSTER_PASSWORD}\"\n"
    )
}

/// How the proxies of a test run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proxies {
    /// One, deciding alone (no coordination).
    Alone,
    /// Three, coordinating through etcd, with an agreed leader.
    Three,
    /// Three, started while etcd was still down (a site coming back up,
    /// etcd last): they route by their own probes until it answers, then
    /// agree on a leader.
    ThreeBeforeEtcd,
}

/// The proxies in front of `nodes`, as `how` says; their configuration,
/// and their etcd.
async fn fleet(
    cluster: &Arc<LocalCluster>,
    nodes: Vec<(String, String)>,
    how: Proxies,
    extra: &str,
) -> (Fleet, String, Option<Etcd>) {
    if how == Proxies::Alone {
        let toml = alone(&nodes, extra);
        let one = vec![Proxy::start_with_http(cluster.clone(), &toml).await];
        ready(&one).await;
        return (one, toml, None);
    }
    let mut etcd = start_etcd().await;
    let name = common::unique("safety");
    let toml = Toml {
        nodes: nodes.clone(),
        extra,
        ..Toml::new(&cluster.nodes(), &etcd.endpoint(), &name)
    }
    .render();
    if how == Proxies::ThreeBeforeEtcd {
        tokio::task::block_in_place(|| etcd.stop());
    }
    let all = proxies(cluster, &toml, 3).await;
    if how == Proxies::ThreeBeforeEtcd {
        // Each gives up waiting for the shared record (a lease) and
        // serves the primary it finds.
        for (_, http) in &all {
            wait_until(15, "a proxy serving without etcd", || async {
                status(*http).await["primary"] == nodes[0].0.as_str()
            })
            .await;
        }
        tokio::task::block_in_place(|| etcd.restart());
    }
    settled(&all).await;
    ready(&all).await;
    (all, toml, Some(etcd))
}

/// Waits until every proxy is ready (`/readyz`: a primary is routable), as
/// an orchestrator would before sending clients: on this small machine a
/// proxy's first checks can take longer than the short `hold_timeout`.
async fn ready(all: &[(Proxy, SocketAddr)]) {
    for (_, http) in all {
        wait_until(20, "a ready proxy", || async {
            readyz(*http).await.0 == 200
        })
        .await;
    }
}

/// One client per proxy, and a table `(v int)` for the test, created
/// through the first and on every replica before this returns.
async fn clients_and_table(
    cluster: &LocalCluster,
    all: &Fleet,
    prefix: &str,
) -> (Vec<Client>, String) {
    let mut clients = vec![];
    for (p, _) in all {
        clients.push(p.client().await);
    }
    let table = common::unique(prefix);
    clients[0]
        .batch_execute(&format!("CREATE TABLE {table} (v int)"))
        .await
        .unwrap();
    replicated(cluster, &table, 0).await;
    (clients, table)
}

/// A write through `c` that the proxy must not let through: it is held and
/// then refused. Returns its SQLSTATE.
async fn refused(c: &Client, table: &str, v: i32) -> String {
    let sql = format!("INSERT INTO {table} VALUES ({v})");
    let answer = tokio::time::timeout(Duration::from_secs(20), c.batch_execute(&sql))
        .await
        .expect("a held write is answered once hold_timeout runs out");
    match answer {
        Ok(()) => panic!(
            "write {v} succeeded on port {:?}",
            common::coord::port_of(c).await
        ),
        Err(e) => sqlstate(&e).unwrap_or_else(|| format!("{e:?}")),
    }
}

/// A write through every client at once, each refused with 08006 (held,
/// then "no primary"); returns the values tried.
async fn every_write_refused(clients: &[Client], table: &str, base: i32) -> BTreeSet<i32> {
    let tried: Vec<i32> = (0..clients.len() as i32).map(|i| base + i).collect();
    let codes = join_all(
        clients
            .iter()
            .zip(&tried)
            .map(|(c, &v)| refused(c, table, v)),
    )
    .await;
    assert!(
        codes.iter().all(|c| c == "08006"),
        "every proxy refuses the write: {codes:?}"
    );
    tried.into_iter().collect()
}

/// `(node, message)` of the events of `kind` on one proxy's timeline.
async fn messages(http: SocketAddr, kind: &str) -> Vec<(String, String)> {
    let (_, body) = http_request(http, "GET", "/events").await;
    let all: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    all.as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["kind"] == kind)
                .map(|e| (text(&e["node"]), text(&e["message"])))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits up to `secs` until every proxy has an event of `kind` whose
/// message contains `text`; returns the messages of the first proxy.
async fn every_proxy_says(
    all: &[(Proxy, SocketAddr)],
    kind: &str,
    text: &str,
    secs: u64,
) -> Vec<String> {
    for (_, http) in all {
        wait_until(secs, &format!("a {kind} event saying {text:?}"), || async {
            messages(*http, kind)
                .await
                .iter()
                .any(|(_, m)| m.contains(text))
        })
        .await;
    }
    let first = messages(all[0].1, kind).await;
    first.into_iter().map(|(_, m)| m).collect()
}

/// The value of metric `name` (no labels) at `/metrics`.
async fn metric(http: SocketAddr, name: &str) -> Option<f64> {
    let (_, text) = http_request(http, "GET", "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether every proxy's `/status` shows `node` fenced, within `secs`.
async fn every_proxy_fences(all: &[(Proxy, SocketAddr)], node: &str, secs: u64) {
    for (_, http) in all {
        wait_until(secs, &format!("{node} fenced"), || async {
            let nodes = status(*http).await["nodes"].clone();
            nodes
                .as_array()
                .is_some_and(|a| a.iter().any(|n| n["name"] == node && n["fenced"] == true))
        })
        .await;
    }
}

/// The timeline `node` writes on, from its current WAL file name (a primary).
async fn timeline(node: &PgNode) -> u32 {
    let name = psql(node, "SELECT pg_walfile_name(pg_current_wal_lsn())")
        .await
        .unwrap();
    u32::from_str_radix(&name[..8], 16).unwrap()
}

/// Whether `node` answers and reports primary (out of recovery).
async fn is_primary(node: &PgNode) -> bool {
    psql(node, "SELECT pg_is_in_recovery()").await.as_deref() == Ok("f")
}

/// Starts `node` again as it was left (`pg_ctl start`).
async fn start(node: &PgNode) {
    let n = node.clone();
    tokio::task::spawn_blocking(move || n.start())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("starting {}: {e}", node.name()));
}

/// Asserts that none of `values` is on any of `nodes`.
async fn on_none(nodes: &[&PgNode], table: &str, values: &BTreeSet<i32>) {
    for n in nodes {
        let on = values_on(n, table).await;
        let leaked: Vec<_> = on.intersection(values).collect();
        assert!(
            leaked.is_empty(),
            "refused writes on {}: {leaked:?}",
            n.name()
        );
    }
}

/// A proxy started now with `toml` does not let write `v` through: logging
/// in is held and refused (08006), or the write is. Returns `v`.
async fn fresh_proxy_refuses(cluster: &Arc<LocalCluster>, toml: &str, table: &str, v: i32) -> i32 {
    let (fresh, http) = Proxy::start_with_http(cluster.clone(), toml).await;
    // Not before it has checked the old primary: a proxy that has not
    // found it yet would refuse for that reason alone.
    let old = cluster.primary().name();
    wait_until(20, "the old primary checked by the new proxy", || async {
        let nodes = status(http).await["nodes"].clone();
        nodes.as_array().is_some_and(|a| {
            a.iter()
                .any(|n| n["name"] == old && n["state"] == "up" && n["role"] == "primary")
        })
    })
    .await;
    let code = match fresh.client_as("app", "app", "app").await {
        Ok(c) => refused(&c, table, v).await,
        Err(e) => sqlstate(&e).unwrap_or_else(|| format!("{e:?}")),
    };
    assert_eq!(code, "08006", "a proxy started mid-promotion");
    v
}

/// A node whose startup process (the one that replays WAL and carries out
/// a promotion) is stopped with SIGSTOP: it still answers queries and
/// reports being in recovery, but a `pg_promote()` sent to it takes effect
/// only once it is resumed (on drop) — a standby with a long replay backlog
/// to get through first, or too loaded to get to it.
struct Stalled(u32);

impl Stalled {
    async fn startup_of(node: &PgNode) -> Stalled {
        let pid = psql(
            node,
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'startup'",
        )
        .await
        .unwrap();
        let pid: u32 = pid.trim().parse().expect("the startup process's pid");
        signal("STOP", pid);
        Stalled(pid)
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        signal("CONT", self.0);
    }
}

fn signal(sig: &str, pid: u32) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok || std::thread::panicking(), "kill -{sig} {pid}");
}

// ---------------------------------------------------------------------------
// Rule 3: two primaries on one timeline
// ---------------------------------------------------------------------------

/// Two tools each promote a replica while the old primary still runs: both
/// land on timeline 2. Every proxy stops writing to both, says so, and
/// picks neither; once an operator stops one, writes go to the other.
async fn two_primaries_on_one_timeline(how: Proxies) {
    let cluster = three_nodes().await;
    let (all, _, etcd) = fleet(&cluster, addrs(&cluster), how, HOLD).await;
    let (clients, table) = clients_and_table(&cluster, &all, "split").await;
    let old = cluster.primary().clone();
    assert_eq!(
        every_proxy_writes_to_one_node(&clients, &table, 0, 5).await,
        old.port()
    );
    let before: BTreeSet<i32> = (0..clients.len() as i32).collect();
    replicated(&cluster, &table, before.len()).await;

    let (a, b) = (cluster.replicas()[0].clone(), cluster.replicas()[1].clone());
    let (pa, pb) = tokio::join!(
        psql(&a, "SELECT pg_promote()"),
        psql(&b, "SELECT pg_promote()")
    );
    assert_eq!((pa.as_deref(), pb.as_deref()), (Ok("t"), Ok("t")));
    assert_eq!((timeline(&a).await, timeline(&b).await), (2, 2));

    let said = every_proxy_says(&all, "split_brain", "writes stopped", 15).await;
    assert!(
        said.iter()
            .any(|m| m.contains(a.name()) && m.contains(b.name())),
        "the event names both: {said:?}"
    );
    // Twice, a hold_timeout apart: no proxy settles it on its own.
    let mut tried = every_write_refused(&clients, &table, 100).await;
    tried.extend(every_write_refused(&clients, &table, 200).await);
    for (_, http) in &all {
        assert_eq!(metric(*http, "switchyard_split_brain").await, Some(1.0));
        let s = status(*http).await;
        assert!(
            s["primary"].is_null(),
            "a proxy picked one: {}",
            s["primary"]
        );
    }
    on_none(&[&old, &a, &b], &table, &tried).await;
    assert_eq!(values_on(&old, &table).await, before);

    // An operator stops one: writes resume on the other, through every proxy.
    stop(&b).await;
    assert_eq!(
        every_proxy_writes_to_one_node(&clients, &table, 300, 20).await,
        a.port()
    );
    for (_, http) in &all {
        assert_eq!(metric(*http, "switchyard_split_brain").await, Some(0.0));
    }
    let after: BTreeSet<i32> = (300..300 + clients.len() as i32).collect();
    let on_a = values_on(&a, &table).await;
    assert_eq!(on_a, before.union(&after).copied().collect());
    assert_eq!(
        values_on(&old, &table).await,
        before,
        "the old primary took writes"
    );
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_primaries_on_one_timeline_stop_writes_to_both_with_one_proxy() {
    two_primaries_on_one_timeline(Proxies::Alone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_primaries_on_one_timeline_stop_writes_on_every_proxy() {
    two_primaries_on_one_timeline(Proxies::Three).await;
}

// ---------------------------------------------------------------------------
// Rule 4: a promotion, once sent, is never taken back
// ---------------------------------------------------------------------------

/// The primary crashes; the replica chosen is slow to carry out its
/// promotion; the old primary comes back, and then the candidate becomes
/// unreachable. Writes stay held throughout (nothing reaches the old
/// primary, no other replica is promoted) until the candidate completes
/// its promotion and is reachable again: then every write goes there.
async fn promotion_sent_keeps_the_old_primary_out(how: Proxies) {
    let cluster = three_nodes().await;
    // Every proxy reaches the replicas through relays, so the test can cut
    // the candidate off, whichever it is.
    let replicas = cluster.replicas().to_vec();
    let relays = [
        Relay::start(&replicas[0].addr()).await,
        Relay::start(&replicas[1].addr()).await,
    ];
    let mut nodes = addrs(&cluster);
    nodes[1].1 = relays[0].addr.to_string();
    nodes[2].1 = relays[1].addr.to_string();
    let (all, toml, etcd) = fleet(&cluster, nodes, how, HOLD).await;
    let (clients, table) = clients_and_table(&cluster, &all, "sent").await;
    let old = cluster.primary().clone();
    assert_eq!(
        every_proxy_writes_to_one_node(&clients, &table, 0, 5).await,
        old.port()
    );
    let before: BTreeSet<i32> = (0..clients.len() as i32).collect();
    replicated(&cluster, &table, before.len()).await;

    // Whichever replica is chosen will be slow to promote.
    let mut stalled = vec![
        Some(Stalled::startup_of(&replicas[0]).await),
        Some(Stalled::startup_of(&replicas[1]).await),
    ];
    stop(&old).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let sent = loop {
        let sent = promotions(&all).await;
        if !sent.is_empty() {
            break sent;
        }
        assert!(Instant::now() < deadline, "no promotion sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ci = replicas
        .iter()
        .position(|r| r.name() == sent[0])
        .expect("a replica was promoted");
    let (candidate, other) = (&replicas[ci], &replicas[1 - ci]);
    // The other replica is well again: promotable, were any rule to allow it.
    stalled[1 - ci] = None;

    // The old primary comes back, a primary on its old timeline.
    start(&old).await;
    assert!(is_primary(&old).await);
    let mut tried = every_write_refused(&clients, &table, 100).await;

    // The candidate, still in recovery, becomes unreachable.
    relays[ci].cut(&PROXY_ROLES).await;
    let why = format!("a promotion was sent to {}", candidate.name());
    every_proxy_says(&all, "failover_blocked", &why, 15).await;
    tried.extend(every_write_refused(&clients, &table, 200).await);
    assert!(in_recovery(other).await, "{} was promoted", other.name());
    assert!(in_recovery(candidate).await);
    let started: BTreeSet<String> = promotions(&all).await.into_iter().collect();
    assert_eq!(started, BTreeSet::from([candidate.name().to_string()]));
    if how != Proxies::Alone {
        // A proxy that starts now (a restarted sidecar) learns from the
        // shared record that a promotion was sent: it does not write to
        // the old primary either.
        tried.insert(fresh_proxy_refuses(&cluster, &toml, &table, 250).await);
    }
    assert_eq!(
        values_on(&old, &table).await,
        before,
        "the old primary took writes"
    );

    // The candidate gets to its promotion, and is reachable again.
    stalled.clear();
    wait_until(15, "the candidate out of recovery", || {
        is_primary(candidate)
    })
    .await;
    relays[ci].restore(&PROXY_ROLES);
    assert_eq!(
        every_proxy_writes_to_one_node(&clients, &table, 300, 20).await,
        candidate.port()
    );
    every_proxy_fences(&all, old.name(), 10).await;
    let after: BTreeSet<i32> = (300..300 + clients.len() as i32).collect();
    assert_eq!(
        values_on(&old, &table).await,
        before,
        "the old primary took writes"
    );
    let on_new = values_on(candidate, &table).await;
    assert_eq!(on_new, before.union(&after).copied().collect());
    let out: Vec<String> = promoted(&cluster)
        .await
        .iter()
        .map(|n| n.name().to_string())
        .collect();
    assert_eq!(out, vec![candidate.name().to_string()]);
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_a_promotion_is_sent_the_old_primary_back_gets_no_writes_with_one_proxy() {
    promotion_sent_keeps_the_old_primary_out(Proxies::Alone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_a_promotion_is_sent_the_old_primary_back_gets_no_writes_from_any_proxy() {
    promotion_sent_keeps_the_old_primary_out(Proxies::Three).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_a_promotion_is_sent_the_old_primary_back_gets_no_writes_from_proxies_started_before_etcd(
) {
    promotion_sent_keeps_the_old_primary_out(Proxies::ThreeBeforeEtcd).await;
}

/// Points `replica`'s WAL receiver at `addr` (the rest of its connection
/// string kept) and waits until it streams from there.
async fn stream_through(replica: &PgNode, addr: SocketAddr) {
    let conninfo = psql(replica, "SHOW primary_conninfo").await.unwrap();
    let port = conninfo
        .split_whitespace()
        .find(|kv| kv.starts_with("port="))
        .expect("a port in primary_conninfo")
        .to_string();
    let moved = conninfo.replace(&port, &format!("port={}", addr.port()));
    let sql = format!(
        "ALTER SYSTEM SET primary_conninfo = '{}'; SELECT pg_reload_conf();",
        moved.replace('\'', "''")
    );
    psql(replica, &sql).await.unwrap();
    let sql = "SELECT status || ' ' || sender_port FROM pg_stat_wal_receiver";
    let want = format!("streaming {}", addr.port());
    wait_until(30, "the replica streaming through the relay", || async {
        psql(replica, sql).await.as_deref() == Ok(want.as_str())
    })
    .await;
}

/// A partition: the leader and one follower lose the primary, and so do
/// its replicas, while the third proxy still reaches it. The leader fails
/// over (a majority sees the primary down, no replica hears it); its
/// candidate is slow to complete the promotion. The third proxy, told by
/// the shared record that `pg_promote()` was sent, writes no more to the
/// old primary, though it still reaches it; once the promotion completes,
/// every proxy writes to the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_still_reaches_the_old_primary_stops_writing_there_once_a_promotion_is_sent() {
    let cluster = three_nodes().await;
    let etcd = start_etcd().await;
    let old = cluster.primary().clone();
    let replicas = cluster.replicas().to_vec();
    let table = common::unique("partition");
    psql(
        &old,
        &format!(
            "CREATE ROLE near_sy LOGIN SUPERUSER PASSWORD 'near_sy';\n\
             CREATE ROLE near LOGIN PASSWORD 'near';\n\
             CREATE TABLE {table} (v int);\n\
             GRANT ALL ON {table} TO PUBLIC;"
        ),
    )
    .await
    .unwrap();
    replicated(&cluster, &table, 0).await;
    // Everyone reaches the primary through one relay, its replicas too;
    // the third proxy logs in with roles of its own, which stay connected.
    let relay = Relay::start(&old.addr()).await;
    for r in &replicas {
        stream_through(r, relay.addr).await;
    }
    let name = common::unique("partition");
    let toml = |extra: &str, login| {
        let mut t = Toml {
            extra,
            login,
            ..Toml::new(&cluster.nodes(), &etcd.endpoint(), &name)
        };
        t.nodes[0].1 = relay.addr.to_string();
        t.render()
    };
    let cut_off = toml(HOLD, (CLUSTER_USER, CLUSTER_PASSWORD));
    let near_extra = format!("[[users]]\nname = \"near\"\npassword = \"near\"\n{HOLD}");
    let near = toml(&near_extra, ("near_sy", "near_sy"));
    // The leader is one of the proxies about to lose the primary.
    let mut all = vec![Proxy::start_with_http(cluster.clone(), &cut_off).await];
    assert_eq!(settled(&all).await, 0);
    all.push(Proxy::start_with_http(cluster.clone(), &cut_off).await);
    all.push(Proxy::start_with_http(cluster.clone(), &near).await);
    assert_eq!(settled(&all).await, 0, "the first proxy still leads");
    ready(&all).await;
    let clients = [
        all[0].0.client().await,
        all[1].0.client().await,
        all[2].0.client_as("near", "near", "app").await.unwrap(),
    ];
    assert_eq!(
        every_proxy_writes_to_one_node(&clients, &table, 0, 5).await,
        old.port()
    );
    let before: BTreeSet<i32> = (0..3).collect();
    replicated(&cluster, &table, before.len()).await;
    let stalled = [
        Stalled::startup_of(&replicas[0]).await,
        Stalled::startup_of(&replicas[1]).await,
    ];

    relay.cut(&[CLUSTER_USER, "app", "postgres"]).await;
    let sent = every_proxy_says(&all[..1], "promoting", "pg_promote() started", 20).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    let candidate = &replicas[usize::from(promotions(&all).await[0] != replicas[0].name())];
    let why = format!("a promotion was sent to {}", candidate.name());
    every_proxy_says(&all[2..], "failover_blocked", &why, 10).await;
    let code = refused(&clients[2], &table, 100).await;
    assert_eq!(
        code, "08006",
        "a write through the proxy that reaches the old primary"
    );
    assert_eq!(
        values_on(&old, &table).await,
        before,
        "the old primary took writes"
    );
    assert!(is_primary(&old).await, "the old primary still runs");

    // The promotion completes: every proxy writes there.
    drop(stalled);
    assert_eq!(
        every_proxy_writes_to_one_node(&clients, &table, 200, 20).await,
        candidate.port()
    );
    assert_eq!(
        values_on(&old, &table).await,
        before,
        "the old primary took writes"
    );
    let on_new = values_on(candidate, &table).await;
    assert!(!on_new.contains(&100), "the refused write landed");
    assert!(on_new.is_superset(&before.iter().copied().chain(200..203).collect()));
    drop(etcd);
}

// ---------------------------------------------------------------------------
// Rule 2: fencing survives a READMIT of a node on an older timeline
// ---------------------------------------------------------------------------

/// After a failover the old primary comes back as it was (a primary on
/// timeline 1) and an operator re-admits it (through a follower, with three
/// proxies): it is fenced again and no write reaches it, through any proxy,
/// on new connections or old.
async fn readmitted_on_an_older_timeline(how: Proxies) {
    let cluster = three_nodes().await;
    let (all, _, etcd) = fleet(&cluster, addrs(&cluster), how, HOLD).await;
    let (clients, table) = clients_and_table(&cluster, &all, "readmit").await;
    let old = cluster.primary().clone();
    assert_eq!(
        every_proxy_writes_to_one_node(&clients, &table, 0, 5).await,
        old.port()
    );
    let before: BTreeSet<i32> = (0..clients.len() as i32).collect();
    replicated(&cluster, &table, before.len()).await;

    stop(&old).await;
    let landed = every_proxy_writes_to_one_node(&clients, &table, 10, 30).await;
    assert_ne!(landed, old.port());
    start(&old).await;
    assert!(is_primary(&old).await);
    assert_eq!(timeline(&old).await, 1);
    every_proxy_fences(&all, old.name(), 10).await;

    // With three proxies, a follower is asked: it hands READMIT to the leader.
    let leader = if how != Proxies::Alone {
        settled(&all).await
    } else {
        0
    };
    let asked = if how != Proxies::Alone {
        (leader + 1) % all.len()
    } else {
        0
    };
    let admin = all[asked]
        .0
        .client_as("admin", "adminpw", "switchyard")
        .await
        .unwrap();
    admin
        .simple_query(&format!("READMIT {}", old.name()))
        .await
        .expect("READMIT");
    // It was re-admitted, and fenced again.
    let readmitted = messages(all[leader].1, "node_readmitted").await;
    assert!(
        readmitted.iter().any(|(n, _)| n == old.name()),
        "{readmitted:?}"
    );
    every_proxy_fences(&all, old.name(), 10).await;
    let fenced = messages(all[leader].1, "node_fenced").await;
    let times = fenced.iter().filter(|(n, _)| n == old.name()).count();
    assert!(times >= 2, "fenced again after READMIT: {fenced:?}");

    // For a few seconds, every write through every proxy, on the clients
    // from before and on new ones, lands on the new primary.
    let mut v = 100;
    let mut written = BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        for (i, (p, _)) in all.iter().enumerate() {
            let fresh = p.client().await;
            for c in [&clients[i], &fresh] {
                assert_eq!(write_lands(c, &table, v, 1).await, landed, "write {v}");
                written.insert(v);
                v += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        values_on(&old, &table).await,
        before,
        "the old primary took writes"
    );
    assert!(is_primary(&old).await, "the old primary was left as it was");
    let new = cluster
        .replicas()
        .iter()
        .find(|r| r.port() == landed)
        .unwrap();
    assert!(values_on(new, &table).await.is_superset(&written));
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_primary_readmitted_on_its_old_timeline_gets_no_writes_with_one_proxy() {
    readmitted_on_an_older_timeline(Proxies::Alone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_primary_readmitted_through_a_follower_gets_no_writes_from_any_proxy() {
    readmitted_on_an_older_timeline(Proxies::Three).await;
}

// ---------------------------------------------------------------------------
// Rule 5: a live, idle primary cut off from the proxy
// ---------------------------------------------------------------------------

/// One proxy alone loses its path to an idle, healthy primary whose
/// replicas still stream from it (keepalives every 2 s). For three times
/// `wal_sender_timeout` nothing is promoted; writes through the proxy are
/// refused, not sent elsewhere; once the path is back they go to the same
/// primary. (Three proxies with one cut off: coordination_faults.rs,
/// `a_leader_cut_off_from_the_primary_holds_its_writes_and_nobody_fails_over`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_primary_cut_off_from_a_lone_proxy_is_not_replaced_while_its_replicas_hear_it() {
    let cluster = three_nodes().await;
    let primary = cluster.primary().clone();
    let sender_timeout = Duration::from_secs(4);
    psql(
        &primary,
        "ALTER SYSTEM SET wal_sender_timeout = '4s'; SELECT pg_reload_conf();",
    )
    .await
    .unwrap();
    let relay = Relay::start(&primary.addr()).await;
    let mut nodes = addrs(&cluster);
    nodes[0].1 = relay.addr.to_string();
    let (all, _, _) = fleet(&cluster, nodes, Proxies::Alone, HOLD).await;
    let (clients, table) = clients_and_table(&cluster, &all, "idle").await;
    assert_eq!(write_lands(&clients[0], &table, 1, 5).await, primary.port());
    replicated(&cluster, &table, 1).await;

    relay.cut(&PROXY_ROLES).await;
    let cut = Instant::now();
    let through_proxy = every_write_refused(&clients, &table, 100);
    let watch = async {
        while cut.elapsed() < sender_timeout * 3 {
            for r in cluster.replicas() {
                assert!(
                    in_recovery(r).await,
                    "{} promoted after {:?}",
                    r.name(),
                    cut.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let (tried, ()) = tokio::join!(through_proxy, watch);
    let http = all[0].1;
    let blocked = messages(http, "failover_blocked").await;
    assert!(
        blocked
            .iter()
            .any(|(_, m)| m.contains("still receives WAL") || m.contains("still streams")),
        "the proxy says why it does not promote: {blocked:?}"
    );
    assert!(promotions(&all).await.is_empty());
    assert!(promoted(&cluster).await.is_empty());
    assert!(is_primary(&primary).await);

    relay.restore(&PROXY_ROLES);
    assert_eq!(
        write_lands(&clients[0], &table, 2, 20).await,
        primary.port()
    );
    on_none(&[&primary], &table, &tried).await;
    assert_eq!(values_on(&primary, &table).await, BTreeSet::from([1, 2]));
}
