//! Helpers shared by the `harness = false` benchmarks: the `main` wrapper
//! that skips without `--bench` and sets up tracing, numbers from the
//! environment, Switchyard's configuration and Switchyard running
//! in-process, the clients' runtime, the median; `os` (users, ports,
//! scratch directories, packages), `pg` (clients), `pgbench` (running it),
//! `pgbouncer` (the reference proxy) and `fleet` (etcd, the release binary).
//!
//! A directory module (`benches/common/mod.rs`), so cargo does not take it
//! for a benchmark target of its own; each benchmark includes it with
//! `mod common;`.

// Not every benchmark uses every helper.
#[allow(dead_code)]
pub mod fleet;
#[allow(dead_code)]
pub mod os;
#[allow(dead_code)]
pub mod pg;
#[allow(dead_code)]
pub mod pgbench;
#[allow(dead_code)]
pub mod pgbouncer;

use std::io;
use std::net::TcpListener;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::Context as _;
use switchyard::config::Config;
use switchyard::local_cluster::{APP_PASSWORD, APP_USER};

/// Longest wait for the in-process proxy to shut down.
const PROXY_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The body of a benchmark's `main`: without `--bench` on the command line
/// (e.g. `cargo test --benches`) says `name` is skipped and returns;
/// otherwise logs to stderr (`RUST_LOG`, default `warn`) and runs `bench`,
/// exiting with status 1 and `failed: error` if it fails.
pub fn run_main(name: &str, failed: &str, bench: impl FnOnce() -> anyhow::Result<()>) {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("{name}: skipped (run it with `cargo bench --bench {name}`)");
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(io::stderr)
        .try_init();
    if let Err(e) = bench() {
        eprintln!("{failed}: {e:#}");
        std::process::exit(1);
    }
}

/// The number in environment variable `name`, `default` if it is unset.
pub fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// The runtime of a benchmark's clients: two workers, so that the clients
/// neither starve on one thread nor take the cores from what they measure.
#[allow(dead_code)]
pub fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the client runtime")
}

/// The last `lines` lines of `s`, for error messages.
#[allow(dead_code)]
pub fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The median; `None` for no values.
pub fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// Switchyard's configuration file: listening on `listen`, transaction
/// pooling with `pool_size` server connections per pool, SCRAM
/// authentication of the local cluster's app user; `proxy` holds further
/// `[proxy]` keys, `cluster` the body of `[cluster]`. `[cluster]` comes
/// last, so tables of their own (`[http]`, `[failover]`, ...) may follow
/// its body in `cluster`.
pub fn proxy_toml(listen: &str, pool_size: usize, proxy: &str, cluster: &str) -> String {
    format!(
        r#"
[proxy]
listen = "{listen}"
pool_mode = "transaction"
default_pool_size = {pool_size}
auth_type = "scram-sha-256"
{proxy}

[[users]]
name = "{APP_USER}"
password = "{APP_PASSWORD}"

[cluster]
{cluster}
"#
    )
}

/// [`proxy_toml`], loaded: for Switchyard in-process.
#[allow(dead_code)]
pub fn proxy_config(
    listen: &str,
    pool_size: usize,
    proxy: &str,
    cluster: &str,
) -> anyhow::Result<Config> {
    switchyard::config::load_str(&proxy_toml(listen, pool_size, proxy, cluster))
        .context("switchyard config")
}

/// Switchyard running on its own runtime in a background thread; stopped on drop.
pub struct Switchyard {
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: mpsc::Receiver<()>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Switchyard {
    /// Starts the proxy on a free port of 127.0.0.1, with the configuration
    /// `config` returns for that listen address (`127.0.0.1:port`).
    pub fn start(
        config: impl FnOnce(&str) -> anyhow::Result<Config>,
    ) -> anyhow::Result<Switchyard> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the proxy listener")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let config = config(&addr.to_string())?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = mpsc::channel();
        let thread = thread::Builder::new().name("switchyard".into()).spawn(
            move || -> anyhow::Result<()> {
                let rt = switchyard::runtime::build(config.proxy.workers)?;
                let res = rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let shutdown = async {
                        let _ = stopped.await;
                    };
                    switchyard::run(config, listener, shutdown).await?;
                    anyhow::Ok(())
                });
                rt.shutdown_timeout(Duration::from_secs(2));
                let _ = done_tx.send(());
                res
            },
        )?;
        Ok(Switchyard {
            port: addr.port(),
            stop: Some(stop),
            done,
            thread: Some(thread),
        })
    }
}

impl Drop for Switchyard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(thread) = self.thread.take() else {
            return;
        };
        // Disconnected: the thread ended without reporting (an error or a
        // panic before it could); `join` below says which.
        if let Err(mpsc::RecvTimeoutError::Timeout) = self.done.recv_timeout(PROXY_STOP_TIMEOUT) {
            eprintln!(
                "switchyard did not stop within {}s; leaving its thread behind",
                PROXY_STOP_TIMEOUT.as_secs()
            );
            return;
        }
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("switchyard stopped with an error: {e:#}"),
            Err(_) => eprintln!("switchyard thread panicked"),
        }
    }
}
