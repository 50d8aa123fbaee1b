//! pgbench through the proxy, simple and extended protocol, with more clients
//! than pool slots: every transaction must succeed.

mod common;

use common::Proxy;
use std::process::Command;

fn pgbench(bindir: &std::path::Path) -> std::path::PathBuf {
    let p = bindir.join("pgbench");
    if p.exists() {
        p
    } else {
        "pgbench".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_simple_and_extended_with_more_clients_than_servers() {
    let proxy = Proxy::start("default_pool_size = 4").await;
    let cluster = proxy.cluster.clone();
    let bin = pgbench(cluster.bindir());
    let port = proxy.addr.port().to_string();
    let init = Command::new(&bin)
        .args([
            "-i",
            "-q",
            "-s",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.primary().port().to_string(),
            "-U",
            "app",
            "app",
        ])
        .env("PGPASSWORD", "app")
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    for mode in ["simple", "extended"] {
        let bin = bin.clone();
        let port = port.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(&bin)
                .args([
                    "-n",
                    "-c",
                    "12",
                    "-j",
                    "2",
                    "-t",
                    "40",
                    "-M",
                    mode,
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    "app",
                    "app",
                ])
                .env("PGPASSWORD", "app")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "pgbench -M {mode} failed:\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains("number of transactions actually processed: 480/480"),
            "-M {mode}:\n{stdout}"
        );
        assert!(
            stdout.contains("number of failed transactions: 0"),
            "-M {mode}:\n{stdout}"
        );
    }
}
