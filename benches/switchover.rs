//! Planned-switchover benchmark (issue #7): `SWITCHOVER TO node` on the
//! admin console, repeatedly, under a steady write load through Switchyard;
//! reports the write pause of each switchover (as the proxy reports it and
//! as clients see it), client errors and lost commits.
//!
//! Run with `cargo bench --bench switchover` (as root or as a user that may
//! start PostgreSQL). Environment: `BENCH_SWITCHOVERS` (default 5, at most
//! [`MAX_SWITCHOVERS`]) switchovers; `BENCH_FSYNC` (`on` by default, or
//! `off`, see 1.); `RUST_LOG=switchyard=info` shows the proxy's decisions.
//!
//! One run:
//! 1. a throw-away cluster: one primary and one streaming replica per
//!    switchover (`replica1`, `replica2`, ...). After a switchover the old
//!    primary is read-only and fenced until it is rebuilt, so each
//!    switchover moves to a fresh replica instead of rebuilding one.
//!    `fsync = on` (as in `pgbench_compare`): a commit is acknowledged once
//!    flushed. `BENCH_FSYNC=off` runs the local cluster's default instead,
//!    `fsync`, `synchronous_commit` and `full_page_writes` off, where a
//!    commit is acknowledged before its WAL is written. Replication is
//!    asynchronous: the switchover's catch-up step is what must keep
//!    acknowledged commits;
//! 2. Switchyard in-process: every node named, the cluster's superuser for
//!    control, an admin user, `failover.hold_timeout` [`HOLD_TIMEOUT`],
//!    `switchover.drain_timeout` [`DRAIN_TIMEOUT`], a pool of [`POOL_SIZE`];
//! 3. [`CLIENTS`] clients through the proxy, one connection each (a new one
//!    only if the proxy closes it), insert unique ids with `INSERT INTO t
//!    VALUES ($1)`, [`THINK_TIME`] apart: half autocommit, half as `BEGIN`,
//!    `INSERT`, `COMMIT` in three round trips, so that switchovers meet open
//!    transactions. Every acknowledged id is recorded with the time of its
//!    acknowledgement, and every error;
//! 4. after [`WARM_UP`], `SWITCHOVER TO replicaN` for N = 1, 2, ...,
//!    [`INTERVAL`] apart, each once the target streams from the current
//!    primary (`SHOW NODES`). After each: `SHOW EVENTS` for the proxy's write
//!    pause (`writes_resumed`) and step durations (`switchover_step`), and
//!    the old primary's row count, read directly;
//! 5. the load stops [`INTERVAL`] after the last switchover. Every
//!    acknowledged id must be on the final primary (read directly; a missing
//!    one is a lost commit), and no old primary may have more rows than
//!    right after its switchover.
//!
//! The client-observed write pause of a switchover is the longest gap
//! between two consecutive commit acknowledgements (all clients merged) that
//! overlaps the admin command, from sending it to its answer.
//!
//! Without `--bench` on the command line (e.g. `cargo test --benches`) it
//! does nothing: a run takes about a minute.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use switchyard::config::Config;
use switchyard::local_cluster::{
    LocalCluster, LocalClusterOptions, PgNode, APP_DB, APP_PASSWORD, APP_USER, CLUSTER_PASSWORD,
    CLUSTER_USER,
};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, SimpleQueryMessage, Statement};

// `common::proxy_config` is the one shared helper not used here (see
// `proxy_config` below), so the module's unused code is allowed.
#[allow(dead_code)]
mod common;

use common::pg::{connect, connect_when_ready, describe};
use common::{env_number, median, Switchyard};

/// Clients writing through the proxy.
const CLIENTS: usize = 16;
/// Server connections per pool: one per client, so that no client waits
/// for a server connection in steady state and every wait is the switchover.
const POOL_SIZE: usize = CLIENTS;
/// Pause between two transactions of a client: a steady load that leaves
/// the two shared cores some room, not a saturation test.
const THINK_TIME: Duration = Duration::from_millis(5);
/// Load before the first switchover (the "before" commit rate).
const WARM_UP: Duration = Duration::from_secs(3);
/// Load between two switchovers, and after the last one.
const INTERVAL: Duration = Duration::from_secs(3);
/// Default number of switchovers (and replicas).
const DEFAULT_SWITCHOVERS: u64 = 5;
/// Most switchovers a run does: each needs its own replica.
const MAX_SWITCHOVERS: u64 = 20;
/// The admin console's user (in `[[users]]` and `proxy.admin_users`).
const ADMIN_USER: &str = "admin";
/// Its password.
const ADMIN_PASSWORD: &str = "adminpw";
/// `failover.hold_timeout`: how long a held transaction may wait.
const HOLD_TIMEOUT: &str = "30s";
/// `switchover.drain_timeout`: how long running transactions may finish.
const DRAIN_TIMEOUT: &str = "5s";
/// Longest wait for the answer to `SWITCHOVER TO`: drain (5 s), catch-up
/// (10 s) and promotion (up to 35 s) with room to spare.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest wait for the proxy to serve its first query.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the next target to stream from the current primary.
const TARGET_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for the clients to end once stopped: a transaction held by
/// the proxy may wait up to `hold_timeout`.
const LOAD_STOP_TIMEOUT: Duration = Duration::from_secs(40);
/// Pause before a client retries after failing to connect or prepare.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Issue #7's target for the write pause, in milliseconds.
const TARGET_PAUSE_MS: f64 = 1000.0;
/// The clients' statement.
const INSERT: &str = "INSERT INTO t VALUES ($1)";

fn main() {
    common::run_main("switchover", "switchover benchmark failed", bench);
}

fn bench() -> anyhow::Result<()> {
    let count = env_number("BENCH_SWITCHOVERS", DEFAULT_SWITCHOVERS)?.clamp(1, MAX_SWITCHOVERS);
    let fsync = env_fsync()?;
    let began = Instant::now();
    // Declared in this order so that they drop in the reverse one, also on
    // an early return: load, admin client, proxy, cluster, runtime.
    let rt = common::client_runtime()?;
    eprintln!(
        "starting PostgreSQL: 1 primary + {count} replicas, {}...",
        fsync_label(fsync)
    );
    let cluster = LocalCluster::start(LocalClusterOptions {
        replicas: count as usize,
        fsync,
        ..Default::default()
    })
    .context("starting the local cluster (is PostgreSQL installed?)")?;
    let primary = cluster.primary();
    let pg_version = primary.psql("postgres", "SHOW server_version")?;
    primary.psql(
        APP_DB,
        &format!("CREATE TABLE t (id bigint PRIMARY KEY);\nALTER TABLE t OWNER TO {APP_USER};"),
    )?;
    let proxy = Switchyard::start(|listen| proxy_config(&cluster, listen))?;
    let admin_info = conninfo(proxy.port, ADMIN_USER, ADMIN_PASSWORD, "switchyard");
    let app_info = conninfo(proxy.port, APP_USER, APP_PASSWORD, APP_DB);
    let admin = rt.block_on(connect_when_ready(
        &admin_info,
        "SHOW VERSION",
        READY_TIMEOUT,
    ))?;
    // The proxy routes nothing before its first health checks.
    drop(rt.block_on(connect_when_ready(&app_info, "SELECT 1", READY_TIMEOUT))?);

    eprintln!("load: {CLIENTS} clients; {count} switchovers, {INTERVAL:?} apart...");
    let load = Load::start(&rt, &app_info)?;
    thread::sleep(WARM_UP);
    let runs = run_switchovers(&rt, &admin, &cluster)?;
    thread::sleep(INTERVAL);
    let log = load.finish(&rt);

    eprintln!("checking the final primary and the old primaries...");
    let checks = final_checks(&cluster, &runs, &log)?;
    let text = report(&Report {
        pg_version: &pg_version,
        fsync,
        runs: &runs,
        log: &log,
        checks: &checks,
    });
    println!("\n{text}");
    eprintln!(
        "switchover benchmark: {:.0} s in all",
        began.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `BENCH_FSYNC`: `on` (default) or `off`.
fn env_fsync() -> anyhow::Result<bool> {
    match std::env::var("BENCH_FSYNC") {
        Err(_) => Ok(true),
        Ok(v) => match v.trim() {
            "on" | "1" | "true" => Ok(true),
            "off" | "0" | "false" => Ok(false),
            other => bail!("BENCH_FSYNC={other:?}: on or off"),
        },
    }
}

fn fsync_label(fsync: bool) -> &'static str {
    if fsync {
        "fsync on"
    } else {
        "fsync, synchronous_commit and full_page_writes off"
    }
}

/// libpq connection string for the proxy on `port`.
fn conninfo(port: u16, user: &str, password: &str, db: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user={user} password={password} dbname={db} \
         application_name=switchover_bench connect_timeout=5"
    )
}

// ---------------------------------------------------------------------------
// Switchyard configuration
// ---------------------------------------------------------------------------

/// The proxy's configuration. Written out whole rather than with
/// `common::proxy_config`: it needs a second `[[users]]` entry and the
/// `[failover]` and `[switchover]` sections, which that helper has no place
/// for.
fn proxy_config(cluster: &LocalCluster, listen: &str) -> anyhow::Result<Config> {
    // Named nodes: `SWITCHOVER TO` and `SHOW EVENTS` speak of node names,
    // and these are the cluster's own (`primary`, `replica1`, ...).
    let nodes: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| format!("  {{ name = \"{}\", addr = \"{}\" }},", n.name(), n.addr()))
        .collect();
    let nodes = nodes.join("\n");
    let toml = format!(
        r#"
[proxy]
listen = "{listen}"
pool_mode = "transaction"
default_pool_size = {POOL_SIZE}
auth_type = "scram-sha-256"
admin_users = ["{ADMIN_USER}"]
shutdown_timeout = "2s"

[[users]]
name = "{APP_USER}"
password = "{APP_PASSWORD}"

[[users]]
name = "{ADMIN_USER}"
password = "{ADMIN_PASSWORD}"

[failover]
hold_timeout = "{HOLD_TIMEOUT}"

[switchover]
drain_timeout = "{DRAIN_TIMEOUT}"

[cluster]
nodes = [
{nodes}
]
user = "{CLUSTER_USER}"
password = "{CLUSTER_PASSWORD}"
"#
    );
    switchyard::config::load_str(&toml).context("switchyard config")
}

// ---------------------------------------------------------------------------
// Switchovers
// ---------------------------------------------------------------------------

/// One `SWITCHOVER TO` and what was seen of it.
struct Switchover {
    from: String,
    to: String,
    /// When the admin command was sent, and when its answer came.
    sent: Instant,
    answered: Instant,
    /// The admin command's outcome: `Err` holds the error it returned.
    outcome: Result<(), String>,
    /// How long the target took to stream from the current primary.
    target_ready: Result<Duration, String>,
    /// `SHOW EVENTS` rows recorded during the command.
    events: Vec<Event>,
    /// The old primary's rows right after the switchover (done ones only).
    old_rows_after: Option<u64>,
}

impl Switchover {
    fn admin_ms(&self) -> f64 {
        ms(self.answered - self.sent)
    }

    /// The write pause in the `writes_resumed` event: "... write pause N ms".
    fn proxy_pause_ms(&self) -> Option<f64> {
        self.events
            .iter()
            .filter(|e| e.kind == "writes_resumed")
            .find_map(|e| {
                let (_, rest) = e.message.split_once("write pause ")?;
                rest.split_whitespace().next()?.parse().ok()
            })
    }

    /// The `switchover_step` durations, by step.
    fn step_ms(&self, step: Step) -> Option<f64> {
        self.events
            .iter()
            .filter(|e| e.kind == "switchover_step" && Step::of(&e.message) == Some(step))
            .find_map(|e| trailing_ms(&e.message))
    }
}

/// The steps of a switchover that `switchover_step` events report.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    Drain,
    Freeze,
    CatchUp,
    Promote,
}

impl Step {
    const ALL: [Step; 4] = [Step::Drain, Step::Freeze, Step::CatchUp, Step::Promote];

    /// Which step a `switchover_step` message is about (see
    /// src/cluster/switchover.rs for the wording).
    fn of(message: &str) -> Option<Step> {
        if message.starts_with("running transactions finished") || message.contains("cancelled") {
            Some(Step::Drain)
        } else if message.starts_with("read-only") {
            Some(Step::Freeze)
        } else if message.starts_with("replayed") {
            Some(Step::CatchUp)
        } else if message.starts_with("promoted") {
            Some(Step::Promote)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Step::Drain => "drain",
            Step::Freeze => "freeze old primary",
            Step::CatchUp => "catch-up",
            Step::Promote => "promote",
        }
    }
}

/// `N` from a message ending in "(N ms)".
fn trailing_ms(message: &str) -> Option<f64> {
    let (_, tail) = message.rsplit_once('(')?;
    tail.strip_suffix(" ms)")?.trim().parse().ok()
}

/// Switches to every replica in turn, [`INTERVAL`] apart.
fn run_switchovers(
    rt: &Runtime,
    admin: &Client,
    cluster: &LocalCluster,
) -> anyhow::Result<Vec<Switchover>> {
    let mut from = cluster.primary().clone();
    let mut runs = Vec::new();
    for (i, to) in cluster.replicas().iter().enumerate() {
        if i > 0 {
            thread::sleep(INTERVAL);
        }
        let run = switch_once(rt, admin, &from, to)?;
        match &run.outcome {
            Ok(()) => eprintln!(
                "switchover {}: {} -> {} in {:.0} ms (proxy: write pause {} ms)",
                i + 1,
                run.from,
                run.to,
                run.admin_ms(),
                run.proxy_pause_ms()
                    .map_or("?".to_string(), |p| format!("{p:.0}"))
            ),
            Err(e) => eprintln!(
                "switchover {}: {} -> {} FAILED: {e}",
                i + 1,
                run.from,
                run.to
            ),
        }
        // A switchover that did not happen leaves the primary where it was.
        if run.outcome.is_ok() {
            from = to.clone();
        }
        runs.push(run);
    }
    Ok(runs)
}

/// `SWITCHOVER TO to` while `from` is the primary, with its events and the
/// old primary's row count right after.
fn switch_once(
    rt: &Runtime,
    admin: &Client,
    from: &PgNode,
    to: &PgNode,
) -> anyhow::Result<Switchover> {
    // Not racing the monitor: the target must be seen streaming from the
    // current primary first, or a refusal would say nothing of the proxy's
    // switchover itself. It is tried anyway after the timeout.
    let target_ready = rt.block_on(wait_target_ready(admin, from.name(), to.name()));
    let last_seq = rt
        .block_on(show_events(admin))?
        .iter()
        .map(|e| e.seq)
        .max()
        .unwrap_or(0);
    let sent = Instant::now();
    let outcome = rt.block_on(switchover(admin, to.name()));
    let answered = Instant::now();
    let events = rt
        .block_on(show_events(admin))?
        .into_iter()
        .filter(|e| e.seq > last_seq)
        .collect();
    let old_rows_after = match outcome {
        Ok(()) => Some(count_rows(from)?),
        Err(_) => None,
    };
    Ok(Switchover {
        from: from.name().to_string(),
        to: to.name().to_string(),
        sent,
        answered,
        outcome,
        target_ready,
        events,
        old_rows_after,
    })
}

/// Runs `SWITCHOVER TO target`; `Err` is what the proxy answered instead.
async fn switchover(admin: &Client, target: &str) -> Result<(), String> {
    let command = format!("SWITCHOVER TO {target}");
    match tokio::time::timeout(ADMIN_TIMEOUT, admin.simple_query(&command)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("no answer within {}s", ADMIN_TIMEOUT.as_secs())),
    }
}

/// Waits until `SHOW NODES` has `target` as an up replica on `primary`'s
/// timeline (after an earlier switchover: repointed, and following the
/// new timeline); returns how long that took.
async fn wait_target_ready(
    admin: &Client,
    primary: &str,
    target: &str,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let nodes = show_nodes(admin).await.map_err(|e| format!("{e:#}"))?;
        let find = |name: &str| nodes.iter().find(|n| n.name == name);
        let seen = match (find(primary), find(target)) {
            (Some(p), Some(t))
                if p.role == "primary"
                    && t.role == "replica"
                    && t.state == "up"
                    && t.timeline == p.timeline =>
            {
                return Ok(start.elapsed());
            }
            (p, t) => format!("{primary}: {p:?}; {target}: {t:?}"),
        };
        if start.elapsed() >= TARGET_READY_TIMEOUT {
            return Err(format!(
                "{target} not streaming from {primary} after {}s ({seen})",
                TARGET_READY_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `SHOW EVENTS` row.
#[derive(Debug, Clone)]
struct Event {
    seq: i64,
    kind: String,
    node: String,
    message: String,
}

/// The proxy's timeline: columns seq, time, kind, node, message.
async fn show_events(admin: &Client) -> anyhow::Result<Vec<Event>> {
    let msgs = admin
        .simple_query("SHOW EVENTS")
        .await
        .context("SHOW EVENTS")?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(Event {
                seq: r.get(0)?.parse().ok()?,
                kind: r.get(2)?.to_string(),
                node: r.get(3).unwrap_or_default().to_string(),
                message: r.get(4).unwrap_or_default().to_string(),
            }),
            _ => None,
        })
        .collect())
}

/// The `SHOW NODES` columns the benchmark looks at.
#[derive(Debug)]
struct NodeRow {
    name: String,
    role: String,
    state: String,
    timeline: String,
}

async fn show_nodes(admin: &Client) -> anyhow::Result<Vec<NodeRow>> {
    let msgs = admin
        .simple_query("SHOW NODES")
        .await
        .context("SHOW NODES")?;
    let mut columns: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    for m in &msgs {
        match m {
            SimpleQueryMessage::RowDescription(c) => {
                columns = c.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(r) => {
                let get = |name: &str| {
                    columns
                        .iter()
                        .position(|c| c == name)
                        .and_then(|i| r.get(i))
                        .unwrap_or_default()
                        .to_string()
                };
                rows.push(NodeRow {
                    name: get("name"),
                    role: get("role"),
                    state: get("state"),
                    timeline: get("timeline"),
                });
            }
            _ => {}
        }
    }
    Ok(rows)
}

/// Rows of `t` on `node`, read directly (not through the proxy).
fn count_rows(node: &PgNode) -> anyhow::Result<u64> {
    let n = node
        .psql(APP_DB, "SELECT count(*) FROM t")
        .with_context(|| format!("counting rows on {}", node.name()))?;
    n.parse()
        .with_context(|| format!("row count {n:?} from {}", node.name()))
}

// ---------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------

/// One acknowledged commit.
struct Ack {
    id: i64,
    at: Instant,
}

/// One error a client saw.
struct ClientError {
    at: Instant,
    msg: String,
}

/// What all clients did, merged.
#[derive(Default)]
struct LoadLog {
    acks: Vec<Ack>,
    errors: Vec<ClientError>,
    reconnects: usize,
    /// When the load started and when it was told to stop.
    started: Option<Instant>,
    stopped: Option<Instant>,
    /// Clients that had not ended [`LOAD_STOP_TIMEOUT`] after the stop.
    stuck: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The clients, running on the client runtime; stopped on drop, so an
/// early return does not leave them writing.
struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<LoadLog>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// Logs every client in, then starts them all.
    fn start(rt: &Runtime, conninfo: &str) -> anyhow::Result<Load> {
        // Logins are not part of what is measured.
        let clients = rt.block_on(async {
            let mut clients = Vec::with_capacity(CLIENTS);
            for i in 0..CLIENTS {
                let c = connect(conninfo)
                    .await
                    .with_context(|| format!("connecting client {i}"))?;
                clients.push(c);
            }
            anyhow::Ok(clients)
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let next_id = Arc::new(AtomicI64::new(1));
        let log = Arc::new(Mutex::new(LoadLog {
            started: Some(Instant::now()),
            ..Default::default()
        }));
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(i, client)| {
                rt.spawn(client_loop(Writer {
                    client,
                    conninfo: conninfo.to_string(),
                    explicit: i % 2 == 1,
                    next_id: Arc::clone(&next_id),
                    stop: Arc::clone(&stop),
                    log: Arc::clone(&log),
                }))
            })
            .collect();
        Ok(Load { stop, log, tasks })
    }

    /// Stops the clients, waits for them, and returns the log.
    fn finish(mut self, rt: &Runtime) -> LoadLog {
        self.stop.store(true, Ordering::Relaxed);
        lock(&self.log).stopped = Some(Instant::now());
        let tasks = std::mem::take(&mut self.tasks);
        let stuck = rt.block_on(async {
            let mut stuck = 0;
            for mut t in tasks {
                if tokio::time::timeout(LOAD_STOP_TIMEOUT, &mut t)
                    .await
                    .is_err()
                {
                    t.abort();
                    stuck += 1;
                }
            }
            stuck
        });
        let mut log = std::mem::take(&mut *lock(&self.log));
        log.stuck = stuck;
        log.acks.sort_by_key(|a| a.at);
        log
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One client's connection and what it shares with the others.
struct Writer {
    client: Client,
    conninfo: String,
    /// `BEGIN` / `INSERT` / `COMMIT` instead of an autocommit `INSERT`.
    explicit: bool,
    next_id: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<LoadLog>>,
}

/// Inserts unique ids until stopped, recording acknowledgements and errors.
async fn client_loop(mut w: Writer) {
    let mut insert: Option<Statement> = None;
    while !w.stop.load(Ordering::Relaxed) {
        let Some(stmt) = ready_statement(&mut w, &mut insert).await else {
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        };
        let id = w.next_id.fetch_add(1, Ordering::Relaxed);
        let res = if w.explicit {
            explicit_insert(&mut w.client, &stmt, id).await
        } else {
            w.client.execute(&stmt, &[&id]).await.map(drop)
        };
        let at = Instant::now();
        match res {
            Ok(()) => lock(&w.log).acks.push(Ack { id, at }),
            Err(e) => {
                let closed = if w.client.is_closed() {
                    " (connection closed)"
                } else {
                    ""
                };
                let msg = format!("{}{closed}", describe(&e));
                lock(&w.log).errors.push(ClientError { at, msg });
            }
        }
        tokio::time::sleep(THINK_TIME).await;
    }
}

/// The prepared INSERT on a live connection: reconnects if the proxy closed
/// the connection, prepares on a new one. `None` after an error (recorded).
async fn ready_statement(w: &mut Writer, insert: &mut Option<Statement>) -> Option<Statement> {
    if w.client.is_closed() {
        match connect(&w.conninfo).await {
            Ok(c) => {
                w.client = c;
                *insert = None;
                lock(&w.log).reconnects += 1;
            }
            Err(e) => {
                let msg = format!("reconnect: {}", describe(&e));
                lock(&w.log).errors.push(ClientError {
                    at: Instant::now(),
                    msg,
                });
                return None;
            }
        }
    }
    if insert.is_none() {
        match w.client.prepare(INSERT).await {
            Ok(s) => *insert = Some(s),
            Err(e) => {
                let msg = format!("prepare: {}", describe(&e));
                lock(&w.log).errors.push(ClientError {
                    at: Instant::now(),
                    msg,
                });
                return None;
            }
        }
    }
    insert.clone()
}

/// `BEGIN`, the insert, `COMMIT`: three round trips, so the transaction is
/// open between statements. A failed one is rolled back when `tx` drops.
async fn explicit_insert(
    client: &mut Client,
    insert: &Statement,
    id: i64,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute(insert, &[&id]).await?;
    tx.commit().await
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// Lost commits attributed to one switchover: the first one not yet
/// answered when they were acknowledged.
struct LostGroup {
    /// Index into the switchovers.
    switchover: usize,
    /// How many.
    count: usize,
    /// Earliest and latest acknowledgement, ms relative to sending the
    /// admin command (negative: before).
    first_ms: f64,
    last_ms: f64,
    /// How many of them the switchover's old primary has.
    on_old_primary: Option<u64>,
}

/// What the end-of-run checks found.
struct Checks {
    /// The node that was the primary at the end.
    final_primary: String,
    /// Whether it takes writes (`pg_is_in_recovery()` false).
    final_writable: bool,
    /// Acknowledged ids missing on the final primary.
    lost: Vec<i64>,
    /// The lost commits by the switchover that lost them.
    lost_by_switchover: Vec<LostGroup>,
    /// Old primaries whose row count grew after their switchover: name,
    /// rows right after, rows at the end.
    grew: Vec<(String, u64, u64)>,
    /// Old primaries checked.
    old_checked: usize,
}

fn final_checks(
    cluster: &LocalCluster,
    runs: &[Switchover],
    log: &LoadLog,
) -> anyhow::Result<Checks> {
    let node = |name: &str| cluster.nodes().into_iter().find(|n| n.name() == name);
    let final_name = runs
        .iter()
        .rev()
        .find(|r| r.outcome.is_ok())
        .map_or(cluster.primary().name(), |r| r.to.as_str());
    let final_primary = node(final_name).context("final primary not in the cluster")?;
    let final_writable = final_primary.psql("postgres", "SELECT pg_is_in_recovery()")? == "f";
    let rows = final_primary.psql(APP_DB, "SELECT id FROM t")?;
    let present: HashSet<i64> = rows
        .lines()
        .map(|l| l.trim().parse::<i64>())
        .collect::<Result<_, _>>()
        .context("parsing ids from the final primary")?;
    let lost: Vec<&Ack> = log
        .acks
        .iter()
        .filter(|a| !present.contains(&a.id))
        .collect();
    let lost_by_switchover = attribute_lost(cluster, runs, &lost)?;
    let lost = lost.iter().map(|a| a.id).collect();

    // Read-only and fenced: an old primary must not gain a row.
    let mut grew = Vec::new();
    let mut old_checked = 0;
    for r in runs {
        let (Some(after), Some(old)) = (r.old_rows_after, node(&r.from)) else {
            continue;
        };
        old_checked += 1;
        let now = count_rows(old)?;
        if now != after {
            grew.push((r.from.clone(), after, now));
        }
    }
    Ok(Checks {
        final_primary: final_name.to_string(),
        final_writable,
        lost,
        lost_by_switchover,
        grew,
        old_checked,
    })
}

/// Groups lost commits by switchover, and asks each one's old primary
/// whether it has them: there, they were committed but not carried over.
fn attribute_lost(
    cluster: &LocalCluster,
    runs: &[Switchover],
    lost: &[&Ack],
) -> anyhow::Result<Vec<LostGroup>> {
    let mut groups: BTreeMap<usize, Vec<&Ack>> = BTreeMap::new();
    for a in lost {
        // Past the last switchover nothing can be lost; kept under it anyway.
        let k = runs
            .iter()
            .position(|r| r.answered >= a.at)
            .unwrap_or(runs.len().saturating_sub(1));
        groups.entry(k).or_default().push(a);
    }
    let mut out = Vec::new();
    for (k, acks) in groups {
        let Some(run) = runs.get(k) else {
            continue;
        };
        let rel = |a: &Ack| {
            ms(a.at.saturating_duration_since(run.sent))
                - ms(run.sent.saturating_duration_since(a.at))
        };
        let old = cluster.nodes().into_iter().find(|n| n.name() == run.from);
        let on_old_primary = match old {
            Some(node) => {
                let ids: Vec<String> = acks.iter().map(|a| a.id.to_string()).collect();
                let sql = format!("SELECT count(*) FROM t WHERE id IN ({})", ids.join(","));
                Some(node.psql(APP_DB, &sql)?.parse()?)
            }
            None => None,
        };
        out.push(LostGroup {
            switchover: k,
            count: acks.len(),
            first_ms: acks.iter().map(|a| rel(a)).fold(f64::INFINITY, f64::min),
            last_ms: acks
                .iter()
                .map(|a| rel(a))
                .fold(f64::NEG_INFINITY, f64::max),
            on_old_primary,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Analysis
// ---------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The longest gap between consecutive acknowledgements (sorted `acks`,
/// then `end`, so that writes never resuming count until the end) that
/// overlaps `[from, to]`.
fn max_gap(acks: &[Ack], from: Instant, to: Instant, end: Instant) -> Option<Duration> {
    let times: Vec<Instant> = acks
        .iter()
        .map(|a| a.at)
        .chain(std::iter::once(end))
        .collect();
    times
        .windows(2)
        .filter(|w| w[1] >= from && w[0] <= to)
        .map(|w| w[1] - w[0])
        .max()
}

/// Commits per second acknowledged in `[from, to)`.
fn rate(acks: &[Ack], from: Instant, to: Instant) -> Option<f64> {
    let secs = to.checked_duration_since(from)?.as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    let n = acks.iter().filter(|a| a.at >= from && a.at < to).count();
    Some(n as f64 / secs)
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

struct Report<'a> {
    pg_version: &'a str,
    fsync: bool,
    runs: &'a [Switchover],
    log: &'a LoadLog,
    checks: &'a Checks,
}

fn fmt_ms(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.0}"))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn report(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Switchover benchmark: PostgreSQL {}, 1 primary + {} streaming replicas (asynchronous, \
         {}); Switchyard in-process, transaction pooling, pool size {POOL_SIZE}, \
         failover.hold_timeout {HOLD_TIMEOUT}, switchover.drain_timeout {DRAIN_TIMEOUT}. \
         {CLIENTS} clients (`{INSERT}`, half autocommit, half BEGIN/INSERT/COMMIT, {} ms think \
         time); `SWITCHOVER TO replicaN` every ~{} s after {} s of load.\n",
        r.pg_version,
        r.runs.len(),
        fsync_label(r.fsync),
        THINK_TIME.as_millis(),
        INTERVAL.as_secs(),
        WARM_UP.as_secs(),
    );
    per_switchover_table(&mut s, r);
    steps_table(&mut s, r);
    first_events(&mut s, r);
    summary(&mut s, r);
    s
}

/// The main table: one row per switchover.
fn per_switchover_table(s: &mut String, r: &Report) {
    let end = r.log.stopped.unwrap_or_else(Instant::now);
    let _ = writeln!(
        s,
        "| # | from → to | result | proxy-reported write pause ms | client-observed max gap ms \
         | admin command ms | client errors during it |"
    );
    let _ = writeln!(s, "|---:|---|---|---:|---:|---:|---:|");
    for (i, run) in r.runs.iter().enumerate() {
        let gap = max_gap(&r.log.acks, run.sent, run.answered, end);
        let errors = r
            .log
            .errors
            .iter()
            .filter(|e| e.at >= run.sent && e.at <= run.answered)
            .count();
        let result = match &run.outcome {
            Ok(()) => "done".to_string(),
            Err(e) => format!("failed: {}", e.replace('|', "\\|")),
        };
        let _ = writeln!(
            s,
            "| {} | {} → {} | {result} | {} | {} | {:.0} | {errors} |",
            i + 1,
            run.from,
            run.to,
            fmt_ms(run.proxy_pause_ms()),
            fmt_ms(gap.map(ms)),
            run.admin_ms(),
        );
    }
}

/// Step durations from the `switchover_step` events; "hand over" is the
/// rest of the proxy's write pause (probing the new primary, publishing it).
fn steps_table(s: &mut String, r: &Report) {
    let _ = writeln!(
        s,
        "\nSteps (ms, `switchover_step` events in SHOW EVENTS; hand over = write pause − the \
         steps; admin − pause = repointing the other replicas before the command answers):\n"
    );
    let mut head = "| # ".to_string();
    for step in Step::ALL {
        let _ = write!(head, "| {} ", step.name());
    }
    let _ = writeln!(
        s,
        "{head}| hand over | admin − pause | target ready wait ms |"
    );
    let _ = writeln!(
        s,
        "|---:{}|---:|---:|---:|",
        "|---:".repeat(Step::ALL.len())
    );
    for (i, run) in r.runs.iter().enumerate() {
        let steps: Vec<Option<f64>> = Step::ALL.iter().map(|&st| run.step_ms(st)).collect();
        let pause = run.proxy_pause_ms();
        let rest = pause.map(|p| p - steps.iter().flatten().sum::<f64>());
        let mut row = format!("| {} ", i + 1);
        for st in &steps {
            let _ = write!(row, "| {} ", fmt_ms(*st));
        }
        let ready = match &run.target_ready {
            Ok(d) => format!("{:.0}", ms(*d)),
            Err(e) => format!("not ready: {}", e.replace('|', "\\|")),
        };
        let _ = writeln!(
            s,
            "{row}| {} | {} | {ready} |",
            fmt_ms(rest),
            fmt_ms(pause.map(|p| run.admin_ms() - p)),
        );
    }
}

/// The timeline of the first switchover, as `SHOW EVENTS` has it.
fn first_events(s: &mut String, r: &Report) {
    let Some(run) = r.runs.first() else {
        return;
    };
    let _ = writeln!(
        s,
        "\nSHOW EVENTS during switchover 1 ({} → {}):\n",
        run.from, run.to
    );
    let _ = writeln!(s, "| seq | kind | node | message |");
    let _ = writeln!(s, "|---:|---|---|---|");
    for e in &run.events {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            e.seq,
            e.kind,
            e.node,
            e.message.replace('|', "\\|")
        );
    }
    // Anything that went wrong in a later switchover is worth seeing too.
    for (i, run) in r.runs.iter().enumerate().skip(1) {
        for e in run
            .events
            .iter()
            .filter(|e| e.kind == "action_failed" || e.kind == "switchover_failed")
        {
            let _ = writeln!(
                s,
                "\nswitchover {}: {} {} {}",
                i + 1,
                e.kind,
                e.node,
                e.message
            );
        }
    }
}

/// Medians, maxima, errors, lost commits, the issue's targets and the
/// commit rates.
fn summary(s: &mut String, r: &Report) {
    let end = r.log.stopped.unwrap_or_else(Instant::now);
    let proxy: Vec<f64> = r
        .runs
        .iter()
        .filter_map(Switchover::proxy_pause_ms)
        .collect();
    let client: Vec<f64> = r
        .runs
        .iter()
        .filter(|run| run.outcome.is_ok())
        .filter_map(|run| max_gap(&r.log.acks, run.sent, run.answered, end).map(ms))
        .collect();
    let max = |xs: &[f64]| xs.iter().copied().max_by(f64::total_cmp);
    let done = r.runs.iter().filter(|run| run.outcome.is_ok()).count();
    let c = r.checks;

    let _ = writeln!(s, "\nSummary:\n");
    let _ = writeln!(s, "| measure | value |");
    let _ = writeln!(s, "|---|---:|");
    let _ = writeln!(s, "| switchovers done | {done} of {} |", r.runs.len());
    let _ = writeln!(
        s,
        "| write pause, proxy-reported: median / max ms | {} / {} |",
        fmt_ms(median(proxy.clone())),
        fmt_ms(max(&proxy))
    );
    let _ = writeln!(
        s,
        "| write pause, client-observed max gap: median / max ms | {} / {} |",
        fmt_ms(median(client.clone())),
        fmt_ms(max(&client))
    );
    let _ = writeln!(s, "| commits acknowledged | {} |", r.log.acks.len());
    let _ = writeln!(s, "| client errors | {} |", r.log.errors.len());
    let _ = writeln!(s, "| client reconnects | {} |", r.log.reconnects);
    let _ = writeln!(
        s,
        "| lost commits (acknowledged, missing on the final primary {}) | {} |",
        c.final_primary,
        c.lost.len()
    );
    let _ = writeln!(
        s,
        "| old primaries with rows written after their switchover | {} of {} |",
        c.grew.len(),
        c.old_checked
    );
    rates(s, r, end);

    let pause_ok = done == r.runs.len()
        && proxy.len() == done
        && client.len() == done
        && max(&proxy).is_some_and(|m| m < TARGET_PAUSE_MS)
        && max(&client).is_some_and(|m| m < TARGET_PAUSE_MS);
    let _ = writeln!(
        s,
        "\nIssue #7 target: write pause < 1 s, 0 errors, 0 lost commits.\n\
         - write pause < 1 s (every switchover, both measures): {}\n\
         - 0 client errors: {}\n\
         - 0 lost commits: {}\n\
         - (also) old primaries took no writes: {}; final primary writable: {}",
        verdict(pause_ok),
        verdict(r.log.errors.is_empty()),
        verdict(c.lost.is_empty()),
        verdict(c.grew.is_empty()),
        if c.final_writable { "yes" } else { "NO" },
    );
    problems(s, r);
    let _ = writeln!(
        s,
        "\nDirect-PostgreSQL and PgBouncer ratios do not apply: PgBouncer has no switchover, and \
         a direct connection cannot follow a moved primary."
    );
}

/// Commits per second before the first switchover and while they ran.
fn rates(s: &mut String, r: &Report, end: Instant) {
    let (Some(first), Some(last), Some(started)) = (r.runs.first(), r.runs.last(), r.log.started)
    else {
        return;
    };
    let fmt = |x: Option<f64>| x.map_or("–".into(), |v| format!("{v:.0}"));
    let _ = writeln!(
        s,
        "| commits/s before the first switchover | {} |",
        fmt(rate(&r.log.acks, started, first.sent))
    );
    let _ = writeln!(
        s,
        "| commits/s from the first switchover to the end of the last | {} |",
        fmt(rate(&r.log.acks, first.sent, last.answered))
    );
    let _ = writeln!(
        s,
        "| commits/s after the last switchover | {} |",
        fmt(rate(&r.log.acks, last.answered, end))
    );
}

/// Every distinct client error (with when it first came, relative to the
/// switchover it came during or after), lost ids, old primaries that grew.
fn problems(s: &mut String, r: &Report) {
    let mut distinct: BTreeMap<&str, (usize, Instant)> = BTreeMap::new();
    for e in &r.log.errors {
        distinct.entry(&e.msg).or_insert((0, e.at)).0 += 1;
    }
    for (msg, (n, first)) in &distinct {
        let when = r
            .runs
            .iter()
            .enumerate()
            .rev()
            .find(|(_, run)| run.sent <= *first)
            .map_or("before the first switchover".to_string(), |(i, run)| {
                format!(
                    "first {:.0} ms after switchover {} began",
                    ms(*first - run.sent),
                    i + 1
                )
            });
        let _ = writeln!(s, "- client error ×{n} ({when}): {msg}");
    }
    if r.log.stuck > 0 {
        let _ = writeln!(
            s,
            "- {} client(s) still waiting {}s after the load stopped (aborted)",
            r.log.stuck,
            LOAD_STOP_TIMEOUT.as_secs()
        );
    }
    let lost = &r.checks.lost;
    if !lost.is_empty() {
        let shown: Vec<String> = lost.iter().take(10).map(i64::to_string).collect();
        let _ = writeln!(s, "- lost ids (first 10): {}", shown.join(", "));
    }
    for g in &r.checks.lost_by_switchover {
        let run = &r.runs[g.switchover];
        let _ = writeln!(
            s,
            "- switchover {} ({} → {}) lost {} commit(s), acknowledged {:.0} to {:.0} ms \
             relative to the command; on the old primary {}: {}",
            g.switchover + 1,
            run.from,
            run.to,
            g.count,
            g.first_ms,
            g.last_ms,
            run.from,
            g.on_old_primary
                .map_or("?".to_string(), |n| format!("{n} of them")),
        );
    }
    for (name, after, now) in &r.checks.grew {
        let _ = writeln!(
            s,
            "- old primary {name}: {after} rows right after its switchover, {now} at the end"
        );
    }
}
