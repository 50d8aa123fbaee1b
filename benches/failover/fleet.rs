//! `--proxies N`: the failover benchmark with N Switchyard instances (the
//! release binary, each its own process with a configuration file)
//! coordinating through etcd, as a fleet of sidecars or an HA pair does.
//!
//! Each run starts from scratch: a primary and two streaming replicas with
//! quorum-synchronous replication (`ANY 1 (replica1, replica2)`, so every
//! acknowledged write is on a replica), a single-member etcd, and N proxies
//! with the default `[health]`, `[failover]` and `[coordination]` settings
//! (`mode = "promote"`, quorum of a majority). Through every proxy, one
//! writer on one connection (ids of its own) and [`IDLE_PER_PROXY`] idle
//! clients. After [`super::STEADY_WRITES`] (plus a phase spread over the
//! health-check interval, as in the single-proxy runs):
//! - `crash`: `pg_ctl stop -m immediate` of the primary. Measured per
//!   proxy: seconds to the first acknowledged write after the crash; a
//!   run's figure is its slowest proxy.
//! - `switchover`: `POST /switchover?to=replica1` sent to a proxy that does
//!   not lead (the leader carries it out for all). Measured: the longest
//!   gap between two acknowledgements of any writer, and client errors.
//!
//! After each run: how many replicas left recovery (exactly one is right),
//! and every acknowledged id is looked up on the one that did.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use switchyard::local_cluster::{
    LocalCluster, LocalClusterOptions, PgNode, StopMode, APP_DB, APP_PASSWORD, APP_USER,
    CLUSTER_PASSWORD, CLUSTER_USER,
};
use tokio::runtime::Runtime;

use super::common::fleet::{http, Etcd, ProxyProcess};
use super::common::median;
use super::common::pg::{connect, connect_when_ready};
use super::{
    first_ack_after, lock, longest_pause, writer, WriterLog, AFTER_RECOVERY, HEALTH_INTERVAL,
    POOL_SIZE, READY_TIMEOUT, RECOVERY_CAP, STEADY_WRITES,
};

/// Idle clients per proxy: logged in before the failure, one query after.
const IDLE_PER_PROXY: usize = 2;
/// The bearer token of `POST /switchover`.
const TOKEN: &str = "bench-switchover";
/// Ids of writer `i` start at `i * ID_SPACE + 1`.
const ID_SPACE: i64 = 1_000_000_000;
/// Targets from the project's goals.
const CRASH_TARGET: f64 = 1.5;
const PAUSE_TARGET: f64 = 0.5;

/// What the fleet runs do to the primary.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Event {
    Crash,
    Switchover,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Crash => "crash",
            Event::Switchover => "switchover",
        }
    }
}

/// What one fleet run measured.
struct FleetRun {
    /// Per proxy: seconds from T0 to its first acknowledged write after
    /// the event; `None`: none within the cap.
    first_write: Vec<Option<f64>>,
    /// The longest gap between two acknowledgements of any writer.
    pause: Option<f64>,
    writer_errors: usize,
    idle_errors: usize,
    acked: usize,
    lost: Option<usize>,
    /// Replicas out of recovery after the run.
    promoted: usize,
    notes: Vec<String>,
}

impl FleetRun {
    /// The slowest proxy's first write (`None` if one never wrote).
    fn slowest(&self) -> Option<f64> {
        self.first_write
            .iter()
            .try_fold(0.0f64, |m, x| x.map(|x| m.max(x)))
    }
}

pub fn bench(rt: &Runtime, proxies: usize, runs: usize) -> anyhow::Result<()> {
    if proxies < 2 {
        bail!("--proxies wants 2 or more (1 is the default single-proxy benchmark)");
    }
    let mut results = Vec::new();
    for event in [Event::Crash, Event::Switchover] {
        let mut per = Vec::new();
        for run in 1..=runs {
            eprintln!(
                "--- {proxies} proxies, {} run {run}/{runs} ---",
                event.name()
            );
            let phase = HEALTH_INTERVAL.mul_f64((run - 1) as f64 / runs as f64);
            let r = run_once(rt, event, proxies, phase);
            match &r {
                Ok(r) => eprintln!(
                    "{}: first write per proxy {:?}, longest pause {:?}, writer errors {}, \
                     idle errors {}, lost {:?}, replicas promoted {}",
                    event.name(),
                    r.first_write,
                    r.pause,
                    r.writer_errors,
                    r.idle_errors,
                    r.lost,
                    r.promoted
                ),
                Err(e) => eprintln!("{} run {run} FAILED: {e:#}", event.name()),
            }
            per.push(r.map_err(|e| format!("{e:#}")));
        }
        results.push((event, per));
    }
    println!("\n{}", report(proxies, &results));
    Ok(())
}

/// The configuration of one proxy of the fleet.
fn config(cluster: &LocalCluster, etcd: &str, name: &str, listen: &str, http: &str) -> String {
    let nodes = cluster
        .nodes()
        .iter()
        .map(|n| format!("{{ name = \"{}\", addr = \"{}\" }}", n.name(), n.addr()))
        .collect::<Vec<_>>()
        .join(", ");
    let cluster_and_more = format!(
        r#"name = "{name}"
nodes = [{nodes}]
user = "{CLUSTER_USER}"
password = "{CLUSTER_PASSWORD}"

[http]
listen = "{http}"
switchover_token = "{TOKEN}"

[coordination]
backend = "etcd"
endpoints = ["{etcd}"]"#
    );
    let proxy = r#"shutdown_timeout = "2s""#;
    super::common::proxy_toml(listen, POOL_SIZE, proxy, &cluster_and_more)
}

/// Quorum-synchronous replication on every node, then waits until the
/// primary has both replicas as quorum standbys.
fn quorum_sync(cluster: &LocalCluster) -> anyhow::Result<()> {
    let names: Vec<&str> = cluster.replicas().iter().map(PgNode::name).collect();
    let sql = format!(
        "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 ({})';\n\
         ALTER SYSTEM SET synchronous_commit = 'on';\nSELECT pg_reload_conf();",
        names.join(", ")
    );
    for n in cluster.nodes() {
        n.psql("postgres", &sql)
            .with_context(|| format!("synchronous replication on {}", n.name()))?;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let q = "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum'";
    while cluster.primary().psql("postgres", q)? != names.len().to_string() {
        if Instant::now() >= deadline {
            bail!("quorum replication not active after 15s");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Waits until every proxy is connected to etcd and they agree on one
/// leader; returns its index.
fn settled(fleet: &[ProxyProcess]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen: Vec<serde_json::Value> = fleet
            .iter()
            .map(|p| {
                p.status()
                    .map(|s| s["coordination"].clone())
                    .unwrap_or_default()
            })
            .collect();
        let leaders: Vec<usize> = (0..seen.len())
            .filter(|&i| seen[i]["leader"] == true)
            .collect();
        let agreed = seen.iter().all(|s| {
            s["connected"] == true
                && s["proxies"] == fleet.len()
                && leaders
                    .first()
                    .is_some_and(|&l| s["leader_id"] == seen[l]["proxy"])
        });
        if leaders.len() == 1 && agreed {
            return Ok(leaders[0]);
        }
        if Instant::now() >= deadline {
            bail!("the proxies did not agree on a leader within 30s: {seen:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn run_once(rt: &Runtime, event: Event, n: usize, phase: Duration) -> anyhow::Result<FleetRun> {
    let cluster = LocalCluster::start(LocalClusterOptions {
        replicas: 2,
        fsync: false,
        ..Default::default()
    })
    .context("starting the local cluster")?;
    cluster.primary().psql(
        APP_DB,
        &format!("CREATE TABLE t (id bigint PRIMARY KEY);\nALTER TABLE t OWNER TO {APP_USER};"),
    )?;
    quorum_sync(&cluster)?;
    let etcd = Etcd::start(event.name())?;
    let name = format!("bench-{}-{}", event.name(), std::process::id());
    let fleet = (0..n)
        .map(|i| {
            ProxyProcess::start(&format!("{}-{i}", event.name()), |listen, http| {
                config(&cluster, &etcd.endpoint, &name, listen, http)
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let leader = settled(&fleet)?;
    let outcome = measure(rt, event, &cluster, &fleet, leader, phase);
    if outcome.is_err() {
        for (i, p) in fleet.iter().enumerate() {
            eprintln!("--- proxy {i} log ---\n{}", p.log_tail(15));
        }
    }
    drop(fleet);
    drop(etcd);
    outcome
}

/// Writers and idle clients through every proxy, the event, the wait for
/// every writer to resume, and the checks.
fn measure(
    rt: &Runtime,
    event: Event,
    cluster: &LocalCluster,
    fleet: &[ProxyProcess],
    leader: usize,
    phase: Duration,
) -> anyhow::Result<FleetRun> {
    let conninfo = |p: &ProxyProcess| {
        format!(
            "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={APP_DB} \
             application_name=failover_fleet connect_timeout=5",
            p.port
        )
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut logs = Vec::new();
    let mut tasks = Vec::new();
    let mut idle = Vec::new();
    for (i, p) in fleet.iter().enumerate() {
        let info = conninfo(p);
        let c = rt.block_on(connect_when_ready(&info, "SELECT 1", READY_TIMEOUT))?;
        for _ in 0..IDLE_PER_PROXY {
            let c = rt.block_on(connect(&info))?;
            rt.block_on(c.simple_query("SELECT 1"))?;
            idle.push(c);
        }
        let log = Arc::new(Mutex::new(WriterLog::default()));
        let first = i as i64 * ID_SPACE + 1;
        tasks.push(rt.spawn(writer(c, info, first, Arc::clone(&log), Arc::clone(&stop))));
        logs.push(log);
    }
    thread::sleep(STEADY_WRITES + phase);

    let t0 = Instant::now();
    match event {
        Event::Crash => cluster.primary().stop(StopMode::Immediate)?,
        Event::Switchover => {
            let asked = &fleet[(leader + 1) % fleet.len()];
            let target = cluster.replicas()[0].name();
            let (code, body) = http(
                &asked.http,
                "POST",
                &format!("/switchover?to={target}"),
                Some(TOKEN),
            )?;
            if code != 200 {
                bail!("POST /switchover to a follower: {code} {body}");
            }
        }
    }
    let injected = Instant::now();
    let first_write = wait_all(&logs, t0, injected);
    let ended = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), t).await });
    }
    let idle_errors = rt.block_on(async {
        let mut errors = 0;
        for c in &idle {
            let r = tokio::time::timeout(Duration::from_secs(10), c.simple_query("SELECT 1")).await;
            errors += usize::from(!matches!(r, Ok(Ok(_))));
        }
        errors
    });

    let logs: Vec<WriterLog> = logs.iter().map(|l| std::mem::take(&mut *lock(l))).collect();
    let mut notes: HashSet<String> = HashSet::new();
    for l in &logs {
        notes.extend(l.errors.iter().map(|e| e.msg.clone()));
    }
    let out: Vec<&PgNode> = cluster
        .replicas()
        .iter()
        .filter(|r| {
            r.psql("postgres", "SELECT pg_is_in_recovery()")
                .ok()
                .as_deref()
                == Some("f")
        })
        .collect();
    let lost = match out.as_slice() {
        [new] => Some(missing_on(new, &logs)?),
        _ => None,
    };
    Ok(FleetRun {
        first_write: first_write
            .iter()
            .map(|w| w.map(|at| at.duration_since(t0).as_secs_f64()))
            .collect(),
        pause: logs
            .iter()
            .filter_map(|l| longest_pause(l, t0, ended))
            .max_by(f64::total_cmp),
        writer_errors: logs.iter().map(|l| l.errors.len()).sum(),
        idle_errors,
        acked: logs.iter().map(|l| l.acks.len()).sum(),
        lost,
        promoted: out.len(),
        notes: notes.into_iter().take(3).collect(),
    })
}

/// Waits until every writer acknowledged a write after the event and kept
/// going for [`AFTER_RECOVERY`], or [`RECOVERY_CAP`]; returns when each
/// first wrote.
fn wait_all(
    logs: &[Arc<Mutex<WriterLog>>],
    t0: Instant,
    injected: Instant,
) -> Vec<Option<Instant>> {
    loop {
        let firsts: Vec<Option<Instant>> = logs
            .iter()
            .map(|l| first_ack_after(&lock(l), injected))
            .collect();
        let now = Instant::now();
        let all = firsts.iter().try_fold(t0, |m, f| f.map(|f| m.max(f)));
        match all {
            Some(last) if now >= last + AFTER_RECOVERY => return firsts,
            None if now >= t0 + RECOVERY_CAP => return firsts,
            _ => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// How many acknowledged ids `node` lacks.
fn missing_on(node: &PgNode, logs: &[WriterLog]) -> anyhow::Result<usize> {
    let rows = node.psql(APP_DB, "SELECT id FROM t")?;
    let present: HashSet<i64> = rows
        .lines()
        .map(|l| l.trim().parse::<i64>())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("parsing ids: {e}"))?;
    Ok(logs
        .iter()
        .flat_map(|l| &l.acks)
        .filter(|a| !present.contains(&a.id))
        .count())
}

fn secs(x: Option<f64>) -> String {
    x.map_or_else(|| "none".into(), |v| format!("{v:.2}"))
}

fn report(n: usize, results: &[(Event, Vec<Result<FleetRun, String>>)]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Failover benchmark, {n} proxies (release binary, one process each, default settings, \
         coordination through a single-member etcd), 1 primary + 2 replicas with \
         synchronous_standby_names = 'ANY 1 (replica1, replica2)'; one writer and \
         {IDLE_PER_PROXY} idle clients per proxy.\n\n\
         | event | run | s to first write, per proxy | slowest | longest pause s (any proxy) | \
         writer errors | idle-client errors | acked | lost | replicas promoted | messages |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for (event, runs) in results {
        for (i, r) in runs.iter().enumerate() {
            let _ = match r {
                Ok(r) => writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    event.name(),
                    i + 1,
                    r.first_write
                        .iter()
                        .map(|x| secs(*x))
                        .collect::<Vec<_>>()
                        .join(" / "),
                    secs(r.slowest()),
                    secs(r.pause),
                    r.writer_errors,
                    r.idle_errors,
                    r.acked,
                    r.lost.map_or("?".into(), |l| l.to_string()),
                    r.promoted,
                    r.notes.join("; ").replace('|', "\\|"),
                ),
                Err(e) => writeln!(
                    s,
                    "| {} | {} | run failed: {} |",
                    event.name(),
                    i + 1,
                    e.replace('|', "\\|")
                ),
            };
        }
    }
    let _ = writeln!(s, "\nSummary and targets:\n");
    for (event, runs) in results {
        let ok: Vec<&FleetRun> = runs.iter().filter_map(|r| r.as_ref().ok()).collect();
        let stat = |f: &dyn Fn(&FleetRun) -> Option<f64>| {
            let v: Vec<f64> = ok.iter().map(|r| f(r).unwrap_or(f64::INFINITY)).collect();
            let max = v.iter().copied().max_by(f64::total_cmp);
            (median(v), max)
        };
        let (measure, target, (med, max)) = match event {
            Event::Crash => (
                "slowest proxy's first write",
                CRASH_TARGET,
                stat(&FleetRun::slowest),
            ),
            Event::Switchover => ("longest pause", PAUSE_TARGET, stat(&|r| r.pause)),
        };
        let errors: usize = ok.iter().map(|r| r.writer_errors + r.idle_errors).sum();
        let lost: usize = ok.iter().map(|r| r.lost.unwrap_or(usize::MAX / 1024)).sum();
        let single = ok.iter().all(|r| r.promoted == 1);
        let met = |b: bool| if b { "met" } else { "MISSED" };
        let time_ok = med.is_some_and(|m| m <= target);
        let _ = writeln!(
            s,
            "- {}: {} runs ({} failed to run); {measure} median {} s, max {} s (target ≤ {target} s \
             median: {}); client errors {errors}{}; lost acknowledged writes {}; exactly one \
             replica promoted in every run: {}",
            event.name(),
            ok.len(),
            runs.len() - ok.len(),
            secs(med.filter(|m| m.is_finite())),
            secs(max.filter(|m| m.is_finite())),
            met(time_ok),
            match event {
                Event::Switchover => format!(" (target 0: {})", met(errors == 0)),
                Event::Crash => String::new(),
            },
            if ok.iter().all(|r| r.lost.is_some()) { lost.to_string() } else { "not checked".into() },
            met(single),
        );
    }
    s
}
