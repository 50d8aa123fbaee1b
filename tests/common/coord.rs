//! Helpers for tests with several proxies coordinating through etcd: their
//! configuration, waiting for an agreed leader, reading `/status` and
//! `/events`, and what a user checks on the nodes (who left recovery, where
//! a write landed).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::local_cluster::{LocalCluster, PgNode, StopMode, CLUSTER_PASSWORD, CLUSTER_USER};
use tokio_postgres::Client;

use super::etcd::Etcd;
use super::{http_request, Proxy, USERS};

/// A cluster of its own: a primary and two replicas.
pub async fn three_nodes() -> Arc<LocalCluster> {
    super::private_trio().await
}

/// A single-member etcd, started off the runtime.
pub async fn start_etcd() -> Etcd {
    tokio::task::spawn_blocking(Etcd::start).await.unwrap()
}

/// One proxy's configuration: every proxy of a test shares `nodes`, the
/// etcd `endpoints` and the cluster `name`; `extra` (TOML before
/// `[coordination]`), `coord` (lines added to `[coordination]`) and `login`
/// may differ between proxies.
pub struct Toml<'a> {
    /// `(name, address)` of every node, as the proxies reach it.
    pub nodes: Vec<(String, String)>,
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// `cluster.name`: the proxies with the same one coordinate.
    pub name: &'a str,
    /// TOML placed before `[coordination]` (users, `[failover]`, ...).
    pub extra: &'a str,
    /// Lines added to `[coordination]`.
    pub coord: &'a str,
    /// `[cluster] user` and `password`: the role health checks and
    /// promotions log in as.
    pub login: (&'a str, &'a str),
}

impl<'a> Toml<'a> {
    /// `nodes` at their own addresses, one etcd endpoint, the default login.
    pub fn new(nodes: &[&PgNode], etcd: &str, name: &'a str) -> Toml<'a> {
        Toml {
            nodes: nodes
                .iter()
                .map(|n| (n.name().to_string(), n.addr()))
                .collect(),
            endpoints: vec![etcd.to_string()],
            name,
            extra: "",
            coord: "",
            login: (CLUSTER_USER, CLUSTER_PASSWORD),
        }
    }

    /// The configuration text (a lease of 2 s, probes every 500 ms).
    pub fn render(&self) -> String {
        let nodes = self
            .nodes
            .iter()
            .map(|(name, addr)| format!("{{ name = \"{name}\", addr = \"{addr}\" }}"))
            .collect::<Vec<_>>()
            .join(", ");
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let (name, extra, coord) = (self.name, self.extra, self.coord);
        let (user, password) = self.login;
        format!(
            "{USERS}\n{extra}\n[coordination]\nbackend = \"etcd\"\nendpoints = [{endpoints}]\nlease_ttl = \"2s\"\n{coord}\n\
             [health]\ninterval = \"500ms\"\ntimeout = \"1s\"\n\
             [cluster]\nname = \"{name}\"\nnodes = [{nodes}]\nuser = \"{user}\"\npassword = \"{password}\"\n"
        )
    }
}

/// A proxy configuration for `cluster` coordinating through `etcd`.
pub fn config(cluster: &LocalCluster, etcd: &str, name: &str, extra: &str) -> String {
    config_of(&cluster.nodes(), etcd, name, extra)
}

/// The same, listing only `nodes`.
pub fn config_of(nodes: &[&PgNode], etcd: &str, name: &str, extra: &str) -> String {
    config_coord(nodes, etcd, name, extra, "")
}

/// The same, with `coord` lines added to `[coordination]`.
pub fn config_coord(nodes: &[&PgNode], etcd: &str, name: &str, extra: &str, coord: &str) -> String {
    Toml {
        extra,
        coord,
        ..Toml::new(nodes, etcd, name)
    }
    .render()
}

/// `n` proxies with their HTTP endpoints.
pub async fn proxies(
    cluster: &Arc<LocalCluster>,
    toml: &str,
    n: usize,
) -> Vec<(Proxy, SocketAddr)> {
    let mut out = vec![];
    for _ in 0..n {
        out.push(Proxy::start_with_http(cluster.clone(), toml).await);
    }
    out
}

/// `/status` as JSON (null while the proxy does not answer yet).
pub async fn status(http: SocketAddr) -> serde_json::Value {
    let (_, body) = http_request(http, "GET", "/status").await;
    serde_json::from_str(&body).unwrap_or_default()
}

/// Waits until every proxy sees the same leader among `n` live proxies;
/// returns the index of the leading proxy.
pub async fn settled(all: &[(Proxy, SocketAddr)]) -> usize {
    settled_within(all, 20).await
}

/// [`settled`], waiting at most `secs`.
pub async fn settled_within(all: &[(Proxy, SocketAddr)], secs: u64) -> usize {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut seen = vec![];
        for (_, http) in all {
            seen.push(status(*http).await["coordination"].clone());
        }
        let leaders: Vec<usize> = (0..seen.len())
            .filter(|&i| seen[i]["leader"] == true)
            .collect();
        let agreed = seen.iter().all(|s| {
            s["connected"] == true
                && s["proxies"] == all.len()
                && s["leader_id"] == seen[leaders.first().copied().unwrap_or(0)]["proxy"]
        });
        if leaders.len() == 1 && agreed {
            return leaders[0];
        }
        assert!(Instant::now() < deadline, "no agreed leader: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Events of `kind` on one proxy's timeline, by node.
pub async fn events(http: SocketAddr, kind: &str) -> Vec<String> {
    let (_, body) = http_request(http, "GET", "/events").await;
    let all: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    all.as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["kind"] == kind)
                .map(|e| e["node"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The port of the server `c`'s session runs on (through a proxy: the node
/// it routed to).
pub async fn port_of(c: &Client) -> Result<u16, tokio_postgres::Error> {
    let row = c.query_one("SELECT inet_server_port()", &[]).await?;
    Ok(row.get::<_, i32>(0) as u16)
}

/// `SELECT pg_is_in_recovery()` on `node` (false when it does not answer).
pub async fn in_recovery(node: &PgNode) -> bool {
    let out = psql(node, "SELECT pg_is_in_recovery()").await;
    out.map(|s| s.trim() == "t").unwrap_or(false)
}

/// `sql` through psql on `node`, off the runtime.
pub async fn psql(node: &PgNode, sql: &str) -> Result<String, String> {
    let (n, sql) = (node.clone(), sql.to_string());
    tokio::task::spawn_blocking(move || n.psql("app", &sql))
        .await
        .unwrap()
        .map_err(|e| e.to_string())
}

/// Stops `node` at once (`pg_ctl stop -m immediate`: as a crash would).
pub async fn stop(node: &PgNode) {
    let n = node.clone();
    tokio::task::spawn_blocking(move || n.stop(StopMode::Immediate))
        .await
        .unwrap()
        .unwrap();
}

/// Waits until every replica has replayed `table`'s rows up to `rows`: the
/// test cluster runs without synchronous commit, and what a crash takes
/// before it reached the replicas is not what these tests are about.
pub async fn replicated(cluster: &LocalCluster, table: &str, rows: usize) {
    for r in cluster.replicas() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = psql(r, &format!("SELECT count(*) FROM {table}")).await;
            if out.is_ok_and(|s| s.trim().parse::<usize>().unwrap_or(0) >= rows) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not replay {table}",
                r.name()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Retries a write through `c` until it succeeds: the port it landed on.
pub async fn write_lands(c: &Client, table: &str, v: i32, secs: u64) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let sql = format!("INSERT INTO {table} VALUES ({v})");
        match c.batch_execute(&sql).await {
            Ok(()) => return port_of(c).await.unwrap(),
            Err(e) => assert!(Instant::now() < deadline, "write {v}: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The replicas of `cluster` that left recovery.
pub async fn promoted(cluster: &LocalCluster) -> Vec<PgNode> {
    let mut out = vec![];
    for r in cluster.replicas() {
        // Only a node that answers "f": one that does not answer left nothing.
        if psql(r, "SELECT pg_is_in_recovery()")
            .await
            .is_ok_and(|s| s.trim() == "f")
        {
            out.push(r.clone());
        }
    }
    out
}

/// Every promotion the proxies started, by node, over all their timelines.
pub async fn promotions(all: &[(Proxy, SocketAddr)]) -> Vec<String> {
    let mut out = vec![];
    for (_, http) in all {
        out.extend(events(*http, "promoting").await);
    }
    out
}

/// The values of `table` on `node`.
pub async fn values_on(node: &PgNode, table: &str) -> BTreeSet<i32> {
    let out = psql(node, &format!("SELECT v FROM {table}")).await.unwrap();
    out.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// `/readyz`: status and body.
pub async fn readyz(http: SocketAddr) -> (u16, String) {
    http_request(http, "GET", "/readyz").await
}

/// Writes once through each client until it lands (within `secs`); asserts
/// they all land on one node, and returns its port.
pub async fn every_proxy_writes_to_one_node(
    clients: &[Client],
    table: &str,
    base: i32,
    secs: u64,
) -> u16 {
    let mut landed = HashMap::new();
    for (i, c) in clients.iter().enumerate() {
        let port = write_lands(c, table, base + i as i32, secs).await;
        *landed.entry(port).or_insert(0) += 1;
    }
    assert_eq!(
        landed.len(),
        1,
        "every proxy writes to one primary: {landed:?}"
    );
    *landed.keys().next().unwrap()
}

/// After a failover that `landed` on: exactly one replica left recovery and
/// it is the node on `landed`; the other replica still replays, and what was
/// written on the new primary reaches it (it was repointed there); the new
/// primary holds every value in `acked`. Returns the new primary.
pub async fn exactly_one_promoted(
    cluster: &LocalCluster,
    landed: u16,
    table: &str,
    acked: &BTreeSet<i32>,
) -> PgNode {
    let out = promoted(cluster).await;
    let names: Vec<&str> = out.iter().map(|n| n.name()).collect();
    assert_eq!(out.len(), 1, "replicas out of recovery: {names:?}");
    let new = out[0].clone();
    assert_eq!(new.port(), landed, "writes go to the promoted node");
    let on_new = values_on(&new, table).await;
    assert!(
        acked.is_subset(&on_new),
        "acknowledged writes missing on {}: {:?}",
        new.name(),
        acked.difference(&on_new).collect::<Vec<_>>()
    );
    for r in cluster.replicas().iter().filter(|r| r.name() != new.name()) {
        assert!(in_recovery(r).await, "{} left recovery too", r.name());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !values_on(r, table).await.is_superset(acked) {
            assert!(
                Instant::now() < deadline,
                "{} does not replay from the new primary {}",
                r.name(),
                new.name()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    new
}
