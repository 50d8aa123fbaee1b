//! One PostgreSQL server of a cluster ([`PgNode`]): starting it (moving it
//! to a new port if its port was taken meanwhile), stopping, promoting,
//! running SQL through `psql`, and picking free ports.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::base_dir::append_file;
use super::exec::{run, with_log_tail, Exec};
use super::stale::{is_live_postgres, is_zombie_or_gone, postmaster_pid};
use super::{io_at, LocalClusterError, StopMode, SUPERUSER};

/// How often a server start is retried with a new port after a port clash.
const PORT_ATTEMPTS: usize = 5;

/// One PostgreSQL server (primary or replica) of a
/// [`LocalCluster`](super::LocalCluster).
///
/// Cloning a `PgNode` is cheap and gives another handle on the same server
/// (e.g. to move into a thread); the server's life is still tied to the
/// `LocalCluster`.
#[derive(Debug, Clone)]
pub struct PgNode {
    pub(super) name: String,
    pub(super) port: u16,
    pub(super) data_dir: PathBuf,
    pub(super) log_file: PathBuf,
    pub(super) exec: Exec,
}

impl PgNode {
    /// `"primary"`, `"replica1"`, `"replica2"`, ...
    pub fn name(&self) -> &str {
        &self.name
    }

    /// TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's data directory; it is also its unix socket directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log (`pg_ctl -l`).
    pub fn log_file(&self) -> PathBuf {
        self.log_file.clone()
    }

    /// Runs `sql` (one or more statements, psql meta-commands allowed) in
    /// database `db` as [`SUPERUSER`] over the unix socket, with
    /// `psql -X -A -t -q -v ON_ERROR_STOP=1`, and returns the trimmed
    /// stdout: one line per row, columns separated by `|`, booleans as
    /// `t`/`f`. Statements are sent one at a time, so e.g.
    /// `CREATE DATABASE` works. Fails on the first SQL error.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, LocalClusterError> {
        let mut cmd = self.exec.command("psql");
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", db, "-f", "-"]);
        let out = run(cmd, Some(sql), Duration::from_secs(120))?;
        Ok(out.trim().to_string())
    }

    /// Stops the server (`pg_ctl stop -m fast|immediate -w`).
    pub fn stop(&self, mode: StopMode) -> Result<(), LocalClusterError> {
        self.exec.pg_ctl_stop(&self.data_dir, mode)
    }

    /// Starts the server (`pg_ctl start -w -l <log_file>`), waiting until it
    /// accepts connections (for a hot standby: until it is consistent).
    /// On failure the error carries the tail of the server log.
    pub fn start(&self) -> Result<(), LocalClusterError> {
        let log = self.log_file.to_string_lossy();
        self.exec
            .pg_ctl("start", &self.data_dir, &["-l", &log])
            .map_err(|e| with_log_tail(e, &self.log_file))
    }

    /// Promotes a standby to primary (`pg_ctl promote -w`), waiting until
    /// it accepts writes.
    pub fn promote(&self) -> Result<(), LocalClusterError> {
        self.exec
            .pg_ctl("promote", &self.data_dir, &[])
            .map_err(|e| with_log_tail(e, &self.log_file))
    }

    /// Starts the server; if it could not bind its port (another process
    /// took it since it was picked), moves it to a new port (none of
    /// `avoid`) and retries.
    pub(super) fn start_retrying_port(&mut self, avoid: &[u16]) -> Result<(), LocalClusterError> {
        let mut avoid = avoid.to_vec();
        let mut attempt = 1;
        loop {
            let log_len = fs::metadata(&self.log_file).map_or(0, |m| m.len());
            let err = match self.start() {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let log = fs::read(&self.log_file).unwrap_or_default();
            let new_log = String::from_utf8_lossy(log.get(log_len as usize..).unwrap_or(&[]));
            let port_taken = new_log.contains("Address already in use")
                || new_log.contains("could not create any TCP/IP sockets");
            if attempt >= PORT_ATTEMPTS || !port_taken {
                return Err(err);
            }
            avoid.push(self.port);
            let port = pick_ports(1, &avoid)?[0];
            tracing::debug!(
                "{}: port {} is taken, retrying on {port}",
                self.name,
                self.port
            );
            // Later lines win.
            append_file(
                &self.data_dir.join("postgresql.conf"),
                &format!("port = {port}\n"),
            )?;
            self.port = port;
            attempt += 1;
        }
    }

    /// Stops the server if it is running, falling back to SIGQUIT (what
    /// immediate shutdown sends) if `pg_ctl` fails. Errors are logged only.
    pub(super) fn teardown(&self) {
        if !self.data_dir.join("postmaster.pid").exists() {
            return;
        }
        let Err(e) = self.stop(StopMode::Immediate) else {
            return;
        };
        let Some(pid) = postmaster_pid(&self.data_dir).filter(|p| is_live_postgres(*p)) else {
            return;
        };
        tracing::warn!(
            "{}: pg_ctl stop failed ({e}); sending SIGQUIT to {pid}",
            self.name
        );
        let _ = Command::new("kill")
            .args(["-QUIT", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_zombie_or_gone(pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Picks `count` distinct free TCP ports on 127.0.0.1, none in `avoid`.
pub(super) fn pick_ports(count: usize, avoid: &[u16]) -> Result<Vec<u16>, LocalClusterError> {
    // Holding every listener until the end keeps the ports distinct.
    let mut listeners = Vec::with_capacity(count);
    let mut ports = Vec::with_capacity(count);
    while ports.len() < count {
        if listeners.len() > count + 50 {
            return Err(LocalClusterError::Setup(
                "could not find free TCP ports on 127.0.0.1".into(),
            ));
        }
        let listener =
            TcpListener::bind(("127.0.0.1", 0)).map_err(io_at("binding a port on 127.0.0.1"))?;
        let port = listener
            .local_addr()
            .map_err(io_at("reading a bound port"))?
            .port();
        if !avoid.contains(&port) {
            ports.push(port);
        }
        listeners.push(listener);
    }
    Ok(ports)
}
