//! Faults around proxies that coordinate through etcd: one proxy cut off
//! from the primary, replicas tied on WAL position, an etcd member lost in
//! the middle of a failover. Three proxies in this process, a real
//! PostgreSQL primary with two streaming replicas, real etcd. What is
//! checked is what a user would: how many nodes left recovery, where the
//! writes of each proxy land, and that every acknowledged write is on the
//! new primary.
//!
//! `SWITCHYARD_TIE_ROUNDS` sets how many crashes
//! `replicas_at_the_same_position_get_exactly_one_promotion_round_after_round`
//! runs (default 20; one round, a fresh cluster included, takes about 4 s).
//! A quicker local run:
//!
//! ```sh
//! SWITCHYARD_TIE_ROUNDS=3 cargo test --test coordination_faults -- replicas_at_the_same_position
//! ```

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::coord::{
    every_proxy_writes_to_one_node, exactly_one_promoted, in_recovery, port_of, promoted,
    promotions, proxies, psql, readyz, replicated, settled, start_etcd, status, stop, three_nodes,
    values_on, write_lands, Toml,
};
use common::etcd::EtcdCluster;
use common::relay::Relay;
use common::Proxy;
use switchyard::local_cluster::{LocalCluster, CLUSTER_PASSWORD, CLUSTER_USER};

/// Held writes fail after this: short, so a held write answers within the test.
const HOLD: &str = "[failover]\nhold_timeout = \"3s\"\n";

/// Waits until `/status` of `http` says why it holds back (`coordination.held`)
/// and the reason contains `what`.
async fn held_for(http: SocketAddr, what: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = status(http).await["coordination"].clone();
        if let Some(why) = s["held"].as_str().filter(|w| w.contains(what)) {
            return why.to_string();
        }
        assert!(Instant::now() < deadline, "not held for {what:?}: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_primary_holds_its_writes_and_nobody_fails_over() {
    let cluster = three_nodes().await;
    let etcd = start_etcd().await;
    let primary = cluster.primary().clone();
    let table = common::unique("cut");
    // The cut-off proxy logs in with roles of its own, so the relay can cut
    // its path alone (see common::relay); the table is everyone's.
    psql(
        &primary,
        &format!(
            "CREATE ROLE far_sy LOGIN SUPERUSER PASSWORD 'far_sy';\n\
             CREATE ROLE far LOGIN PASSWORD 'far';\n\
             CREATE TABLE {table} (v int);\n\
             GRANT ALL ON {table} TO PUBLIC;"
        ),
    )
    .await
    .unwrap();
    replicated(&cluster, &table, 0).await;
    // Every proxy reaches the primary through the relay: they must list the
    // same address for it.
    let relay = Relay::start(&primary.addr()).await;
    let name = common::unique("cut");
    let base = |extra, login| {
        let mut t = Toml {
            extra,
            login,
            ..Toml::new(&cluster.nodes(), &etcd.endpoint(), &name)
        };
        t.nodes[0].1 = relay.addr.to_string();
        t.render()
    };
    let far_extra = format!("[[users]]\nname = \"far\"\npassword = \"far\"\n{HOLD}");
    let far_toml = base(&far_extra, ("far_sy", "far_sy"));
    let near_toml = base(HOLD, (CLUSTER_USER, CLUSTER_PASSWORD));

    // The proxy about to be cut off leads: the leader is the one that could
    // promote, so it is the one the quorum must hold back. It starts alone
    // and takes the leader key before the others join.
    let mut all = vec![Proxy::start_with_http(cluster.clone(), &far_toml).await];
    assert_eq!(settled(&all).await, 0);
    all.extend(proxies(&cluster, &near_toml, 2).await);
    assert_eq!(settled(&all).await, 0, "the first proxy still leads");
    let far_http = all[0].1;
    let far = all[0].0.client_as("far", "far", "app").await.unwrap();
    let near = [all[1].0.client().await, all[2].0.client().await];
    let mut acked = BTreeSet::new();
    for (v, c) in [(0, &far), (1, &near[0]), (2, &near[1])] {
        assert_eq!(write_lands(c, &table, v, 5).await, primary.port());
        acked.insert(v);
    }

    relay.cut(&["far_sy", "far"]).await;
    let cut = Instant::now();
    // A write through the cut-off proxy is held (no primary it can reach),
    // then refused once hold_timeout runs out.
    let through_far = async {
        let sql = format!("INSERT INTO {table} VALUES (-1)");
        tokio::time::timeout(Duration::from_secs(20), far.batch_execute(&sql)).await
    };
    // Meanwhile: the cut-off leader says why it does not fail over, is not
    // ready, and for a few failover windows (a crash is replaced in about
    // 2 s here) the others keep writing on the primary and nobody promotes.
    let meanwhile = async {
        let why = held_for(far_http, "no majority", 15).await;
        let (code, body) = readyz(far_http).await;
        let mut written = vec![];
        let mut v = 100;
        while cut.elapsed() < Duration::from_secs(10) {
            for c in &near {
                c.batch_execute(&format!("INSERT INTO {table} VALUES ({v})"))
                    .await
                    .expect("a write through a proxy that reaches the primary");
                assert_eq!(port_of(c).await.unwrap(), primary.port());
                written.push(v);
                v += 1;
            }
            for r in cluster.replicas() {
                assert!(
                    in_recovery(r).await,
                    "{} promoted {:?} after one proxy was cut off",
                    r.name(),
                    cut.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        (why, code, body, written)
    };
    let (far_result, (why, ready_code, ready_body, written)) = tokio::join!(through_far, meanwhile);
    acked.extend(written);
    let refused = far_result.expect("a held write is answered once hold_timeout runs out");
    assert!(
        refused.is_err(),
        "a write through the cut-off proxy succeeded"
    );
    let node = primary.name();
    assert!(
        why.starts_with(&format!("1 of 3 live proxies see {node} down")),
        "{why}"
    );
    assert_eq!(ready_code, 503, "{ready_body}");
    assert!(
        ready_body.contains("no majority"),
        "/readyz says why: {ready_body}"
    );
    for (_, http) in &all[1..] {
        assert_eq!(readyz(*http).await.0, 200);
    }

    // Its path comes back: its writes go to the same primary again.
    relay.restore(&["far_sy", "far"]);
    assert_eq!(write_lands(&far, &table, 1000, 20).await, primary.port());
    acked.insert(1000);
    common::wait_until(10, "the cut-off proxy is ready again", || async {
        readyz(far_http).await.0 == 200 && status(far_http).await["coordination"]["held"].is_null()
    })
    .await;

    assert!(promotions(&all).await.is_empty());
    assert!(promoted(&cluster).await.is_empty());
    let on_primary = values_on(&primary, &table).await;
    assert!(
        acked.is_subset(&on_primary),
        "acknowledged writes missing: {:?}",
        acked.difference(&on_primary).collect::<Vec<_>>()
    );
    assert!(
        !on_primary.contains(&-1),
        "the refused write reached the primary"
    );
    drop(etcd);
}

/// How many crashes the tie test runs (`SWITCHYARD_TIE_ROUNDS`, default 12).
fn tie_rounds() -> usize {
    std::env::var("SWITCHYARD_TIE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

/// Waits until every replica has replayed all the primary had inserted
/// into its WAL when asked: the replicas then stand at the same position,
/// save the proxies' heartbeats written since. The insert position, not the
/// write position: the test cluster runs with `synchronous_commit = off`, so
/// a commit already acknowledged may not be written out yet, and a crash
/// would take it.
async fn caught_up(cluster: &LocalCluster) {
    let lsn = psql(cluster.primary(), "SELECT pg_current_wal_insert_lsn()")
        .await
        .unwrap();
    for r in cluster.replicas() {
        let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
        let deadline = Instant::now() + Duration::from_secs(10);
        while psql(r, &sql).await.as_deref() != Ok("t") {
            assert!(Instant::now() < deadline, "{} did not replay", r.name());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Where each replica's WAL receiver stands.
async fn received(cluster: &LocalCluster) -> Vec<String> {
    let mut out = vec![];
    for r in cluster.replicas() {
        let lsn = psql(r, "SELECT pg_last_wal_receive_lsn()").await;
        out.push(lsn.unwrap_or_else(|e| e));
    }
    out
}

/// One round: a fresh cluster with both replicas caught up, three proxies,
/// a crash; exactly one promotion. Returns where the replicas stood right
/// after the crash.
async fn tie_round(etcd: &str) -> Vec<String> {
    let cluster = three_nodes().await;
    let name = common::unique("tie");
    let toml = Toml::new(&cluster.nodes(), etcd, &name).render();
    let all = proxies(&cluster, &toml, 3).await;
    settled(&all).await;
    let mut clients = vec![];
    for (p, _) in &all {
        clients.push(p.client().await);
    }
    let table = common::unique("tie");
    clients[0]
        .batch_execute(&format!("CREATE TABLE {table} (v int)"))
        .await
        .unwrap();
    // Nothing else is written before the crash.
    caught_up(&cluster).await;

    stop(cluster.primary()).await;
    // Read before the promotion (about a second later) moves one of them.
    let positions = received(&cluster).await;
    let landed = every_proxy_writes_to_one_node(&clients, &table, 0, 30).await;
    let acked: BTreeSet<i32> = (0..clients.len() as i32).collect();
    exactly_one_promoted(&cluster, landed, &table, &acked).await;
    let started = promotions(&all).await;
    assert_eq!(started.len(), 1, "promotions started: {started:?}");
    drop(clients);
    for (p, _) in all {
        p.shutdown().await;
    }
    positions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_at_the_same_position_get_exactly_one_promotion_round_after_round() {
    // One etcd for every round: each round's proxies use a cluster.name of
    // their own, so nothing of a round is seen by the next.
    let etcd = start_etcd().await;
    let rounds = tie_rounds();
    for round in 1..=rounds {
        let started = Instant::now();
        let positions = tie_round(&etcd.endpoint()).await;
        eprintln!(
            "tie round {round}/{rounds}: {:?}, replicas at {positions:?} after the crash",
            started.elapsed()
        );
    }
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_leader_member_killed_as_the_primary_crashes_still_one_promotion() {
    let cluster = three_nodes().await;
    let mut etcd = tokio::task::spawn_blocking(EtcdCluster::start)
        .await
        .unwrap();
    let name = common::unique("members");
    let toml = Toml {
        endpoints: etcd.endpoints(),
        ..Toml::new(&cluster.nodes(), "", &name)
    }
    .render();
    let all = proxies(&cluster, &toml, 3).await;
    settled(&all).await;
    let mut clients = vec![];
    for (p, _) in &all {
        clients.push(p.client().await);
    }
    let table = common::unique("members");
    clients[0]
        .batch_execute(&format!("CREATE TABLE {table} (v int)"))
        .await
        .unwrap();
    let before = every_proxy_writes_to_one_node(&clients, &table, 0, 5).await;
    assert_eq!(before, cluster.primary().port());
    replicated(&cluster, &table, clients.len()).await;

    // The raft leader goes with the primary: the two members left elect
    // another while the proxies renew their leases and the leader proxy
    // records the promotion.
    let member = tokio::task::block_in_place(|| etcd.leader());
    tokio::task::block_in_place(|| etcd.kill(member));
    stop(cluster.primary()).await;
    let landed = every_proxy_writes_to_one_node(&clients, &table, 10, 45).await;
    let acked: BTreeSet<i32> = (0..3).chain(10..13).collect();
    exactly_one_promoted(&cluster, landed, &table, &acked).await;
    // A proxy that came to lead mid-failover may send pg_promote() again,
    // to the same node only.
    let started: BTreeSet<String> = promotions(&all).await.into_iter().collect();
    assert_eq!(started.len(), 1, "promotions started: {started:?}");
    // Two members of three still make a quorum: the proxies agree on a
    // leader again.
    settled(&all).await;
    drop(etcd);
}
