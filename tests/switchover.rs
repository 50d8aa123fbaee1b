//! Hardware probes and planned switchover with real servers and a real HTTP
//! exporter: a degraded PSU moves the primary with no client error under a
//! steady load; failing hardware, and a power loss (the host hangs while its
//! BMC reports the chassis off), fail over at once without a switchover; a
//! probe flapping between ok and failing promotes once; a failing replica
//! only leaves read routing; a primary that hangs during a switchover is
//! failed over; an unreachable probe changes nothing; command probes map
//! exit codes; and admin `SWITCHOVER` loses no acknowledged commit while the
//! old primary takes no further writes. Every test starts its own cluster,
//! since it moves the primary.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::hardware::{exposition, powered_off, Exporter, Frozen};
use common::switching::{
    admin, assert_nothing_lost, count, create_table, has, moved_under_load, node_column, port_of,
    timeline, try_port_of, values, Workload,
};
use common::{
    direct_client, http_request, private_pair as start_pair, sqlstate, unique,
    wait_until as eventually, Proxy, USERS,
};
use switchyard::local_cluster::{LocalCluster, PgNode, StopMode, CLUSTER_PASSWORD, CLUSTER_USER};
use tokio::net::TcpListener;
use tokio_postgres::{Client, SimpleQueryMessage};

/// The proxy configuration: nodes `db1` (primary, with `primary_hw`) and
/// `db2` (replica, with `replica_hw`), plus `extra` lines in `[failover]`
/// (and sections after it).
fn config(
    primary: &PgNode,
    replica: &PgNode,
    primary_hw: &str,
    replica_hw: &str,
    extra: &str,
) -> String {
    config_of(&[(primary, primary_hw), (replica, replica_hw)], extra)
}

/// As [`config`] for any nodes, named `db1`, `db2`, ... in order.
fn config_of(nodes: &[(&PgNode, &str)], extra: &str) -> String {
    let node = |i: usize, n: &PgNode, hw: &str| {
        let hw = if hw.is_empty() {
            String::new()
        } else {
            format!(", hardware = {{ {hw} }}")
        };
        format!("{{ name = \"db{}\", addr = \"{}\"{hw} }}", i + 1, n.addr())
    };
    let nodes: Vec<String> = nodes
        .iter()
        .enumerate()
        .map(|(i, (n, hw))| node(i, n, hw))
        .collect();
    format!(
        "{USERS}\n[failover]\nhold_timeout = \"20s\"\n{extra}\n[cluster]\nnodes = [{}]\nuser = \"{CLUSTER_USER}\"\npassword = \"{CLUSTER_PASSWORD}\"\n",
        nodes.join(", ")
    )
}

/// A cluster of its own with two replicas: the cluster, primary, replicas.
async fn start_trio() -> (Arc<LocalCluster>, PgNode, PgNode, PgNode) {
    let cluster = common::private_trio().await;
    let (p, r) = (cluster.primary().clone(), cluster.replicas().to_vec());
    (cluster, p, r[0].clone(), r[1].clone())
}

/// Runs `sql` on a node directly (psql over its unix socket). Never on a
/// frozen node: psql would hang.
async fn psql(node: &PgNode, sql: &str) -> String {
    let (n, sql) = (node.clone(), sql.to_string());
    tokio::task::spawn_blocking(move || n.psql("app", &sql))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("psql on {}: {e}", node.name()))
}

/// Commits wait for `replica` (synchronous replication, set on both nodes as
/// a copied configuration would be): no acknowledged commit can be lost.
async fn synchronous_replication(primary: &PgNode, replica: &PgNode) {
    let standby = replica.name().to_string();
    for node in [primary, replica] {
        psql(
            node,
            &format!(
                "ALTER SYSTEM SET synchronous_standby_names = '{standby}';
                 ALTER SYSTEM SET synchronous_commit = 'on';
                 SELECT pg_reload_conf();"
            ),
        )
        .await;
    }
    let sql =
        format!("SELECT sync_state FROM pg_stat_replication WHERE application_name = '{standby}'");
    eventually(10, "a synchronous standby", || async {
        psql(primary, &sql).await == "sync"
    })
    .await;
}

/// A proxy whose db1 probe has read `ok`, with its admin console, one client
/// and a fresh table.
struct Probed {
    proxy: Proxy,
    http: SocketAddr,
    admin: Client,
    client: Client,
    table: String,
}

impl Probed {
    async fn start(cluster: &Arc<LocalCluster>, toml: &str) -> Probed {
        let (proxy, http) = Proxy::start_with_http(cluster.clone(), toml).await;
        let admin = admin(&proxy).await;
        let client = proxy.client().await;
        let table = create_table(&client).await;
        eventually(10, "hardware ok", || async {
            node_column(&admin, "db1", "hardware").await == "ok"
        })
        .await;
        Probed {
            proxy,
            http,
            admin,
            client,
            table,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_psu_moves_the_primary_without_client_errors() {
    let (cluster, primary, replica) = start_pair().await;
    let exporter = Exporter::start(&exposition(0, 45)).await;
    let toml = config(
        &primary,
        &replica,
        &exporter.spec(),
        "",
        "switchover_on_degraded = true\n",
    );
    let Probed { proxy, http, .. } = Probed::start(&cluster, &toml).await;
    let degrade = async { exporter.set(&exposition(1, 45)) };
    let status = moved_under_load(&proxy, http, (&primary, &replica), "degraded", degrade).await;
    assert_eq!(status["nodes"][0]["hardware"], "degraded");
    assert!(status["nodes"][0]["hardware_reasons"][0]
        .as_str()
        .unwrap()
        .contains("PS1 Status"));
    let (_, metrics) = http_request(http, "GET", "/metrics").await;
    assert!(
        metrics.contains("switchyard_node_hardware_status{node=\"db1\",status=\"degraded\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_switchovers_total 1"),
        "{metrics}"
    );
    let (_, events) = http_request(http, "GET", "/events").await;
    for kind in [
        "hardware_degraded",
        "switchover_started",
        "switchover_step",
        "writes_resumed",
    ] {
        assert!(events.contains(kind), "{kind} missing: {events}");
    }
    // A node that still works is moved cooperatively, never failed over.
    let events = timeline(http).await;
    assert_eq!(count(&events, "failover_started"), 0, "{events:?}");
    assert_eq!(count(&events, "switchover_failed"), 0, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_hardware_fails_over_at_once_and_an_unreachable_probe_changes_nothing() {
    let (cluster, primary, replica) = start_pair().await;
    let exporter = Exporter::start(&exposition(0, 45)).await;
    // db2's probe points at a port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let unreachable = format!("url = \"http://{closed}/metrics\", interval = \"200ms\", timeout = \"500ms\", rules = [ {{ metric = \"up\", op = \"==\", value = 0, status = \"failing\" }} ]");
    let toml = config(&primary, &replica, &exporter.spec(), &unreachable, "");
    let (proxy, http) = Proxy::start_with_http(cluster.clone(), &toml).await;
    let admin = admin(&proxy).await;
    let c = proxy.client().await;
    let table = create_table(&c).await;
    eventually(10, "probes read", || async {
        node_column(&admin, "db1", "hardware").await == "ok"
    })
    .await;
    assert_eq!(node_column(&admin, "db2", "hardware").await, "unknown");
    let events = admin.simple_query("SHOW EVENTS").await.unwrap();
    assert!(events
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(2) == Some("hardware_unknown"))));
    // Unknown hardware is not a reason to move anything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(port_of(&c).await, primary.port());
    assert_eq!(node_column(&admin, "db2", "role").await, "replica");

    c.batch_execute(&format!("INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    let failing = Instant::now();
    exporter.set(&exposition(0, 97));
    eventually(15, "failover after failing hardware", || async {
        node_column(&admin, "db2", "role").await == "primary"
    })
    .await;
    let took = failing.elapsed();
    // The database never died: only the probe said so.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    c.batch_execute(&format!("INSERT INTO {table} VALUES (2)"))
        .await
        .expect("writes on the new primary");
    assert_eq!(port_of(&c).await, replica.port());
    assert_eq!(
        values(&direct_client(replica.port()).await, &table).await,
        HashSet::from([1, 2])
    );
    // Failing means gone: nothing cooperative was asked of it.
    let events = timeline(http).await;
    assert_eq!(count(&events, "switchover_started"), 0, "{events:?}");
    assert!(has(&events, "failover_started", "db1"), "{events:?}");
    assert!(has(&events, "promoting", "db2"), "{events:?}");
    // The old primary still answered, so the candidate was given the chance
    // to replay all it flushed first (whether that fit in the bound depends
    // on this machine's load; the values above are what a user checks).
    assert!(
        events.iter().any(|(k, n, m)| n == "db2"
            && ((k == "candidate_chosen" && m.starts_with("caught up"))
                || (k == "action_failed" && m.starts_with("catch-up")))),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_fails_over_without_attempting_a_switchover() {
    let (cluster, primary, replica) = start_pair().await;
    synchronous_replication(&primary, &replica).await;
    let exporter = Exporter::start(&exposition(0, 45)).await;
    // Even with degraded switchovers on: a host that is off is not moved
    // cooperatively.
    let toml = config(
        &primary,
        &replica,
        &exporter.spec(),
        "",
        "switchover_on_degraded = true\n",
    );
    let Probed {
        proxy,
        http,
        admin,
        client: setup,
        table,
    } = Probed::start(&cluster, &toml).await;
    let load = Workload::start(&proxy, &table, 4).await;
    tokio::time::sleep(Duration::from_millis(700)).await;

    // The host loses power: everything on it stops where it is, and its
    // BMC, on standby power, reports the chassis off.
    let frozen = Frozen::freeze(&primary);
    exporter.set(&powered_off());
    eventually(20, "writes on db2", || async {
        node_column(&admin, "db2", "role").await == "primary"
            && port_of(&setup).await == replica.port()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acked, errors) = load.finish().await;

    // Statements in flight on the dead host fail with the failover errors;
    // nothing acknowledged is lost.
    let unexpected: Vec<_> = errors
        .iter()
        .filter(|e| !e.contains("08006") && !e.contains("08007"))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    let on_new = values(&direct_client(replica.port()).await, &table).await;
    let missing: Vec<_> = acked.iter().filter(|v| !on_new.contains(v)).collect();
    assert!(missing.is_empty(), "acknowledged commits lost: {missing:?}");

    let events = timeline(http).await;
    for kind in ["switchover_started", "switchover_step", "switchover_failed"] {
        assert_eq!(count(&events, kind), 0, "{kind}: {events:?}");
    }
    assert!(has(&events, "hardware_failing", "db1"), "{events:?}");
    assert!(has(&events, "failover_started", "db1"), "{events:?}");
    assert!(has(&events, "node_fenced", "db1"), "{events:?}");
    assert_eq!(count(&events, "promoting"), 1, "{events:?}");
    assert!(has(&events, "writes_resumed", "db2"), "{events:?}");
    drop(frozen);
}

/// A power loss with a slow hardware probe (a reading a minute, longer
/// than this test): the primary's silence is evidence of its own, so the
/// readings that confirm the BMC's first `failing` one are asked for while
/// its health checks run late, not taken an interval apart. Before, the
/// confirmations waited two intervals (ten seconds with the default 5 s),
/// and the failover came from the witness rule's keepalive wait instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_primary_has_its_failing_readings_confirmed_without_waiting_intervals() {
    let (cluster, primary, replica) = start_pair().await;
    let exporter = Exporter::start(&exposition(0, 45)).await;
    let spec = exporter
        .spec()
        .replace("interval = \"200ms\"", "interval = \"60s\"");
    assert!(spec.contains("60s"), "{spec}");
    let toml = config(&primary, &replica, &spec, "", "");
    let Probed {
        proxy: _proxy,
        http,
        admin,
        client: c,
        table: _,
    } = Probed::start(&cluster, &toml).await;

    let frozen = Frozen::freeze(&primary);
    exporter.set(&powered_off());
    eventually(20, "writes on db2", || async {
        node_column(&admin, "db2", "role").await == "primary" && port_of(&c).await == replica.port()
    })
    .await;
    // A transaction id is only given out where writes are taken.
    c.batch_execute("SELECT txid_current()")
        .await
        .expect("writes on the new primary");
    let events = timeline(http).await;
    assert!(has(&events, "hardware_failing", "db1"), "{events:?}");
    assert!(has(&events, "node_fenced", "db1"), "{events:?}");
    assert_eq!(count(&events, "switchover_started"), 0, "{events:?}");
    drop(frozen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_flapping_between_ok_and_failing_promotes_once() {
    let (cluster, primary, r1, r2) = start_trio().await;
    let exporter = Exporter::start(&exposition(0, 45)).await;
    // Every reading in force at once: with the default three in a row, a
    // reading that flips every 150 ms would never fail anything over.
    let spec = format!("{}, failing_after = 1", exporter.spec());
    let toml = config_of(&[(&primary, &spec), (&r1, ""), (&r2, "")], "");
    let Probed {
        proxy: _proxy,
        http,
        admin: _admin,
        client: c,
        table,
    } = Probed::start(&cluster, &toml).await;

    // A loose sensor: the reading flips every 150 ms for three seconds, on
    // both sides of whatever the failover does meanwhile.
    for i in 0..20 {
        let temp = if i % 2 == 0 { 97 } else { 45 };
        exporter.set(&exposition(0, temp));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    exporter.set(&exposition(0, 45));
    // A failover (the hardware fails): a poll in flight may get 08007.
    eventually(20, "a replica took writes", || async {
        let port = try_port_of(&c).await;
        port == Some(r1.port()) || port == Some(r2.port())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let events = timeline(http).await;
    assert_eq!(count(&events, "promoting"), 1, "{events:?}");
    assert_eq!(count(&events, "switchover_started"), 0, "{events:?}");
    let mut primaries = 0;
    for node in [&r1, &r2] {
        let recovery = psql(node, "SELECT pg_is_in_recovery()").await;
        primaries += usize::from(recovery == "f");
    }
    assert_eq!(primaries, 1, "exactly one replica was promoted");
    // The old primary, its hardware ok again, stays fenced.
    c.batch_execute(&format!("INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    assert_ne!(port_of(&c).await, primary.port());
    assert_eq!(
        psql(&primary, &format!("SELECT count(*) FROM {table}")).await,
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_replica_only_leaves_read_routing() {
    let (cluster, primary, replica) = start_pair().await;
    let exporter = Exporter::start(&exposition(0, 45)).await;
    let toml = config(
        &primary,
        &replica,
        "",
        &exporter.spec(),
        "[databases.ro]\ndbname = \"app\"\ntarget = \"replica\"\n",
    );
    let (proxy, http) = Proxy::start_with_http(cluster.clone(), &toml).await;
    let admin = admin(&proxy).await;
    let rw = proxy.client().await;
    let ro = proxy.client_as("app", "app", "ro").await.unwrap();
    eventually(10, "reads on the replica", || async {
        node_column(&admin, "db2", "hardware").await == "ok" && port_of(&ro).await == replica.port()
    })
    .await;

    exporter.set(&exposition(0, 97));
    eventually(10, "reads on the primary", || async {
        port_of(&ro).await == primary.port()
    })
    .await;
    assert_eq!(port_of(&rw).await, primary.port());
    assert_eq!(node_column(&admin, "db2", "role").await, "replica");

    exporter.set(&exposition(0, 45));
    eventually(10, "reads back on the replica", || async {
        port_of(&ro).await == replica.port()
    })
    .await;
    let events = timeline(http).await;
    assert!(has(&events, "hardware_failing", "db2"), "{events:?}");
    for kind in [
        "failover_started",
        "switchover_started",
        "promoting",
        "node_fenced",
    ] {
        assert_eq!(count(&events, kind), 0, "{kind}: {events:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_hangs_during_a_switchover_is_failed_over() {
    let (cluster, primary, replica) = start_pair().await;
    // A keepalive every 2 s: a hung primary looks like a live, idle one cut
    // off from the proxy until its replica could have heard one (with
    // PostgreSQL's defaults, 30 s).
    psql(
        &primary,
        "ALTER SYSTEM SET wal_sender_timeout = '4s'; SELECT pg_reload_conf();",
    )
    .await;
    let exporter = Exporter::start(&exposition(0, 45)).await;
    // A long drain: the switchover is still waiting for a transaction when
    // the primary hangs.
    let toml = config(
        &primary,
        &replica,
        &exporter.spec(),
        "",
        "switchover_on_degraded = true\n[switchover]\ndrain_timeout = \"60s\"\n",
    );
    let Probed {
        proxy,
        http,
        admin,
        client: setup,
        table,
    } = Probed::start(&cluster, &toml).await;
    // Async replication: wait for the table to reach the replica.
    let check = format!("SELECT to_regclass('{table}') IS NOT NULL");
    eventually(10, "the table on the replica", || async {
        psql(&replica, &check).await == "t"
    })
    .await;
    let open = proxy.client().await;
    open.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();

    exporter.set(&exposition(1, 45));
    eventually(10, "the switchover to start draining", || async {
        count(&timeline(http).await, "switchover_started") == 1
    })
    .await;
    let frozen = Frozen::freeze(&primary);
    // Well within the drain timeout: the switchover gave up on the hung
    // primary and failed over.
    eventually(20, "writes on db2", || async {
        node_column(&admin, "db2", "role").await == "primary"
            && port_of(&setup).await == replica.port()
    })
    .await;

    let events = timeline(http).await;
    let failed: Vec<_> = events
        .iter()
        .filter(|(k, _, _)| k == "switchover_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert!(failed[0].2.contains("failing over"), "{failed:?}");
    assert!(has(&events, "failover_started", "db1"), "{events:?}");
    assert!(has(&events, "promoting", "db2"), "{events:?}");
    // Nothing was asked of the hung node after it stopped answering.
    let restore = events
        .iter()
        .any(|(k, _, m)| k == "action_failed" && m.contains("writable again"));
    assert!(!restore, "tried to restore a hung primary: {events:?}");
    drop(frozen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_probes_map_exit_codes() {
    let (cluster, primary, replica) = start_pair().await;
    let dir = std::env::temp_dir().join(unique("sy_hw_cmd"));
    std::fs::create_dir_all(&dir).unwrap();
    let status_file = dir.join("status");
    std::fs::write(&status_file, "0").unwrap();
    let cmd = format!(
        "command = \"echo PSU2 reports $(cat {0}); exit $(cat {0})\", interval = \"200ms\", timeout = \"1s\"",
        status_file.display()
    );
    let proxy = Proxy::start_with(cluster.clone(), &config(&primary, &replica, "", &cmd, "")).await;
    let admin = admin(&proxy).await;
    for (code, want) in [
        ("0", "ok"),
        ("1", "degraded"),
        ("2", "failing"),
        ("3", "unknown"),
        ("0", "ok"),
    ] {
        std::fs::write(&status_file, code).unwrap();
        eventually(10, &format!("exit {code} -> {want}"), || async {
            node_column(&admin, "db2", "hardware").await == want
        })
        .await;
    }
    // A failing replica is not routed to; the primary never moved.
    assert_eq!(port_of(&proxy.client().await).await, primary.port());
    let _ = std::fs::remove_dir_all(dir);
}

/// `READMIT` of a fenced old primary that is down (being rebuilt) while its
/// health has not gone down yet: what its last check said before the
/// rebuild (primary, on the old timeline) must not fence it again. Only a
/// check after the `READMIT` decides: the same old primary back fences it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readmit_is_judged_on_checks_made_after_it() {
    let (cluster, primary, replica) = start_pair().await;
    // Many failed checks before "down": the stopped node stays usable with
    // its last probe for the whole test, the window a fast rebuild leaves.
    let health = "[health]\ninterval = \"100ms\"\nfailure_threshold = 1000\n";
    let toml = format!("{}{health}", config(&primary, &replica, "", "", ""));
    let proxy = Proxy::start_with(cluster.clone(), &toml).await;
    let admin = admin(&proxy).await;
    eventually(10, "replica seen", || async {
        node_column(&admin, "db2", "role").await == "replica"
    })
    .await;
    admin
        .simple_query("SWITCHOVER TO db2")
        .await
        .expect("switchover");
    assert_eq!(node_column(&admin, "db1", "state").await, "fenced");

    let p = primary.clone();
    tokio::task::spawn_blocking(move || p.stop(StopMode::Fast))
        .await
        .unwrap()
        .unwrap();
    admin.simple_query("READMIT db1").await.expect("readmit");
    // Stopped, it answers no check: nothing new says it is a primary.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_ne!(
        node_column(&admin, "db1", "state").await,
        "fenced",
        "fenced again on a check from before the READMIT"
    );
    // Back unrebuilt, still a primary on the old timeline: fenced again.
    let p = primary.clone();
    tokio::task::spawn_blocking(move || p.start())
        .await
        .unwrap()
        .unwrap();
    eventually(10, "the old primary fenced again", || async {
        node_column(&admin, "db1", "state").await == "fenced"
    })
    .await;
    assert_eq!(node_column(&admin, "db2", "role").await, "primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_switchover_under_load_loses_nothing() {
    let (cluster, primary, replica) = start_pair().await;
    let (proxy, http) =
        Proxy::start_with_http(cluster.clone(), &config(&primary, &replica, "", "", "")).await;
    let admin = admin(&proxy).await;
    let setup = proxy.client().await;
    let table = create_table(&setup).await;
    eventually(10, "replica seen", || async {
        node_column(&admin, "db2", "role").await == "replica"
    })
    .await;
    // A target that does not exist: refused, nothing moves.
    let (code, body) = http_request(http, "POST", "/switchover?to=nope").await;
    assert_eq!(code, 409, "{body}");

    let load = Workload::start(&proxy, &table, 8).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let rows = admin
        .simple_query("SWITCHOVER TO db2")
        .await
        .expect("switchover");
    assert!(rows
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(_))));
    let old_rows = values(&direct_client(primary.port()).await, &table)
        .await
        .len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (acked, errors) = load.finish().await;
    assert_nothing_lost(&replica, &primary, &table, &acked, &errors, old_rows).await;
    assert_eq!(port_of(&setup).await, replica.port());
    // The old primary is read-only and fenced; with it gone there is no
    // replica left to switch to.
    let old = direct_client(primary.port()).await;
    let ro = old
        .simple_query("SHOW default_transaction_read_only")
        .await
        .unwrap();
    assert!(matches!(&ro[1], SimpleQueryMessage::Row(r) if r.get(0) == Some("on")));
    let e = admin.simple_query("SWITCHOVER").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("55000"), "{e:?}");
    // The write pause is on the timeline.
    let events = admin.simple_query("SHOW EVENTS").await.unwrap();
    let pause = events.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) if r.get(4).is_some_and(|m| m.contains("write pause")) => {
            r.get(4).map(str::to_string)
        }
        _ => None,
    });
    assert!(pause.is_some(), "no write pause recorded");
    // Writers that came during the pause were held, and the time writes
    // were unavailable is within the pause (give or take the wake-up of a
    // held request; not the new server connection it opens next).
    let (_, text) = http_request(http, "GET", "/metrics").await;
    let m = switchyard::cluster::hardware::exposition::parse(&text).unwrap();
    let metric = |name: &str| m.iter().find(|s| s.name == name).map_or(0.0, |s| s.value);
    let held = metric("switchyard_held_query_duration_seconds_count");
    assert!(held >= 1.0, "no request was held:\n{text}");
    let unavailable = metric("switchyard_write_unavailable_seconds_total");
    let pause = metric("switchyard_last_switchover_pause_seconds");
    assert!(
        unavailable > 0.0 && unavailable <= pause + 0.1,
        "writes unavailable {unavailable} s, pause {pause} s"
    );
    assert!(metric("switchyard_held_query_duration_seconds_sum") <= held * (pause + 0.1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_switchover_with_synchronous_replication_writes_do_not_wait_for_a_standby() {
    let (cluster, primary, replica) = start_pair().await;
    synchronous_replication(&primary, &replica).await;
    let toml = config(&primary, &replica, "", "", "");
    let (proxy, http) = Proxy::start_with_http(cluster.clone(), &toml).await;
    let admin = admin(&proxy).await;
    let setup = proxy.client().await;
    let table = create_table(&setup).await;
    eventually(10, "replica seen", || async {
        node_column(&admin, "db2", "role").await == "replica"
    })
    .await;
    let load = Workload::start(&proxy, &table, 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    admin
        .simple_query("SWITCHOVER TO db2")
        .await
        .expect("switchover");
    let old_rows = values(&direct_client(primary.port()).await, &table)
        .await
        .len();
    // The new primary inherited synchronous_standby_names, and its only
    // standby is now the fenced old primary: with sync_policy =
    // availability the setting is cleared, or every commit would wait.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (acked, errors) = load.finish().await;
    assert_nothing_lost(&replica, &primary, &table, &acked, &errors, old_rows).await;
    let events = timeline(http).await;
    assert!(has(&events, "sync_standby_cleared", "db2"), "{events:?}");
}

/// Whether `node` is in recovery (a replica), asked directly.
async fn in_recovery(node: &PgNode) -> bool {
    psql(node, "SELECT pg_is_in_recovery()").await == "t"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_reading_moves_nothing_and_sustained_failing_fails_over() {
    let (cluster, primary, replica) = start_pair().await;
    let exporter = Exporter::start(&exposition(0, 45)).await;
    let toml = config(&primary, &replica, &exporter.spec(), "", "");
    let Probed {
        proxy: _proxy,
        http,
        admin,
        client: c,
        table,
    } = Probed::start(&cluster, &toml).await;

    // One scrape says the CPU is past critical (a spoofed or glitching
    // exporter), the next ones say all is well.
    exporter.serve_times(&exposition(0, 97), 1);
    eventually(10, "the failing reading served", || async {
        exporter.served_all()
    })
    .await;
    // Ten probe intervals of ok readings.
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.batch_execute(&format!("INSERT INTO {table} VALUES (1)"))
        .await
        .expect("writes on the old primary");
    assert_eq!(port_of(&c).await, primary.port());
    assert_eq!(node_column(&admin, "db1", "role").await, "primary");
    assert_ne!(node_column(&admin, "db1", "state").await, "fenced");
    assert_eq!(node_column(&admin, "db1", "hardware").await, "ok");
    assert!(in_recovery(&replica).await, "the replica was promoted");
    let events = timeline(http).await;
    for kind in [
        "hardware_failing",
        "failover_started",
        "promoting",
        "node_fenced",
    ] {
        assert_eq!(count(&events, kind), 0, "{kind}: {events:?}");
    }

    // Failing on every reading: three in a row are enough.
    exporter.set(&exposition(0, 97));
    eventually(15, "failover after sustained failing readings", || async {
        node_column(&admin, "db2", "role").await == "primary" && port_of(&c).await == replica.port()
    })
    .await;
    c.batch_execute(&format!("INSERT INTO {table} VALUES (2)"))
        .await
        .expect("writes on the new primary");
    let events = timeline(http).await;
    assert!(has(&events, "hardware_failing", "db1"), "{events:?}");
    assert!(has(&events, "failover_started", "db1"), "{events:?}");
    assert_eq!(node_column(&admin, "db1", "state").await, "fenced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardware_moves_the_primary_at_most_once_per_min_interval() {
    let (cluster, primary, r1, r2) = start_trio().await;
    let nodes = [&primary, &r1, &r2];
    let mut exporters = vec![];
    for _ in &nodes {
        exporters.push(Exporter::start(&exposition(0, 45)).await);
    }
    let specs: Vec<String> = exporters.iter().map(Exporter::spec).collect();
    let toml = config_of(
        &[(&primary, &specs[0]), (&r1, &specs[1]), (&r2, &specs[2])],
        "switchover_on_degraded = true\n[switchover]\nmin_interval = \"20s\"\n",
    );
    let Probed {
        proxy: _proxy,
        http,
        admin,
        client: c,
        table,
    } = Probed::start(&cluster, &toml).await;
    let name = |i: usize| format!("db{}", i + 1);

    // The first hardware failure moves the primary.
    exporters[0].set(&exposition(0, 97));
    // A failover (the hardware fails): a poll in flight may get 08007.
    eventually(20, "a replica took writes", || async {
        let port = try_port_of(&c).await;
        port == Some(r1.port()) || port == Some(r2.port())
    })
    .await;
    let port = port_of(&c).await;
    let moved = nodes.iter().position(|n| n.port() == port).unwrap();
    let other = 3 - moved;

    // The second one, within min_interval: degraded, then failing. Neither
    // moves the primary again; each says why.
    exporters[moved].set(&exposition(1, 45));
    eventually(10, "the degraded switchover held", || async {
        count(&timeline(http).await, "hardware_move_held") == 1
    })
    .await;
    exporters[moved].set(&exposition(0, 97));
    eventually(10, "the failover held", || async {
        count(&timeline(http).await, "hardware_move_held") == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.batch_execute(&format!("INSERT INTO {table} VALUES (1)"))
        .await
        .expect("writes on the second primary");
    assert_eq!(port_of(&c).await, nodes[moved].port());
    assert!(in_recovery(nodes[other]).await, "promoted a second time");
    assert_ne!(node_column(&admin, &name(moved), "state").await, "fenced");
    let events = timeline(http).await;
    assert_eq!(count(&events, "promoting"), 1, "{events:?}");
    assert_eq!(count(&events, "switchover_started"), 0, "{events:?}");
    let held: Vec<_> = events
        .iter()
        .filter(|(k, _, _)| k == "hardware_move_held")
        .collect();
    assert!(
        held.iter()
            .all(|(_, n, m)| *n == name(moved) && m.contains("min_interval")),
        "{held:?}"
    );

    // Once min_interval has passed, the failing hardware counts again.
    eventually(40, "the third node took writes", || async {
        try_port_of(&c).await == Some(nodes[other].port())
    })
    .await;
    assert_eq!(count(&timeline(http).await, "promoting"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_probes_check_the_exporter_certificate_and_send_their_credentials() {
    use base64::Engine;
    let (cluster, primary, replica) = start_pair().await;
    let ca = common::certs::Ca::new("exporter CA");
    let (cert, key) = ca.leaf(&["127.0.0.1"], "exporter", false);
    let dir = std::env::temp_dir().join(unique("sy_hw_tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let other_ca = dir.join("other-ca.pem");
    std::fs::write(&other_ca, common::certs::Ca::new("someone else").pem).unwrap();
    let token = "t0ken-XYZ-1";
    let basic = base64::engine::general_purpose::STANDARD.encode("probe:pa55-word");
    let bearer_exporter =
        Exporter::start_tls(&exposition(0, 45), &cert, &key, &format!("Bearer {token}")).await;
    let basic_exporter =
        Exporter::start_tls(&exposition(1, 45), &cert, &key, &format!("Basic {basic}")).await;
    let with = |e: &Exporter, ca: &std::path::Path, auth: &str| {
        format!("{}, ca_file = \"{}\", {auth}", e.spec(), ca.display())
    };

    // The right CA and credentials: each node reads its own exporter.
    let toml = config(
        &primary,
        &replica,
        &with(&bearer_exporter, &ca_file, &format!("token = \"{token}\"")),
        &with(
            &basic_exporter,
            &ca_file,
            "username = \"probe\", password = \"pa55-word\"",
        ),
        "",
    );
    let (proxy, _) = Proxy::start_with_http(cluster.clone(), &toml).await;
    let console = admin(&proxy).await;
    eventually(10, "both exporters read", || async {
        node_column(&console, "db1", "hardware").await == "ok"
            && node_column(&console, "db2", "hardware").await == "degraded"
    })
    .await;
    drop((console, proxy));

    // A wrong token is refused by the exporter; a certificate from another
    // CA is refused by the proxy. Neither secret shows anywhere.
    let toml = config(
        &primary,
        &replica,
        &with(&bearer_exporter, &ca_file, "token = \"wr0ng-t0ken\""),
        &with(
            &basic_exporter,
            &other_ca,
            "username = \"probe\", password = \"pa55-word\"",
        ),
        "",
    );
    let (proxy, http) = Proxy::start_with_http(cluster.clone(), &toml).await;
    let console = admin(&proxy).await;
    // Until its probe has answered, a node's hardware is "unknown" too, for
    // that reason: the probes' own reasons are waited for.
    let reason = |v: &serde_json::Value, i: usize| {
        v["nodes"][i]["hardware_reasons"][0]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    eventually(10, "both probes refused", || async {
        let (_, status) = http_request(http, "GET", "/status").await;
        let v: serde_json::Value = serde_json::from_str(&status).unwrap();
        reason(&v, 0).contains("HTTP status 401") && reason(&v, 1).contains("certificate")
    })
    .await;
    assert_eq!(node_column(&console, "db1", "hardware").await, "unknown");
    assert_eq!(node_column(&console, "db2", "hardware").await, "unknown");
    let (_, status) = http_request(http, "GET", "/status").await;
    let (_, events) = http_request(http, "GET", "/events").await;
    for secret in ["wr0ng-t0ken", "pa55-word", basic.as_str()] {
        assert!(
            !status.contains(secret) && !events.contains(secret),
            "{secret} leaked"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
