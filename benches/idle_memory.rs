//! Memory per idle client: Switchyard (the release binary, its own
//! process) and PgBouncer, each in transaction mode in front of the same
//! PostgreSQL, with N logged-in clients (SCRAM) that ran one `SELECT 1`
//! and then sit idle. Each proxy's VmRSS (/proc/PID/status) is read before
//! the clients connect (after a few warm-up clients came and went, so the
//! pool's server connections and the allocator's first arenas are not
//! counted) and again once all N are idle; the difference over N is the
//! cost of one idle client.
//!
//! `cargo bench --bench idle_memory [-- --clients N]` (default 10,000).
//! Both the bench process and the proxies need one descriptor per client:
//! the bench raises its own soft RLIMIT_NOFILE to the hard limit, and the
//! proxies inherit it.

// Only the process, configuration, PgBouncer and OS helpers are used here.
#[allow(dead_code)]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use switchyard::local_cluster::{
    LocalCluster, LocalClusterOptions, APP_DB, APP_PASSWORD, APP_USER,
};
use tokio_postgres::{Client, NoTls};

use common::fleet::ProxyProcess;
use common::os::TempDir;
use common::pgbouncer::{self, PgBouncer};

/// Clients logging in at once: enough to keep both cores busy with SCRAM,
/// few enough that no listen backlog overflows.
const CONNECT_PARALLEL: usize = 32;
/// Clients that log in, query and leave before the baseline is read.
const WARM_UP: usize = 50;
/// Server connections per pool: idle clients hold none.
const POOL_SIZE: usize = 4;
/// Time for the proxy to settle (its allocator, deferred frees) before a reading.
const SETTLE: Duration = Duration::from_secs(2);

fn main() {
    common::run_main("idle_memory", "idle_memory failed", bench);
}

fn bench() -> anyhow::Result<()> {
    let clients = clients_arg()?;
    let nofile = raise_nofile()?;
    ensure!(
        nofile as usize > clients + 100,
        "RLIMIT_NOFILE is {nofile}: too few descriptors for {clients} clients"
    );
    eprintln!("starting PostgreSQL...");
    let cluster = LocalCluster::start(LocalClusterOptions {
        replicas: 0,
        ..Default::default()
    })
    .context("starting the local cluster (is PostgreSQL installed?)")?;
    let primary = cluster.primary();
    let rt = tokio::runtime::Runtime::new()?;

    let proxy = ProxyProcess::start("idle-memory", |listen, http| {
        switchyard_toml(&primary.addr(), listen, http, clients)
    })?;
    let ours = rt.block_on(measure(proxy.pid(), proxy.port, clients))?;
    drop(proxy);

    let tmp = TempDir::create("switchyard-bench-idle-memory")?;
    let settings = pgbouncer::Settings {
        pg_port: primary.port(),
        pool_size: POOL_SIZE,
        max_client_conn: clients + 1000,
        secret: APP_PASSWORD,
        extra: "",
        files: &[],
    };
    let theirs = match pgbouncer::ensure() {
        Ok(bin) => {
            let bouncer = PgBouncer::start(&bin, &tmp, &settings)?;
            let pid = bouncer_pid(&tmp)?;
            let m = rt.block_on(measure(pid, bouncer.port, clients))?;
            Some((bouncer.version.clone(), m))
        }
        Err(e) => {
            eprintln!("PgBouncer unavailable, its row is skipped: {e:#}");
            None
        }
    };
    println!("\nidle clients: {clients} (SCRAM, one SELECT 1 each, transaction mode)\n");
    println!("| proxy | RSS before (MiB) | RSS with clients (MiB) | KiB per idle client |");
    println!("|---|---:|---:|---:|");
    row("Switchyard (release binary)", &ours, clients);
    if let Some((version, m)) = &theirs {
        row(version, m, clients);
    }
    Ok(())
}

/// `--clients N`, default 10,000.
fn clients_arg() -> anyhow::Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--clients") {
        Some(i) => {
            let v = args.get(i + 1).context("--clients needs a number")?;
            let n: usize = v.parse().with_context(|| format!("--clients {v:?}"))?;
            ensure!(n > 0, "--clients must be at least 1");
            Ok(n)
        }
        None => Ok(10_000),
    }
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (children,
/// the proxies among them, inherit it); returns the new soft limit.
fn raise_nofile() -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// The binary's configuration: one node, transaction pooling, SCRAM, room
/// for `clients`.
fn switchyard_toml(node: &str, listen: &str, http: &str, clients: usize) -> String {
    common::proxy_toml(
        listen,
        POOL_SIZE,
        &format!("max_client_conn = {}", clients + 1000),
        &format!("nodes = [\"{node}\"]\n\n[http]\nlisten = \"{http}\""),
    )
}

/// PgBouncer's pid from the pidfile it writes into `tmp`.
fn bouncer_pid(tmp: &TempDir) -> anyhow::Result<u32> {
    let file = tmp.path.join("pgbouncer.pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Ok(pid);
        }
        ensure!(Instant::now() < deadline, "no pid in {}", file.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// VmRSS before and with the clients, in KiB.
struct Measured {
    before_kib: u64,
    after_kib: u64,
}

fn row(name: &str, m: &Measured, clients: usize) {
    let per = (m.after_kib as f64 - m.before_kib as f64) / clients as f64;
    println!(
        "| {name} | {:.1} | {:.1} | {per:.2} |",
        m.before_kib as f64 / 1024.0,
        m.after_kib as f64 / 1024.0,
    );
}

/// Warms the proxy at `port` up, reads its RSS, opens `clients` idle
/// clients, reads it again, and closes them.
async fn measure(pid: u32, port: u16, clients: usize) -> anyhow::Result<Measured> {
    let url = Arc::new(format!(
        "host=127.0.0.1 port={port} user={APP_USER} password={APP_PASSWORD} dbname={APP_DB} \
         connect_timeout=60"
    ));
    drop(open(&url, WARM_UP).await?);
    tokio::time::sleep(SETTLE).await;
    let before_kib = vm_rss(pid)?;
    let started = Instant::now();
    let idle = open(&url, clients).await?;
    eprintln!(
        "{clients} clients on port {port} logged in and idle after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(SETTLE).await;
    let after_kib = vm_rss(pid)?;
    drop(idle);
    Ok(Measured {
        before_kib,
        after_kib,
    })
}

/// `n` clients, each logged in and past one `SELECT 1`.
async fn open(url: &Arc<String>, n: usize) -> anyhow::Result<Vec<Client>> {
    stream::iter(0..n)
        .map(|_| {
            let url = url.clone();
            async move {
                let (client, conn) = tokio_postgres::connect(&url, NoTls).await?;
                tokio::spawn(conn);
                client.simple_query("SELECT 1").await?;
                anyhow::Ok(client)
            }
        })
        .buffer_unordered(CONNECT_PARALLEL)
        .try_collect()
        .await
}

/// VmRSS of `pid` in KiB.
fn vm_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}
