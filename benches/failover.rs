//! Failover benchmark: how long writes through Switchyard stop when the
//! primary crashes, hangs, loses power, or loses one of its power supplies,
//! what clients see meanwhile, and whether any acknowledged write is lost.
//!
//! Run with `cargo bench --bench failover` (as root or as a user that may
//! start PostgreSQL). Environment: `FAILOVER_RUNS` (default 5) independent
//! runs per kind; `FAILOVER_KINDS` (default `crash,hang,powerloss,degraded`)
//! which kinds to run. `RUST_LOG=switchyard=info` shows the proxy's
//! decisions.
//!
//! Each run starts from scratch:
//! 1. a throw-away cluster, one primary and one streaming replica
//!    (`replica1`), with synchronous replication: `synchronous_standby_names
//!    = 'replica1'` and `synchronous_commit = on`, set with `ALTER SYSTEM` on
//!    both nodes once the replica streams (setting them before the cluster
//!    exists would block the cluster's own setup, which commits before any
//!    standby is connected). Both nodes carry the setting, as a replica
//!    cloned from the primary's configuration would, so the promoted
//!    replica needs `failover.sync_policy` to take writes;
//! 2. Switchyard in-process (own tokio runtime in a background thread) with
//!    the default `[health]` and `[failover]` settings, a pool of
//!    [`POOL_SIZE`] server connections, both nodes listed; for `powerloss`
//!    and `degraded` the primary has a hardware probe with its default
//!    interval (5 s) and timeout, scraping an HTTP exporter the benchmark
//!    serves (an ipmi_exporter stand-in: chassis power state off is
//!    `failing`, a power supply not nominal is `degraded`), and
//!    `failover.switchover_on_degraded = true`;
//! 3. one writer through the proxy on one connection kept for the whole run
//!    (reconnecting only if the proxy closes it, which is counted):
//!    `INSERT INTO t(id) VALUES ($1)` with increasing ids, [`WRITER_PAUSE`]
//!    apart, each acknowledged id recorded; plus [`IDLE_CLIENTS`] idle
//!    clients, logged in before the failure, that each run `SELECT 1` once
//!    writes have resumed;
//! 4. after [`STEADY_WRITES`] of writes (plus, for run k of n, (k-1)/n of
//!    the health-check interval, so that the runs see failures at phases
//!    spread over the interval, as real ones are), the failure at T0: `crash` is
//!    `pg_ctl stop -m immediate` of the primary; `hang` is SIGSTOP of the
//!    postmaster and every child process (SIGCONT before teardown, also on
//!    panic); `powerloss` is the hang and, at the same instant, the exporter
//!    reporting the chassis off (a BMC on standby power); `degraded` is the
//!    exporter reporting one power supply lost while the host runs on;
//! 5. the run ends [`AFTER_RECOVERY`] after the first write acknowledged
//!    after the failure (for `degraded`, after the replica left recovery:
//!    the planned switchover happened), or at [`RECOVERY_CAP`] ("no
//!    recovery"). Then the former replica is asked directly (`psql`) for its
//!    rows: an acknowledged id missing there is a lost write.
//!
//! The write pause is the longest gap between two consecutive
//! acknowledgements from T0 on. For `degraded` it is the measure (writes
//! never stop for a failure; the switchover holds them briefly), and "first
//! acknowledged write" does not apply.
//!
//! "First acknowledged write after the failure" is the first acknowledgement
//! of a statement sent after the failure was fully injected (the primary
//! dead or every process stopped), or arriving [`STALE_ACK_MARGIN`] after
//! that (a statement sent earlier and held by the proxy): neither can come
//! from the failed primary.
//!
//! Without `--bench` on the command line (e.g. `cargo test --benches`) it
//! does nothing: a run takes minutes.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use switchyard::config::Config;
use switchyard::local_cluster::{
    LocalCluster, LocalClusterOptions, PgNode, StopMode, APP_DB, APP_PASSWORD, APP_USER,
    CLUSTER_PASSWORD, CLUSTER_USER,
};
use tokio::runtime::Runtime;
use tokio_postgres::Client;

mod common;
#[path = "failover/fleet.rs"]
mod fleet;

use common::pg::{connect, connect_when_ready, describe};
use common::{env_number, Switchyard};

/// Server connections per pool.
const POOL_SIZE: usize = 4;
/// Clients that connect before the failure and query only after it.
const IDLE_CLIENTS: usize = 5;
/// `[health] interval` by default: failures are spread over one (see `bench`).
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Pause between two writes of the writer.
const WRITER_PAUSE: Duration = Duration::from_millis(10);
/// Steady writes before the failure is injected.
const STEADY_WRITES: Duration = Duration::from_secs(2);
/// How long writes must have resumed before a run ends.
const AFTER_RECOVERY: Duration = Duration::from_secs(1);
/// A run without an acknowledged write this long after T0 has no recovery.
const RECOVERY_CAP: Duration = Duration::from_secs(60);
/// An acknowledgement arriving this long after the failure was fully
/// injected cannot have come from the failed primary.
const STALE_ACK_MARGIN: Duration = Duration::from_millis(200);
/// Longest wait for an idle client's `SELECT 1` after the failover.
const IDLE_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the proxy to serve its first query.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default number of runs per failure kind.
const DEFAULT_RUNS: u64 = 5;
/// Name the synchronous standby has (`application_name` of the replica).
const STANDBY_NAME: &str = "replica1";
/// The writer's statement.
const INSERT: &str = "INSERT INTO t(id) VALUES ($1)";
/// Distinct error messages shown per run.
const MAX_MESSAGES: usize = 3;

/// How the primary fails.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// `pg_ctl stop -m immediate`: connections are reset, connects refused.
    Crash,
    /// SIGSTOP of every server process: nothing answers, nothing is refused.
    Hang,
    /// The hang, and the BMC reporting the chassis off at the same instant.
    PowerLoss,
    /// One power supply lost, the host alive: a planned switchover.
    Degraded,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Crash, Kind::Hang, Kind::PowerLoss, Kind::Degraded];

    fn name(self) -> &'static str {
        match self {
            Kind::Crash => "crash",
            Kind::Hang => "hang",
            Kind::PowerLoss => "powerloss",
            Kind::Degraded => "degraded",
        }
    }

    /// Target median seconds from failure to the first acknowledged write;
    /// for `degraded`, the longest write pause. A hung primary looks like a
    /// live, idle one cut off from the proxy until its replica could have
    /// heard its keepalive (the witness rule): one keepalive period, 30 s
    /// with PostgreSQL's defaults, then 3 s as for the rest.
    fn target_secs(self) -> f64 {
        match self {
            Kind::Crash => 3.0,
            Kind::Hang => 33.0,
            Kind::PowerLoss => 1.5,
            Kind::Degraded => 0.3,
        }
    }

    /// Whether the primary has a hardware probe (the exporter) in this kind.
    fn probed(self) -> bool {
        matches!(self, Kind::PowerLoss | Kind::Degraded)
    }
}

fn main() {
    common::run_main("failover", "failover benchmark failed", bench);
}

fn env_kinds() -> anyhow::Result<Vec<Kind>> {
    let Ok(v) = std::env::var("FAILOVER_KINDS") else {
        return Ok(Kind::ALL.to_vec());
    };
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            Kind::ALL
                .into_iter()
                .find(|k| k.name() == s)
                .ok_or_else(|| {
                    anyhow!("FAILOVER_KINDS: unknown kind {s:?} (crash, hang, powerloss, degraded)")
                })
        })
        .collect()
}

/// `--proxies N` on the command line, else `FAILOVER_PROXIES`, else 1.
fn proxies_wanted() -> anyhow::Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--proxies") {
        Some(i) => args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("--proxies wants a number")),
        None => Ok(env_number("FAILOVER_PROXIES", 1)? as usize),
    }
}

fn bench() -> anyhow::Result<()> {
    let runs = env_number("FAILOVER_RUNS", DEFAULT_RUNS)?.max(1) as usize;
    let rt = common::client_runtime()?;
    match proxies_wanted()? {
        1 => single(&rt, runs),
        n => fleet::bench(&rt, n, runs),
    }
}

/// The single-proxy runs, one per kind of failure.
fn single(rt: &Runtime, runs: usize) -> anyhow::Result<()> {
    let kinds = env_kinds()?;

    let mut results: Vec<(Kind, Vec<Result<RunResult, String>>)> = Vec::new();
    let mut pg_version = None;
    for &kind in &kinds {
        let mut per_kind = Vec::new();
        for run in 1..=runs {
            eprintln!("--- {} run {run}/{runs} ---", kind.name());
            // Run k of n fails (k-1)/n of a health-check interval later than
            // the first: a real failure is as likely at any point of the
            // interval, and the setup takes about the same time every run,
            // so without this every run would fail at the same phase.
            let phase = HEALTH_INTERVAL.mul_f64((run - 1) as f64 / runs as f64);
            let outcome = run_once(rt, kind, phase, &mut pg_version);
            match &outcome {
                Ok(r) => eprintln!(
                    "{} run {run}: first ack (degraded: switchover) after {}, longest pause {}, \
                     writer errors {}, idle-client errors {}, lost acknowledged writes {}",
                    kind.name(),
                    fmt_secs(r.recovery),
                    fmt_secs(r.pause),
                    r.writer_errors,
                    r.idle_errors,
                    fmt_opt(r.lost)
                ),
                Err(e) => eprintln!("{} run {run} FAILED: {e}", kind.name()),
            }
            per_kind.push(outcome.map_err(|e| format!("{e:#}")));
        }
        results.push((kind, per_kind));
    }
    let defaults = proxy_config("127.0.0.1:5432", "127.0.0.1:5433", "127.0.0.1:6432", None)?;
    println!(
        "\n{}",
        report(&results, &defaults, pg_version.as_deref().unwrap_or("?"))
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------

/// What one run measured.
struct RunResult {
    /// Seconds from T0 to the first acknowledged write after the failure
    /// (for `degraded`: to the replica leaving recovery); `None`: no
    /// recovery within [`RECOVERY_CAP`].
    recovery: Option<f64>,
    /// The longest gap between two consecutive acknowledgements from T0 on.
    pause: Option<f64>,
    /// Seconds from T0 to the writer's first error, if any.
    first_error: Option<f64>,
    /// Errors the writer saw (statements and reconnect attempts).
    writer_errors: usize,
    /// Times the writer had to open a new connection.
    reconnects: usize,
    /// Idle clients whose `SELECT 1` after the failover failed.
    idle_errors: usize,
    /// Writes acknowledged during the whole run.
    acked: usize,
    /// Acknowledged ids missing on the former replica; `None` if unknown.
    lost: Option<usize>,
    /// Whether the former replica left recovery.
    promoted: Option<bool>,
    /// Distinct error messages and other remarks.
    notes: Vec<String>,
}

fn run_once(
    rt: &Runtime,
    kind: Kind,
    phase: Duration,
    pg_version: &mut Option<String>,
) -> anyhow::Result<RunResult> {
    let cluster = LocalCluster::start(LocalClusterOptions {
        replicas: 1,
        fsync: false,
        ..Default::default()
    })
    .context("starting the local cluster (is PostgreSQL installed?)")?;
    let primary = cluster.primary().clone();
    let replica = cluster
        .replicas()
        .first()
        .cloned()
        .ok_or_else(|| anyhow!("the local cluster has no replica"))?;
    if pg_version.is_none() {
        *pg_version = Some(primary.psql("postgres", "SHOW server_version")?);
    }
    primary.psql(
        APP_DB,
        &format!("CREATE TABLE t (id bigint PRIMARY KEY);\nALTER TABLE t OWNER TO {APP_USER};"),
    )?;
    enable_sync_replication(&primary, &replica)?;

    // Declared before the proxy so that, on an early return, the proxy
    // stops first, then the processes are resumed, then the cluster goes.
    let mut frozen: Option<Frozen> = None;
    let exporter = match kind.probed() {
        true => Some(Exporter::start(rt, &exposition(PowerState::On, Psu::Ok))?),
        false => None,
    };
    let probe = exporter.as_ref().map(Exporter::spec);
    let proxy = Switchyard::start(|listen| {
        proxy_config(&primary.addr(), &replica.addr(), listen, probe.as_deref())
    })?;
    let conninfo = format!(
        "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={APP_DB} \
         application_name=failover_bench connect_timeout=5",
        proxy.port
    );
    let mut notes = Vec::new();

    // The proxy serves nothing before its first health checks; wait for it.
    let (writer_client, idle) = rt.block_on(async {
        let writer_client = connect_when_ready(&conninfo, "SELECT 1", READY_TIMEOUT).await?;
        let mut idle = Vec::with_capacity(IDLE_CLIENTS);
        for i in 0..IDLE_CLIENTS {
            let c = connect(&conninfo)
                .await
                .with_context(|| format!("connecting idle client {i}"))?;
            c.simple_query("SELECT 1")
                .await
                .with_context(|| format!("first query of idle client {i}"))?;
            idle.push(c);
        }
        anyhow::Ok((writer_client, idle))
    })?;

    let log = Arc::new(Mutex::new(WriterLog::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer_task = rt.spawn(writer(
        writer_client,
        conninfo.clone(),
        1,
        Arc::clone(&log),
        Arc::clone(&stop),
    ));

    thread::sleep(STEADY_WRITES + phase);
    {
        let log = lock(&log);
        if log.acks.is_empty() {
            notes.push("no write acknowledged before the failure".into());
        }
        if !log.errors.is_empty() {
            notes.push(format!(
                "{} writer error(s) before the failure",
                log.errors.len()
            ));
        }
    }

    // The failure.
    let t0 = Instant::now();
    let exporter_says = |text: String| {
        if let Some(e) = &exporter {
            e.set(text);
        }
    };
    match kind {
        Kind::Crash => primary
            .stop(StopMode::Immediate)
            .context("pg_ctl stop -m immediate of the primary")?,
        Kind::Hang => Frozen::freeze(primary.data_dir(), &mut frozen)?,
        Kind::PowerLoss => {
            Frozen::freeze(primary.data_dir(), &mut frozen)?;
            exporter_says(exposition(PowerState::Off, Psu::Ok));
        }
        Kind::Degraded => exporter_says(exposition(PowerState::On, Psu::Lost)),
    }
    let injected = Instant::now();
    let recovered_at = wait_recovery(kind, &log, &replica, t0, injected);
    let ended = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let finished = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), &mut writer_task)
            .await
            .is_ok()
    });
    if !finished {
        writer_task.abort();
        notes.push("a write was still pending when the run ended".into());
    }

    // Idle clients: one query each on the connection opened before the failure.
    let idle_outcomes = rt.block_on(async {
        let checks = idle.iter().map(|c| async move {
            match tokio::time::timeout(IDLE_QUERY_TIMEOUT, c.simple_query("SELECT 1")).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(describe(&e)),
                Err(_) => Some(format!(
                    "no answer within {}s",
                    IDLE_QUERY_TIMEOUT.as_secs()
                )),
            }
        });
        futures_util::future::join_all(checks).await
    });
    let idle_errors: Vec<String> = idle_outcomes.into_iter().flatten().collect();
    drop(idle);

    // Acknowledged writes that the former replica does not have.
    let log = std::mem::take(&mut *lock(&log));
    let (lost, promoted) = match check_replica(&replica, &log) {
        Ok((lost, promoted)) => (Some(lost.len()), Some(promoted)),
        Err(e) => {
            notes.push(format!("could not check the replica: {e:#}"));
            (None, None)
        }
    };

    let mut messages = BTreeSet::new();
    for e in &log.errors {
        messages.insert(e.msg.clone());
    }
    for m in &idle_errors {
        messages.insert(format!("idle client: {m}"));
    }
    let shown = messages.len().min(MAX_MESSAGES);
    notes.extend(messages.iter().take(MAX_MESSAGES).cloned());
    if messages.len() > shown {
        notes.push(format!(
            "... {} more distinct message(s)",
            messages.len() - shown
        ));
    }

    let result = RunResult {
        recovery: recovered_at.map(|at| at.duration_since(t0).as_secs_f64()),
        pause: longest_pause(&log, t0, ended),
        first_error: log
            .errors
            .iter()
            .find(|e| e.at >= t0)
            .map(|e| e.at.duration_since(t0).as_secs_f64()),
        writer_errors: log.errors.len(),
        reconnects: log.reconnects,
        idle_errors: idle_errors.len(),
        acked: log.acks.len(),
        lost,
        promoted,
        notes,
    };

    // Teardown: the proxy first (so it never sees the old primary resume),
    // then the processes are resumed, before anything tries to stop them.
    drop(writer_task);
    drop(proxy);
    drop(frozen);
    drop(cluster);
    Ok(result)
}

/// Waits until writes resumed after the failure (for `degraded`: until the
/// replica left recovery and writes went on) and kept going for
/// [`AFTER_RECOVERY`]; `None` at [`RECOVERY_CAP`].
fn wait_recovery(
    kind: Kind,
    log: &Mutex<WriterLog>,
    replica: &PgNode,
    t0: Instant,
    injected: Instant,
) -> Option<Instant> {
    let mut promoted: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let resumed = match kind {
            Kind::Degraded => {
                if promoted.is_none()
                    && replica.psql("postgres", "SELECT pg_is_in_recovery()").ok()
                        == Some("f".into())
                {
                    promoted = Some(now);
                }
                promoted.filter(|p| lock(log).acks.last().is_some_and(|a| a.acked > *p))
            }
            _ => first_ack_after(&lock(log), injected),
        };
        match resumed {
            Some(at) if now >= at + AFTER_RECOVERY => return Some(at),
            None if now >= t0 + RECOVERY_CAP => return None,
            _ => {}
        }
        thread::sleep(Duration::from_millis(if kind == Kind::Degraded {
            100
        } else {
            20
        }));
    }
}

/// The longest gap between two consecutive acknowledgements from `t0` on,
/// counting the one from the last acknowledgement to `end` (writes that
/// never resumed are the longest pause of all).
fn longest_pause(log: &WriterLog, t0: Instant, end: Instant) -> Option<f64> {
    let acks: Vec<Instant> = log.acks.iter().map(|a| a.acked).collect();
    let tail = acks.last().map(|&last| end.duration_since(last.max(t0)));
    acks.windows(2)
        .filter(|w| w[1] >= t0)
        .map(|w| w[1].duration_since(w[0].max(t0)))
        .chain(tail)
        .map(|d| d.as_secs_f64())
        .max_by(f64::total_cmp)
}

/// Synchronous replication to `replica1` on both nodes, then waits until
/// the primary reports the standby as `sync`.
fn enable_sync_replication(primary: &PgNode, replica: &PgNode) -> anyhow::Result<()> {
    let sql = format!(
        "ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}';\n\
         ALTER SYSTEM SET synchronous_commit = 'on';\n\
         SELECT pg_reload_conf();"
    );
    primary
        .psql("postgres", &sql)
        .context("enabling synchronous replication on the primary")?;
    replica
        .psql("postgres", &sql)
        .context("enabling synchronous replication on the replica")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let query = format!(
        "SELECT current_setting('synchronous_commit') || '|' || coalesce((SELECT sync_state \
         FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}'), 'none')"
    );
    loop {
        let state = primary.psql("postgres", &query)?;
        if state == "on|sync" {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("synchronous replication not active after 15s (synchronous_commit|sync_state = {state})");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Acknowledged ids missing on `replica`, and whether it left recovery.
fn check_replica(replica: &PgNode, log: &WriterLog) -> anyhow::Result<(Vec<i64>, bool)> {
    let promoted = replica.psql("postgres", "SELECT pg_is_in_recovery()")? == "f";
    let rows = replica.psql(APP_DB, "SELECT id FROM t")?;
    let present: HashSet<i64> = rows
        .lines()
        .map(|l| l.trim().parse::<i64>())
        .collect::<Result<_, _>>()
        .context("parsing ids from the replica")?;
    let lost = log
        .acks
        .iter()
        .map(|a| a.id)
        .filter(|id| !present.contains(id))
        .collect();
    Ok((lost, promoted))
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// One acknowledged write.
struct Ack {
    id: i64,
    sent: Instant,
    acked: Instant,
}

/// One error the writer saw.
struct WriterError {
    at: Instant,
    msg: String,
}

/// What the writer did, shared with the main thread.
#[derive(Default)]
struct WriterLog {
    acks: Vec<Ack>,
    errors: Vec<WriterError>,
    reconnects: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// When the first write after the failure (see the module doc) was
/// acknowledged.
fn first_ack_after(log: &WriterLog, injected: Instant) -> Option<Instant> {
    log.acks
        .iter()
        .find(|a| a.sent >= injected || a.acked >= injected + STALE_ACK_MARGIN)
        .map(|a| a.acked)
}

/// Inserts increasing ids from `first` on one connection until `stop`;
/// opens a new connection only when the proxy closed the current one.
async fn writer(
    mut client: Client,
    conninfo: String,
    first: i64,
    log: Arc<Mutex<WriterLog>>,
    stop: Arc<AtomicBool>,
) {
    let mut id: i64 = first - 1;
    while !stop.load(Ordering::Relaxed) {
        if client.is_closed() {
            match connect(&conninfo).await {
                Ok(c) => {
                    client = c;
                    lock(&log).reconnects += 1;
                }
                Err(e) => {
                    lock(&log).errors.push(WriterError {
                        at: Instant::now(),
                        msg: format!("reconnect: {}", describe(&e)),
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        id += 1;
        let sent = Instant::now();
        let res = client.execute(INSERT, &[&id]).await;
        let now = Instant::now();
        match res {
            Ok(_) => lock(&log).acks.push(Ack {
                id,
                sent,
                acked: now,
            }),
            Err(e) => {
                let closed = if client.is_closed() {
                    " (connection closed)"
                } else {
                    ""
                };
                lock(&log).errors.push(WriterError {
                    at: now,
                    msg: format!("{}{closed}", describe(&e)),
                });
            }
        }
        tokio::time::sleep(WRITER_PAUSE).await;
    }
}

// ---------------------------------------------------------------------------
// Hung primary
// ---------------------------------------------------------------------------

/// Server processes stopped with SIGSTOP; resumed (SIGCONT) on drop.
struct Frozen {
    pids: Vec<u32>,
}

impl Frozen {
    /// Stops the postmaster of `data_dir` and all its children; `slot`
    /// holds the guard from before the first signal, so whatever was
    /// stopped is resumed even if a later step fails.
    fn freeze(data_dir: &Path, slot: &mut Option<Frozen>) -> anyhow::Result<()> {
        let pm = postmaster_pid(data_dir)?;
        let frozen = slot.insert(Frozen { pids: Vec::new() });
        let mut batch: Vec<u32> = std::iter::once(pm).chain(children_of(pm)).collect();
        // A second pass catches a child forked while the first was sent.
        for _ in 0..2 {
            if batch.is_empty() {
                break;
            }
            frozen.pids.extend(&batch);
            signal("STOP", &batch)?;
            batch = children_of(pm)
                .into_iter()
                .filter(|p| !frozen.pids.contains(p))
                .collect();
        }
        Ok(())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if self.pids.is_empty() {
            return;
        }
        // Children first, so the postmaster wakes up to running children.
        let mut pids = std::mem::take(&mut self.pids);
        pids.reverse();
        if let Err(e) = signal("CONT", &pids) {
            eprintln!("failover: SIGCONT of {pids:?} failed: {e:#}");
        }
    }
}

fn postmaster_pid(data_dir: &Path) -> anyhow::Result<u32> {
    let file = data_dir.join("postmaster.pid");
    let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| anyhow!("no pid on the first line of {}", file.display()))
}

/// Pids whose parent is `ppid`, from /proc.
fn children_of(ppid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the parenthesised comm: state, then ppid.
        let after = &stat[stat.rfind(')')? + 1..];
        let parent: u32 = after.split_whitespace().nth(1)?.parse().ok()?;
        (parent == ppid).then_some(pid)
    })
    .collect()
}

/// `kill -SIG pid...`.
fn signal(sig: &str, pids: &[u32]) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{sig} {pids:?} exited with {status}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Switchyard configuration
// ---------------------------------------------------------------------------

/// The proxy's configuration: default `[health]` and `[failover]`.
/// With `probe` (a `hardware = { ... }` body), the primary has that
/// hardware probe and a degraded primary is switched over.
fn proxy_config(
    primary: &str,
    replica: &str,
    listen: &str,
    probe: Option<&str>,
) -> anyhow::Result<Config> {
    let hardware = probe.map_or(String::new(), |p| format!(", hardware = {{ {p} }}"));
    let failover = match probe {
        Some(_) => "\n[failover]\nswitchover_on_degraded = true",
        None => "",
    };
    let cluster = format!(
        r#"nodes = [
  {{ name = "primary", addr = "{primary}"{hardware} }},
  {{ name = "{STANDBY_NAME}", addr = "{replica}" }},
]
user = "{CLUSTER_USER}"
password = "{CLUSTER_PASSWORD}"{failover}"#
    );
    common::proxy_config(listen, POOL_SIZE, r#"shutdown_timeout = "2s""#, &cluster)
}

// ---------------------------------------------------------------------------
// Hardware exporter
// ---------------------------------------------------------------------------

/// The chassis power state a BMC reports.
#[derive(Clone, Copy)]
enum PowerState {
    On,
    Off,
}

/// The state of the first of two power supplies.
#[derive(Clone, Copy)]
enum Psu {
    Ok,
    Lost,
}

/// What an ipmi_exporter serves (the series the rules read).
fn exposition(power: PowerState, psu: Psu) -> String {
    let power = match power {
        PowerState::On => 1,
        PowerState::Off => 0,
    };
    let psu = match psu {
        Psu::Ok => 0,
        Psu::Lost => 2,
    };
    format!(
        "# TYPE ipmi_chassis_power_state gauge\n\
         ipmi_chassis_power_state {power}\n\
         # TYPE ipmi_sensor_state gauge\n\
         ipmi_sensor_state{{id=\"52\",name=\"PS1 Status\",type=\"Power Supply\"}} {psu}\n\
         ipmi_sensor_state{{id=\"53\",name=\"PS2 Status\",type=\"Power Supply\"}} 0\n"
    )
}

/// An HTTP endpoint serving Prometheus text that the benchmark rewrites.
struct Exporter {
    addr: std::net::SocketAddr,
    text: Arc<Mutex<String>>,
}

impl Exporter {
    fn start(rt: &Runtime, text: &str) -> anyhow::Result<Exporter> {
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let text = Arc::new(Mutex::new(text.to_string()));
        rt.spawn(serve_exporter(listener, Arc::clone(&text)));
        Ok(Exporter { addr, text })
    }

    fn set(&self, text: String) {
        *lock(&self.text) = text;
    }

    /// The probe: default interval and timeout; chassis off is failing, a
    /// power supply not nominal is degraded.
    fn spec(&self) -> String {
        format!(
            "url = \"http://{}/metrics\", rules = [ \
             {{ metric = \"ipmi_chassis_power_state\", op = \"==\", value = 0, status = \"failing\" }}, \
             {{ metric = \"ipmi_sensor_state\", labels = {{ type = \"Power Supply\" }}, op = \"!=\", value = 0, status = \"degraded\" }} ]",
            self.addr
        )
    }
}

/// Answers every connection with the current text (HTTP/1.1, then close).
async fn serve_exporter(listener: tokio::net::TcpListener, text: Arc<Mutex<String>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while let Ok((mut s, _)) = listener.accept().await {
        let body = lock(&text).clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(response.as_bytes()).await;
        });
    }
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

/// Median and max, a run without recovery counting as infinitely slow.
fn median_max(xs: &[Option<f64>]) -> (Option<f64>, Option<f64>) {
    let v: Vec<f64> = xs.iter().map(|x| x.unwrap_or(f64::INFINITY)).collect();
    let max = v.iter().copied().max_by(f64::total_cmp);
    let fin = |x: Option<f64>| x.filter(|x| x.is_finite());
    (fin(common::median(v)), fin(max))
}

fn fmt_secs(x: Option<f64>) -> String {
    x.map_or_else(
        || format!("no recovery (> {}s)", RECOVERY_CAP.as_secs()),
        |v| format!("{v:.2}"),
    )
}

fn fmt_opt<T: std::fmt::Display>(x: Option<T>) -> String {
    x.map_or("?".into(), |v| v.to_string())
}

fn report(
    results: &[(Kind, Vec<Result<RunResult, String>>)],
    cfg: &Config,
    pg_version: &str,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Failover benchmark: PostgreSQL {pg_version}, 1 primary + 1 streaming replica, synchronous \
         replication (synchronous_standby_names = '{STANDBY_NAME}', synchronous_commit = on, \
         fsync off); Switchyard in-process with default settings: health interval {:?}, timeout \
         {:?}, failure_threshold {}; failover mode {:?}, sync_policy {:?}, hold_timeout {:?}; \
         pool size {POOL_SIZE}, transaction mode. One writer (`{INSERT}`, {}ms pause), \
         {IDLE_CLIENTS} idle clients; failure after {}s of writes; crash = pg_ctl stop -m \
         immediate, hang = SIGSTOP of the postmaster and its children, powerloss = the hang and \
         the primary's BMC (hardware probe, default interval 5 s) reporting the chassis off at \
         the same instant, degraded = the BMC reporting one power supply lost \
         (switchover_on_degraded = true).\n",
        cfg.health.interval,
        cfg.health.timeout,
        cfg.health.failure_threshold,
        cfg.failover.mode,
        cfg.failover.sync_policy,
        cfg.failover.hold_timeout,
        WRITER_PAUSE.as_millis(),
        STEADY_WRITES.as_secs(),
    );
    runs_table(&mut s, results);
    summary_table(&mut s, results);
    verdicts(&mut s, results);
    s
}

/// Seconds to the first acknowledged write, or "n/a" where it does not apply.
fn fmt_recovery(kind: Kind, x: Option<f64>) -> String {
    match kind {
        Kind::Degraded => "n/a".into(),
        _ => fmt_secs(x),
    }
}

fn runs_table(s: &mut String, results: &[(Kind, Vec<Result<RunResult, String>>)]) {
    let _ = writeln!(s, "Individual runs:\n");
    let _ = writeln!(
        s,
        "| kind | run | s to first acked write | longest write pause s | s to first writer error | \
         writer errors | writer reconnects | idle-client errors | acked writes | lost acked \
         writes | replica promoted | messages |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
    );
    for (kind, runs) in results {
        for (i, r) in runs.iter().enumerate() {
            let _ = match r {
                Ok(r) => writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    kind.name(),
                    i + 1,
                    fmt_recovery(*kind, r.recovery),
                    fmt_secs(r.pause),
                    r.first_error.map_or("–".into(), |v| format!("{v:.2}")),
                    r.writer_errors,
                    r.reconnects,
                    r.idle_errors,
                    r.acked,
                    fmt_opt(r.lost),
                    r.promoted.map_or("?", |p| if p { "yes" } else { "no" }),
                    r.notes.join("; ").replace('|', "\\|").replace('\n', " "),
                ),
                Err(e) => writeln!(
                    s,
                    "| {} | {} | run failed | | | | | | | | | {} |",
                    kind.name(),
                    i + 1,
                    e.replace('|', "\\|").replace('\n', " ")
                ),
            };
        }
    }
}

fn summary_table(s: &mut String, results: &[(Kind, Vec<Result<RunResult, String>>)]) {
    let _ = writeln!(s, "\nSummary:\n");
    let _ = writeln!(
        s,
        "| kind | runs | median s to first acked write | max s | median longest pause s | max \
         pause s | writer errors (total) | idle-client errors (total) | lost acked writes \
         (total) | runs without recovery | runs failed to run |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (kind, runs) in results {
        let ok: Vec<&RunResult> = runs.iter().filter_map(|r| r.as_ref().ok()).collect();
        let recoveries: Vec<Option<f64>> = ok.iter().map(|r| r.recovery).collect();
        let (med, max) = median_max(&recoveries);
        let (pmed, pmax) = median_max(&ok.iter().map(|r| r.pause).collect::<Vec<_>>());
        let lost: usize = ok.iter().filter_map(|r| r.lost).sum();
        let lost = match ok.iter().all(|r| r.lost.is_some()) {
            true => lost.to_string(),
            false => format!("{lost} (+ runs not checked)"),
        };
        let shown = |x: Option<f64>, f: &dyn Fn(Option<f64>) -> String| match ok.is_empty() {
            true => "–".to_string(),
            false => f(x),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            kind.name(),
            ok.len(),
            shown(med, &|x| fmt_recovery(*kind, x)),
            shown(max, &|x| fmt_recovery(*kind, x)),
            shown(pmed, &fmt_secs),
            shown(pmax, &fmt_secs),
            ok.iter().map(|r| r.writer_errors).sum::<usize>(),
            ok.iter().map(|r| r.idle_errors).sum::<usize>(),
            lost,
            recoveries.iter().filter(|r| r.is_none()).count(),
            runs.len() - ok.len(),
        );
    }
}

fn verdicts(s: &mut String, results: &[(Kind, Vec<Result<RunResult, String>>)]) {
    let _ = writeln!(
        s,
        "\nTargets (default settings): median s to the first acknowledged write crash ≤ {:.1}, \
         hang ≤ {:.1}, powerloss ≤ {:.1}; degraded: 0 writer errors and the longest write pause \
         ≤ {:.1} s; 0 lost acknowledged writes and 0 errors on idle clients everywhere. Writer \
         errors are expected for the statement in flight at a failure.",
        Kind::Crash.target_secs(),
        Kind::Hang.target_secs(),
        Kind::PowerLoss.target_secs(),
        Kind::Degraded.target_secs(),
    );
    let verdict = |b: bool| if b { "met" } else { "MISSED" };
    for (kind, runs) in results {
        let ok: Vec<&RunResult> = runs.iter().filter_map(|r| r.as_ref().ok()).collect();
        if ok.is_empty() {
            continue;
        }
        let measure = |r: &&RunResult| match kind {
            Kind::Degraded => r.pause,
            _ => r.recovery,
        };
        let (med, _) = median_max(&ok.iter().map(measure).collect::<Vec<_>>());
        // A switchover that never let writes resume did not meet anything.
        let resumed = ok.iter().all(|r| r.recovery.is_some());
        let time_ok = resumed && med.is_some_and(|m| m <= kind.target_secs());
        let errors_ok = *kind != Kind::Degraded || ok.iter().all(|r| r.writer_errors == 0);
        let lost_ok = ok.iter().all(|r| r.lost == Some(0));
        let idle_ok = ok.iter().all(|r| r.idle_errors == 0);
        let _ =
            writeln!(
            s,
            "- {}: median {} {} s vs ≤ {:.1} s: {}; writer errors: {}; lost acknowledged writes: \
             {}; idle-client errors: {}",
            kind.name(),
            if *kind == Kind::Degraded { "pause" } else { "first write" },
            med.map_or("∞".into(), |m| format!("{m:.2}")),
            kind.target_secs(),
            verdict(time_ok),
            verdict(errors_ok),
            verdict(lost_ok),
            verdict(idle_ok),
        );
    }
}
