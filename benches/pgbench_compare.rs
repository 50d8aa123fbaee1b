//! pgbench through Switchyard vs straight to PostgreSQL vs through PgBouncer,
//! and Switchyard with its traffic metrics on vs off.
//!
//! Run with `cargo bench --bench pgbench_compare` (as root or as a user that
//! may start PostgreSQL; PgBouncer is installed with apt-get when missing).
//! Environment: `BENCH_ROUNDS` (default 3) interleaved rounds per workload,
//! `BENCH_SECS` (default 10) seconds per pgbench run; the `-M extended` and
//! `-M prepared` rows run for 70 % of that (7 s by default), which keeps a
//! default run under about 10 minutes.
//!
//! What it does: starts a throw-away PostgreSQL primary (`fsync = on`, no
//! replica), `pgbench -i -s 10`, starts two Switchyards in-process, each on
//! its own tokio runtime (in background threads of this process, which
//! otherwise only waits for pgbench) — one with the default `[http] metrics =
//! true`, one ("switchyard-nometrics") with `metrics = false` — and PgBouncer
//! as a child process, all in transaction mode with 20 server connections,
//! then runs each workload in rounds that visit the four targets in rotating
//! order, and prints markdown tables.
//! The select-only 64-client rows (`-M simple`, `-M extended`,
//! `-M prepared`) share their rounds: each round runs all three, in rotating
//! order, so the issue #4 ratios printed under the table (Switchyard
//! prepared / Switchyard simple ≥ 1.1, Switchyard prepared / PgBouncer
//! simple ≥ 1.2) compare runs made close together. Issue #5's target, that
//! recording metrics costs at most 3 % of TPS, is checked on the `-S`
//! 64-client `-M simple` row: metrics on / metrics off ≥ 0.97. PgBouncer before 1.21
//! cannot do `-M prepared` in transaction mode; it is run anyway and its
//! failures are shown as "n/a (unsupported)".
//! Everything it starts is stopped on the way out, also on panic.
//!
//! Without `--bench` on the command line (e.g. `cargo test --benches`) it
//! does nothing: a run takes minutes.

use std::fmt::Write as _;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::ensure;
use switchyard::config::Config;
use switchyard::local_cluster::APP_PASSWORD;

mod common;

use common::os::TempDir;
use common::pgbouncer::{self, PgBouncer};
use common::{env_number, median, pgbench, Switchyard};

/// Server connections per pool, for Switchyard and PgBouncer alike.
const POOL_SIZE: usize = 20;
/// Client connection limit, for Switchyard and PgBouncer alike.
const MAX_CLIENT_CONN: usize = 1000;
/// `pgbench -i` scale factor.
const SCALE: u32 = 10;
/// pgbench's query protocol (`-M`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// One Query message per statement.
    Simple,
    /// Parse/Bind/Execute with the unnamed statement, every time.
    Extended,
    /// Named statements, parsed once per connection, then only Bind/Execute.
    Prepared,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
            Protocol::Prepared => "prepared",
        }
    }
}

/// A pgbench workload.
struct Workload {
    name: &'static str,
    /// Extra pgbench arguments (`-S` for select-only; none for TPC-B-like).
    args: &'static [&'static str],
    clients: u32,
    protocol: Protocol,
    /// Neighbouring workloads with the same group share their rounds: each
    /// round runs every workload of the group (in rotating order, each
    /// visiting the targets in rotating order) before the next round starts,
    /// so their ratios compare runs made minutes, not rounds, apart.
    group: u8,
    /// Runs for `BENCH_SECS` × `SHORT_RUN_PERCENT` % instead of `BENCH_SECS`
    /// (the `-M extended`/`-M prepared` rows, to keep the whole run short).
    short: bool,
}

/// Share of `BENCH_SECS` the `short` workloads run for.
const SHORT_RUN_PERCENT: u64 = 70;

const WORKLOADS: [Workload; 6] = [
    Workload {
        name: "select-only (-S), 16 clients",
        args: &["-S"],
        clients: 16,
        protocol: Protocol::Simple,
        group: 0,
        short: false,
    },
    Workload {
        name: "select-only (-S), 64 clients",
        args: &["-S"],
        clients: 64,
        protocol: Protocol::Simple,
        group: 1,
        short: false,
    },
    Workload {
        name: "select-only (-S), 64 clients, -M extended",
        args: &["-S"],
        clients: 64,
        protocol: Protocol::Extended,
        group: 1,
        short: true,
    },
    Workload {
        name: "select-only (-S), 64 clients, -M prepared",
        args: &["-S"],
        clients: 64,
        protocol: Protocol::Prepared,
        group: 1,
        short: true,
    },
    Workload {
        name: "TPC-B-like, 16 clients",
        args: &[],
        clients: 16,
        protocol: Protocol::Simple,
        group: 2,
        short: false,
    },
    Workload {
        name: "select-only, 64 clients, each SETs 2 parameters first",
        args: &[
            "-D",
            "configured=0",
            "-f",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/benches/select_with_sets.pgbench"
            ),
        ],
        clients: 64,
        protocol: Protocol::Simple,
        group: 3,
        short: true,
    },
];

/// Indices into `WORKLOADS` of the rows the issue #4 targets compare.
const SELECT64_SIMPLE: usize = 1;
const SELECT64_EXTENDED: usize = 2;
const SELECT64_PREPARED: usize = 3;

/// Issue #4: Switchyard `-M prepared` / Switchyard `-M simple`, `-S`, 64 clients.
const TARGET_PREPARED_VS_SIMPLE: f64 = 1.1;
/// Issue #4: Switchyard `-M prepared` / PgBouncer `-M simple`, `-S`, 64 clients.
const TARGET_PREPARED_VS_PGBOUNCER: f64 = 1.2;
/// Issue #5: Switchyard metrics on / metrics off, `-S`, 64 clients, `-M simple`
/// (recording metrics may cost at most 3 % of TPS).
const TARGET_METRICS_ON_VS_OFF: f64 = 0.97;

/// Where pgbench connects.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Direct,
    /// Switchyard with `[http] metrics = true` (the default).
    Switchyard,
    PgBouncer,
    /// Switchyard with `[http] metrics = false`: the baseline for what
    /// recording metrics costs.
    SwitchyardNoMetrics,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Switchyard => "switchyard",
            Target::PgBouncer => "pgbouncer",
            Target::SwitchyardNoMetrics => "switchyard-nometrics",
        }
    }

    /// Position in `TARGETS` and in `Round::outs`.
    fn index(self) -> usize {
        match self {
            Target::Direct => 0,
            Target::Switchyard => 1,
            Target::PgBouncer => 2,
            Target::SwitchyardNoMetrics => 3,
        }
    }
}

/// The targets, in the order of the first round (later rounds rotate it) and
/// of the tables' columns. The two Switchyards sit opposite each other, so
/// that over four rounds each runs before the other twice: next to each
/// other, whichever ran second would in most rounds be the one that meets
/// the state (checkpoints, caches, heat) the other left.
const TARGETS: [Target; 4] = [
    Target::Direct,
    Target::Switchyard,
    Target::PgBouncer,
    Target::SwitchyardNoMetrics,
];

/// Outcome of one pgbench run.
#[derive(Clone)]
enum Outcome {
    Tps(f64),
    /// pgbench failed or printed no tps; the message says what it printed.
    Failed(String),
    /// The target was not available (PgBouncer missing).
    Skipped,
}

/// One round of one workload.
struct Round {
    /// The order the targets ran in.
    order: Vec<Target>,
    /// For a workload sharing its rounds with others: its place among them
    /// (1-based) and their number.
    block: Option<(usize, usize)>,
    /// Per target, in `TARGETS` order.
    outs: [Outcome; TARGETS.len()],
}

fn main() {
    common::run_main("pgbench_compare", "pgbench_compare failed", bench);
}

fn bench() -> anyhow::Result<()> {
    let rounds = env_number("BENCH_ROUNDS", 3)?.max(1) as usize;
    let secs = env_number("BENCH_SECS", 10)?.max(1);

    eprintln!("starting PostgreSQL (fsync = on, no replica)...");
    let (cluster, pgbench) = pgbench::initialised_cluster(0, SCALE, "pgbench_compare")?;
    let primary = cluster.primary();
    let version = primary.psql("postgres", "SHOW server_version")?;

    let tmp = TempDir::create("switchyard-bench")?;
    let proxy = start_switchyard(&primary.addr(), Metrics::On)?;
    let proxy_nometrics = start_switchyard(&primary.addr(), Metrics::Off)?;
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

    let port_of = |t: Target| match t {
        Target::Direct => Some(primary.port()),
        Target::Switchyard => Some(proxy.port),
        Target::PgBouncer => bouncer.as_ref().map(|b| b.port),
        Target::SwitchyardNoMetrics => Some(proxy_nometrics.port),
    };
    let short_secs = (secs * SHORT_RUN_PERCENT / 100).max(1);
    let began = Instant::now();

    // Warm-up: PostgreSQL's buffer cache and every pool's connections.
    let warm = secs.min(3);
    for t in TARGETS {
        if let Some(port) = port_of(t) {
            eprintln!("warm-up: {} ({warm}s, -S, 64 clients)", t.name());
            let out = run_pgbench(&pgbench, port, &["-S"], 64, Protocol::Simple, warm);
            if let Outcome::Failed(msg) = out {
                eprintln!("warm-up through {} failed:\n{msg}", t.name());
            }
        }
    }

    // results[workload][round]
    let mut results: Vec<Vec<Round>> = WORKLOADS.iter().map(|_| Vec::new()).collect();
    let mut first = 0;
    while first < WORKLOADS.len() {
        let group = WORKLOADS[first].group;
        let end = first
            + WORKLOADS[first..]
                .iter()
                .take_while(|w| w.group == group)
                .count();
        for r in 0..rounds {
            let mut w_order: Vec<usize> = (first..end).collect();
            w_order.rotate_left(r % (end - first));
            let mut order = TARGETS.to_vec();
            order.rotate_left(r % TARGETS.len());
            let blocks = w_order.len();
            for (block, &wi) in w_order.iter().enumerate() {
                let w = &WORKLOADS[wi];
                let run_secs = if w.short { short_secs } else { secs };
                let mut outs = TARGETS.map(|_| Outcome::Skipped);
                for &t in &order {
                    let Some(port) = port_of(t) else { continue };
                    eprint!(
                        "{} | round {}/{rounds} | {:<20} ... ",
                        w.name,
                        r + 1,
                        t.name()
                    );
                    let out = run_pgbench(&pgbench, port, w.args, w.clients, w.protocol, run_secs);
                    match &out {
                        Outcome::Tps(tps) => eprintln!("{tps:.0} tps"),
                        Outcome::Failed(msg) if unsupported(w, t, msg) => {
                            eprintln!("n/a (unsupported): {}", first_error(msg))
                        }
                        Outcome::Failed(msg) => eprintln!("FAILED\n{msg}"),
                        Outcome::Skipped => eprintln!("skipped"),
                    }
                    outs[t.index()] = out;
                }
                results[wi].push(Round {
                    order: order.clone(),
                    block: (blocks > 1).then_some((block + 1, blocks)),
                    outs,
                });
            }
        }
        first = end;
    }
    let elapsed = began.elapsed();

    let header = format!(
        "PostgreSQL {version}, scale {SCALE}, fsync on; pgbench -j 2, -M as per row, {secs}s per run \
         ({short_secs}s for the -M extended/prepared rows), {rounds} round(s) per workload \
         ({:.1} min of warm-up and runs); pools: {POOL_SIZE} server connections, transaction mode; \
         Switchyard in-process twice, [http] metrics on and off (each on its own tokio runtime, \
         [proxy] workers = auto: {} worker thread(s), a current-thread runtime when 1; \
         {} cores shared with PostgreSQL and pgbench); {}",
        elapsed.as_secs_f64() / 60.0,
        switchyard::runtime::worker_count(0),
        thread::available_parallelism().map_or(0, |n| n.get()),
        bouncer
            .as_ref()
            .map_or("PgBouncer not available".into(), |b| b.version.clone())
    );
    println!("\n{}", report(&header, &results));

    // Teardown in reverse order of start; the guards also do this on panic.
    drop(bouncer);
    drop(proxy_nometrics);
    drop(proxy);
    drop(tmp);
    drop(cluster);
    Ok(())
}

// ---------------------------------------------------------------------------
// pgbench
// ---------------------------------------------------------------------------

/// Whether `msg`, the failure of `w` through `t`, is PgBouncer not supporting
/// protocol-level prepared statements in transaction mode (before 1.21, or
/// without `max_prepared_statements`): a server connection lacks the
/// statement a client prepared on another one, or has one of the same name.
fn unsupported(w: &Workload, t: Target, msg: &str) -> bool {
    w.protocol == Protocol::Prepared
        && t == Target::PgBouncer
        && msg.lines().any(|l| {
            l.contains("prepared statement")
                && (l.contains("does not exist") || l.contains("already exists"))
        })
}

/// The first line of a failure that names an error, else its first line.
fn first_error(msg: &str) -> &str {
    msg.lines()
        .find(|l| l.contains("ERROR") || l.contains("error"))
        .or_else(|| msg.lines().next())
        .unwrap_or("")
        .trim()
}

/// One timed run; returns the tps without connection time, or what went wrong.
fn run_pgbench(
    pgbench_bin: &Path,
    port: u16,
    extra: &[&str],
    clients: u32,
    protocol: Protocol,
    secs: u64,
) -> Outcome {
    let mut cmd = pgbench::command(pgbench_bin, port, "pgbench_compare");
    cmd.args(["-n", "-T", &secs.to_string(), "-c", &clients.to_string()])
        .args(["-j", "2", "-M", protocol.name()])
        .args(extra);
    match pgbench::run(cmd, Duration::from_secs(secs + 60)) {
        Ok(tps) => Outcome::Tps(tps),
        Err(why) => Outcome::Failed(why),
    }
}

// ---------------------------------------------------------------------------
// Switchyard configuration
// ---------------------------------------------------------------------------

/// Whether a Switchyard records its traffic metrics (`[http] metrics`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Metrics {
    On,
    Off,
}

/// Starts an in-process Switchyard in front of `primary_addr`.
fn start_switchyard(primary_addr: &str, metrics: Metrics) -> anyhow::Result<Switchyard> {
    let proxy = Switchyard::start(|listen| proxy_config(primary_addr, listen, metrics))?;
    let name = match metrics {
        Metrics::On => Target::Switchyard.name(),
        Metrics::Off => Target::SwitchyardNoMetrics.name(),
    };
    eprintln!("{name} (in-process) listening on 127.0.0.1:{}", proxy.port);
    Ok(proxy)
}

/// The proxy's configuration: one node, the same pool and client limits as
/// PgBouncer's, and `[http] metrics` as `metrics` says. (`run` serves no HTTP
/// endpoints, so the two proxies do not compete for `[http] listen`.)
fn proxy_config(primary_addr: &str, listen: &str, metrics: Metrics) -> anyhow::Result<Config> {
    let mut cluster = format!(r#"nodes = ["{primary_addr}"]"#);
    if metrics == Metrics::Off {
        // `common::proxy_config` takes no other sections; a table header
        // after the cluster body is valid TOML wherever the template puts
        // `[cluster]`, since whatever follows it starts with a header too.
        cluster.push_str("\n\n[http]\nmetrics = false");
    }
    let config = common::proxy_config(
        listen,
        POOL_SIZE,
        &format!("max_client_conn = {MAX_CLIENT_CONN}\nshutdown_timeout = \"5s\""),
        &cluster,
    )?;
    // A typo in the key would be rejected (`deny_unknown_fields`), but a
    // table landing somewhere else would not: make sure it took effect,
    // or the comparison would be of two identical proxies.
    ensure!(
        config.http.metrics == (metrics == Metrics::On),
        "[http] metrics is {} in the configuration built for metrics {}",
        config.http.metrics,
        if metrics == Metrics::On { "on" } else { "off" }
    );
    Ok(config)
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn fmt_tps(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.0}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("–".into(), |r| format!("{r:.2}"))
}

/// One run's table cell.
fn fmt_outcome(w: &Workload, t: Target, o: &Outcome) -> String {
    match o {
        Outcome::Tps(t) => format!("{t:.0}"),
        Outcome::Failed(msg) if unsupported(w, t, msg) => "n/a (unsupported)".into(),
        Outcome::Failed(_) => "FAILED".into(),
        Outcome::Skipped => "–".into(),
    }
}

/// Median TPS of `t`'s successful rounds.
fn median_tps(rounds: &[Round], t: Target) -> Option<f64> {
    median(
        rounds
            .iter()
            .filter_map(|r| match r.outs[t.index()] {
                Outcome::Tps(tps) => Some(tps),
                _ => None,
            })
            .collect(),
    )
}

/// The median's table cell: the median of the successful rounds, else why
/// there is none.
fn fmt_median(w: &Workload, rounds: &[Round], t: Target) -> String {
    if let Some(m) = median_tps(rounds, t) {
        return fmt_tps(Some(m));
    }
    let outs = || rounds.iter().map(|r| &r.outs[t.index()]);
    if outs().any(|o| matches!(o, Outcome::Failed(m) if unsupported(w, t, m))) {
        "n/a (unsupported)".into()
    } else if outs().any(|o| matches!(o, Outcome::Failed(_))) {
        "FAILED".into()
    } else {
        "–".into()
    }
}

/// A workload (index into `WORKLOADS`) through a target.
type Cell = (usize, Target);

/// `a` of workload `wa` over `b` of workload `wb`, round by round (the
/// workloads share their rounds).
fn per_round_ratios(results: &[Vec<Round>], (wa, a): Cell, (wb, b): Cell) -> String {
    let ratios: Vec<String> = results[wa]
        .iter()
        .zip(&results[wb])
        .map(
            |(ra, rb)| match (&ra.outs[a.index()], &rb.outs[b.index()]) {
                (Outcome::Tps(x), Outcome::Tps(y)) => fmt_ratio(ratio(Some(*x), Some(*y))),
                _ => "–".into(),
            },
        )
        .collect();
    ratios.join(", ")
}

/// A ratio the report checks or shows for context: `a` over `b`, with the
/// target it must reach, if any.
struct Comparison {
    name: &'static str,
    a: Cell,
    b: Cell,
    target: Option<f64>,
}

/// Issue #4's targets, and the ratios that put them in context.
const ISSUE4_COMPARISONS: [Comparison; 5] = [
    Comparison {
        name: "Switchyard prepared / Switchyard simple",
        a: (SELECT64_PREPARED, Target::Switchyard),
        b: (SELECT64_SIMPLE, Target::Switchyard),
        target: Some(TARGET_PREPARED_VS_SIMPLE),
    },
    Comparison {
        name: "Switchyard prepared / PgBouncer simple",
        a: (SELECT64_PREPARED, Target::Switchyard),
        b: (SELECT64_SIMPLE, Target::PgBouncer),
        target: Some(TARGET_PREPARED_VS_PGBOUNCER),
    },
    Comparison {
        name: "(reference) direct prepared / direct simple",
        a: (SELECT64_PREPARED, Target::Direct),
        b: (SELECT64_SIMPLE, Target::Direct),
        target: None,
    },
    Comparison {
        name: "(reference) Switchyard extended / Switchyard simple",
        a: (SELECT64_EXTENDED, Target::Switchyard),
        b: (SELECT64_SIMPLE, Target::Switchyard),
        target: None,
    },
    Comparison {
        name: "(reference) Switchyard prepared / direct prepared",
        a: (SELECT64_PREPARED, Target::Switchyard),
        b: (SELECT64_PREPARED, Target::Direct),
        target: None,
    },
];

/// Issue #5's target. The other rows' on/off ratios are in the medians
/// table; this one is the row the issue names.
const ISSUE5_COMPARISONS: [Comparison; 1] = [Comparison {
    name: "Switchyard metrics on / metrics off",
    a: (SELECT64_SIMPLE, Target::Switchyard),
    b: (SELECT64_SIMPLE, Target::SwitchyardNoMetrics),
    target: Some(TARGET_METRICS_ON_VS_OFF),
}];

fn report(header: &str, results: &[Vec<Round>]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{header}\n");
    medians_table(&mut s, results);
    let _ = writeln!(
        s,
        "\nMedians over successful rounds. Rows without -M use -M simple; \
         metrics on/off is switchyard / switchyard-nometrics.\n"
    );
    let _ = writeln!(
        s,
        "Issue #4 targets, select-only (-S), 64 clients (ratio of the medians above; \
         per round: the same round's runs, which the three -M rows share):\n"
    );
    comparisons_table(&mut s, results, &ISSUE4_COMPARISONS);
    let _ = writeln!(
        s,
        "\nIssue #5 target, select-only (-S), 64 clients, -M simple: recording metrics \
         costs at most 3 % of TPS (per round: the two Switchyards' runs of that round):\n"
    );
    comparisons_table(&mut s, results, &ISSUE5_COMPARISONS);
    unsupported_note(&mut s, results);
    let _ = writeln!(s, "\nIndividual rounds:\n");
    rounds_table(&mut s, results);
    failed_runs(&mut s, results);
    s
}

/// Per workload: each target's median TPS and the ratios between them.
fn medians_table(s: &mut String, results: &[Vec<Round>]) {
    let _ = writeln!(
        s,
        "| workload | direct TPS | switchyard TPS | pgbouncer TPS | switchyard-nometrics TPS \
         | switchyard/direct | switchyard/pgbouncer | metrics on/off |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for (w, rounds) in WORKLOADS.iter().zip(results) {
        let med = |t: Target| median_tps(rounds, t);
        let cell = |t: Target| fmt_median(w, rounds, t);
        let sy = med(Target::Switchyard);
        let pb = med(Target::PgBouncer);
        let pb_unsupported = pb.is_none() && cell(Target::PgBouncer) == "n/a (unsupported)";
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            w.name,
            cell(Target::Direct),
            cell(Target::Switchyard),
            cell(Target::PgBouncer),
            cell(Target::SwitchyardNoMetrics),
            fmt_ratio(ratio(sy, med(Target::Direct))),
            if pb_unsupported {
                "n/a".into()
            } else {
                fmt_ratio(ratio(sy, pb))
            },
            fmt_ratio(ratio(sy, med(Target::SwitchyardNoMetrics))),
        );
    }
}

/// The ratio of the medians of each comparison, its target and verdict, and
/// the ratio round by round (which shows how much of it is noise).
fn comparisons_table(s: &mut String, results: &[Vec<Round>], comparisons: &[Comparison]) {
    let med = |(w, t): Cell| median_tps(&results[w], t);
    let _ = writeln!(s, "| comparison | ratio | target | per round | result |");
    let _ = writeln!(s, "|---|---:|---:|---|---|");
    for c in comparisons {
        let r = ratio(med(c.a), med(c.b));
        let verdict = match (c.target, r) {
            (None, _) => "",
            (Some(_), None) => "no data",
            (Some(t), Some(r)) if r >= t => "met",
            (Some(_), Some(_)) => "NOT met",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {verdict} |",
            c.name,
            fmt_ratio(r),
            c.target.map_or("–".into(), |t| format!("≥ {t}")),
            per_round_ratios(results, c.a, c.b),
        );
    }
}

/// Expected PgBouncer failures: one note instead of every run's output.
fn unsupported_note(s: &mut String, results: &[Vec<Round>]) {
    let mut unsupported_runs = Vec::new();
    for (w, rounds) in WORKLOADS.iter().zip(results) {
        for r in rounds {
            for t in TARGETS {
                if let Outcome::Failed(msg) = &r.outs[t.index()] {
                    if unsupported(w, t, msg) {
                        unsupported_runs.push((w.name, msg.as_str()));
                    }
                }
            }
        }
    }
    if let Some((name, msg)) = unsupported_runs.first() {
        let _ = writeln!(
            s,
            "\nn/a (unsupported): PgBouncer before 1.21 does not support protocol-level prepared \
             statements in transaction mode; pgbench failed through it in {} run(s) of \
             \"{name}\", e.g.:\n\n```\n{}\n```",
            unsupported_runs.len(),
            first_error(msg)
        );
    }
}

/// Every run's TPS, round by round, with the order the targets ran in.
fn rounds_table(s: &mut String, results: &[Vec<Round>]) {
    let names: Vec<&str> = TARGETS.iter().map(|t| t.name()).collect();
    let _ = writeln!(s, "| workload | round | order | {} |", names.join(" | "));
    let _ = writeln!(s, "|---|---:|---|{}", "---:|".repeat(TARGETS.len()));
    for (w, rounds) in WORKLOADS.iter().zip(results) {
        for (i, r) in rounds.iter().enumerate() {
            let order: Vec<&str> = r.order.iter().map(|t| t.name()).collect();
            let block = r
                .block
                .map_or(String::new(), |(b, n)| format!(" (block {b}/{n})"));
            let cells: Vec<String> = TARGETS
                .iter()
                .map(|&t| fmt_outcome(w, t, &r.outs[t.index()]))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {}{block} | {} |",
                w.name,
                i + 1,
                order.join(" → "),
                cells.join(" | ")
            );
        }
    }
}

/// The output of the runs that failed unexpectedly.
fn failed_runs(s: &mut String, results: &[Vec<Round>]) {
    let mut failures = Vec::new();
    for (w, rounds) in WORKLOADS.iter().zip(results) {
        for (i, r) in rounds.iter().enumerate() {
            for t in TARGETS {
                if let Outcome::Failed(msg) = &r.outs[t.index()] {
                    if !unsupported(w, t, msg) {
                        failures.push(format!(
                            "{} / round {} / {}:\n{msg}",
                            w.name,
                            i + 1,
                            t.name()
                        ));
                    }
                }
            }
        }
    }
    if !failures.is_empty() {
        let _ = writeln!(s, "\nFailed runs:\n");
        for f in failures {
            let _ = writeln!(s, "```\n{f}\n```");
        }
    }
}
