//! The shipped binary against PgBouncer: pgbench straight to PostgreSQL,
//! through PgBouncer and through `switchyard --config FILE`, each proxy its
//! own process, with the CPU time each proxy spent per transaction.
//!
//! Run with `cargo bench --bench shipped` (as root or as a user that may
//! start PostgreSQL; PgBouncer is installed with apt-get when missing).
//! `cargo bench` builds the `switchyard` binary in release mode along with
//! the benchmark and runs that one (`CARGO_BIN_EXE_switchyard`).
//! Environment: `BENCH_ROUNDS` (default 3) interleaved rounds,
//! `BENCH_SECS` (default 10) seconds per pgbench run; a default run takes
//! about 8 minutes. `BENCH_DIAG=1` adds two targets that explain the gap
//! between this benchmark and `pgbench_compare` (about 4 more minutes):
//! the binary with the primary alone in `[cluster] nodes`, and Switchyard
//! in-process exactly as `pgbench_compare` runs it (primary alone, no HTTP
//! endpoints, on a runtime in a thread of this process, logging through
//! this process's `warn` subscriber). `BENCH_TARGETS` (names as in the
//! tables, comma-separated) and `BENCH_WORKLOAD` (one workload's name, e.g.
//! `-S -c 16`) narrow a run down to a focused comparison. `BENCH_PGO=PATH`
//! adds a target, `switchyard-pgo`: the binary at PATH (what `bash
//! benches/pgo.sh` builds and prints), configured as the release binary is.
//!
//! What it does: starts a throw-away PostgreSQL primary (`fsync = on`) with
//! one streaming replica, `pgbench -i -s 10`, starts the release binary with
//! both nodes in `[cluster] nodes`, the default `[proxy] workers`,
//! transaction mode, 20 server connections and SCRAM, and PgBouncer with the
//! same pool and SCRAM, each proxy in a session of its own as a service
//! runs (`os::own_session`); then runs rounds in which every workload visits the
//! targets in an order that rotates from round to round. Around each run it
//! reads the proxy's CPU time (utime + stime from /proc/PID/stat, and
//! utime alone: the proxy's own code, not the kernel's work for it) and its
//! threads' context switches (/proc/PID/task/*/status; for the in-process
//! target, this whole process's) and divides them by the transactions
//! pgbench reports. Besides pgbench's built-in select-only script in
//! three protocols, one workload runs `benches/select_with_sets.pgbench`:
//! 64 clients that each SET two session parameters first, as drivers do.
//! The 64-client `-S` run logs a 10 % sample of its
//! transactions (`pgbench -l --sampling-rate 0.1`) for the p99 latency.
//! Besides medians it reports Switchyard / PgBouncer paired by round.
//! PgBouncer before 1.21 cannot do `-M prepared` in transaction mode: it is
//! not run (a run succeeds only by accident, where earlier runs left
//! pgbench's statements on its server connections), and that cell is
//! "n/a". Prints markdown tables; everything it starts is stopped on
//! the way out, also on panic.
//!
//! Without `--bench` on the command line (e.g. `cargo test --benches`) it
//! does nothing: a run takes minutes.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use switchyard::local_cluster::{APP_PASSWORD, CLUSTER_PASSWORD, CLUSTER_USER};

mod common;

use common::fleet::ProxyProcess;
use common::os::TempDir;
use common::pgbouncer::{self, PgBouncer};
use common::{env_number, median, pgbench, Switchyard};

/// Server connections per pool, for Switchyard and PgBouncer alike.
const POOL_SIZE: usize = 20;
/// Client connection limit, for Switchyard and PgBouncer alike.
const MAX_CLIENT_CONN: usize = 1000;
/// `pgbench -i` scale factor.
const SCALE: u32 = 10;
/// Share of the 64-client run's transactions pgbench logs, for the p99.
const LOG_SAMPLING: &str = "0.1";

/// A pgbench workload.
struct Workload {
    name: &'static str,
    clients: u32,
    /// `-M`.
    protocol: &'static str,
    /// Whether the run logs a sample of its transactions for the p99.
    p99: bool,
    /// A script of `benches/` run instead of pgbench's built-in `-S`.
    script: Option<&'static str>,
}

const WORKLOADS: [Workload; 5] = [
    Workload {
        name: "-S -c 16",
        clients: 16,
        protocol: "simple",
        p99: false,
        script: None,
    },
    Workload {
        name: "-S -c 64",
        clients: 64,
        protocol: "simple",
        p99: true,
        script: None,
    },
    Workload {
        name: "-S -M extended -c 16",
        clients: 16,
        protocol: "extended",
        p99: false,
        script: None,
    },
    Workload {
        name: "-S -M prepared -c 16",
        clients: 16,
        protocol: "prepared",
        p99: false,
        script: None,
    },
    // What pgjdbc and SQLAlchemy hooks do on connect: each client SETs two
    // session parameters first, then runs -S's SELECT. Switchyard keeps
    // them per client; PgBouncer 1.18 runs them on whichever server it
    // gets and leaves them there.
    Workload {
        name: "SETs + -S -c 64",
        clients: 64,
        protocol: "simple",
        p99: false,
        script: Some("select_with_sets.pgbench"),
    },
];

/// Where pgbench connects.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Direct,
    PgBouncer,
    /// The release binary, primary and replica in `[cluster] nodes`.
    Switchyard,
    /// `BENCH_DIAG`: the release binary with the primary alone.
    BinaryPrimaryOnly,
    /// `BENCH_DIAG`: in-process, as `pgbench_compare` runs it.
    InProcess,
    /// `BENCH_PGO`: the binary `benches/pgo.sh` builds, configured as
    /// `Switchyard` is.
    Pgo,
}

const ALL_TARGETS: [Target; 6] = [
    Target::Direct,
    Target::PgBouncer,
    Target::Switchyard,
    Target::BinaryPrimaryOnly,
    Target::InProcess,
    Target::Pgo,
];

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::PgBouncer => "pgbouncer",
            Target::Switchyard => "switchyard",
            Target::BinaryPrimaryOnly => "switchyard-1node",
            Target::InProcess => "switchyard-inprocess",
            Target::Pgo => "switchyard-pgo",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One pgbench run.
#[derive(Clone)]
enum Outcome {
    Ran(Run),
    /// pgbench failed; what it printed.
    Failed(String),
    /// Not run (target absent).
    Skipped,
}

#[derive(Clone)]
struct Run {
    tps: f64,
    transactions: u64,
    /// CPU time of the proxy during the run, µs; `None` for direct.
    cpu_us: Option<f64>,
    /// The part of it spent in user space (utime), µs.
    user_us: Option<f64>,
    /// Context switches (voluntary + involuntary) of the proxy's threads
    /// during the run; `None` for direct.
    ctxsw: Option<f64>,
    /// p99 latency of the logged sample, ms.
    p99_ms: Option<f64>,
}

impl Run {
    /// The proxy's CPU µs per transaction pgbench reports.
    fn cpu_per_txn(&self) -> Option<f64> {
        Some(self.cpu_us? / self.transactions.max(1) as f64)
    }

    /// The proxy's user-space CPU µs per transaction.
    fn user_per_txn(&self) -> Option<f64> {
        Some(self.user_us? / self.transactions.max(1) as f64)
    }
}

/// Whose CPU time a target's runs are charged.
#[derive(Clone, Copy)]
enum CpuOf {
    Nobody,
    Pid(u32),
    /// This process (the in-process proxy; the rest of it only waits for pgbench).
    Myself,
}

fn main() {
    common::run_main("shipped", "shipped failed", bench);
}

fn bench() -> anyhow::Result<()> {
    let rounds = env_number("BENCH_ROUNDS", 3)?.max(1) as usize;
    let secs = env_number("BENCH_SECS", 10)?.max(1);
    let diag = env_number("BENCH_DIAG", 0)? != 0;
    let pgo_binary = std::env::var("BENCH_PGO").ok().filter(|p| !p.is_empty());
    // Focused comparisons: `BENCH_TARGETS=switchyard,switchyard-inprocess`
    // (target names as in the tables), `BENCH_WORKLOAD="-S -c 16"`.
    let only_targets: Option<Vec<String>> = std::env::var("BENCH_TARGETS")
        .ok()
        .map(|v| v.split(',').map(|t| t.trim().to_string()).collect());
    let only_workload = std::env::var("BENCH_WORKLOAD").ok();

    eprintln!("starting PostgreSQL: primary (fsync = on) + 1 streaming replica...");
    let (cluster, pgbench_bin) = pgbench::initialised_cluster(1, SCALE, "shipped")?;
    let primary = cluster.primary();
    let version = primary.psql("postgres", "SHOW server_version")?;

    let tmp = TempDir::create("switchyard-bench-shipped")?;
    let all_nodes: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| format!("{{ name = \"{}\", addr = \"{}\" }}", n.name(), n.addr()))
        .collect();
    let primary_only = vec![format!(
        "{{ name = \"{}\", addr = \"{}\" }}",
        primary.name(),
        primary.addr()
    )];
    let proxy = ProxyProcess::start("shipped", |listen, http| {
        binary_config(listen, http, &all_nodes)
    })?;
    eprintln!(
        "switchyard (binary, pid {}) on 127.0.0.1:{}",
        proxy.pid(),
        proxy.port
    );
    let proxy_1node = if diag {
        let p = ProxyProcess::start("shipped-1node", |listen, http| {
            binary_config(listen, http, &primary_only)
        })?;
        eprintln!(
            "switchyard-1node (binary, pid {}) on 127.0.0.1:{}",
            p.pid(),
            p.port
        );
        Some(p)
    } else {
        None
    };
    let proxy_pgo = match &pgo_binary {
        Some(bin) => {
            let p = ProxyProcess::start_binary(bin, "shipped-pgo", |listen, http| {
                binary_config(listen, http, &all_nodes)
            })?;
            eprintln!(
                "switchyard-pgo ({bin}, pid {}) on 127.0.0.1:{}",
                p.pid(),
                p.port
            );
            Some(p)
        }
        None => None,
    };
    let in_process = if diag {
        let primary_addr = primary.addr();
        let p = Switchyard::start(|listen| {
            common::proxy_config(
                listen,
                POOL_SIZE,
                &format!("max_client_conn = {MAX_CLIENT_CONN}\nshutdown_timeout = \"2s\""),
                &format!(r#"nodes = ["{primary_addr}"]"#),
            )
        })?;
        eprintln!("switchyard-inprocess on 127.0.0.1:{}", p.port);
        Some(p)
    } else {
        None
    };
    let settings = pgbouncer::Settings {
        pg_port: primary.port(),
        pool_size: POOL_SIZE,
        max_client_conn: MAX_CLIENT_CONN,
        secret: APP_PASSWORD,
        extra: "",
        files: &[],
    };
    let bouncer = match pgbouncer::ensure() {
        Ok(bin) => Some(PgBouncer::start(&bin, &tmp, &settings)?),
        Err(e) => {
            eprintln!("PgBouncer unavailable, its columns are skipped: {e:#}");
            None
        }
    };

    let target_of = |t: Target| -> Option<(u16, CpuOf)> {
        match t {
            Target::Direct => Some((primary.port(), CpuOf::Nobody)),
            Target::PgBouncer => bouncer.as_ref().map(|b| (b.port, CpuOf::Pid(b.pid()))),
            Target::Switchyard => Some((proxy.port, CpuOf::Pid(proxy.pid()))),
            Target::BinaryPrimaryOnly => {
                proxy_1node.as_ref().map(|p| (p.port, CpuOf::Pid(p.pid())))
            }
            Target::InProcess => in_process.as_ref().map(|p| (p.port, CpuOf::Myself)),
            Target::Pgo => proxy_pgo.as_ref().map(|p| (p.port, CpuOf::Pid(p.pid()))),
        }
    };
    let targets: Vec<Target> = ALL_TARGETS
        .into_iter()
        .filter(|&t| target_of(t).is_some())
        .filter(|t| {
            only_targets
                .as_ref()
                .is_none_or(|o| o.iter().any(|n| n == t.name()))
        })
        .collect();
    let workloads: Vec<usize> = (0..WORKLOADS.len())
        .filter(|&i| {
            only_workload
                .as_ref()
                .is_none_or(|o| *o == WORKLOADS[i].name)
        })
        .collect();
    if targets.is_empty() || workloads.is_empty() {
        bail!("BENCH_TARGETS / BENCH_WORKLOAD leave nothing to run");
    }
    let began = Instant::now();

    // Warm-up: PostgreSQL's buffer cache and every pool's connections.
    let warm = secs.min(3);
    for &t in &targets {
        let Some((port, _)) = target_of(t) else {
            continue;
        };
        eprintln!("warm-up: {} ({warm}s, -S -c 64)", t.name());
        if let Outcome::Failed(msg) = run_one(
            &pgbench_bin,
            &tmp.path,
            port,
            CpuOf::Nobody,
            &WORKLOADS[1],
            warm,
        ) {
            eprintln!("warm-up through {} failed:\n{msg}", t.name());
        }
    }

    // results[workload][round][target index]
    let mut results: Vec<Vec<Vec<Outcome>>> = WORKLOADS.iter().map(|_| Vec::new()).collect();
    for r in 0..rounds {
        let mut order = targets.clone();
        order.rotate_left(r % targets.len());
        for &wi in &workloads {
            let w = &WORKLOADS[wi];
            let mut outs = vec![Outcome::Skipped; ALL_TARGETS.len()];
            for &t in &order {
                let Some((port, cpu)) = target_of(t) else {
                    continue;
                };
                eprint!(
                    "{} | round {}/{rounds} | {:<20} ... ",
                    w.name,
                    r + 1,
                    t.name()
                );
                let version = bouncer.as_ref().map_or("", |b| b.version.as_str());
                let out = match no_prepared(w, t, version) {
                    Some(why) => Outcome::Failed(why),
                    None => run_one(&pgbench_bin, &tmp.path, port, cpu, w, secs),
                };
                match &out {
                    Outcome::Ran(run) => eprintln!(
                        "{:.0} tps, {} µs CPU/txn, p99 {}",
                        run.tps,
                        fmt_opt(run.cpu_per_txn(), 1),
                        fmt_opt(run.p99_ms, 2)
                    ),
                    Outcome::Failed(msg) if unsupported(w, t, msg) => {
                        eprintln!("n/a (unsupported)")
                    }
                    Outcome::Failed(msg) => eprintln!("FAILED\n{msg}"),
                    Outcome::Skipped => eprintln!("skipped"),
                }
                outs[t.index()] = out;
            }
            results[wi].push(outs);
        }
    }
    let elapsed = began.elapsed();

    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let header = format!(
        "PostgreSQL {version} (primary, fsync on, + 1 streaming replica), scale {SCALE}; \
         pgbench -j 2, {secs}s per run, {rounds} interleaved round(s) ({:.1} min of warm-up \
         and runs); pools: {POOL_SIZE} server connections, transaction mode, SCRAM; \
         Switchyard: the release binary, both nodes in [cluster] nodes, [proxy] workers \
         default ({} worker thread(s) on {cores} cores){}; {}",
        elapsed.as_secs_f64() / 60.0,
        switchyard::runtime::worker_count(0),
        pgo_binary.as_ref().map_or(String::new(), |b| format!(
            "; switchyard-pgo: {b}, built by benches/pgo.sh, configured the same"
        )),
        bouncer
            .as_ref()
            .map_or("PgBouncer not available".into(), |b| b.version.clone())
    );
    println!("\n{}", report(&header, &targets, &results));
    // The SETs workload must pin nobody: every client's settings follow it.
    for (name, p) in [
        ("switchyard", Some(&proxy)),
        ("switchyard-pgo", proxy_pgo.as_ref()),
    ] {
        match p.map(|p| pinned_total(&p.http)) {
            Some(Ok(n)) => println!("Clients {name} pinned over the whole run: {n}\n"),
            Some(Err(e)) => println!("Clients {name} pinned: unknown ({e:#})\n"),
            None => {}
        }
    }
    // The binary's whole log (ANSI colours removed): startup, events, and
    // any health-check trouble during the runs.
    let log = strip_ansi(&proxy.log_tail(usize::MAX));
    println!(
        "switchyard's log ({} line(s) over the whole run):\n```\n{}\n```",
        log.lines().count(),
        common::tail(&log, 60)
    );

    // Teardown in reverse order of start; the guards also do this on panic.
    drop(bouncer);
    drop(in_process);
    drop(proxy_1node);
    drop(proxy_pgo);
    drop(proxy);
    drop(tmp);
    drop(cluster);
    Ok(())
}

/// `switchyard_pinned_clients_total` summed over its reasons, from the
/// binary's `/metrics`.
fn pinned_total(http: &str) -> anyhow::Result<u64> {
    let (code, body) = common::fleet::http(http, "GET", "/metrics", None)?;
    if code != 200 {
        bail!("/metrics answered {code}");
    }
    Ok(body
        .lines()
        .filter(|l| l.starts_with("switchyard_pinned_clients_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// `text` without its ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The binary's configuration file.
fn binary_config(listen: &str, http: &str, nodes: &[String]) -> String {
    common::proxy_toml(
        listen,
        POOL_SIZE,
        &format!("max_client_conn = {MAX_CLIENT_CONN}\nshutdown_timeout = \"2s\""),
        &format!(
            r#"nodes = [{}]
user = "{CLUSTER_USER}"
password = "{CLUSTER_PASSWORD}"

[http]
listen = "{http}""#,
            nodes.join(", ")
        ),
    )
}

// ---------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------

/// CPU time of process `pid` so far, µs: (user + system, user).
fn cpu_us(pid: u32) -> anyhow::Result<(f64, f64)> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: the first is field 3 (state), so utime (14) and stime (15)
    // are the 12th and 13th.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{path}: no command name"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("{path}: field {} unreadable", i + 3))
    };
    let (user, system) = (ticks(11)?, ticks(12)?);
    // SAFETY: sysconf reads a constant of the C library; no memory is involved.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) = {hz}");
    }
    let us = |t: u64| t as f64 * 1e6 / hz as f64;
    Ok((us(user + system), us(user)))
}

/// Context switches so far of the live threads of process `pid`
/// (`voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` of each
/// /proc/PID/task/TID/status).
fn ctxsw(pid: u32) -> anyhow::Result<f64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0u64;
    for task in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(status) = fs::read_to_string(task?.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(total as f64)
}

/// What a run is charged: CPU and user-space CPU µs, and context
/// switches, of `who` so far.
struct Usage {
    cpu_us: f64,
    user_us: f64,
    ctxsw: f64,
}

/// [`Usage`] of `who` so far.
fn usage_of(who: CpuOf) -> Option<Usage> {
    let pid = match who {
        CpuOf::Nobody => return None,
        CpuOf::Pid(pid) => pid,
        CpuOf::Myself => std::process::id(),
    };
    let usage = cpu_us(pid).and_then(|(cpu_us, user_us)| {
        Ok(Usage {
            cpu_us,
            user_us,
            ctxsw: ctxsw(pid)?,
        })
    });
    match usage {
        Ok(u) => Some(u),
        Err(e) => {
            eprintln!("CPU time unavailable: {e:#}");
            None
        }
    }
}

/// One timed run of `w` against 127.0.0.1:`port`, charging `cpu`'s CPU time.
fn run_one(
    pgbench_bin: &Path,
    scratch: &Path,
    port: u16,
    cpu: CpuOf,
    w: &Workload,
    secs: u64,
) -> Outcome {
    let log_dir = scratch.join("pgbench-log");
    let _ = fs::remove_dir_all(&log_dir);
    let mut cmd = pgbench::command(pgbench_bin, port, "shipped");
    match w.script {
        None => cmd.arg("-S"),
        Some(file) => cmd
            .arg("-f")
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("benches")
                    .join(file),
            )
            .args(["-D", "configured=0"]),
    };
    cmd.args(["-n", "-T", &secs.to_string()]).args([
        "-c",
        &w.clients.to_string(),
        "-j",
        "2",
        "-M",
        w.protocol,
    ]);
    if w.p99 {
        if let Err(e) = fs::create_dir(&log_dir) {
            return Outcome::Failed(format!("creating {}: {e}", log_dir.display()));
        }
        cmd.args(["-l", "--sampling-rate", LOG_SAMPLING, "--log-prefix"])
            .arg(log_dir.join("txn"));
    }
    let before = usage_of(cpu);
    let res = pgbench::run_with_output(cmd, Duration::from_secs(secs + 60));
    let after = usage_of(cpu);
    let (tps, stdout) = match res {
        Ok(x) => x,
        Err(why) => return Outcome::Failed(why),
    };
    let Some(transactions) = pgbench::parse_transactions(&stdout) else {
        return Outcome::Failed(format!("no transaction count in:\n{stdout}"));
    };
    let p99_ms = w.p99.then(|| p99_of_logs(&log_dir)).flatten();
    let _ = fs::remove_dir_all(&log_dir);
    let used = before.zip(after);
    Outcome::Ran(Run {
        tps,
        transactions,
        cpu_us: used.as_ref().map(|(b, a)| a.cpu_us - b.cpu_us),
        user_us: used.as_ref().map(|(b, a)| a.user_us - b.user_us),
        ctxsw: used.as_ref().map(|(b, a)| a.ctxsw - b.ctxsw),
        p99_ms,
    })
}

/// p99 of the latencies (third field, µs) in pgbench's per-transaction
/// logs in `dir`, ms.
fn p99_of_logs(dir: &Path) -> Option<f64> {
    let mut lat: Vec<f64> = Vec::new();
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let text = fs::read_to_string(entry.path()).ok()?;
        lat.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok()),
        );
    }
    if lat.is_empty() {
        return None;
    }
    lat.sort_by(f64::total_cmp);
    let i = ((lat.len() as f64 * 0.99).ceil() as usize).clamp(1, lat.len()) - 1;
    Some(lat[i] / 1000.0)
}

/// Whether `msg`, the failure of `w` through `t`, is PgBouncer before 1.21
/// not supporting protocol-level prepared statements in transaction mode.
fn unsupported(w: &Workload, t: Target, msg: &str) -> bool {
    w.protocol == "prepared"
        && t == Target::PgBouncer
        && msg.lines().any(|l| {
            l.starts_with(NO_PREPARED)
                || l.contains("prepared statement")
                    && (l.contains("does not exist") || l.contains("already exists"))
        })
}

const NO_PREPARED: &str = "does not track protocol-level prepared statements";

/// Why `w` is not run through `t` at all: PgBouncer before 1.21 (`version`
/// as `--version` prints it) does not track prepared statements in
/// transaction mode, and `-M prepared` through it succeeds only where its
/// server connections already hold pgbench's statements, prepared there by
/// earlier runs' clients (a run of 2026-12-06 did so in its fifth round):
/// no measurement of a supported mode.
fn no_prepared(w: &Workload, t: Target, version: &str) -> Option<String> {
    let tracks = pgbouncer_release(version).is_some_and(|v| v >= (1, 21));
    (w.protocol == "prepared" && t == Target::PgBouncer && !tracks)
        .then(|| format!("{NO_PREPARED} in transaction mode ({version})"))
}

/// (major, minor) of `PgBouncer 1.18.0`.
fn pgbouncer_release(version: &str) -> Option<(u32, u32)> {
    let number = version.split_whitespace().nth(1)?;
    let mut parts = number.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn fmt_opt(x: Option<f64>, decimals: usize) -> String {
    x.map_or("–".into(), |v| format!("{v:.decimals$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Medians over the successful rounds of `t` in `rounds`.
struct Medians {
    tps: Option<f64>,
    cpu_per_txn: Option<f64>,
    user_per_txn: Option<f64>,
    ctxsw_per_txn: Option<f64>,
    p99_ms: Option<f64>,
    /// No run succeeded and PgBouncer said it cannot.
    unsupported: bool,
}

fn medians(w: &Workload, rounds: &[Vec<Outcome>], t: Target) -> Medians {
    let runs: Vec<&Run> = rounds
        .iter()
        .filter_map(|r| match &r[t.index()] {
            Outcome::Ran(run) => Some(run),
            _ => None,
        })
        .collect();
    Medians {
        tps: median(runs.iter().map(|r| r.tps).collect()),
        cpu_per_txn: median(runs.iter().filter_map(|r| r.cpu_per_txn()).collect()),
        user_per_txn: median(runs.iter().filter_map(|r| r.user_per_txn()).collect()),
        ctxsw_per_txn: median(
            runs.iter()
                .filter_map(|r| Some(r.ctxsw? / r.transactions.max(1) as f64))
                .collect(),
        ),
        p99_ms: median(runs.iter().filter_map(|r| r.p99_ms).collect()),
        unsupported: runs.is_empty()
            && rounds
                .iter()
                .any(|r| matches!(&r[t.index()], Outcome::Failed(m) if unsupported(w, t, m))),
    }
}

fn tps_cell(m: &Medians) -> String {
    if m.unsupported {
        "n/a".into()
    } else {
        fmt_opt(m.tps, 0)
    }
}

fn report(header: &str, targets: &[Target], results: &[Vec<Vec<Outcome>>]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{header}\n");
    let _ = writeln!(
        s,
        "| workload | direct TPS | PgBouncer TPS | Switchyard TPS | Switchyard / PgBouncer \
         | PgBouncer / direct | Switchyard / direct | PgBouncer CPU µs/txn \
         | Switchyard CPU µs/txn | CPU/txn Switchyard / PgBouncer |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (w, rounds) in WORKLOADS.iter().zip(results).filter(|(_, r)| !r.is_empty()) {
        let d = medians(w, rounds, Target::Direct);
        let p = medians(w, rounds, Target::PgBouncer);
        let y = medians(w, rounds, Target::Switchyard);
        let na = |r: Option<f64>| {
            if p.unsupported {
                "n/a".into()
            } else {
                fmt_opt(r, 2)
            }
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            w.name,
            tps_cell(&d),
            tps_cell(&p),
            tps_cell(&y),
            na(ratio(y.tps, p.tps)),
            na(ratio(p.tps, d.tps)),
            fmt_opt(ratio(y.tps, d.tps), 2),
            if p.unsupported {
                "n/a".into()
            } else {
                fmt_opt(p.cpu_per_txn, 1)
            },
            fmt_opt(y.cpu_per_txn, 1),
            na(ratio(y.cpu_per_txn, p.cpu_per_txn)),
        );
    }
    let _ = writeln!(
        s,
        "\nMedians over successful rounds. CPU µs/txn: the proxy process's utime + stime \
         during the run (connecting and SCRAM included) over the transactions pgbench \
         reports. n/a: PgBouncer before 1.21 cannot run -M prepared in transaction mode.\n"
    );
    if let Some((wi, w)) = WORKLOADS
        .iter()
        .enumerate()
        .find(|(i, w)| w.p99 && !results[*i].is_empty())
    {
        let _ = writeln!(
            s,
            "p99 latency, {} (10 % of transactions logged; median over rounds): {}\n",
            w.name,
            targets
                .iter()
                .map(|&t| format!(
                    "{} {} ms",
                    t.name(),
                    fmt_opt(medians(w, &results[wi], t).p99_ms, 2)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    paired_ratios(&mut s, targets, results);
    proxies_table(&mut s, targets, results);
    rounds_table(&mut s, targets, results);
    s
}

/// Switchyard / PgBouncer round by round: the two ran minutes apart in the
/// same round, so their ratio is steadier than the ratio of two medians,
/// which may come from different rounds. Geometric mean, and the range.
fn paired_ratios(s: &mut String, targets: &[Target], results: &[Vec<Vec<Outcome>>]) {
    let pairs = |rounds: &[Vec<Outcome>], t: Target, f: fn(&Run) -> Option<f64>| -> Vec<f64> {
        rounds
            .iter()
            .filter_map(|r| {
                let (Outcome::Ran(y), Outcome::Ran(p)) =
                    (&r[t.index()], &r[Target::PgBouncer.index()])
                else {
                    return None;
                };
                ratio(f(y), f(p))
            })
            .collect()
    };
    let summary = |v: Vec<f64>| match v.len() {
        0 => "–".to_string(),
        n => {
            let geo = (v.iter().map(|x| x.ln()).sum::<f64>() / n as f64).exp();
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
            format!("{geo:.2} ({lo:.2}–{hi:.2}, {n} rounds)")
        }
    };
    let _ = writeln!(
        s,
        "Switchyard / PgBouncer per round (same round; geometric mean, range):\n\n\
         | workload | build | TPS | CPU per txn | user-space CPU per txn |\n\
         |---|---|---:|---:|---:|"
    );
    let builds = [Target::Switchyard, Target::Pgo];
    for (w, rounds) in WORKLOADS.iter().zip(results).filter(|(_, r)| !r.is_empty()) {
        for &t in builds.iter().filter(|t| targets.contains(t)) {
            let tps = pairs(rounds, t, |r| Some(r.tps));
            if tps.is_empty() {
                continue;
            }
            let cpu = pairs(rounds, t, Run::cpu_per_txn);
            let user = pairs(rounds, t, Run::user_per_txn);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                w.name,
                t.name(),
                summary(tps),
                summary(cpu),
                summary(user)
            );
        }
    }
    let _ = writeln!(s);
}

/// Every proxy side by side, with the `BENCH_DIAG` variants.
fn proxies_table(s: &mut String, targets: &[Target], results: &[Vec<Vec<Outcome>>]) {
    let ys: Vec<Target> = targets
        .iter()
        .copied()
        .filter(|&t| t != Target::Direct)
        .collect();
    let _ = writeln!(
        s,
        "Per proxy, medians of TPS / CPU µs per txn / of which user space (utime) / \
         context switches per txn (all the proxy's threads). switchyard: the binary, primary + replica; switchyard-1node: the \
         binary, primary alone; switchyard-inprocess: as pgbench_compare runs it (its CPU \
         and context switches: this whole process, which otherwise waits for pgbench); \
         switchyard-pgo: the binary built with a profile (benches/pgo.sh).\n"
    );
    let names: Vec<&str> = ys.iter().map(|t| t.name()).collect();
    let _ = writeln!(s, "| workload | {} |", names.join(" | "));
    let _ = writeln!(s, "|---|{}", "---:|".repeat(ys.len()));
    for (w, rounds) in WORKLOADS.iter().zip(results).filter(|(_, r)| !r.is_empty()) {
        let cells: Vec<String> = ys
            .iter()
            .map(|&t| {
                let m = medians(w, rounds, t);
                format!(
                    "{} / {} / {} / {}",
                    fmt_opt(m.tps, 0),
                    fmt_opt(m.cpu_per_txn, 1),
                    fmt_opt(m.user_per_txn, 2),
                    fmt_opt(m.ctxsw_per_txn, 2)
                )
            })
            .collect();
        let _ = writeln!(s, "| {} | {} |", w.name, cells.join(" | "));
    }
    let _ = writeln!(s);
}

/// Every run: TPS and CPU µs/txn, round by round.
fn rounds_table(s: &mut String, targets: &[Target], results: &[Vec<Vec<Outcome>>]) {
    let _ = writeln!(s, "Individual runs (TPS / proxy CPU µs per txn):\n");
    let names: Vec<&str> = targets.iter().map(|t| t.name()).collect();
    let _ = writeln!(s, "| workload | round | {} |", names.join(" | "));
    let _ = writeln!(s, "|---|---:|{}", "---:|".repeat(targets.len()));
    let mut failures = Vec::new();
    for (w, rounds) in WORKLOADS.iter().zip(results).filter(|(_, r)| !r.is_empty()) {
        for (i, r) in rounds.iter().enumerate() {
            let cells: Vec<String> = targets
                .iter()
                .map(|&t| match &r[t.index()] {
                    Outcome::Ran(run) => {
                        format!("{:.0} / {}", run.tps, fmt_opt(run.cpu_per_txn(), 1))
                    }
                    Outcome::Failed(m) if unsupported(w, t, m) => "n/a".into(),
                    Outcome::Failed(m) => {
                        failures.push(format!("{} / round {} / {}:\n{m}", w.name, i + 1, t.name()));
                        "FAILED".into()
                    }
                    Outcome::Skipped => "–".into(),
                })
                .collect();
            let _ = writeln!(s, "| {} | {} | {} |", w.name, i + 1, cells.join(" | "));
        }
    }
    if !failures.is_empty() {
        let _ = writeln!(s, "\nFailed runs:\n");
        for f in failures {
            let _ = writeln!(s, "```\n{f}\n```");
        }
    }
}
