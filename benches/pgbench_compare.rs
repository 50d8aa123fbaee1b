//! pgbench through Switchyard vs straight to PostgreSQL vs through PgBouncer.
//!
//! Run with `cargo bench --bench pgbench_compare` (as root or as a user that
//! may start PostgreSQL; PgBouncer is installed with apt-get when missing).
//! Environment: `BENCH_ROUNDS` (default 3) interleaved rounds per workload,
//! `BENCH_SECS` (default 10) seconds per pgbench run.
//!
//! What it does: starts a throw-away PostgreSQL primary (`fsync = on`, no
//! replica), `pgbench -i -s 10`, starts Switchyard in-process on its own tokio
//! runtime (in a background thread of this process, which otherwise only
//! waits for pgbench) and PgBouncer as a child process, both in transaction
//! mode with 20 server connections, then runs each workload in rounds that
//! visit the three targets in rotating order, and prints markdown tables.
//! Everything it starts is stopped on the way out, also on panic.
//!
//! Without `--bench` on the command line (e.g. `cargo test --benches`) it
//! does nothing: a run takes minutes.

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use switchyard::config::Config;
use switchyard::local_cluster::{
    LocalCluster, LocalClusterOptions, APP_DB, APP_PASSWORD, APP_USER,
};

mod common;

use common::{env_number, median, Switchyard};

/// Server connections per pool, for Switchyard and PgBouncer alike.
const POOL_SIZE: usize = 20;
/// Client connection limit, for Switchyard and PgBouncer alike.
const MAX_CLIENT_CONN: usize = 1000;
/// `pgbench -i` scale factor.
const SCALE: u32 = 10;
/// OS user PgBouncer runs as when we are root (it refuses to run as root).
const PGBOUNCER_OS_USER: &str = "postgres";
/// Where Debian puts PgBouncer.
const PGBOUNCER_BIN: &str = "/usr/sbin/pgbouncer";
/// libpq environment variables that must not leak into pgbench.
const PG_ENV_VARS: [&str; 10] = [
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSFILE",
    "PGSERVICE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGTARGETSESSIONATTRS",
];

/// A pgbench workload.
struct Workload {
    name: &'static str,
    /// Extra pgbench arguments (`-S` for select-only; none for TPC-B-like).
    args: &'static [&'static str],
    clients: u32,
}

const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "select-only (-S), 16 clients",
        args: &["-S"],
        clients: 16,
    },
    Workload {
        name: "select-only (-S), 64 clients",
        args: &["-S"],
        clients: 64,
    },
    Workload {
        name: "TPC-B-like, 16 clients",
        args: &[],
        clients: 16,
    },
];

/// Where pgbench connects.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Direct,
    Switchyard,
    PgBouncer,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Switchyard => "switchyard",
            Target::PgBouncer => "pgbouncer",
        }
    }
}

/// Outcome of one pgbench run.
#[derive(Clone)]
enum Outcome {
    Tps(f64),
    /// pgbench failed or printed no tps; the message says what it printed.
    Failed(String),
    /// The target was not available (PgBouncer missing).
    Skipped,
}

fn main() {
    common::run_main("pgbench_compare", "pgbench_compare failed", bench);
}

fn bench() -> anyhow::Result<()> {
    let rounds = env_number("BENCH_ROUNDS", 3)?.max(1) as usize;
    let secs = env_number("BENCH_SECS", 10)?.max(1);

    eprintln!("starting PostgreSQL (fsync = on, no replica)...");
    let cluster = LocalCluster::start(LocalClusterOptions {
        fsync: true,
        replicas: 0,
        ..Default::default()
    })
    .context("starting the local cluster (is PostgreSQL installed?)")?;
    let primary = cluster.primary();
    let pgbench = find_pgbench(cluster.bindir())?;
    let version = primary.psql("postgres", "SHOW server_version")?;

    eprintln!("pgbench -i -s {SCALE}...");
    let init = pgbench_command(&pgbench, primary.port())
        .args(["-i", "-s", &SCALE.to_string(), "-q", APP_DB])
        .output()
        .context("running pgbench -i")?;
    if !init.status.success() {
        bail!(
            "pgbench -i failed ({}):\n{}{}",
            init.status,
            String::from_utf8_lossy(&init.stdout),
            String::from_utf8_lossy(&init.stderr)
        );
    }

    let tmp = TempDir::create()?;
    let proxy = Switchyard::start(|listen| proxy_config(&primary.addr(), listen))?;
    eprintln!(
        "switchyard (in-process) listening on 127.0.0.1:{}",
        proxy.port
    );
    let bouncer = match ensure_pgbouncer() {
        Ok(bin) => Some(PgBouncer::start(&bin, &tmp.path, primary.port())?),
        Err(e) => {
            eprintln!("PgBouncer unavailable, its columns are skipped: {e:#}");
            None
        }
    };

    let port_of = |t: Target| match t {
        Target::Direct => Some(primary.port()),
        Target::Switchyard => Some(proxy.port),
        Target::PgBouncer => bouncer.as_ref().map(|b| b.port),
    };
    let targets = [Target::Direct, Target::Switchyard, Target::PgBouncer];

    // Warm-up: PostgreSQL's buffer cache and every pool's connections.
    let warm = secs.min(3);
    for t in targets {
        if let Some(port) = port_of(t) {
            eprintln!("warm-up: {} ({warm}s, -S, 64 clients)", t.name());
            let out = run_pgbench(&pgbench, port, &["-S"], 64, warm);
            if let Outcome::Failed(msg) = out {
                eprintln!("warm-up through {} failed:\n{msg}", t.name());
            }
        }
    }

    // results[workload][round] = (order, outcome per target in `targets` order)
    let mut results: Vec<Vec<(Vec<Target>, [Outcome; 3])>> = Vec::new();
    for w in &WORKLOADS {
        let mut per_round = Vec::new();
        for r in 0..rounds {
            let mut order = targets.to_vec();
            order.rotate_left(r % targets.len());
            let mut outs = [Outcome::Skipped, Outcome::Skipped, Outcome::Skipped];
            for &t in &order {
                let Some(port) = port_of(t) else { continue };
                eprint!(
                    "{} | round {}/{rounds} | {:<10} ... ",
                    w.name,
                    r + 1,
                    t.name()
                );
                let out = run_pgbench(&pgbench, port, w.args, w.clients, secs);
                match &out {
                    Outcome::Tps(tps) => eprintln!("{tps:.0} tps"),
                    Outcome::Failed(msg) => eprintln!("FAILED\n{msg}"),
                    Outcome::Skipped => eprintln!("skipped"),
                }
                let i = targets.iter().position(|x| *x == t).unwrap_or(0);
                outs[i] = out;
            }
            per_round.push((order, outs));
        }
        results.push(per_round);
    }

    let header = format!(
        "PostgreSQL {version}, scale {SCALE}, fsync on; pgbench -M simple -j 2, {secs}s per run, \
         {rounds} round(s) per workload; pools: {POOL_SIZE} server connections, transaction mode; \
         Switchyard in-process (tokio multi-thread runtime, {} cores shared with PostgreSQL and pgbench){}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        if bouncer.is_none() {
            "; PgBouncer not available"
        } else {
            ""
        }
    );
    println!("\n{}", report(&header, &results));

    // Teardown in reverse order of start; the guards also do this on panic.
    drop(bouncer);
    drop(proxy);
    drop(tmp);
    drop(cluster);
    Ok(())
}

// ---------------------------------------------------------------------------
// pgbench
// ---------------------------------------------------------------------------

fn find_pgbench(bindir: &Path) -> anyhow::Result<PathBuf> {
    let candidates = [bindir.join("pgbench"), PathBuf::from("/usr/bin/pgbench")];
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("pgbench not found in {} or /usr/bin", bindir.display()))
}

/// pgbench connecting to 127.0.0.1:`port` as the app user.
fn pgbench_command(pgbench: &Path, port: u16) -> Command {
    let mut cmd = Command::new(pgbench);
    for v in PG_ENV_VARS {
        cmd.env_remove(v);
    }
    cmd.env("PGPASSWORD", APP_PASSWORD)
        .env("PGAPPNAME", "pgbench_compare")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", APP_USER])
        .stdin(Stdio::null());
    cmd
}

/// One timed run; returns the tps without connection time, or what went wrong.
fn run_pgbench(pgbench: &Path, port: u16, extra: &[&str], clients: u32, secs: u64) -> Outcome {
    let mut cmd = pgbench_command(pgbench, port);
    cmd.args(["-n", "-T", &secs.to_string(), "-c", &clients.to_string()])
        .args(["-j", "2", "-M", "simple"])
        .args(extra)
        .arg(APP_DB);
    match output_with_deadline(cmd, Duration::from_secs(secs + 60)) {
        Err(e) => Outcome::Failed(format!("{e:#}")),
        Ok((status, stdout, stderr)) => {
            let tps = parse_tps(&stdout);
            let failed = parse_failed(&stdout);
            match (status.success(), tps, failed) {
                (true, Some(tps), None | Some(0)) => Outcome::Tps(tps),
                _ => Outcome::Failed(format!(
                    "pgbench exited with {status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    stdout.trim_end(),
                    tail(&stderr, 40)
                )),
            }
        }
    }
}

/// Runs `cmd`, capturing its output; kills it after `limit`.
fn output_with_deadline(
    mut cmd: Command,
    limit: Duration,
) -> anyhow::Result<(std::process::ExitStatus, String, String)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning pgbench")?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            bail!(
                "pgbench did not finish within {limit:?}; killed\n--- stderr ---\n{}",
                tail(&stderr, 40)
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    Ok((
        status,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    ))
}

/// `tps = 12345.678 (without initial connection time)`.
fn parse_tps(stdout: &str) -> Option<f64> {
    stdout
        .lines()
        .filter(|l| l.contains("without initial connection time"))
        .find_map(|l| {
            l.strip_prefix("tps = ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

/// `number of failed transactions: 3 (0.001%)` (pgbench 15+).
fn parse_failed(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// Switchyard configuration
// ---------------------------------------------------------------------------

/// The proxy's configuration: one node, the same pool and client limits as
/// PgBouncer's.
fn proxy_config(primary_addr: &str, listen: &str) -> anyhow::Result<Config> {
    common::proxy_config(
        listen,
        POOL_SIZE,
        &format!("max_client_conn = {MAX_CLIENT_CONN}\nshutdown_timeout = \"5s\""),
        &format!(r#"nodes = ["{primary_addr}"]"#),
    )
}

// ---------------------------------------------------------------------------
// PgBouncer
// ---------------------------------------------------------------------------

/// Returns PgBouncer's path, installing it with apt-get if needed.
fn ensure_pgbouncer() -> anyhow::Result<PathBuf> {
    let bin = PathBuf::from(PGBOUNCER_BIN);
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!("{PGBOUNCER_BIN} missing; trying `apt-get install -y pgbouncer`...");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
    };
    let first = apt(&["install", "-y", "pgbouncer"]);
    if !first.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("apt-get install failed; running apt-get update and retrying...");
        let _ = apt(&["update"]);
        let second = apt(&["install", "-y", "pgbouncer"]).context("running apt-get")?;
        if !second.status.success() {
            bail!(
                "apt-get install -y pgbouncer failed:\n{}",
                tail(&String::from_utf8_lossy(&second.stderr), 10)
            );
        }
    }
    // The package may start its own service on 6432; we use our own port and
    // config, so it would be harmless, but it would take CPU: stop it.
    let _ = Command::new("service")
        .args(["pgbouncer", "stop"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if bin.is_file() {
        Ok(bin)
    } else {
        bail!("apt-get succeeded but {PGBOUNCER_BIN} is still missing")
    }
}

/// A PgBouncer child process; killed on drop.
struct PgBouncer {
    port: u16,
    child: Child,
}

impl PgBouncer {
    fn start(bin: &Path, dir: &Path, pg_port: u16) -> anyhow::Result<PgBouncer> {
        let run_as = if is_root() {
            Some(lookup_user(PGBOUNCER_OS_USER).ok_or_else(|| {
                anyhow!("running as root and the `{PGBOUNCER_OS_USER}` OS user does not exist")
            })?)
        } else {
            None
        };
        let port = free_port()?;
        let ini = dir.join("pgbouncer.ini");
        let userlist = dir.join("userlist.txt");
        let log = dir.join("pgbouncer.log");
        let mut conf = String::new();
        let _ = writeln!(conf, "[databases]");
        let _ = writeln!(
            conf,
            "{APP_DB} = host=127.0.0.1 port={pg_port} dbname={APP_DB}"
        );
        let _ = writeln!(conf, "[pgbouncer]");
        let _ = writeln!(conf, "listen_addr = 127.0.0.1");
        let _ = writeln!(conf, "listen_port = {port}");
        let _ = writeln!(conf, "unix_socket_dir =");
        let _ = writeln!(conf, "auth_type = scram-sha-256");
        let _ = writeln!(conf, "auth_file = {}", userlist.display());
        let _ = writeln!(conf, "pool_mode = transaction");
        let _ = writeln!(conf, "default_pool_size = {POOL_SIZE}");
        let _ = writeln!(conf, "max_client_conn = {MAX_CLIENT_CONN}");
        let _ = writeln!(conf, "logfile = {}", log.display());
        let _ = writeln!(conf, "pidfile = {}", dir.join("pgbouncer.pid").display());
        fs::write(&ini, conf).context("writing pgbouncer.ini")?;
        fs::write(&userlist, format!("\"{APP_USER}\" \"{APP_PASSWORD}\"\n"))
            .context("writing userlist.txt")?;
        for f in [&ini, &userlist] {
            fs::set_permissions(f, fs::Permissions::from_mode(0o600))?;
        }
        if let Some((uid, gid)) = run_as {
            for f in [dir, ini.as_path(), userlist.as_path()] {
                std::os::unix::fs::chown(f, Some(uid), Some(gid))
                    .with_context(|| format!("chown {}", f.display()))?;
            }
        }

        let mut cmd = Command::new(bin);
        cmd.arg(&ini)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = run_as {
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().context("spawning pgbouncer")?;
        let mut bouncer = PgBouncer { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                eprintln!("pgbouncer listening on 127.0.0.1:{port}");
                return Ok(bouncer);
            }
            let exited = bouncer.child.try_wait()?;
            if exited.is_some() || Instant::now() > deadline {
                let log_text = fs::read_to_string(&log).unwrap_or_default();
                bail!(
                    "pgbouncer did not start ({}):\n{}",
                    exited.map_or("still not listening after 10s".into(), |s| s.to_string()),
                    tail(&log_text, 20)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Small OS helpers
// ---------------------------------------------------------------------------

fn is_root() -> bool {
    // /proc/self is owned by the effective uid.
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// (uid, gid) of `user` from /etc/passwd.
fn lookup_user(user: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != user {
            return None;
        }
        let _password = f.next()?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A private directory under /tmp for PgBouncer's files; removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn create() -> anyhow::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn fmt_tps(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.0}"))
}

fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

fn fmt_outcome(o: &Outcome) -> String {
    match o {
        Outcome::Tps(t) => format!("{t:.0}"),
        Outcome::Failed(_) => "FAILED".into(),
        Outcome::Skipped => "–".into(),
    }
}

fn report(header: &str, results: &[Vec<(Vec<Target>, [Outcome; 3])>]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{header}\n");
    let _ = writeln!(
        s,
        "| workload | direct TPS | switchyard TPS | pgbouncer TPS | switchyard/direct | switchyard/pgbouncer |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for (w, rounds) in WORKLOADS.iter().zip(results) {
        let med = |i: usize| {
            median(
                rounds
                    .iter()
                    .filter_map(|(_, outs)| match outs[i] {
                        Outcome::Tps(t) => Some(t),
                        _ => None,
                    })
                    .collect(),
            )
        };
        let (d, sy, pb) = (med(0), med(1), med(2));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            w.name,
            fmt_tps(d),
            fmt_tps(sy),
            fmt_tps(pb),
            fmt_ratio(sy, d),
            fmt_ratio(sy, pb)
        );
    }
    let _ = writeln!(s, "\nMedians over successful rounds. Individual rounds:\n");
    let _ = writeln!(
        s,
        "| workload | round | order | direct | switchyard | pgbouncer |"
    );
    let _ = writeln!(s, "|---|---:|---|---:|---:|---:|");
    let mut failures = Vec::new();
    for (w, rounds) in WORKLOADS.iter().zip(results) {
        for (r, (order, outs)) in rounds.iter().enumerate() {
            let order: Vec<&str> = order.iter().map(|t| t.name()).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                w.name,
                r + 1,
                order.join(" → "),
                fmt_outcome(&outs[0]),
                fmt_outcome(&outs[1]),
                fmt_outcome(&outs[2])
            );
            for (t, o) in [Target::Direct, Target::Switchyard, Target::PgBouncer]
                .iter()
                .zip(outs)
            {
                if let Outcome::Failed(msg) = o {
                    failures.push(format!(
                        "{} / round {} / {}:\n{msg}",
                        w.name,
                        r + 1,
                        t.name()
                    ));
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
    s
}
