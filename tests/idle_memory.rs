//! An idle client costs the proxy little memory. The proxy runs as it ships
//! (its own process), so its resident set is its own: 1,000 clients log in
//! with SCRAM, run one `SELECT 1` each (so each has read a query and taken
//! and returned a server) and then sit idle in transaction mode; the
//! proxy's VmRSS grows by at most [`MAX_KIB_PER_CLIENT`] per client.
//!
//! The bound: this is the debug build, whose futures are larger than the
//! release build's (docs/benchmarks.md has release numbers). Before idle
//! clients gave up their read buffer and the task kept only the idle wait,
//! each held a 16 KiB buffer and a task of several KiB: this test measured
//! 11.5 KiB per client on the debug binary of that version. Now it measures
//! about 2.2 KiB; 4 KiB leaves room for allocator noise and still fails by
//! far if either comes back.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::shipped::Shipped;
use futures_util::stream::{self, StreamExt};
use switchyard::local_cluster::{APP_DB, APP_PASSWORD, APP_USER};
use tokio_postgres::{Client, NoTls};

/// Idle clients opened.
const CLIENTS: usize = 1000;
/// Growth of the proxy's RSS allowed per idle client.
const MAX_KIB_PER_CLIENT: f64 = 4.0;
/// Logins at once.
const PARALLEL: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_costs_the_proxy_little_memory() {
    raise_nofile();
    let cluster = common::cluster();
    let extra = "pool_mode = \"transaction\"\nauth_type = \"scram-sha-256\"\n\
                 default_pool_size = 4\nmax_client_conn = 2000";
    let proxy = Shipped::start(&cluster, extra).await;
    let url = Arc::new(proxy.url(APP_USER, APP_PASSWORD, APP_DB));
    // Warm-up: the pool's server connections and the allocator's first
    // arenas are not what is measured.
    drop(open(&url, 50).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = vm_rss_kib(proxy.pid());
    let idle = open(&url, CLIENTS).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = vm_rss_kib(proxy.pid());
    let per_client = (after as f64 - before as f64) / CLIENTS as f64;
    eprintln!("proxy RSS {before} KiB -> {after} KiB: {per_client:.2} KiB per idle client");
    assert!(
        per_client <= MAX_KIB_PER_CLIENT,
        "an idle client costs {per_client:.2} KiB (at most {MAX_KIB_PER_CLIENT})"
    );
    drop(idle);
}

/// `n` clients, each logged in and past one `SELECT 1`.
async fn open(url: &Arc<String>, n: usize) -> Vec<Client> {
    stream::iter(0..n)
        .map(|_| {
            let url = url.clone();
            async move {
                let (client, conn) = tokio_postgres::connect(&url, NoTls)
                    .await
                    .expect("client logs in");
                tokio::spawn(conn);
                client.simple_query("SELECT 1").await.expect("SELECT 1");
                client
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await
}

/// Raises this process's soft RLIMIT_NOFILE to the hard limit: the clients
/// need a descriptor each.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `lim`, ours.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    assert!(
        lim.rlim_max as usize > CLIENTS + 200,
        "RLIMIT_NOFILE hard limit {} is too low for {CLIENTS} clients",
        lim.rlim_max
    );
}

/// VmRSS of `pid` in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}
