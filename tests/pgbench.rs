//! pgbench through the proxy, in simple, extended and prepared protocol, with
//! more clients than pool slots: every transaction must succeed.

mod common;

use common::Proxy;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every test here re-creates the same pgbench tables in the shared cluster:
/// one pgbench (init and run) at a time.
static PGBENCH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pgbench(bindir: &Path) -> PathBuf {
    let p = bindir.join("pgbench");
    if p.exists() {
        p
    } else {
        "pgbench".into()
    }
}

/// Runs pgbench as `app` against `port` with `args` (off the runtime).
async fn run(bin: &Path, port: u16, args: &[&str]) -> Output {
    let bin = bin.to_path_buf();
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(
        [
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "app",
            "app",
        ]
        .map(String::from),
    );
    tokio::task::spawn_blocking(move || {
        Command::new(&bin)
            .args(&args)
            .env("PGPASSWORD", "app")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Initialises the pgbench tables (scale 1, plus `init_args`) directly on the
/// primary, then runs `clients` × `transactions` in each of `modes` through
/// the proxy: each run must succeed and process every transaction. Returns
/// each mode with pgbench's stdout and stderr, for the caller's own checks.
async fn pgbench_through_proxy(
    proxy: &Proxy,
    init_args: &[&str],
    clients: u32,
    transactions: u32,
    modes: &[&'static str],
) -> Vec<(&'static str, String, String)> {
    let _one_at_a_time = PGBENCH.lock().await;
    let bin = pgbench(proxy.cluster.bindir());
    let init = run(
        &bin,
        proxy.cluster.primary().port(),
        &[&["-i", "-q", "-s", "1"], init_args].concat(),
    )
    .await;
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let (c, t) = (clients.to_string(), transactions.to_string());
    let expected = format!(
        "number of transactions actually processed: {0}/{0}",
        clients * transactions
    );
    let mut outputs = vec![];
    for &mode in modes {
        let args = ["-n", "-c", &c, "-j", "2", "-t", &t, "-M", mode];
        let out = run(&bin, proxy.addr.port(), &args).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "pgbench -M {mode} failed:\n{stdout}\n{stderr}"
        );
        assert!(stdout.contains(&expected), "-M {mode}:\n{stdout}");
        outputs.push((mode, stdout, stderr));
    }
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_simple_and_extended_with_more_clients_than_servers() {
    let proxy = Proxy::start("default_pool_size = 4").await;
    for (mode, stdout, _) in
        pgbench_through_proxy(&proxy, &[], 12, 40, &["simple", "extended"]).await
    {
        assert!(
            stdout.contains("number of failed transactions: 0"),
            "-M {mode}:\n{stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_with_more_clients_than_servers() {
    let proxy = Proxy::start("default_pool_size = 2").await;
    for (_, _, stderr) in
        pgbench_through_proxy(&proxy, &["--foreign-keys"], 8, 50, &["prepared"]).await
    {
        assert!(
            !stderr.contains("does not exist") && !stderr.contains("already exists"),
            "{stderr}"
        );
    }
}
