//! Several proxies in front of one cluster, coordinating through a real etcd
//! (`[coordination] backend = "etcd"`): one leader acts, the others follow,
//! and nobody promotes without etcd.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::certs::Ca;
use common::coord::{
    config, config_coord, config_of, events, every_proxy_writes_to_one_node, exactly_one_promoted,
    in_recovery, promotions, proxies, replicated, settled, start_etcd, status, stop, three_nodes,
    write_lands,
};
use common::etcd::Etcd;
use common::shipped::Shipped;
use common::Proxy;
use tokio_postgres::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_primary_is_promoted_over_once_and_every_proxy_writes_there() {
    let cluster = three_nodes().await;
    let etcd = start_etcd().await;
    let toml = config(&cluster, &etcd.endpoint(), &common::unique("crash"), "");
    let all = proxies(&cluster, &toml, 3).await;
    settled(&all).await;
    let mut clients = vec![];
    for (p, _) in &all {
        clients.push(p.client().await);
    }
    let table = common::unique("coord");
    clients[0]
        .batch_execute(&format!("CREATE TABLE {table} (v int)"))
        .await
        .unwrap();
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(
            write_lands(c, &table, i as i32, 5).await,
            cluster.primary().port()
        );
    }
    replicated(&cluster, &table, 3).await;

    stop(cluster.primary()).await;
    let mut landed = HashMap::new();
    for (i, c) in clients.iter().enumerate() {
        let port = write_lands(c, &table, 10 + i as i32, 30).await;
        *landed.entry(port).or_insert(0) += 1;
    }
    assert_eq!(
        landed.len(),
        1,
        "every proxy writes to one primary: {landed:?}"
    );
    // Exactly one promotion, by exactly one proxy; the other replica still
    // replicates.
    let mut promoting = vec![];
    for (_, http) in &all {
        promoting.extend(events(*http, "promoting").await);
    }
    assert_eq!(promoting.len(), 1, "{promoting:?}");
    let replicas = cluster.replicas();
    let promoted: Vec<bool> = {
        let mut v = vec![];
        for r in replicas {
            v.push(!in_recovery(r).await);
        }
        v
    };
    assert_eq!(promoted.iter().filter(|p| **p).count(), 1, "{promoted:?}");
    let new = replicas.iter().zip(&promoted).find(|(_, p)| **p).unwrap().0;
    assert_eq!(landed.keys().next(), Some(&new.port()));
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_nobody_promotes_but_everyone_follows_a_promotion_by_hand() {
    let cluster = three_nodes().await;
    let mut etcd = start_etcd().await;
    let toml = config(&cluster, &etcd.endpoint(), &common::unique("noetcd"), "");
    let all = proxies(&cluster, &toml, 2).await;
    settled(&all).await;
    let c = all[1].0.client().await;
    let table = common::unique("coord");
    c.batch_execute(&format!("CREATE TABLE {table} (v int)"))
        .await
        .unwrap();
    replicated(&cluster, &table, 0).await;

    etcd.stop();
    // Past the lease: nobody may act any more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (_, http) in &all {
        let s = status(*http).await;
        assert_eq!(s["coordination"]["connected"], false, "{s}");
    }
    stop(cluster.primary()).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    for r in cluster.replicas() {
        assert!(
            in_recovery(r).await,
            "{} was promoted without etcd",
            r.name()
        );
    }
    for (_, http) in &all {
        assert!(events(*http, "promoting").await.is_empty());
    }
    // An operator promotes by hand: every proxy follows it.
    let chosen = &cluster.replicas()[1];
    let n = chosen.clone();
    tokio::task::spawn_blocking(move || n.psql("app", "SELECT pg_promote()"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(write_lands(&c, &table, 1, 30).await, chosen.port());
    let other = all[0].0.client().await;
    assert_eq!(write_lands(&other, &table, 2, 30).await, chosen.port());

    // etcd back: leadership resumes.
    etcd.restart();
    settled(&all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_dies_another_leads_and_handles_the_next_crash() {
    let cluster = three_nodes().await;
    let etcd = start_etcd().await;
    let toml = config(&cluster, &etcd.endpoint(), &common::unique("leader"), "");
    let mut all = proxies(&cluster, &toml, 3).await;
    let leader = settled(&all).await;
    // It stops without giving up its lease, which runs out on its own: the
    // others take over within lease_ttl (2 s) and an interval, bounded
    // generously here.
    let (dead, _) = all.remove(leader);
    dead.shutdown().await;
    let stopped = Instant::now();
    let next = settled(&all).await;
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "a new leader only after {:?}",
        stopped.elapsed()
    );
    let mut clients = vec![];
    for (p, _) in &all {
        clients.push(p.client().await);
    }
    let table = common::unique("coord");
    clients[0]
        .batch_execute(&format!("CREATE TABLE {table} (v int)"))
        .await
        .unwrap();
    let before = every_proxy_writes_to_one_node(&clients, &table, 0, 5).await;
    assert_eq!(before, cluster.primary().port());
    replicated(&cluster, &table, clients.len()).await;

    stop(cluster.primary()).await;
    let landed = every_proxy_writes_to_one_node(&clients, &table, 10, 30).await;
    let acked: BTreeSet<i32> = (0..2).chain(10..12).collect();
    exactly_one_promoted(&cluster, landed, &table, &acked).await;
    // The new leader promoted, once; the other proxy only followed.
    assert_eq!(promotions(&all).await.len(), 1);
    assert_eq!(events(all[next].1, "promoting").await.len(), 1);
    drop(etcd);
}

/// Waits until the proxy at `http` is connected and sees `n` live proxies
/// and `leader` leading.
async fn sees_leader(http: SocketAddr, leader: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = status(http).await["coordination"].clone();
        if c["connected"] == true && c["proxies"] == n && c["leader_id"] == leader {
            return;
        }
        assert!(Instant::now() < deadline, "{leader} not seen leading: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_as_it_promotes_leaves_exactly_one_promotion() {
    let cluster = three_nodes().await;
    let etcd = start_etcd().await;
    let name = common::unique("killed");
    let toml = config(&cluster, &etcd.endpoint(), &name, "");
    // The leader is the binary, so that it can die with SIGKILL.
    let leader = Shipped::start_with(|addr, http| {
        format!("[proxy]\nlisten = \"{addr}\"\n{toml}\n[http]\nlisten = \"{http}\"\n")
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while leader.status().await["coordination"]["leader"] != true {
        assert!(Instant::now() < deadline, "the first proxy never led");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader_id = leader.status().await["coordination"]["proxy"].clone();
    let others = proxies(&cluster, &toml, 2).await;
    for (_, http) in &others {
        sees_leader(*http, leader_id.as_str().unwrap(), 3).await;
    }
    let mut clients = vec![];
    for (p, _) in &others {
        clients.push(p.client().await);
    }
    let table = common::unique("coord");
    clients[0]
        .batch_execute(&format!("CREATE TABLE {table} (v int)"))
        .await
        .unwrap();
    every_proxy_writes_to_one_node(&clients, &table, 0, 5).await;
    replicated(&cluster, &table, clients.len()).await;

    // SIGKILL the leader the moment the record names the node it is
    // promoting: pg_promote() is sent right after, or was just sent.
    let mut watcher = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let mut events_of = watcher
        .watch(format!("/switchyard/{name}/topology"), None)
        .await
        .unwrap();
    let killer = tokio::spawn(async move {
        while let Ok(Some(resp)) = events_of.message().await {
            for ev in resp.events() {
                let value = ev.kv().map(|kv| kv.value()).unwrap_or_default();
                let record: serde_json::Value = serde_json::from_slice(value).unwrap_or_default();
                if let Some(node) = record["promoting"].as_str() {
                    drop(leader);
                    return node.to_string();
                }
            }
        }
        panic!("the watch ended before any promotion was recorded");
    });
    stop(cluster.primary()).await;
    let promoting = tokio::time::timeout(Duration::from_secs(30), killer)
        .await
        .expect("a promotion was recorded")
        .unwrap();

    // The survivors elect a leader, which promotes that node and no other.
    let landed = every_proxy_writes_to_one_node(&clients, &table, 10, 30).await;
    let acked: BTreeSet<i32> = (0..2).chain(10..12).collect();
    let new = exactly_one_promoted(&cluster, landed, &table, &acked).await;
    assert_eq!(
        new.name(),
        promoting,
        "the recorded node is the one promoted"
    );
    assert!(promotions(&others).await.len() <= 1);
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_another_proxy_finds_the_query_through_etcd() {
    let cluster = three_nodes().await;
    let etcd = start_etcd().await;
    let name = common::unique("cancel");
    let (mut all, mut addrs) = (vec![], vec![]);
    for id in 1..=2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let extra = format!("[proxy]\npeer_id = {id}\n");
        let coord = format!("advertise = \"{addr}\"\n");
        let toml = config_coord(&cluster.nodes(), &etcd.endpoint(), &name, &extra, &coord);
        all.push(Proxy::start_on_with_http(cluster.clone(), &toml, listener).await);
        addrs.push(addr);
    }
    // No [[peers]]: each learns where the other is from etcd.
    settled(&all).await;
    let client = all[0].0.client().await;
    let token = client.cancel_token();
    let other = addrs[1];
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stream = tokio::net::TcpStream::connect(other).await.unwrap();
        token
            .cancel_query_raw(stream, tokio_postgres::NoTls)
            .await
            .unwrap();
        Instant::now()
    });
    let query = client.batch_execute("SELECT pg_sleep(30)");
    let outcome = tokio::time::timeout(Duration::from_secs(10), query).await;
    let ended = Instant::now();
    let sent = cancel.await.unwrap();
    let err = outcome
        .expect("the query still ran 10 s later")
        .unwrap_err();
    assert_eq!(common::sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert!(
        ended.saturating_duration_since(sent) < Duration::from_secs(2),
        "the query ran on for {:?} after the cancel",
        ended.saturating_duration_since(sent)
    );
    drop(etcd);
}

/// One autocommit writer per proxy, for as long as `stop` is unset:
/// (values acknowledged, errors seen).
fn writer(c: Client, table: String, base: i32, stop: Arc<AtomicBool>) -> Writer {
    tokio::spawn(async move {
        let (mut acked, mut errors) = (vec![], vec![]);
        let mut v = base;
        while !stop.load(Ordering::Relaxed) {
            match c
                .batch_execute(&format!("INSERT INTO {table} VALUES ({v})"))
                .await
            {
                Ok(()) => acked.push(v),
                Err(e) => errors.push(format!("{e:?}")),
            }
            v += 1;
        }
        (acked, errors)
    })
}

type Writer = tokio::task::JoinHandle<(Vec<i32>, Vec<String>)>;

/// SHOW PROXIES on `admin`: (proxy, this one, leader, primary, ...) rows.
async fn show_proxies(admin: &Client) -> Vec<Vec<String>> {
    admin
        .simple_query("SHOW PROXIES")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..6).map(|i| r.get(i).unwrap_or("").to_string()).collect())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_asked_of_a_follower_pauses_every_proxy_and_fails_nothing() {
    let cluster = three_nodes().await;
    let etcd = start_etcd().await;
    let toml = config(&cluster, &etcd.endpoint(), &common::unique("sw"), "");
    let all = proxies(&cluster, &toml, 3).await;
    let leader = settled(&all).await;
    let follower = &all[(leader + 1) % 3].0;
    let admin = follower
        .client_as("admin", "adminpw", "switchyard")
        .await
        .unwrap();
    // SHOW PROXIES: all three, this one first, one leader.
    let rows = show_proxies(&admin).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[0][1], "yes", "{rows:?}");
    assert_eq!(rows[0][2], "no", "the follower is listed first: {rows:?}");
    assert_eq!(rows.iter().filter(|r| r[2] == "yes").count(), 1, "{rows:?}");
    assert!(rows.iter().all(|r| r[3] == "primary"), "{rows:?}");

    let table = common::unique("coord");
    let setup = all[0].0.client().await;
    setup
        .batch_execute(&format!("CREATE TABLE {table} (v int)"))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = vec![];
    for (i, (p, _)) in all.iter().enumerate() {
        let c = p.client().await;
        writers.push(writer(c, table.clone(), 1_000_000 * i as i32, stop.clone()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let target = &cluster.replicas()[1];
    admin
        .simple_query(&format!("SWITCHOVER TO {}", target.name()))
        .await
        .expect("the leader ran the switchover");
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut errors) = (vec![], vec![]);
    for w in writers {
        let (a, e) = w.await.unwrap();
        assert!(!a.is_empty(), "a writer wrote nothing");
        acked.extend(a);
        errors.extend(e);
    }
    assert!(errors.is_empty(), "clients saw errors: {errors:?}");
    // Every acknowledged write is on the new primary, and every proxy
    // writes there now.
    let n = target.clone();
    let sql = format!("SELECT count(*) FROM {table}");
    let on_new = tokio::task::spawn_blocking(move || n.psql("app", &sql))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(on_new.trim().parse::<usize>().unwrap(), acked.len());
    for (p, _) in &all {
        let c = p.client().await;
        assert_eq!(write_lands(&c, &table, -1, 5).await, target.port());
    }
    // The leader did it, and said so; the follower only forwarded.
    let promoting = events(all[leader].1, "promoting").await;
    let started = events(all[leader].1, "switchover_started").await;
    assert_eq!(started.len(), 1, "{started:?} {promoting:?}");
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_leader_a_switchover_is_refused_with_the_reason() {
    let cluster = three_nodes().await;
    let mut etcd = start_etcd().await;
    let toml = config(&cluster, &etcd.endpoint(), &common::unique("swno"), "");
    let all = proxies(&cluster, &toml, 1).await;
    settled(&all).await;
    etcd.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let admin = all[0]
        .0
        .client_as("admin", "adminpw", "switchyard")
        .await
        .unwrap();
    let err = admin.simple_query("SWITCHOVER").await.unwrap_err();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "55000");
    assert!(db.message().contains("does not lead"), "{}", db.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_with_another_node_list_is_refused() {
    let cluster = three_nodes().await;
    let etcd = start_etcd().await;
    let name = common::unique("fp");
    let toml = config(&cluster, &etcd.endpoint(), &name, "");
    let first = proxies(&cluster, &toml, 1).await;
    settled(&first).await;
    // The same cluster.name, one replica left out.
    let fewer = &cluster.nodes()[..2];
    let odd = config_of(fewer, &etcd.endpoint(), &name, "");
    let (_odd, http) = Proxy::start_with_http(cluster.clone(), &odd).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let refused = loop {
        let s = status(http).await["coordination"].clone();
        if let Some(why) = s["refused"].as_str() {
            break why.to_string();
        }
        assert!(Instant::now() < deadline, "not refused: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused.contains("differ from the leader"), "{refused}");
    assert_eq!(events(http, "config_rejected").await.len(), 1);
    assert_eq!(status(http).await["coordination"]["leader"], false);
    assert_eq!(status(first[0].1).await["coordination"]["leader"], true);
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_outlives_every_proxy_that_knew_it() {
    let cluster = three_nodes().await;
    let etcd = start_etcd().await;
    let extra = "[failover]\nhold_timeout = \"2s\"\n";
    let toml = config(&cluster, &etcd.endpoint(), &common::unique("fence"), extra);
    let all = proxies(&cluster, &toml, 2).await;
    settled(&all).await;
    let c = all[0].0.client().await;
    let table = common::unique("coord");
    c.batch_execute(&format!("CREATE TABLE {table} (v int)"))
        .await
        .unwrap();
    replicated(&cluster, &table, 0).await;
    let old = cluster.primary().clone();
    stop(&old).await;
    let new_port = write_lands(&c, &table, 1, 30).await;
    assert_ne!(new_port, old.port());
    // The leader's record now names the old primary as fenced.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(c);
    for (p, _) in all {
        p.shutdown().await;
    }
    // Only the old primary is left, back on its old timeline: a proxy that
    // did not know it was replaced would send it writes.
    for r in cluster.replicas() {
        stop(r).await;
    }
    let n = old.clone();
    tokio::task::spawn_blocking(move || n.start())
        .await
        .unwrap()
        .unwrap();
    let (fresh, http) = Proxy::start_with_http(cluster.clone(), &toml).await;
    // Logging in already needs the primary (held, then 08006); a write,
    // were it to get that far, too.
    let wrote = match fresh.client_as("app", "app", "app").await {
        Ok(c) => c
            .batch_execute(&format!("INSERT INTO {table} VALUES (2)"))
            .await
            .is_ok(),
        Err(e) => {
            assert_eq!(common::sqlstate(&e).as_deref(), Some("08006"), "{e:?}");
            false
        }
    };
    assert!(!wrote, "a write reached the fenced old primary");
    let nodes = status(http).await["nodes"].clone();
    let fenced = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == old.name())
        .map(|n| n["fenced"].clone());
    assert_eq!(fenced, Some(serde_json::Value::Bool(true)), "{nodes}");
    assert_eq!(
        events(http, "node_fenced").await,
        vec![old.name().to_string()]
    );
    drop(etcd);
}

/// Whether `/status` of `http` shows `node` fenced (None: not listed).
async fn fenced_in(http: SocketAddr, node: &str) -> Option<bool> {
    let nodes = status(http).await["nodes"].clone();
    let n = nodes
        .as_array()?
        .iter()
        .find(|n| n["name"] == node)?
        .clone();
    n["fenced"].as_bool()
}

/// Waits up to `secs` until every proxy shows `node` fenced or not, as
/// `want` says.
async fn every_proxy_shows(all: &[(Proxy, SocketAddr)], node: &str, want: bool, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut seen = vec![];
        for (_, http) in all {
            seen.push(fenced_in(*http, node).await);
        }
        if seen.iter().all(|f| *f == Some(want)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node} fenced = {want} not shown by every proxy: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readmit_sent_to_a_follower_unfences_on_every_proxy_and_outlives_them() {
    let cluster = three_nodes().await;
    let etcd = start_etcd().await;
    let extra = "[failover]\nhold_timeout = \"2s\"\n";
    let toml = config(
        &cluster,
        &etcd.endpoint(),
        &common::unique("readmit"),
        extra,
    );
    let all = proxies(&cluster, &toml, 3).await;
    let leader = settled(&all).await;
    let c = all[0].0.client().await;
    let table = common::unique("coord");
    c.batch_execute(&format!("CREATE TABLE {table} (v int)"))
        .await
        .unwrap();
    replicated(&cluster, &table, 0).await;
    let old = cluster.primary().clone();
    stop(&old).await;
    assert_ne!(write_lands(&c, &table, 1, 30).await, old.port());
    every_proxy_shows(&all, old.name(), true, 10).await;

    // An operator rebuilt the node and re-admits it on a proxy that does
    // not lead: every proxy un-fences it, through the shared record.
    let follower = &all[(leader + 1) % 3].0;
    let admin = follower
        .client_as("admin", "adminpw", "switchyard")
        .await
        .unwrap();
    admin
        .simple_query(&format!("READMIT {}", old.name()))
        .await
        .expect("READMIT on a follower");
    every_proxy_shows(&all, old.name(), false, 10).await;
    assert!(
        !events(all[leader].1, "node_readmitted").await.is_empty(),
        "the leader re-admitted it"
    );

    // The record no longer fences it: proxies started afresh agree.
    drop((c, admin));
    for (p, _) in all {
        p.shutdown().await;
    }
    let again = proxies(&cluster, &toml, 2).await;
    settled(&again).await;
    every_proxy_shows(&again, old.name(), false, 10).await;
    drop(etcd);
}

/// Watches `http` for `secs` once it answers: the proxy never gets
/// connected to etcd.
async fn never_connects(http: SocketAddr, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(http).await["coordination"].is_null() {
        assert!(Instant::now() < deadline, "no /status");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        let s = status(http).await["coordination"].clone();
        assert_eq!(s["connected"], false, "{s}");
        assert_eq!(s["leader"], false, "{s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `tls = { ... }` for `[coordination]`.
fn tls_line(ca: &str, client: Option<(&str, &str)>) -> String {
    match client {
        Some((cert, key)) => {
            format!("tls = {{ ca_file = {ca:?}, cert_file = {cert:?}, key_file = {key:?} }}")
        }
        None => format!("tls = {{ ca_file = {ca:?} }}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_only_proxies_that_trust_etcd_and_carry_a_certificate_join() {
    let cluster = common::cluster();
    let etcd = tokio::task::spawn_blocking(Etcd::start_tls).await.unwrap();
    assert!(etcd.endpoint().starts_with("https://"));
    let name = common::unique("tls");
    let nodes = cluster.nodes();
    let (ca, cert, key) = (
        etcd.ca_file(),
        etcd.client_cert_file(),
        etcd.client_key_file(),
    );
    let good = config_coord(
        &nodes,
        &etcd.endpoint(),
        &name,
        "",
        &tls_line(&ca, Some((&cert, &key))),
    );
    let all = proxies(&cluster, &good, 2).await;
    let leader = settled(&all).await;
    let s = status(all[leader].1).await["coordination"].clone();
    assert_eq!(
        (s["connected"].clone(), s["leader"].clone()),
        (true.into(), true.into()),
        "{s}"
    );

    // Another CA: etcd's certificate is not trusted.
    let dir = std::env::temp_dir().join(common::unique("sy_etcd_other_ca"));
    std::fs::create_dir_all(&dir).unwrap();
    let other_ca = dir.join("other-ca.pem");
    std::fs::write(&other_ca, Ca::new("Some other CA").pem).unwrap();
    let wrong_ca = config_coord(
        &nodes,
        &etcd.endpoint(),
        &name,
        "",
        &tls_line(other_ca.to_str().unwrap(), Some((&cert, &key))),
    );
    // The right CA but no client certificate: etcd refuses the handshake.
    let no_cert = config_coord(&nodes, &etcd.endpoint(), &name, "", &tls_line(&ca, None));
    let (_wrong, wrong_http) = Proxy::start_with_http(cluster.clone(), &wrong_ca).await;
    let (_anonymous, anonymous_http) = Proxy::start_with_http(cluster.clone(), &no_cert).await;
    // Several reconnection attempts (one every half second) fail.
    tokio::join!(
        never_connects(wrong_http, 4),
        never_connects(anonymous_http, 4)
    );
    // They never published a view: the two good proxies count only each other.
    for (_, http) in &all {
        let s = status(*http).await["coordination"].clone();
        assert_eq!(s["proxies"], 2, "{s}");
        assert_eq!(
            s["leader_id"],
            status(all[leader].1).await["coordination"]["proxy"]
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_authentication_only_the_right_password_joins() {
    use etcd_client::Permission;
    let cluster = common::cluster();
    let etcd = start_etcd().await;
    // A user allowed only the keys under the default prefix, then
    // authentication on (etcd needs root to exist first).
    let mut admin = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    admin.user_add("root", "root-pw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("switchyard").await.unwrap();
    admin
        .role_grant_permission(
            "switchyard",
            Permission::read_write("/switchyard/").with_prefix(),
        )
        .await
        .unwrap();
    admin.user_add("sy", "sy-pw", None).await.unwrap();
    admin.user_grant_role("sy", "switchyard").await.unwrap();
    admin.auth_enable().await.unwrap();

    let name = common::unique("auth");
    let nodes = cluster.nodes();
    let with = |user: &str, pw: &str| {
        let login = format!("username = {user:?}\npassword = {pw:?}\n");
        config_coord(&nodes, &etcd.endpoint(), &name, "", &login)
    };
    let all = proxies(&cluster, &with("sy", "sy-pw"), 2).await;
    settled(&all).await;

    let (_wrong, wrong_http) = Proxy::start_with_http(cluster.clone(), &with("sy", "nope")).await;
    let anonymous = config(&cluster, &etcd.endpoint(), &name, "");
    let (_anonymous, anonymous_http) = Proxy::start_with_http(cluster.clone(), &anonymous).await;
    tokio::join!(
        never_connects(wrong_http, 4),
        never_connects(anonymous_http, 4)
    );
    for (_, http) in &all {
        assert_eq!(status(*http).await["coordination"]["proxies"], 2);
    }
    drop(etcd);
}

/// The harness's etcd starts even when the port it picked is taken before
/// etcd binds it: `free_port` finds a port free but cannot hold it, and the
/// tests beside this one bind ports too (a CI run failed so, with
/// "bind: address already in use").
#[test]
fn the_harness_etcd_moves_to_other_ports_when_its_own_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let etcd = Etcd::start_preferring(port);
    assert_ne!(etcd.client_port(), port);
    assert!(etcd.healthy(), "etcd answers on {}", etcd.endpoint());
}
