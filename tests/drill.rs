//! `switchyard drill` end to end: the real binary, as a child process,
//! against an in-process proxy in front of a private primary + replica.
//! A switchover there and back, with a real rebuild of each fenced node in
//! between, passes and leaves the cluster as it was; one way with a
//! rebuild leaves no node fenced (the text report); a threshold a
//! switchover cannot meet fails the drill with exit 1 and names it; a real
//! crash of the primary is failed over with no acknowledged commit lost.

mod common;

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use common::switching::{admin, node_column};
use common::{direct_client, private_pair, wait_until, Proxy, USERS};
use serde_json::Value;
use switchyard::local_cluster::{LocalCluster, PgNode, CLUSTER_PASSWORD, CLUSTER_USER};
use tokio_postgres::SimpleQueryMessage;

/// A proxy in front of `db1` (primary) and `db2` (replica), once it has
/// seen both in their roles.
async fn proxy(cluster: &Arc<LocalCluster>, primary: &PgNode, replica: &PgNode) -> Proxy {
    let toml = format!(
        "{USERS}\n[failover]\nhold_timeout = \"20s\"\n[cluster]\nnodes = [\
         {{ name = \"db1\", addr = \"{}\" }}, {{ name = \"db2\", addr = \"{}\" }}]\n\
         user = \"{CLUSTER_USER}\"\npassword = \"{CLUSTER_PASSWORD}\"\n",
        primary.addr(),
        replica.addr()
    );
    let proxy = Proxy::start_with(cluster.clone(), &toml).await;
    let console = admin(&proxy).await;
    wait_until(10, "roles seen", || async {
        node_column(&console, "db1", "role").await == "primary"
            && node_column(&console, "db2", "role").await == "replica"
    })
    .await;
    proxy
}

/// Runs `switchyard drill` against `proxy` with `args` after the URLs
/// (settling 500 ms); its exit code and stdout.
async fn drill(proxy: &Proxy, args: &[&str]) -> (i32, String) {
    let port = proxy.addr.port();
    let url = format!("postgres://app:app@127.0.0.1:{port}/app");
    let admin_url = format!("postgres://admin:adminpw@127.0.0.1:{port}/switchyard");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["drill", "--url", &url, "--admin-url", &admin_url])
        .args(["--settle", "500ms", "--log-level", "warn"])
        .args(args)
        .kill_on_drop(true)
        .output();
    let Output {
        status,
        stdout,
        stderr,
    } = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the drill ends within 60 s")
        .expect("the drill runs");
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    // Shown with --nocapture: the report as a person reads it.
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&stderr));
    (status.code().unwrap_or(-1), stdout)
}

/// The timeline's kinds, in order.
fn kinds(report: &Value) -> Vec<&str> {
    report["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect()
}

/// Whether `table` exists on the node at `port`.
async fn table_exists(port: u16, table: &str) -> bool {
    let c = direct_client(port).await;
    let rows = c
        .simple_query(&format!("SELECT to_regclass('{table}') IS NOT NULL"))
        .await
        .unwrap();
    matches!(&rows[1], SimpleQueryMessage::Row(r) if r.get(0) == Some("t"))
}

/// `command` as the OS user PostgreSQL runs as: the harness runs it as
/// `postgres` when the tests run as root, since PostgreSQL refuses root.
fn as_server_user(command: &str) -> String {
    // SAFETY: geteuid only reads this process's credentials.
    if unsafe { libc::geteuid() } == 0 {
        format!("su postgres -s /bin/sh -c {}", quote(command))
    } else {
        command.to_string()
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A rebuild script for `--rebuild-command`: the node the drill names
/// (`SWITCHYARD_DRILL_NODE`) is stopped, replaced by a base backup of the
/// primary it names (`SWITCHYARD_DRILL_PRIMARY_ADDR`) and started as its
/// replica on its own port, as an operator's `pg_basebackup` would. The
/// test nodes keep their sockets in the data directory, and a base backup
/// copies the socket lock files: those go.
fn rebuild_script(cluster: &LocalCluster, db1: &PgNode, db2: &PgNode) -> String {
    let node = |name: &str, n: &PgNode| {
        format!(
            "  {name}) D={}; PORT={}; LOG={}; APP={} ;;\n",
            quote(&n.data_dir().to_string_lossy()),
            n.port(),
            quote(&n.log_file().to_string_lossy()),
            n.name()
        )
    };
    let script = format!(
        "set -e\ncd /\nB={bin}\ncase \"$SWITCHYARD_DRILL_NODE\" in\n{db1}{db2}  *) exit 3 ;;\nesac\n\
         \"$B/pg_ctl\" -D \"$D\" stop -m fast -w -s\n\
         find \"$D\" -mindepth 1 -delete\n\
         PGPASSWORD=postgres \"$B/pg_basebackup\" -D \"$D\" -R -X stream -c fast --no-sync -w \
         -d \"host=127.0.0.1 port=${{SWITCHYARD_DRILL_PRIMARY_ADDR##*:}} user=postgres application_name=$APP\"\n\
         rm -f \"$D\"/.s.PGSQL.*\n\
         printf \"port = %s\\nunix_socket_directories = '%s'\\n\" \"$PORT\" \"$D\" >> \"$D/postgresql.conf\"\n\
         \"$B/pg_ctl\" -D \"$D\" -l \"$LOG\" start -w -s\n",
        bin = quote(&cluster.bindir().to_string_lossy()),
        db1 = node("db1", db1),
        db2 = node("db2", db2),
    );
    let path = cluster.base_dir().join("rebuild.sh");
    std::fs::write(&path, script).unwrap();
    as_server_user(&format!("sh {}", path.display()))
}

/// Commits wait for `replica` (synchronous replication): the test
/// clusters run with `synchronous_commit = off`, which an immediate stop
/// loses the last commits of; with a synchronous standby no acknowledged
/// commit may be lost, which is what the drill checks.
async fn synchronous(primary: &PgNode, replica: &PgNode) {
    let sql = format!(
        "ALTER SYSTEM SET synchronous_standby_names = '{}'; \
         ALTER SYSTEM SET synchronous_commit = 'on'; SELECT pg_reload_conf();",
        replica.name()
    );
    for node in [primary.clone(), replica.clone()] {
        let sql = sql.clone();
        tokio::task::spawn_blocking(move || node.psql("app", &sql))
            .await
            .unwrap()
            .unwrap();
    }
    let p = primary.clone();
    wait_until(10, "a synchronous standby", || {
        let p = p.clone();
        async move {
            let q = "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'";
            tokio::task::spawn_blocking(move || p.psql("app", q))
                .await
                .unwrap()
                .is_ok_and(|n| n == "1")
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_there_and_back_passes_and_leaves_the_cluster_as_it_was() {
    let (cluster, primary, replica) = private_pair().await;
    let proxy = proxy(&cluster, &primary, &replica).await;
    let rebuild = rebuild_script(&cluster, &primary, &replica);
    let (code, out) = drill(
        &proxy,
        &["--json", "--and-back", "--rebuild-command", &rebuild],
    )
    .await;
    let r: Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(code, 0, "{out}");
    assert_eq!(r["passed"], true);
    assert_eq!(r["exceeded"], Value::Array(vec![]));
    assert_eq!(
        (r["errors"].as_u64(), r["lost"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(r["acked"].as_u64().unwrap() > 0);
    assert!(r["write_pause_ms"].as_f64().unwrap() > 0.0);
    let moves: Vec<(&str, &str)> = r["switchovers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["from"].as_str().unwrap(), m["to"].as_str().unwrap()))
        .collect();
    assert_eq!(moves, [("db1", "db2"), ("db2", "db1")]);
    for m in r["switchovers"].as_array().unwrap() {
        assert!(m["write_pause_ms"].as_f64().is_some_and(|p| p > 0.0), "{m}");
    }
    let rebuilt: Vec<&str> = r["rebuilds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["node"].as_str().unwrap())
        .collect();
    assert_eq!(rebuilt, ["db1", "db2"]);
    // Each switchover's start, then its resumption, in order.
    let moved: Vec<&str> = kinds(&r)
        .into_iter()
        .filter(|k| matches!(*k, "switchover_started" | "writes_resumed"))
        .collect();
    assert_eq!(
        moved,
        [
            "switchover_started",
            "writes_resumed",
            "switchover_started",
            "writes_resumed"
        ]
    );
    // As it was: db1 the primary, db2 a replica, nothing fenced.
    assert_eq!(r["primary_after"], "db1");
    assert_eq!(r["fenced_after"], Value::Array(vec![]));
    let console = admin(&proxy).await;
    assert_eq!(node_column(&console, "db2", "role").await, "replica");
    assert!(!table_exists(primary.port(), r["table"].as_str().unwrap()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_with_a_rebuild_leaves_no_node_fenced_and_reports_as_text() {
    let (cluster, primary, replica) = private_pair().await;
    let proxy = proxy(&cluster, &primary, &replica).await;
    let rebuild = rebuild_script(&cluster, &primary, &replica);
    let (code, out) = drill(&proxy, &["--rebuild-command", &rebuild]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verdict         PASSED"), "{out}");
    assert!(out.contains("switchover      db1 -> db2"), "{out}");
    assert!(out.contains("rebuild         db1: command"), "{out}");
    assert!(out.contains("primary after   db2"), "{out}");
    assert!(!out.contains("fenced after"), "{out}");
    assert!(out.contains("node_readmitted"), "{out}");
    let console = admin(&proxy).await;
    assert_eq!(node_column(&console, "db1", "state").await, "up");
    assert_eq!(node_column(&console, "db1", "role").await, "replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_past_max_pause_fails_the_drill_and_names_the_threshold() {
    let (cluster, primary, replica) = private_pair().await;
    let proxy = proxy(&cluster, &primary, &replica).await;
    // A switchover holds writes for tens of milliseconds: never within 1 ms.
    let (code, out) = drill(&proxy, &["--max-pause", "1ms"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("verdict         FAILED"), "{out}");
    assert!(out.contains("> --max-pause 1ms"), "{out}");
    assert!(out.contains("switchover      db1 -> db2"), "{out}");
    // One way only: the old primary stays fenced until an operator
    // rebuilds it, and the report says so.
    assert!(out.contains("fenced after    db1"), "{out}");
    assert!(out.contains("lost commits    0"), "{out}");
    let table = out
        .split_whitespace()
        .find(|w| w.starts_with("switchyard_drill_"))
        .unwrap();
    assert!(!table_exists(replica.port(), table).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_test_fails_over_and_loses_no_acknowledged_commit() {
    let (cluster, primary, replica) = private_pair().await;
    synchronous(&primary, &replica).await;
    let proxy = proxy(&cluster, &primary, &replica).await;
    let stop = format!(
        "{} -D {} stop -m immediate -w -s",
        quote(&cluster.bindir().join("pg_ctl").to_string_lossy()),
        quote(&primary.data_dir().to_string_lossy())
    );
    // The drill names the node it crashes.
    let crash = format!(
        "test \"$SWITCHYARD_DRILL_NODE\" = db1 && {}",
        as_server_user(&stop)
    );
    let (code, out) = drill(
        &proxy,
        &["--json", "--crash-test", "--crash-command", &crash],
    )
    .await;
    let r: Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(code, 0, "{out}");
    assert_eq!(r["passed"], true);
    assert_eq!(r["mode"], "crash");
    assert_eq!(r["lost"].as_u64(), Some(0), "{out}");
    assert!(r["acked"].as_u64().unwrap() > 0);
    assert_eq!(r["primary_after"], "db2");
    assert!(r["crash"]["promote_ms"].as_f64().is_some(), "{out}");
    assert!(r["crash"]["detect_ms"].as_f64().is_some(), "{out}");
    let k = kinds(&r);
    let started = k.iter().position(|k| *k == "failover_started").unwrap();
    assert!(k[started..].contains(&"writes_resumed"), "{k:?}");
    assert!(!table_exists(replica.port(), r["table"].as_str().unwrap()).await);
}
