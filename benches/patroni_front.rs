//! Front ends of a Patroni cluster compared: HAProxy as Patroni's
//! documentation sets it up, PgBouncer in front of that HAProxy, and
//! Switchyard following Patroni (`[failover] mode = "follow"`,
//! `[coordination] backend = "patroni"`), on the same cluster, under the
//! same write load, through a `patronictl switchover` and a crash of the
//! leader.
//!
//! Run with `cargo bench --bench patroni_front` as root (Patroni and
//! PostgreSQL run as the `postgres` OS user, PgBouncer too) on a machine
//! with Debian's `patroni` (3.0), `etcd-server` and PostgreSQL; HAProxy and
//! PgBouncer are installed with apt-get when missing. Environment:
//! `PATRONI_FRONT_RUNS` (or `--runs N`, default 1): runs, each one
//! switchover and one crash; `PATRONI_FRONTS` (default
//! `haproxy,pgbouncer,switchyard`); `PATRONI_FRONT_EVENTS` (default
//! `switchover,crash`); `PATRONI_FRONT_WRITERS` (default 1) writers per
//! front end; `PATRONI_FRONT_TIMINGS=short` for the test harness's timings
//! (`ttl` 10 s, `loop_wait` 1 s) instead of Patroni's defaults.
//!
//! What it does:
//! 1. a two-member Patroni cluster (`pg0` leads, `pg1` streams from it,
//!    asynchronously) on its own etcd, with Patroni's default timings: `ttl`
//!    30 s, `loop_wait` 10 s, `retry_timeout` 10 s; `use_pg_rewind` on, so
//!    that a crashed leader can rejoin as a replica (it plays no part in
//!    the failover itself);
//! 2. the front ends, each its own process: HAProxy with Patroni's
//!    recommended health check (`option httpchk GET /primary`, `http-check
//!    expect status 200`, `default-server inter 3s fall 3 rise 2
//!    on-marked-down shutdown-sessions`, each member's PostgreSQL port
//!    checked on its REST API port); PgBouncer (transaction pooling,
//!    otherwise its defaults) whose one database is HAProxy's port; the
//!    release binary of Switchyard (transaction pooling, every member in
//!    `[cluster] nodes`, `hold_timeout` 60 s, Patroni's etcd and scope);
//! 3. per front end, `PATRONI_FRONT_WRITERS` writers of their own (default
//!    [`DEFAULT_WRITERS`]), each on one connection that it replaces only when it
//!    breaks (a reconnect, counted), autocommit `INSERT INTO w_<front>
//!    VALUES (n)` with n increasing, [`WRITER_PAUSE`] apart (after an
//!    error, [`RETRY_PAUSE`]); every acknowledged n is recorded with the
//!    time of its acknowledgement, every error with its SQLSTATE (or what
//!    broke, for errors without one);
//! 4. the events, every front end's writers running through the same one:
//!    `switchover` is `patronictl switchover --leader A --candidate B
//!    --force`; `crash` is SIGKILL of the leader's Patroni and of its
//!    postmaster, and once the other member leads, that member's Patroni
//!    started again so that it rejoins as a replica. Before each event the
//!    replica streams from the leader, HAProxy has the leader alone up, and
//!    every front end has written for [`SETTLE`]; run k of n then waits
//!    (k−1)/n of a `loop_wait` more, so that the runs crash the leader at
//!    different points of Patroni's loop;
//! 5. an event's window runs from the event (T0) until the new leader has
//!    been writable for at least [`MIN_AFTER_READY`] and every front end has
//!    had an acknowledgement within the last second and no error within the
//!    last [`QUIET`]; or until [`WINDOW_CAP`] (a front end with no write
//!    acknowledged after the new leader was writable: "not recovered"). Then every
//!    acknowledged n is looked for on the leader, read directly: one
//!    missing is a lost commit, reported for the event after which it was
//!    first missed.
//!
//! The write pause of a front end is the longest gap between two
//! consecutive acknowledgements of its writers (merged) that overlaps the
//! window. Errors and reconnects are those within the window. "Leader
//! writable" is when the new leader's REST API first answers 200 to `GET
//! /primary`, polled every 100 ms.
//!
//! Without `--bench` on the command line (e.g. `cargo test --benches`) it
//! does nothing: a run takes minutes.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use switchyard::local_cluster::{APP_DB, APP_PASSWORD, APP_USER};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, SimpleQueryMessage};

#[allow(dead_code)]
mod common;

// The test harness's Patroni cluster and what it stands on; they find
// `free_port` and `unique` (below) in their parent, as in tests/common.
#[allow(dead_code)]
#[path = "../tests/common/certs.rs"]
mod certs;
#[allow(dead_code)]
#[path = "../tests/common/etcd.rs"]
mod etcd;
#[allow(dead_code)]
#[path = "../tests/common/patroni.rs"]
mod patroni;

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A unique name for the harness's directories and scopes.
fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

use common::fleet::ProxyProcess;
use common::os::{ensure_package, TempDir};
use common::pg::{connect, connect_when_ready, describe};
use common::pgbouncer::{self, PgBouncer};
use common::{env_number, median};
use patroni::{PatroniCluster, PatroniOptions};

/// Default writers per front end.
const DEFAULT_WRITERS: u64 = 1;
/// Pause between two writes of a writer.
const WRITER_PAUSE: Duration = Duration::from_millis(10);
/// Pause after an error (a failed statement or connection attempt).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Longest wait for a connection (then an error, and another try).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for one statement: past Switchyard's `hold_timeout`.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(90);
/// Switchyard's `failover.hold_timeout`.
const HOLD_TIMEOUT: &str = "60s";
/// Server connections per pool, PgBouncer and Switchyard alike.
const POOL_SIZE: usize = 4;
/// Steady writes through every front end before an event.
const SETTLE: Duration = Duration::from_secs(5);
/// An event's window lasts at least this long after the new leader is
/// writable: past HAProxy's `fall 3` × `inter 3s`, so that a front end
/// still sending writes to the old leader is seen doing so.
const MIN_AFTER_READY: Duration = Duration::from_secs(15);
/// A window ends only after this long without an error on any front end.
const QUIET: Duration = Duration::from_secs(5);
/// A window ends at the latest this long after T0.
const WINDOW_CAP: Duration = Duration::from_secs(180);
/// Longest wait for the front ends to serve, for a member to rejoin, and
/// for HAProxy to mark the leader alone up.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for the writers to end once stopped (a held statement may
/// wait out Switchyard's `hold_timeout`).
const LOAD_STOP_TIMEOUT: Duration = Duration::from_secs(70);
/// Where Debian puts HAProxy.
const HAPROXY: &str = "/usr/sbin/haproxy";

fn main() {
    common::run_main("patroni_front", "patroni_front benchmark failed", bench);
}

// ---------------------------------------------------------------------------
// What to run
// ---------------------------------------------------------------------------

/// A front end of the cluster.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Front {
    HaProxy,
    PgBouncer,
    Switchyard,
}

impl Front {
    const ALL: [Front; 3] = [Front::HaProxy, Front::PgBouncer, Front::Switchyard];

    /// Its name in `PATRONI_FRONTS` and its table's (`w_<key>`).
    fn key(self) -> &'static str {
        match self {
            Front::HaProxy => "haproxy",
            Front::PgBouncer => "pgbouncer",
            Front::Switchyard => "switchyard",
        }
    }

    /// Its name in the report.
    fn label(self) -> &'static str {
        match self {
            Front::HaProxy => "HAProxy",
            Front::PgBouncer => "PgBouncer → HAProxy",
            Front::Switchyard => "Switchyard",
        }
    }

    fn table(self) -> String {
        format!("w_{}", self.key())
    }
}

/// What happens to the cluster.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Event {
    Switchover,
    Crash,
}

impl Event {
    const ALL: [Event; 2] = [Event::Switchover, Event::Crash];

    fn name(self) -> &'static str {
        match self {
            Event::Switchover => "switchover",
            Event::Crash => "crash",
        }
    }
}

/// A comma-separated list from environment variable `var`, each item one
/// of `all` by `name`; all of them when unset.
fn env_list<T: Copy>(
    var: &str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> anyhow::Result<Vec<T>> {
    let Ok(v) = std::env::var(var) else {
        return Ok(all.to_vec());
    };
    let names: Vec<&str> = all.iter().map(|&t| name(t)).collect();
    let picked: Vec<T> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            all.iter()
                .copied()
                .find(|&t| name(t) == s)
                .ok_or_else(|| anyhow!("{var}: unknown {s:?} (one of {})", names.join(", ")))
        })
        .collect::<anyhow::Result<_>>()?;
    if picked.is_empty() {
        bail!("{var} names none of {}", names.join(", "));
    }
    Ok(picked)
}

/// `--runs N` on the command line, else `PATRONI_FRONT_RUNS`, else 1.
fn runs_wanted() -> anyhow::Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    let n = match args.iter().position(|a| a == "--runs") {
        Some(i) => args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("--runs wants a number"))?,
        None => env_number("PATRONI_FRONT_RUNS", 1)?,
    };
    Ok(n.max(1) as usize)
}

/// Patroni's defaults, or the test harness's short timings with
/// `PATRONI_FRONT_TIMINGS=short`; pg_rewind on either way.
fn patroni_options() -> anyhow::Result<PatroniOptions> {
    let base = match std::env::var("PATRONI_FRONT_TIMINGS").as_deref() {
        Err(_) | Ok("default") => PatroniOptions::DEFAULTS,
        Ok("short") => PatroniOptions::SHORT,
        Ok(other) => bail!("PATRONI_FRONT_TIMINGS={other:?}: default or short"),
    };
    Ok(PatroniOptions {
        use_pg_rewind: true,
        ..base
    })
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

fn bench() -> anyhow::Result<()> {
    let runs = runs_wanted()?;
    let fronts = env_list("PATRONI_FRONTS", &Front::ALL, Front::key)?;
    let events = env_list("PATRONI_FRONT_EVENTS", &Event::ALL, Event::name)?;
    let writers = env_number("PATRONI_FRONT_WRITERS", DEFAULT_WRITERS)?.max(1) as usize;
    let options = patroni_options()?;
    let began = Instant::now();
    let uses = |f: Front| fronts.contains(&f);
    let haproxy_bin = match uses(Front::HaProxy) || uses(Front::PgBouncer) {
        true => Some(ensure_package(HAPROXY, "haproxy")?),
        false => None,
    };
    let pgbouncer_bin = match uses(Front::PgBouncer) {
        true => Some(pgbouncer::ensure()?),
        false => None,
    };

    // Dropped in the reverse order: load, front ends, cluster, runtime.
    let rt = common::client_runtime()?;
    eprintln!(
        "starting Patroni (ttl {} s, loop_wait {} s, retry_timeout {} s) with two members...",
        options.ttl, options.loop_wait, options.retry_timeout
    );
    let mut cluster = PatroniCluster::start_with(options);
    let mut versions = Versions {
        postgres: rt.block_on(prepare_database(&cluster, &fronts))?,
        patroni: command_version(Path::new("/usr/bin/patroni"), &["--version"]),
        haproxy: haproxy_bin.as_deref().map(|b| command_version(b, &["-v"])),
        pgbouncer: None,
    };

    let haproxy = match &haproxy_bin {
        Some(bin) => Some(HaProxy::start(bin, &cluster)?),
        None => None,
    };
    let bouncer_dir = TempDir::create("switchyard-bench-patroni-pgbouncer")?;
    let bouncer = match (&pgbouncer_bin, &haproxy) {
        (Some(bin), Some(h)) => {
            let b = PgBouncer::start(
                bin,
                &bouncer_dir,
                &pgbouncer::Settings {
                    pg_port: h.port,
                    pool_size: POOL_SIZE,
                    max_client_conn: 100,
                    secret: APP_PASSWORD,
                    extra: "",
                    files: &[],
                },
            )?;
            versions.pgbouncer = Some(b.version.clone());
            Some(b)
        }
        _ => None,
    };
    let switchyard = match uses(Front::Switchyard) {
        true => Some(ProxyProcess::start("patroni-front", |listen, http| {
            switchyard_toml(&cluster, listen, http)
        })?),
        false => None,
    };
    let port_of = |f: Front| -> u16 {
        match f {
            Front::HaProxy => haproxy.as_ref().map_or(0, |h| h.port),
            Front::PgBouncer => bouncer.as_ref().map_or(0, |b| b.port),
            Front::Switchyard => switchyard.as_ref().map_or(0, |s| s.port),
        }
    };

    // Every front end serves the leader before the load starts.
    let mut leader = "pg0".to_string();
    wait_settled(&cluster, haproxy.as_ref(), &leader)?;
    for &f in &fronts {
        let info = conninfo(port_of(f));
        rt.block_on(connect_when_ready(&info, "SELECT 1", READY_TIMEOUT))
            .with_context(|| format!("{} does not serve", f.label()))?;
    }
    eprintln!(
        "load: {writers} writer(s) per front end ({}); events: {} × {runs}",
        fronts
            .iter()
            .map(|f| f.key())
            .collect::<Vec<_>>()
            .join(", "),
        events
            .iter()
            .map(|e| e.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let load = Load::start(&rt, &fronts, writers, &port_of);
    thread::sleep(SETTLE);

    let mut done: Vec<EventRun> = Vec::new();
    let mut lost_seen: Vec<HashSet<i64>> = vec![HashSet::new(); fronts.len()];
    'runs: for run in 1..=runs {
        for &event in &events {
            let other = if leader == "pg0" { "pg1" } else { "pg0" }.to_string();
            // Run k of n starts its events (k−1)/n of a `loop_wait` later
            // than run 1: how long a crash takes depends on when in
            // Patroni's loop it comes (the leader key was renewed up to one
            // `loop_wait` earlier), and the waits before an event take about
            // as long every time, so without this every run would crash at
            // the same phase of the loop.
            let phase = Duration::from_secs(options.loop_wait.into())
                .mul_f64((run - 1) as f64 / runs as f64);
            thread::sleep(phase);
            eprintln!(
                "--- run {run}: {} of {leader} (phase {:.1} s) ---",
                event.name(),
                phase.as_secs_f64()
            );
            let outcome = match event {
                Event::Switchover => switchover(&cluster, &load, &leader, &other),
                Event::Crash => crash(&mut cluster, &load, &leader, &other),
            };
            let mut ev = match outcome {
                Ok(ev) => ev,
                Err(e) => {
                    eprintln!(
                        "{} of {leader} failed: {e:#}; no further events",
                        event.name()
                    );
                    break 'runs;
                }
            };
            ev.run = run;
            // Lost commits: acknowledged before now, missing on the leader.
            let now_leader = rest_leader(&cluster).unwrap_or_else(|| ev.to.clone());
            let port = cluster.member(&now_leader).port;
            let cut = Instant::now();
            for (i, &f) in fronts.iter().enumerate() {
                let acked = load.acked_before(f, cut);
                let missing = rt.block_on(missing_on(port, f, acked))?;
                let new: Vec<i64> = missing
                    .into_iter()
                    .filter(|id| lost_seen[i].insert(*id))
                    .collect();
                ev.fronts[i].lost = Some(new);
            }
            eprintln!("{}", ev.summary_line());
            leader = now_leader;
            done.push(ev);
            // The next event starts from a replica streaming again and
            // every front end writing to the leader.
            let rejoined = wait_settled(&cluster, haproxy.as_ref(), &leader);
            if let Err(e) = rejoined {
                eprintln!("the cluster did not settle: {e:#}; no further events");
                break 'runs;
            }
            thread::sleep(SETTLE);
        }
    }

    eprintln!("stopping the load...");
    let stuck = load.stop();
    let final_leader = rest_leader(&cluster).unwrap_or(leader);
    let port = cluster.member(&final_leader).port;
    let mut after_last = Vec::new();
    for (i, &f) in fronts.iter().enumerate() {
        let acked = load.acked_before(f, Instant::now());
        let total = acked.len();
        let missing = rt.block_on(missing_on(port, f, acked))?;
        let new = missing
            .into_iter()
            .filter(|id| !lost_seen[i].contains(id))
            .count();
        after_last.push((f, total, new));
    }
    let text = report(&Report {
        options,
        versions: &versions,
        fronts: &fronts,
        writers,
        events: &done,
        final_leader: &final_leader,
        after_last: &after_last,
        stuck,
        load: &load,
    });
    println!("\n{text}");
    eprintln!(
        "patroni_front benchmark: {:.0} s in all",
        began.elapsed().as_secs_f64()
    );
    // For a closer look at what each front end did.
    if let Some(h) = &haproxy {
        eprintln!("haproxy's log, last lines:\n{}", h.log_tail());
    }
    if bouncer.is_some() {
        let log = fs::read_to_string(bouncer_dir.path.join("pgbouncer.log")).unwrap_or_default();
        eprintln!("pgbouncer's log, last lines:\n{}", common::tail(&log, 30));
    }
    if let Some(s) = &switchyard {
        eprintln!("switchyard's log, last lines:\n{}", s.log_tail(30));
    }
    Ok(())
}

/// What ran, for the report's first lines.
struct Versions {
    postgres: String,
    patroni: String,
    haproxy: Option<String>,
    pgbouncer: Option<String>,
}

/// The first line `bin args` prints (stdout or stderr).
fn command_version(bin: &Path, args: &[&str]) -> String {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| format!("{} (unknown version)", bin.display()))
}

/// The app role and database on the leader (pg0), named as on the local
/// cluster that [`common::proxy_toml`] and PgBouncer's settings assume, and
/// a table per front end; returns PostgreSQL's version.
async fn prepare_database(cluster: &PatroniCluster, fronts: &[Front]) -> anyhow::Result<String> {
    let port = cluster.member("pg0").port;
    let admin = connect(&format!(
        "host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5"
    ))
    .await
    .context("connecting to pg0")?;
    admin
        .simple_query(&format!(
            "CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'"
        ))
        .await?;
    admin
        .simple_query(&format!("CREATE DATABASE {APP_DB} OWNER {APP_USER}"))
        .await?;
    let version = first_value(&admin.simple_query("SHOW server_version").await?)
        .unwrap_or_else(|| "?".into());
    let app = connect(&format!(
        "host=127.0.0.1 port={port} user={APP_USER} dbname={APP_DB} connect_timeout=5"
    ))
    .await?;
    for f in fronts {
        app.simple_query(&format!(
            "CREATE TABLE {} (id bigint PRIMARY KEY)",
            f.table()
        ))
        .await?;
    }
    Ok(version)
}

fn first_value(msgs: &[SimpleQueryMessage]) -> Option<String> {
    msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

/// Switchyard's configuration: every member, following Patroni.
fn switchyard_toml(cluster: &PatroniCluster, listen: &str, http: &str) -> String {
    let cluster_and_more = format!(
        r#"nodes = [{nodes}]
user = "postgres"
password = "postgres"

[http]
listen = "{http}"

[failover]
mode = "follow"
hold_timeout = "{HOLD_TIMEOUT}"

[coordination]
backend = "patroni"
patroni = {{ scope = "{scope}", endpoints = ["{etcd}"] }}"#,
        nodes = cluster.nodes_toml(),
        scope = cluster.scope,
        etcd = cluster.endpoint(),
    );
    let proxy = r#"shutdown_timeout = "2s""#;
    common::proxy_toml(listen, POOL_SIZE, proxy, &cluster_and_more)
}

/// libpq connection string for a front end on `port`.
fn conninfo(port: u16) -> String {
    format!(
        "host=127.0.0.1 port={port} user={APP_USER} password={APP_PASSWORD} dbname={APP_DB} \
         application_name=patroni_front_bench connect_timeout={}",
        CONNECT_TIMEOUT.as_secs()
    )
}

/// The ids of `acked` missing from front `f`'s table on the PostgreSQL at
/// `port`.
async fn missing_on(port: u16, f: Front, acked: Vec<i64>) -> anyhow::Result<Vec<i64>> {
    let c = connect(&format!(
        "host=127.0.0.1 port={port} user=postgres dbname={APP_DB} connect_timeout=5"
    ))
    .await
    .with_context(|| format!("connecting to the leader on port {port}"))?;
    let rows = c
        .simple_query(&format!("SELECT id FROM {}", f.table()))
        .await?;
    let present: HashSet<i64> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .collect();
    Ok(acked
        .into_iter()
        .filter(|id| !present.contains(id))
        .collect())
}

// ---------------------------------------------------------------------------
// Patroni's REST API
// ---------------------------------------------------------------------------

/// The status code of `GET path` on the REST API at `api` (None: no answer).
fn rest_code(api: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], api));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// The member whose REST API says it is the writable leader.
fn rest_leader(cluster: &PatroniCluster) -> Option<String> {
    cluster
        .members
        .iter()
        .find(|m| rest_code(m.api, "/primary") == Some(200))
        .map(|m| m.name.clone())
}

/// Polls `done` every 100 ms for at most `limit`; how long it took.
fn wait_until(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(start.elapsed())
}

/// Waits until `leader` is the writable leader, the other member a
/// replica streaming from it, and HAProxy (if any) has `leader` alone up.
fn wait_settled(
    cluster: &PatroniCluster,
    haproxy: Option<&HaProxy>,
    leader: &str,
) -> anyhow::Result<()> {
    let other = if leader == "pg0" { "pg1" } else { "pg0" };
    let api = |n: &str| cluster.member(n).api;
    wait_until(&format!("{leader} leading"), READY_TIMEOUT, || {
        rest_code(api(leader), "/primary") == Some(200)
    })?;
    let took = wait_until(
        &format!("{other} a replica streaming from {leader}"),
        READY_TIMEOUT,
        || rest_code(api(other), "/replica") == Some(200) && cluster.streams(other, leader),
    )?;
    if took > Duration::from_secs(1) {
        eprintln!(
            "{other} streams from {leader} ({:.0} s)",
            took.as_secs_f64()
        );
    }
    if let Some(h) = haproxy {
        wait_until(
            &format!("HAProxy with {leader} alone up"),
            READY_TIMEOUT,
            || h.up().is_ok_and(|up| up == [leader]),
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------

/// One event and what each front end saw of it.
struct EventRun {
    event: Event,
    run: usize,
    from: String,
    to: String,
    t0: Instant,
    /// When `patronictl switchover` returned.
    command_done: Option<Instant>,
    /// When the new leader's `GET /primary` first answered 200.
    ready: Option<Instant>,
    /// The end of the window.
    end: Instant,
    fronts: Vec<FrontResult>,
}

/// One front end's view of one event.
struct FrontResult {
    front: Front,
    /// The longest gap between acknowledgements overlapping the window.
    pause: Duration,
    /// Whether a write was acknowledged after the new leader was writable.
    recovered: bool,
    /// Errors within the window, by class (SQLSTATE or what broke).
    errors: BTreeMap<String, usize>,
    /// The first message of each class.
    messages: BTreeMap<String, String>,
    reconnects: usize,
    /// Acknowledged ids first found missing after this event.
    lost: Option<Vec<i64>>,
}

impl EventRun {
    fn secs(&self, t: Option<Instant>) -> String {
        t.map_or("–".into(), |t| {
            format!("{:.1} s", (t - self.t0).as_secs_f64())
        })
    }

    fn summary_line(&self) -> String {
        let mut s = format!(
            "{} {} → {}: leader writable after {}, window {:.1} s;",
            self.event.name(),
            self.from,
            self.to,
            self.secs(self.ready),
            (self.end - self.t0).as_secs_f64()
        );
        for f in &self.fronts {
            let _ = write!(
                s,
                " {}: pause {:.2} s, {} error(s), {} reconnect(s), lost {};",
                f.front.key(),
                f.pause.as_secs_f64(),
                f.errors.values().sum::<usize>(),
                f.reconnects,
                f.lost.as_ref().map_or("?".into(), |l| l.len().to_string())
            );
        }
        s
    }
}

/// `patronictl switchover` from `from` to `to`.
fn switchover(
    cluster: &PatroniCluster,
    load: &Load,
    from: &str,
    to: &str,
) -> anyhow::Result<EventRun> {
    let t0 = Instant::now();
    let (said, command_done, ready) = thread::scope(|s| {
        let cmd = s.spawn(|| {
            let said = cluster.switchover(from, to);
            (said, Instant::now())
        });
        let ready = writable_at(cluster, to, t0).ok();
        let (said, done) = cmd.join().expect("patronictl switchover");
        (said, done, ready)
    });
    let said = said.lines().find(|l| l.contains("witched")).unwrap_or("");
    eprintln!("patronictl: {}", said.trim());
    let ready = ready.ok_or_else(|| anyhow!("{to} not writable within {WINDOW_CAP:?}"))?;
    let end = wait_window_end(load, t0, ready);
    Ok(load.event_run(
        Event::Switchover,
        from,
        to,
        t0,
        Some(command_done),
        Some(ready),
        end,
    ))
}

/// SIGKILL of `from`'s Patroni and postmaster; once `to` leads, `from`'s
/// Patroni started again.
fn crash(
    cluster: &mut PatroniCluster,
    load: &Load,
    from: &str,
    to: &str,
) -> anyhow::Result<EventRun> {
    let t0 = Instant::now();
    cluster.kill(from);
    let ready = writable_at(cluster, to, t0);
    // Back as a replica, whether or not the other took over.
    cluster.relaunch(from);
    let ready = ready?;
    let end = wait_window_end(load, t0, ready);
    Ok(load.event_run(Event::Crash, from, to, t0, None, Some(ready), end))
}

/// When `to` became the writable leader after an event at `t0`: its REST
/// API's first 200 to `GET /primary`, polled until [`WINDOW_CAP`].
fn writable_at(cluster: &PatroniCluster, to: &str, t0: Instant) -> anyhow::Result<Instant> {
    let api = cluster.member(to).api;
    wait_until("the new leader writable", WINDOW_CAP, || {
        rest_code(api, "/primary") == Some(200)
    })
    .map(|d| t0 + d)
}

/// The end of an event's window (see the module's documentation).
fn wait_window_end(load: &Load, t0: Instant, ready: Instant) -> Instant {
    loop {
        let now = Instant::now();
        if now - t0 >= WINDOW_CAP {
            return now;
        }
        let settled = now >= ready + MIN_AFTER_READY
            && load.fronts.iter().all(|&f| {
                let log = load.log(f);
                let acked = log
                    .acks
                    .last()
                    .is_some_and(|a| a.at > ready && now - a.at < Duration::from_secs(1));
                let quiet = log.errors.last().is_none_or(|e| now - e.at >= QUIET);
                acked && quiet
            });
        if settled {
            return now;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// HAProxy
// ---------------------------------------------------------------------------

/// HAProxy in front of the members, as Patroni's documentation has it; its
/// own process, killed on drop.
struct HaProxy {
    port: u16,
    socket: PathBuf,
    child: Child,
    dir: TempDir,
}

impl HaProxy {
    fn start(bin: &Path, cluster: &PatroniCluster) -> anyhow::Result<HaProxy> {
        let dir = TempDir::create("switchyard-bench-patroni-haproxy")?;
        let port = free_port();
        let socket = dir.path.join("haproxy.sock");
        let mut servers = String::new();
        for m in &cluster.members {
            let _ = writeln!(
                servers,
                "    server {} 127.0.0.1:{} maxconn 100 check port {}",
                m.name, m.port, m.api
            );
        }
        let cfg = format!(
            "global
    maxconn 100
    stats socket {socket} mode 600 level admin

defaults
    mode tcp
    retries 2
    timeout client 30m
    timeout connect 4s
    timeout server 30m
    timeout check 5s

listen postgres
    bind 127.0.0.1:{port}
    option httpchk GET /primary
    http-check expect status 200
    default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions
{servers}",
            socket = socket.display()
        );
        let file = dir.write("haproxy.cfg", &cfg)?;
        let check = Command::new(bin).args(["-c", "-f", &file]).output()?;
        if !check.status.success() {
            bail!(
                "haproxy -c: {}{}",
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let log = fs::File::create(dir.path.join("haproxy.log"))?;
        let child = Command::new(bin)
            .args(["-db", "-f", &file])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting haproxy")?;
        let mut h = HaProxy {
            port,
            socket,
            child,
            dir,
        };
        wait_until("haproxy listening", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .map_err(|e| anyhow!("{e}: {}", h.log_tail()))?;
        if let Some(status) = h.child.try_wait()? {
            bail!("haproxy exited ({status}): {}", h.log_tail());
        }
        eprintln!("haproxy listening on 127.0.0.1:{port}");
        Ok(h)
    }

    /// The servers HAProxy has up, by name (`show stat` on its socket).
    fn up(&self) -> anyhow::Result<Vec<String>> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"show stat\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let mut up: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let cols: Vec<&str> = l.split(',').collect();
                let (name, status) = (*cols.get(1)?, *cols.get(17)?);
                let server = name != "FRONTEND" && name != "BACKEND";
                (server && status.starts_with("UP")).then(|| name.to_string())
            })
            .collect();
        up.sort();
        Ok(up)
    }

    fn log_tail(&self) -> String {
        common::tail(
            &fs::read_to_string(self.dir.path.join("haproxy.log")).unwrap_or_default(),
            20,
        )
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// The write load
// ---------------------------------------------------------------------------

struct Ack {
    at: Instant,
    id: i64,
}

struct WriteError {
    at: Instant,
    class: String,
    message: String,
}

/// What a front end's writers saw.
#[derive(Default)]
struct Log {
    acks: Vec<Ack>,
    errors: Vec<WriteError>,
    reconnects: Vec<Instant>,
}

/// The writers of every front end.
struct Load {
    fronts: Vec<Front>,
    logs: Vec<Arc<Mutex<Log>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(
        rt: &Runtime,
        fronts: &[Front],
        writers: usize,
        port_of: &dyn Fn(Front) -> u16,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut logs = Vec::new();
        let mut tasks = Vec::new();
        for &f in fronts {
            let log = Arc::new(Mutex::new(Log::default()));
            let next = Arc::new(AtomicI64::new(1));
            for _ in 0..writers {
                tasks.push(rt.spawn(writer(
                    conninfo(port_of(f)),
                    f.table(),
                    next.clone(),
                    log.clone(),
                    stop.clone(),
                )));
            }
            logs.push(log);
        }
        Load {
            fronts: fronts.to_vec(),
            logs,
            stop,
            tasks,
        }
    }

    fn log(&self, f: Front) -> MutexGuard<'_, Log> {
        let i = self
            .fronts
            .iter()
            .position(|&x| x == f)
            .expect("a front end of the load");
        self.logs[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ids front end `f` had acknowledged before `cut` (a copy: the
    /// writers go on meanwhile).
    fn acked_before(&self, f: Front, cut: Instant) -> Vec<i64> {
        let log = self.log(f);
        log.acks
            .iter()
            .filter(|a| a.at < cut)
            .map(|a| a.id)
            .collect()
    }

    /// Stops the writers; how many were still busy after [`LOAD_STOP_TIMEOUT`].
    fn stop(&self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + LOAD_STOP_TIMEOUT;
        while Instant::now() < deadline && !self.tasks.iter().all(JoinHandle::is_finished) {
            thread::sleep(Duration::from_millis(50));
        }
        let stuck = self.tasks.iter().filter(|t| !t.is_finished()).count();
        for t in &self.tasks {
            t.abort();
        }
        stuck
    }

    /// What each front end saw of an event that ran from `t0` to `end`.
    #[allow(clippy::too_many_arguments)]
    fn event_run(
        &self,
        event: Event,
        from: &str,
        to: &str,
        t0: Instant,
        command_done: Option<Instant>,
        ready: Option<Instant>,
        end: Instant,
    ) -> EventRun {
        let fronts = self
            .fronts
            .iter()
            .map(|&f| {
                let log = self.log(f);
                let within = |at: Instant| at >= t0 && at <= end;
                let mut errors = BTreeMap::new();
                let mut messages = BTreeMap::new();
                for e in log.errors.iter().filter(|e| within(e.at)) {
                    *errors.entry(e.class.clone()).or_insert(0) += 1;
                    messages
                        .entry(e.class.clone())
                        .or_insert_with(|| e.message.clone());
                }
                FrontResult {
                    front: f,
                    pause: max_gap(&log.acks, t0, end),
                    recovered: ready
                        .is_some_and(|r| log.acks.iter().any(|a| a.at > r && a.at <= end)),
                    errors,
                    messages,
                    reconnects: log.reconnects.iter().filter(|&&at| within(at)).count(),
                    lost: None,
                }
            })
            .collect();
        EventRun {
            event,
            run: 0,
            from: from.into(),
            to: to.into(),
            t0,
            command_done,
            ready,
            end,
            fronts,
        }
    }
}

/// One writer: its connection, replaced when it breaks; an INSERT of the
/// next id, [`WRITER_PAUSE`] apart ([`RETRY_PAUSE`] after an error).
async fn writer(
    conninfo: String,
    table: String,
    next: Arc<AtomicI64>,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
) {
    let record = |f: &dyn Fn(&mut Log)| f(&mut log.lock().unwrap_or_else(|e| e.into_inner()));
    let error = |class: String, message: String| {
        record(&|l: &mut Log| {
            l.errors.push(WriteError {
                at: Instant::now(),
                class: class.clone(),
                message: message.clone(),
            })
        })
    };
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match client.take() {
            Some(c) if !c.is_closed() => c,
            broken => {
                if broken.is_some() {
                    record(&|l: &mut Log| l.reconnects.push(Instant::now()));
                }
                match tokio::time::timeout(CONNECT_TIMEOUT, connect(&conninfo)).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        error(format!("connect: {}", class(&e)), describe(&e));
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                    Err(_) => {
                        error("connect: timeout".into(), "no connection in time".into());
                        continue;
                    }
                }
            }
        };
        let id = next.fetch_add(1, Ordering::Relaxed);
        let sql = format!("INSERT INTO {table} VALUES ({id})");
        match tokio::time::timeout(STATEMENT_TIMEOUT, c.simple_query(&sql)).await {
            Ok(Ok(_)) => {
                record(&|l: &mut Log| {
                    l.acks.push(Ack {
                        at: Instant::now(),
                        id,
                    })
                });
                client = Some(c);
                tokio::time::sleep(WRITER_PAUSE).await;
            }
            Ok(Err(e)) => {
                error(class(&e), describe(&e));
                // A connection that still works is kept: the application
                // has no reason to drop it.
                client = Some(c);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(_) => {
                error(
                    "timeout".into(),
                    format!("no answer within {STATEMENT_TIMEOUT:?}"),
                );
                record(&|l: &mut Log| l.reconnects.push(Instant::now()));
            }
        }
    }
}

/// An error's class: its SQLSTATE, else what happened to the connection.
fn class(e: &tokio_postgres::Error) -> String {
    if let Some(code) = e.code() {
        return code.code().to_string();
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "refused".into(),
                std::io::ErrorKind::ConnectionReset => "reset".into(),
                std::io::ErrorKind::UnexpectedEof => "EOF".into(),
                std::io::ErrorKind::BrokenPipe => "broken pipe".into(),
                k => format!("{k:?}"),
            };
        }
        source = s.source();
    }
    if e.is_closed() {
        return "closed".into();
    }
    let text = e.to_string();
    text.split(':').next().unwrap_or(&text).trim().to_string()
}

/// The longest gap between consecutive acknowledgements that overlaps
/// `[from, to]`; `to` closes the last one (writes not resumed count until
/// the end).
fn max_gap(acks: &[Ack], from: Instant, to: Instant) -> Duration {
    let times: Vec<Instant> = acks
        .iter()
        .map(|a| a.at)
        .filter(|&at| at <= to)
        .chain(std::iter::once(to))
        .collect();
    times
        .windows(2)
        .filter(|w| w[1] >= from)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

struct Report<'a> {
    options: PatroniOptions,
    versions: &'a Versions,
    fronts: &'a [Front],
    writers: usize,
    events: &'a [EventRun],
    final_leader: &'a str,
    /// Per front end: acknowledged writes in all, and how many were first
    /// found missing on the final leader after the last event.
    after_last: &'a [(Front, usize, usize)],
    stuck: usize,
    load: &'a Load,
}

fn report(r: &Report) -> String {
    let mut s = String::new();
    let v = r.versions;
    let _ = writeln!(
        s,
        "Patroni front ends: {}; PostgreSQL {}, two members, asynchronous streaming; \
         ttl {} s, loop_wait {} s, retry_timeout {} s; {}{}Switchyard (release binary, \
         follow mode, hold_timeout {HOLD_TIMEOUT}). {} autocommit writer(s) per front end, \
         one INSERT every {} ms ({} ms after an error).\n",
        v.patroni,
        v.postgres,
        r.options.ttl,
        r.options.loop_wait,
        r.options.retry_timeout,
        v.haproxy.as_deref().map_or(String::new(), |h| format!(
            "{}; ",
            h.split(" - ").next().unwrap_or(h)
        )),
        v.pgbouncer
            .as_deref()
            .map_or(String::new(), |p| format!("{p} (transaction pooling); ")),
        r.writers,
        WRITER_PAUSE.as_millis(),
        RETRY_PAUSE.as_millis(),
    );
    let _ = writeln!(
        s,
        "| front end | event | run | leader writable after | write pause | errors | reconnects | lost |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---|---:|---:|");
    for &f in r.fronts {
        for ev in r.events {
            let Some(fr) = ev.fronts.iter().find(|x| x.front == f) else {
                continue;
            };
            let pause = match fr.recovered {
                true => format!("{:.1} s", fr.pause.as_secs_f64()),
                false => format!("> {:.1} s (not recovered)", fr.pause.as_secs_f64()),
            };
            let _ = writeln!(
                s,
                "| {} | {} {} → {} | {} | {} | {pause} | {} | {} | {} |",
                f.label(),
                ev.event.name(),
                ev.from,
                ev.to,
                ev.run,
                ev.secs(ev.ready),
                errors_cell(&fr.errors),
                fr.reconnects,
                fr.lost.as_ref().map_or("?".into(), |l| l.len().to_string()),
            );
        }
    }
    if r.events.iter().map(|e| e.run).max().unwrap_or(0) > 1 {
        medians(&mut s, r);
    }
    let _ = writeln!(s, "\nEvents:");
    for ev in r.events {
        let how = match ev.command_done {
            Some(_) => format!("patronictl returned after {}", ev.secs(ev.command_done)),
            None => format!("{}'s Patroni started again once {} led", ev.from, ev.to),
        };
        let _ = writeln!(
            s,
            "- run {} {} {} → {}: {how}; leader writable after {}; window {:.1} s",
            ev.run,
            ev.event.name(),
            ev.from,
            ev.to,
            ev.secs(ev.ready),
            (ev.end - ev.t0).as_secs_f64()
        );
    }
    let _ = writeln!(s, "\nError messages (first of each kind):");
    let mut seen = HashSet::new();
    for ev in r.events {
        for fr in &ev.fronts {
            for (class, msg) in &fr.messages {
                if seen.insert((fr.front, class.clone())) {
                    let _ = writeln!(s, "- {} {class}: {msg}", fr.front.label());
                }
            }
        }
    }
    let _ = writeln!(s, "\nTotals (final leader {}):", r.final_leader);
    for &(f, acked, late) in r.after_last {
        let log = r.load.log(f);
        let outside = log
            .errors
            .iter()
            .filter(|e| !r.events.iter().any(|ev| e.at >= ev.t0 && e.at <= ev.end))
            .count();
        let _ = writeln!(
            s,
            "- {}: {acked} writes acknowledged; {} errors and {} reconnects in all ({outside} \
             errors outside the windows); {late} acknowledged writes missing on the final \
             leader besides those counted above",
            f.label(),
            log.errors.len(),
            log.reconnects.len(),
        );
    }
    if r.stuck > 0 {
        let _ = writeln!(
            s,
            "- {} writer(s) still waiting {} s after the load stopped",
            r.stuck,
            LOAD_STOP_TIMEOUT.as_secs()
        );
    }
    s
}

/// `N (class ×n, ...)`, or `0`.
fn errors_cell(errors: &BTreeMap<String, usize>) -> String {
    let total: usize = errors.values().sum();
    if total == 0 {
        return "0".into();
    }
    let parts: Vec<String> = errors.iter().map(|(c, n)| format!("{c} ×{n}")).collect();
    format!("{total} ({})", parts.join(", "))
}

/// Per front end and event over the runs: median and worst write pause,
/// errors, reconnects and lost commits in all.
fn medians(s: &mut String, r: &Report) {
    let _ = writeln!(
        s,
        "\n| front end | event | runs | write pause median / max | errors | reconnects | lost |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
    for &f in r.fronts {
        for event in Event::ALL {
            let rows: Vec<&FrontResult> = r
                .events
                .iter()
                .filter(|e| e.event == event)
                .filter_map(|e| e.fronts.iter().find(|x| x.front == f))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let pauses: Vec<f64> = rows.iter().map(|x| x.pause.as_secs_f64()).collect();
            let max = pauses.iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} / {max:.1} s | {} | {} | {} |",
                f.label(),
                event.name(),
                rows.len(),
                median(pauses).unwrap_or(0.0),
                rows.iter()
                    .map(|x| x.errors.values().sum::<usize>())
                    .sum::<usize>(),
                rows.iter().map(|x| x.reconnects).sum::<usize>(),
                rows.iter()
                    .map(|x| x.lost.as_ref().map_or(0, Vec::len))
                    .sum::<usize>(),
            );
        }
    }
}
