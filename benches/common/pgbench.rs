//! Running pgbench against one target: a command with the machine's libpq
//! environment removed, a run with a deadline, and the numbers read back.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use switchyard::local_cluster::{
    LocalCluster, LocalClusterOptions, APP_DB, APP_PASSWORD, APP_USER,
};

use super::tail;

/// libpq environment variables that must not leak into pgbench.
const LIBPQ_ENV: [&str; 10] = [
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

/// pgbench connecting to 127.0.0.1:`port` as the app user, named `app` in
/// `pg_stat_activity`. Callers add the run's arguments (and `PGSSLMODE`).
pub fn command(pgbench: &Path, port: u16, app: &str) -> Command {
    let mut cmd = Command::new(pgbench);
    for v in LIBPQ_ENV {
        cmd.env_remove(v);
    }
    cmd.env("PGPASSWORD", APP_PASSWORD)
        .env("PGAPPNAME", app)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", APP_USER])
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd` (a [`command`] with its arguments, the database appended
/// here) for at most `limit`: the tps of a run without failed transactions,
/// else what pgbench said.
pub fn run(cmd: Command, limit: Duration) -> Result<f64, String> {
    run_with_output(cmd, limit).map(|(tps, _)| tps)
}

/// [`run`], also returning what pgbench printed on stdout (for
/// [`parse_transactions`]).
pub fn run_with_output(mut cmd: Command, limit: Duration) -> Result<(f64, String), String> {
    cmd.arg(APP_DB);
    let (status, stdout, stderr) =
        output_with_deadline(cmd, limit).map_err(|e| format!("{e:#}"))?;
    match (status.success(), parse_tps(&stdout), parse_failed(&stdout)) {
        (true, Some(tps), None | Some(0)) => Ok((tps, stdout)),
        _ => Err(format!(
            "pgbench exited with {status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            stdout.trim_end(),
            tail(&stderr, 40)
        )),
    }
}

/// Runs `cmd`, capturing its output; kills it after `limit`.
fn output_with_deadline(
    mut cmd: Command,
    limit: Duration,
) -> anyhow::Result<(ExitStatus, String, String)> {
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
    let out = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as _));
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

/// `tps = 12345.678 (without initial connection time)`, or with `-C`
/// `tps = 123.4 (including reconnection times)`.
fn parse_tps(stdout: &str) -> Option<f64> {
    stdout.lines().find_map(|l| {
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

/// `number of transactions actually processed: 123456` (with `-t`,
/// `123456/160000`): the transactions a run completed.
pub fn parse_transactions(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split(['/', ' ']).next()?.parse().ok())
}

/// The pgbench of the cluster's PostgreSQL, else Debian's.
pub fn find(bindir: &Path) -> anyhow::Result<PathBuf> {
    [bindir.join("pgbench"), PathBuf::from("/usr/bin/pgbench")]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("pgbench not found in {} or /usr/bin", bindir.display()))
}

/// A throw-away primary (`fsync = on`) with `replicas` streaming replicas,
/// its app database initialised by `pgbench -i -s scale` (run as
/// `name`), and the pgbench binary to run against it.
pub fn initialised_cluster(
    replicas: usize,
    scale: u32,
    name: &str,
) -> anyhow::Result<(LocalCluster, PathBuf)> {
    let cluster = LocalCluster::start(LocalClusterOptions {
        fsync: true,
        replicas,
        ..Default::default()
    })
    .context("starting the local cluster (is PostgreSQL installed?)")?;
    let bin = find(cluster.bindir())?;
    eprintln!("pgbench -i -s {scale}...");
    let init = command(&bin, cluster.primary().port(), name)
        .args(["-i", "-s", &scale.to_string(), "-q", APP_DB])
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
    Ok((cluster, bin))
}
