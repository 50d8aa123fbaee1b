//! PgBouncer as the benchmarks' reference: installed with apt-get when
//! missing, started as a child process (as the `postgres` OS user when we
//! are root: it refuses to run as root) in transaction mode in front of one
//! PostgreSQL, and killed on drop.

use std::fmt::Write as _;
use std::fs;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use switchyard::local_cluster::{APP_DB, APP_USER};

use super::os::{ensure_package, free_port, is_root, lookup_user, own_session, TempDir};
use super::tail;

/// Where Debian puts PgBouncer.
const BIN: &str = "/usr/sbin/pgbouncer";
/// OS user PgBouncer runs as when we are root.
const OS_USER: &str = "postgres";

/// How a benchmark wants its PgBouncer.
pub struct Settings<'a> {
    /// PostgreSQL's port on 127.0.0.1.
    pub pg_port: u16,
    /// `default_pool_size`.
    pub pool_size: usize,
    /// `max_client_conn`.
    pub max_client_conn: usize,
    /// The app user's secret in `auth_file`: a password or a SCRAM verifier.
    pub secret: &'a str,
    /// More `[pgbouncer]` lines (e.g. `client_tls_*`).
    pub extra: &'a str,
    /// Files those lines name, which PgBouncer's OS user must be able to read.
    pub files: &'a [&'a str],
}

/// A PgBouncer child process; killed on drop.
pub struct PgBouncer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// `PgBouncer 1.18.0`, from `--version`.
    pub version: String,
    child: Child,
}

/// Returns PgBouncer's path, installing it with apt-get if needed.
pub fn ensure() -> anyhow::Result<PathBuf> {
    ensure_package(BIN, "pgbouncer")
}

impl PgBouncer {
    /// Writes its ini and auth file into `tmp` and starts `bin` on a free
    /// port; returns once it accepts connections.
    pub fn start(bin: &Path, tmp: &TempDir, s: &Settings) -> anyhow::Result<PgBouncer> {
        let run_as = if is_root() {
            Some(lookup_user(OS_USER).ok_or_else(|| {
                anyhow!("running as root and the `{OS_USER}` OS user does not exist")
            })?)
        } else {
            None
        };
        let port = free_port()?;
        let dir = &tmp.path;
        let log = dir.join("pgbouncer.log");
        let userlist = tmp.write(
            "userlist.txt",
            &format!("\"{APP_USER}\" \"{}\"\n", s.secret),
        )?;
        let mut conf = String::new();
        let _ = writeln!(conf, "[databases]");
        let _ = writeln!(
            conf,
            "{APP_DB} = host=127.0.0.1 port={} dbname={APP_DB}",
            s.pg_port
        );
        let _ = writeln!(conf, "[pgbouncer]");
        let _ = writeln!(conf, "listen_addr = 127.0.0.1\nlisten_port = {port}");
        let _ = writeln!(conf, "unix_socket_dir =");
        let _ = writeln!(conf, "auth_type = scram-sha-256\nauth_file = {userlist}");
        let _ = writeln!(conf, "pool_mode = transaction");
        let _ = writeln!(conf, "default_pool_size = {}", s.pool_size);
        let _ = writeln!(conf, "max_client_conn = {}", s.max_client_conn);
        let _ = writeln!(conf, "logfile = {}", log.display());
        let _ = writeln!(conf, "pidfile = {}", dir.join("pgbouncer.pid").display());
        conf.push_str(s.extra);
        let ini = tmp.write("pgbouncer.ini", &conf)?;
        if let Some((uid, gid)) = run_as {
            let dir = dir.to_string_lossy();
            for f in [dir.as_ref(), &ini, &userlist]
                .into_iter()
                .chain(s.files.iter().copied())
            {
                std::os::unix::fs::chown(f, Some(uid), Some(gid))
                    .with_context(|| format!("chown {f}"))?;
            }
        }
        let mut cmd = Command::new(bin);
        own_session(&mut cmd)
            .arg(&ini)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = run_as {
            cmd.uid(uid).gid(gid);
        }
        let mut bouncer = PgBouncer {
            port,
            version: version(bin),
            child: cmd.spawn().context("spawning pgbouncer")?,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                eprintln!("pgbouncer listening on 127.0.0.1:{port}");
                return Ok(bouncer);
            }
            let exited = bouncer.child.try_wait()?;
            if exited.is_some() || Instant::now() > deadline {
                bail!(
                    "pgbouncer did not start ({}):\n{}",
                    exited.map_or("still not listening after 10s".into(), |s| s.to_string()),
                    tail(&fs::read_to_string(&log).unwrap_or_default(), 20)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl PgBouncer {
    /// The process id, for /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The first line of `bin --version`.
fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            out.lines().next().map(|l| l.trim().to_string())
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "PgBouncer (unknown version)".into())
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
