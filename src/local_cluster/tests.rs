//! Tests of the local cluster against the real PostgreSQL binaries:
//! startup, replication, roles and authentication, failover, teardown.

use std::thread;
use std::time::{Duration, Instant};

use super::binaries::has_required_binaries;
use super::exec::run;
use super::os_user::parse_passwd_line;
use super::stale::{is_zombie_or_gone, postmaster_pid};
use super::*;

fn postmaster_pids(cluster: &LocalCluster) -> Vec<u32> {
    cluster
        .nodes()
        .iter()
        .map(|n| postmaster_pid(n.data_dir()).expect("postmaster.pid"))
        .collect()
}

#[test]
fn cluster_starts_replicates_and_cleans_up() {
    let t0 = Instant::now();
    let cluster = LocalCluster::start(LocalClusterOptions {
        keep: false,
        ..LocalClusterOptions::default()
    })
    .expect("start local cluster (is PostgreSQL installed? apt-get install -y postgresql)");
    eprintln!("LocalCluster::start took {:?}", t0.elapsed());

    let primary = cluster.primary();
    assert_eq!(primary.name(), "primary");
    assert_eq!(cluster.replicas().len(), 1);
    let replica = &cluster.replicas()[0];
    assert_eq!(replica.name(), "replica1");
    assert_ne!(primary.port(), replica.port());
    assert_eq!(cluster.nodes().len(), 2);
    assert_eq!(primary.addr(), format!("127.0.0.1:{}", primary.port()));

    assert_eq!(
        primary
            .psql("postgres", "SELECT pg_is_in_recovery()")
            .unwrap(),
        "f"
    );
    assert_eq!(
        replica
            .psql(
                "postgres",
                "SELECT pg_is_in_recovery(), status FROM pg_stat_wal_receiver"
            )
            .unwrap(),
        "t|streaming"
    );
    assert_eq!(
        primary
            .psql(
                "postgres",
                "SELECT application_name, state FROM pg_stat_replication"
            )
            .unwrap(),
        "replica1|streaming"
    );

    // Roles and password storage.
    let roles = primary
        .psql(
            "postgres",
            "SELECT rolname, left(rolpassword, 5) FROM pg_authid \
             WHERE rolname IN ('app','md5user','switchyard','trustuser','postgres') \
             ORDER BY rolname",
        )
        .unwrap();
    let roles: Vec<&str> = roles.lines().collect();
    assert_eq!(roles.len(), 5, "{roles:?}");
    assert_eq!(roles[0], "app|SCRAM");
    assert!(roles[1].starts_with("md5user|md5"), "{roles:?}");
    assert_eq!(roles[2], "postgres|SCRAM");
    assert_eq!(roles[3], "switchyard|SCRAM");
    assert_eq!(roles[4], "trustuser|");

    // TCP logins per pg_hba.conf, on both nodes.
    for node in cluster.nodes() {
        for (user, password, ok) in [
            (APP_USER, APP_PASSWORD, true),
            (MD5_USER, MD5_PASSWORD, true),
            (TRUST_USER, "", true),
            (CLUSTER_USER, CLUSTER_PASSWORD, true),
            (SUPERUSER, SUPERUSER_PASSWORD, true),
            (APP_USER, "wrong", false),
            (MD5_USER, "wrong", false),
        ] {
            let mut cmd = node.exec.command("psql");
            cmd.env("PGPASSWORD", password)
                .args(["-X", "-A", "-t", "-w", "-h", "127.0.0.1", "-p"])
                .arg(node.port().to_string())
                .args(["-U", user, "-d", APP_DB, "-c", "SELECT current_user"]);
            let result = run(cmd, None, Duration::from_secs(30));
            match result {
                Ok(out) if ok => assert_eq!(out.trim(), user),
                Err(e) if !ok => assert!(
                    e.to_string().contains("authentication failed"),
                    "{user}: {e}"
                ),
                other => panic!("{} {user}/{password}: unexpected {:?}", node.name(), other),
            }
        }
    }

    // Writes on the primary show up on the replica.
    primary
        .psql(
            APP_DB,
            "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2), (3);",
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match replica.psql(APP_DB, "SELECT count(*) FROM t") {
            Ok(n) if n == "3" => break,
            other => {
                assert!(Instant::now() < deadline, "not replicated: {other:?}");
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
    // md5user and trustuser may create tables in app's public schema.
    primary
        .psql(APP_DB, "SET ROLE md5user; CREATE TABLE m (id int); SET ROLE trustuser; CREATE TABLE tr (id int);")
        .unwrap();
    // SQL errors are reported.
    let err = primary
        .psql(APP_DB, "SELECT * FROM missing_table")
        .unwrap_err();
    assert!(err.to_string().contains("missing_table"), "{err}");

    let pids = postmaster_pids(&cluster);
    let base = cluster.base_dir().to_path_buf();
    assert!(base.is_dir());
    drop(cluster);
    assert!(!base.exists(), "{} not removed", base.display());
    for pid in pids {
        assert!(is_zombie_or_gone(pid), "postmaster {pid} still running");
    }
}

#[test]
fn failover_promote_and_restart() {
    let cluster = LocalCluster::start(LocalClusterOptions {
        replicas: 2,
        keep: false,
        ..LocalClusterOptions::default()
    })
    .expect("start local cluster");
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    assert_eq!(ports.len(), 3);
    assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);
    for r in cluster.replicas() {
        assert_eq!(
            r.psql("postgres", "SELECT pg_is_in_recovery()").unwrap(),
            "t"
        );
    }

    // A replica whose port was taken while it was down moves to a new one.
    let mut r2 = cluster.replicas()[1].clone();
    r2.stop(StopMode::Fast).unwrap();
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", r2.port())).unwrap();
    r2.start_retrying_port(&ports).unwrap();
    assert!(!ports.contains(&r2.port()), "{}", r2.port());
    assert_eq!(
        r2.psql("postgres", "SELECT pg_is_in_recovery()").unwrap(),
        "t"
    );

    let primary = cluster.primary();
    primary.stop(StopMode::Fast).unwrap();
    assert!(primary.psql("postgres", "SELECT 1").is_err());
    let r1 = &cluster.replicas()[0];
    r1.promote().unwrap();
    assert_eq!(
        r1.psql("postgres", "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );
    r1.psql(APP_DB, "CREATE TABLE after_failover (id int)")
        .unwrap();
    primary.start().unwrap();
    assert_eq!(primary.psql("postgres", "SELECT 1").unwrap(), "1");
}

#[test]
fn bindir_is_found_and_resolved() {
    let dir = find_pg_bindir().expect("PostgreSQL binaries (apt-get install -y postgresql)");
    assert!(has_required_binaries(&dir));
    assert!(!dir.starts_with("/usr/local/bin"), "{}", dir.display());
}

#[test]
fn handles_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<LocalCluster>();
    assert_send_sync::<PgNode>();
    assert_send_sync::<LocalClusterError>();
}

#[test]
fn passwd_parsing() {
    let u = parse_passwd_line(
        "postgres:x:101:104:PostgreSQL,,,:/var/lib/postgresql:/bin/bash",
        "postgres",
    )
    .unwrap();
    assert_eq!((u.uid, u.gid), (101, 104));
    assert!(parse_passwd_line("postgresx:x:1:1::/:/bin/sh", "postgres").is_none());
}
