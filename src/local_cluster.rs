//! Throw-away local PostgreSQL clusters (one primary plus N streaming
//! replicas) built from the real PostgreSQL server binaries.
//!
//! This module owns everything about such a cluster's life: finding the
//! binaries, the temporary directory it lives in, picking free ports,
//! `initdb`, configuration (`postgresql.conf`, `pg_hba.conf`), the
//! well-known roles and databases, the replicas (cold copies of the
//! primary's data directory, configured as streaming standbys), and
//! teardown (stop every server, delete the directory) when the
//! [`LocalCluster`] is dropped. It is used by the `switchyard demo`
//! command, by the integration tests and by the benchmarks.
//!
//! The API is blocking (it drives `std::process`): async callers should
//! call it from `tokio::task::spawn_blocking` or outside the runtime.
//!
//! PostgreSQL refuses to run as root, so when the current process is root
//! every PostgreSQL command is run as the `postgres` OS user (created with
//! `useradd` if it does not exist), and the cluster directory is owned by
//! that user.
//!
//! Clusters left behind by processes that died without running `Drop`
//! (e.g. a test binary that was killed) are stopped and removed by the next
//! [`LocalCluster::start`] on the same machine.
//!
//! Environment variables:
//! - `SWITCHYARD_KEEP_TMP`: when set, [`LocalClusterOptions::default`] keeps
//!   the cluster directory (data and logs) after teardown;
//! - `SWITCHYARD_CLUSTER_TMPDIR`: directory to create cluster directories
//!   in instead of [`std::env::temp_dir`]; `/dev/shm` makes `start` about
//!   twice as fast on slow disks;
//! - `SWITCHYARD_PG_BINDIR`: PostgreSQL bin directory, overriding the search
//!   of [`find_pg_bindir`].

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

/// Name of the superuser role the cluster is created with (`initdb -U`).
pub const SUPERUSER: &str = "postgres";
/// Password of [`SUPERUSER`] (stored as SCRAM-SHA-256).
pub const SUPERUSER_PASSWORD: &str = "postgres";
/// Ordinary application role; owns [`APP_DB`]. Password stored as SCRAM-SHA-256.
pub const APP_USER: &str = "app";
/// Password of [`APP_USER`].
pub const APP_PASSWORD: &str = "app";
/// Application database, owned by [`APP_USER`].
pub const APP_DB: &str = "app";
/// Role whose password is stored as MD5 and which `pg_hba.conf` makes use
/// `md5` authentication over TCP.
pub const MD5_USER: &str = "md5user";
/// Password of [`MD5_USER`].
pub const MD5_PASSWORD: &str = "md5pass";
/// Role that `pg_hba.conf` lets in over TCP without a password (`trust`).
pub const TRUST_USER: &str = "trustuser";
/// Superuser role meant for the proxy's own cluster connections
/// (health checks, role detection). Password stored as SCRAM-SHA-256.
pub const CLUSTER_USER: &str = "switchyard";
/// Password of [`CLUSTER_USER`].
pub const CLUSTER_PASSWORD: &str = "switchyard";

/// Environment variable that, when set, makes [`LocalClusterOptions::default`]
/// keep the cluster directory after teardown.
const KEEP_ENV: &str = "SWITCHYARD_KEEP_TMP";
/// Environment variable naming the directory cluster directories are
/// created in, instead of the temp dir (e.g. `/dev/shm`, much faster).
const CLUSTER_TMPDIR_ENV: &str = "SWITCHYARD_CLUSTER_TMPDIR";
/// Environment variable that overrides [`find_pg_bindir`]'s search.
const BINDIR_ENV: &str = "SWITCHYARD_PG_BINDIR";
/// Prefix of the cluster directories created under the temp dir.
const DIR_PREFIX: &str = "switchyard-cluster-";
/// File in a cluster directory that records the owning process.
const OWNER_FILE: &str = "OWNER";
/// File in a cluster directory that marks it as kept (not to be deleted).
const KEEP_FILE: &str = "KEEP";
/// Binaries the cluster needs from the bin directory.
const REQUIRED_BINARIES: [&str; 4] = ["initdb", "pg_ctl", "postgres", "psql"];
/// OS user the servers run as when we are root.
const PG_OS_USER: &str = "postgres";
/// Seconds `pg_ctl` waits for start/stop/promote.
const PG_CTL_WAIT_SECS: u64 = 60;
/// How long a replica may take to reach `streaming`.
const STREAMING_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a server start is retried with a new port after a port clash.
const PORT_ATTEMPTS: usize = 5;
/// Longest path a unix socket may have (`sun_path` minus the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// libpq / server environment variables that must not leak into children.
const PG_ENV_VARS: [&str; 16] = [
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGREQUIRESSL",
    "PGCONNECT_TIMEOUT",
    "PGTARGETSESSIONATTRS",
    "PGDATA",
    "PGAPPNAME",
];

/// How a [`LocalCluster`] is built.
#[derive(Debug, Clone)]
pub struct LocalClusterOptions {
    /// Number of streaming replicas to create next to the primary (default 1).
    pub replicas: usize,
    /// Extra `postgresql.conf` lines appended on the primary after the
    /// module's own settings (so they win); replicas inherit them (they are
    /// copies of the primary's data directory).
    pub extra_conf: Vec<String>,
    /// Whether the servers run with `fsync = on` (default `false`). When
    /// `false`, `synchronous_commit` and `full_page_writes` are off as well.
    pub fsync: bool,
    /// When `true`, teardown stops the servers but leaves the directory
    /// (logs, data) in place. Defaults to whether the `SWITCHYARD_KEEP_TMP`
    /// environment variable is set.
    pub keep: bool,
}

impl Default for LocalClusterOptions {
    fn default() -> Self {
        LocalClusterOptions {
            replicas: 1,
            extra_conf: Vec::new(),
            fsync: false,
            keep: std::env::var_os(KEEP_ENV).is_some(),
        }
    }
}

/// Errors from building or driving a [`LocalCluster`].
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    /// The PostgreSQL server binaries could not be found.
    #[error("PostgreSQL server binaries not found: {0}")]
    BinariesNotFound(String),
    /// An I/O error without further context.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// An I/O error while doing `context`.
    #[error("{context}: {source}")]
    IoAt {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A PostgreSQL command exited unsuccessfully.
    #[error("command `{cmd}` failed ({status}):\n{output}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// The tail of its output (and of the server log where relevant).
        output: String,
    },
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The environment is unsuitable (no usable OS user, unusable temp dir...).
    #[error("local cluster setup failed: {0}")]
    Setup(String),
}

fn io_at(context: impl Into<String>) -> impl FnOnce(io::Error) -> LocalClusterError {
    let context = context.into();
    move |source| LocalClusterError::IoAt { context, source }
}

/// How [`PgNode::stop`] shuts a server down (`pg_ctl stop -m ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, checkpoint, shut down cleanly.
    Fast,
    /// Kill everything at once; the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

// ---------------------------------------------------------------------------
// Finding the binaries
// ---------------------------------------------------------------------------

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn has_required_binaries(dir: &Path) -> bool {
    REQUIRED_BINARIES
        .iter()
        .all(|b| is_executable_file(&dir.join(b)))
}

/// Returns the directory holding the PostgreSQL server binaries (`initdb`,
/// `pg_ctl`, `postgres`, `psql`), or `None`.
///
/// Searched in order: the `SWITCHYARD_PG_BINDIR` environment variable,
/// `initdb` on `$PATH` (symlinks resolved, so `/usr/local/bin/initdb ->
/// /usr/lib/postgresql/15/bin/initdb` yields the latter's directory),
/// `pg_config --bindir`, and the highest-numbered `/usr/lib/postgresql/*/bin`.
/// A candidate counts only if it holds all the binaries listed above.
pub fn find_pg_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(BINDIR_ENV) {
        let dir = PathBuf::from(dir);
        if has_required_binaries(&dir) {
            return Some(dir);
        }
        tracing::warn!(
            "{BINDIR_ENV}={} does not hold the PostgreSQL binaries; searching elsewhere",
            dir.display()
        );
    }

    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("initdb");
            if !is_executable_file(&candidate) {
                continue;
            }
            if let Ok(real) = fs::canonicalize(&candidate) {
                if let Some(parent) = real.parent() {
                    if has_required_binaries(parent) {
                        return Some(parent.to_path_buf());
                    }
                }
            }
        }
    }

    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_required_binaries(&dir) {
                return Some(dir);
            }
        }
    }

    let mut versions: Vec<(Vec<u64>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version: Option<Vec<u64>> = name.split('.').map(|p| p.parse().ok()).collect();
            let bin = entry.path().join("bin");
            match version {
                Some(v) if has_required_binaries(&bin) => Some((v, bin)),
                _ => None,
            }
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

// ---------------------------------------------------------------------------
// OS identity
// ---------------------------------------------------------------------------

/// The OS user PostgreSQL commands run as when we are root.
#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

fn effective_uid() -> Option<u32> {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        for line in status.lines() {
            if let Some(rest) = line.strip_prefix("Uid:") {
                // real, effective, saved, filesystem
                if let Some(euid) = rest.split_whitespace().nth(1) {
                    if let Ok(euid) = euid.parse() {
                        return Some(euid);
                    }
                }
            }
        }
    }
    fs::metadata("/proc/self").ok().map(|m| m.uid())
}

fn parse_passwd_line(line: &str, user: &str) -> Option<RunAs> {
    let mut fields = line.split(':');
    let name = fields.next()?;
    if name != user {
        return None;
    }
    let _password = fields.next()?;
    let uid = fields.next()?.parse().ok()?;
    let gid = fields.next()?.parse().ok()?;
    Some(RunAs {
        name: name.to_string(),
        uid,
        gid,
    })
}

fn lookup_user(user: &str) -> Option<RunAs> {
    if let Ok(passwd) = fs::read_to_string("/etc/passwd") {
        if let Some(found) = passwd.lines().find_map(|l| parse_passwd_line(l, user)) {
            return Some(found);
        }
    }
    // Users from NSS sources other than /etc/passwd.
    let out = Command::new("getent")
        .args(["passwd", user])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| parse_passwd_line(l, user))
}

/// `None` when we are not root (commands run as ourselves); otherwise the
/// `postgres` OS user, created if missing.
fn resolve_run_as() -> Result<Option<RunAs>, LocalClusterError> {
    if effective_uid() != Some(0) {
        return Ok(None);
    }
    if let Some(user) = lookup_user(PG_OS_USER) {
        return Ok(Some(user));
    }
    static USERADD: Mutex<()> = Mutex::new(());
    let _guard = USERADD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(user) = lookup_user(PG_OS_USER) {
        return Ok(Some(user));
    }
    tracing::info!("creating the `{PG_OS_USER}` OS user to run PostgreSQL as");
    let out = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            PG_OS_USER,
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(io_at("running useradd"))?;
    // Another process may have created it meanwhile; look again either way.
    lookup_user(PG_OS_USER).map(Some).ok_or_else(|| {
        LocalClusterError::Setup(format!(
            "running as root and the `{PG_OS_USER}` OS user does not exist; \
             `useradd --system --no-create-home --shell /usr/sbin/nologin {PG_OS_USER}` \
             failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

/// Whether `who` can traverse every directory from `/` down to `dir`.
/// Supplementary groups are ignored: they are dropped when switching user.
fn traversable_by(dir: &Path, who: &RunAs) -> bool {
    dir.ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .all(|a| match fs::metadata(a) {
            Ok(m) => {
                let mode = m.mode();
                if m.uid() == who.uid {
                    mode & 0o100 != 0
                } else if m.gid() == who.gid {
                    mode & 0o010 != 0
                } else {
                    mode & 0o001 != 0
                }
            }
            Err(_) => false,
        })
}

/// Start time (in clock ticks since boot) of a process, from
/// `/proc/<pid>/stat`; used with the pid to recognise a live owner.
fn process_start_time(pid: &str) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (comm) is in parentheses and may contain spaces; field 22 is
    // starttime, i.e. the 20th field after the closing parenthesis.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is a live process (not a zombie) whose comm is `postgres`.
fn is_live_postgres(pid: u32) -> bool {
    let comm_ok = fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim() == "postgres")
        .unwrap_or(false);
    comm_ok && !is_zombie_or_gone(pid)
}

fn is_zombie_or_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => match stat.rfind(')') {
            Some(i) => stat[i + 1..].split_whitespace().next() == Some("Z"),
            None => false,
        },
        Err(_) => true,
    }
}

fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------

/// How to run PostgreSQL binaries: where they are and as whom.
#[derive(Debug, Clone)]
struct Exec {
    bindir: PathBuf,
    run_as: Option<RunAs>,
    /// HOME and working directory of the children.
    home: PathBuf,
}

impl Exec {
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        for var in PG_ENV_VARS {
            cmd.env_remove(var);
        }
        cmd.current_dir(&self.home)
            .env("HOME", &self.home)
            .env("PGUSER", SUPERUSER)
            .env("LC_ALL", "C")
            .env("LANG", "C")
            .stdin(Stdio::null());
        if let Some(user) = &self.run_as {
            cmd.uid(user.uid)
                .gid(user.gid)
                .env("USER", &user.name)
                .env("LOGNAME", &user.name);
        }
        cmd
    }

    fn chown(&self, path: &Path) -> Result<(), LocalClusterError> {
        if let Some(user) = &self.run_as {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                .map_err(io_at(format!("chown {}", path.display())))?;
        }
        Ok(())
    }

    fn pg_ctl_stop(&self, data_dir: &Path, mode: StopMode) -> Result<(), LocalClusterError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(data_dir)
            .args(["-m", mode.as_arg(), "-w", "-s", "-t"])
            .arg(PG_CTL_WAIT_SECS.to_string());
        run(cmd, None, Duration::from_secs(PG_CTL_WAIT_SECS + 15)).map(drop)
    }
}

struct CmdOutput {
    stdout: String,
    stderr: String,
}

fn describe(cmd: &Command) -> String {
    let mut s = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program())
        .to_string_lossy()
        .into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Last `max_lines` lines of `text`, capped to a few KiB.
fn tail(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    let mut out = lines[start..].join("\n");
    const MAX_BYTES: usize = 8192;
    if out.len() > MAX_BYTES {
        let mut cut = out.len() - MAX_BYTES;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = format!("...{}", &out[cut..]);
    }
    out
}

fn log_tail(path: &Path, max_lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => tail(&String::from_utf8_lossy(&bytes), max_lines),
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

fn spawn_reader<R: Read + Send + 'static>(mut reader: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = reader.read_to_end(&mut buf);
        buf
    })
}

fn join_output(handle: Option<thread::JoinHandle<Vec<u8>>>) -> String {
    handle
        .and_then(|h| h.join().ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Runs `cmd` to completion (killing it after `timeout`), feeding it
/// `input` on stdin; fails unless it exits successfully.
fn run(
    mut cmd: Command,
    input: Option<&str>,
    timeout: Duration,
) -> Result<CmdOutput, LocalClusterError> {
    let desc = describe(&cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(io_at(format!("spawning `{desc}`")))?;
    let writer = match (input, child.stdin.take()) {
        (Some(text), Some(mut stdin)) => {
            let text = text.to_owned();
            Some(thread::spawn(move || {
                let _ = stdin.write_all(text.as_bytes());
            }))
        }
        _ => None,
    };
    let stdout = child.stdout.take().map(spawn_reader);
    let stderr = child.stderr.take().map(spawn_reader);

    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(1);
    let status: Option<ExitStatus> = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io_at(format!("waiting for `{desc}`"))(e));
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(20));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let out = CmdOutput {
        stdout: join_output(stdout),
        stderr: join_output(stderr),
    };
    let combined = || format!("{}{}", out.stdout, out.stderr);
    match status {
        None => Err(LocalClusterError::Timeout(format!(
            "`{desc}` did not finish within {}s; output:\n{}",
            timeout.as_secs(),
            tail(&combined(), 40)
        ))),
        Some(status) if status.success() => Ok(out),
        Some(status) => Err(LocalClusterError::Command {
            cmd: desc,
            status: status.to_string(),
            output: tail(&combined(), 40),
        }),
    }
}

/// Appends `output` to the output of a [`LocalClusterError::Command`] or
/// the message of a [`LocalClusterError::Timeout`].
fn with_extra_output(err: LocalClusterError, extra: &str) -> LocalClusterError {
    match err {
        LocalClusterError::Command {
            cmd,
            status,
            output,
        } => LocalClusterError::Command {
            cmd,
            status,
            output: format!("{output}\n{extra}"),
        },
        LocalClusterError::Timeout(msg) => LocalClusterError::Timeout(format!("{msg}\n{extra}")),
        other => other,
    }
}

// ---------------------------------------------------------------------------
// Files and ports
// ---------------------------------------------------------------------------

fn append_file(path: &Path, text: &str) -> Result<(), LocalClusterError> {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_at(format!("opening {}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(io_at(format!("writing {}", path.display())))
}

fn write_file(path: &Path, text: &str) -> Result<(), LocalClusterError> {
    fs::write(path, text).map_err(io_at(format!("writing {}", path.display())))
}

/// Quotes a value for `postgresql.conf`.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Picks `count` distinct free TCP ports on 127.0.0.1, none in `avoid`.
fn pick_ports(count: usize, avoid: &[u16]) -> Result<Vec<u16>, LocalClusterError> {
    let mut listeners = Vec::with_capacity(count);
    let mut ports = Vec::with_capacity(count);
    let mut attempts = 0;
    while ports.len() < count {
        attempts += 1;
        if attempts > count + 50 {
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
        if !avoid.contains(&port) && !ports.contains(&port) {
            ports.push(port);
        }
        listeners.push(listener);
    }
    Ok(ports)
}

fn is_port_conflict(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("could not create any TCP/IP sockets")
}

fn read_from(path: &Path, offset: u64) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(_) => String::new(),
    }
}

// ---------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------

/// One PostgreSQL server (primary or replica) of a [`LocalCluster`].
///
/// Cloning a `PgNode` is cheap and gives another handle on the same server
/// (e.g. to move into a thread); the server's life is still tied to the
/// [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct PgNode {
    name: String,
    port: u16,
    data_dir: PathBuf,
    log_file: PathBuf,
    exec: Exec,
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
        Ok(out.stdout.trim().to_string())
    }

    /// Stops the server (`pg_ctl stop -m fast|immediate -w`).
    pub fn stop(&self, mode: StopMode) -> Result<(), LocalClusterError> {
        self.exec.pg_ctl_stop(&self.data_dir, mode)
    }

    /// Starts the server (`pg_ctl start -w -l <log_file>`), waiting until it
    /// accepts connections (for a hot standby: until it is consistent).
    /// On failure the error carries the tail of the server log.
    pub fn start(&self) -> Result<(), LocalClusterError> {
        let mut cmd = self.exec.command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-s", "-t"])
            .arg(PG_CTL_WAIT_SECS.to_string());
        run(cmd, None, Duration::from_secs(PG_CTL_WAIT_SECS + 15))
            .map(drop)
            .map_err(|e| {
                with_extra_output(
                    e,
                    &format!(
                        "--- tail of {} ---\n{}",
                        self.log_file.display(),
                        log_tail(&self.log_file, 30)
                    ),
                )
            })
    }

    /// Promotes a standby to primary (`pg_ctl promote -w`), waiting until
    /// it accepts writes.
    pub fn promote(&self) -> Result<(), LocalClusterError> {
        let mut cmd = self.exec.command("pg_ctl");
        cmd.arg("promote")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-s", "-t"])
            .arg(PG_CTL_WAIT_SECS.to_string());
        run(cmd, None, Duration::from_secs(PG_CTL_WAIT_SECS + 15))
            .map(drop)
            .map_err(|e| {
                with_extra_output(
                    e,
                    &format!(
                        "--- tail of {} ---\n{}",
                        self.log_file.display(),
                        log_tail(&self.log_file, 30)
                    ),
                )
            })
    }

    /// Starts the server; if it could not bind its port (another process
    /// took it since it was picked), moves it to a new port and retries.
    fn start_retrying_port(&mut self, avoid: &[u16]) -> Result<(), LocalClusterError> {
        let mut attempt = 1;
        loop {
            let log_len = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
            match self.start() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let new_log = read_from(&self.log_file, log_len);
                    if attempt >= PORT_ATTEMPTS || !is_port_conflict(&new_log) {
                        return Err(e);
                    }
                    let mut avoid = avoid.to_vec();
                    avoid.push(self.port);
                    let port = pick_ports(1, &avoid)?[0];
                    tracing::debug!(
                        "{}: port {} is taken, retrying on {port}",
                        self.name,
                        self.port
                    );
                    append_file(
                        &self.data_dir.join("postgresql.conf"),
                        &format!("port = {port}\n"),
                    )?;
                    self.port = port;
                    attempt += 1;
                }
            }
        }
    }

    /// Stops the server if it is running, falling back to SIGQUIT (what
    /// immediate shutdown sends) if `pg_ctl` fails. Errors are logged only.
    fn teardown(&self) {
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

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

/// A running throw-away cluster: one primary and zero or more streaming
/// replicas, in a private temporary directory.
///
/// Created by [`LocalCluster::start`]; torn down (servers stopped, directory
/// removed unless [`LocalClusterOptions::keep`]) by [`LocalCluster::stop`]
/// or on drop.
///
/// Authentication (see `pg_hba.conf`): over the unix socket everyone is
/// trusted; over TCP on 127.0.0.1 [`MD5_USER`] uses `md5`, [`TRUST_USER`]
/// uses `trust`, and everyone else (including replication) uses
/// `scram-sha-256`.
#[derive(Debug)]
pub struct LocalCluster {
    base_dir: PathBuf,
    exec: Exec,
    primary: PgNode,
    replicas: Vec<PgNode>,
    keep: bool,
    torn_down: bool,
}

static CLUSTER_COUNTER: AtomicU64 = AtomicU64::new(0);
static REAP_STALE: Once = Once::new();

impl LocalCluster {
    /// Creates and starts a cluster: `initdb` the primary, configure it,
    /// create the well-known roles and database (single-user mode), copy
    /// the still-stopped primary data directory to each replica and make it
    /// a standby (equivalent to `pg_basebackup -R`), then start the primary
    /// and the replicas and wait until every replica streams.
    ///
    /// On failure everything started so far is stopped and removed (kept
    /// instead when [`LocalClusterOptions::keep`]), and the error carries
    /// the tail of the failing command's output or server log.
    pub fn start(opts: LocalClusterOptions) -> Result<LocalCluster, LocalClusterError> {
        let started = Instant::now();
        let bindir = find_pg_bindir().ok_or_else(|| {
            LocalClusterError::BinariesNotFound(format!(
                "no directory with {} found on $PATH, via `pg_config --bindir` or under \
                 /usr/lib/postgresql/*/bin (set {BINDIR_ENV} to point at one); install \
                 PostgreSQL, e.g. `apt-get install -y postgresql`",
                REQUIRED_BINARIES.join(", ")
            ))
        })?;
        let run_as = resolve_run_as()?;

        REAP_STALE.call_once(|| {
            reap_stale_clusters(&Exec {
                bindir: bindir.clone(),
                run_as: run_as.clone(),
                home: PathBuf::from("/"),
            })
        });

        let ports = pick_ports(opts.replicas + 1, &[])?;
        let base_dir = create_base_dir(run_as.as_ref(), opts.replicas)?;
        let exec = Exec {
            bindir,
            run_as,
            home: base_dir.clone(),
        };
        let node = |name: String, port: u16| PgNode {
            data_dir: base_dir.join(&name),
            log_file: base_dir.join(format!("{name}.log")),
            name,
            port,
            exec: exec.clone(),
        };
        // From here on Drop cleans up whatever happens.
        let mut cluster = LocalCluster {
            primary: node("primary".into(), ports[0]),
            replicas: (1..=opts.replicas)
                .map(|i| node(format!("replica{i}"), ports[i]))
                .collect(),
            base_dir: base_dir.clone(),
            exec: exec.clone(),
            keep: opts.keep,
            torn_down: false,
        };
        if opts.keep {
            write_file(
                &base_dir.join(KEEP_FILE),
                "kept: SWITCHYARD_KEEP_TMP / keep option\n",
            )?;
        }

        cluster.init_primary(&opts)?;
        let t_init = started.elapsed();
        cluster.bootstrap_roles()?;
        let t_roles = started.elapsed();
        cluster.copy_replicas()?;
        let t_copies = started.elapsed();
        cluster.primary.start_retrying_port(&ports)?;
        let t_primary = started.elapsed();
        cluster.start_replicas(&ports)?;
        tracing::debug!(
            "local cluster at {} started in {:?} (initdb {t_init:?}, roles {t_roles:?}, \
             replica copies {t_copies:?}, primary up {t_primary:?})",
            base_dir.display(),
            started.elapsed(),
        );
        Ok(cluster)
    }

    /// The primary.
    pub fn primary(&self) -> &PgNode {
        &self.primary
    }

    /// The replicas, `replica1` first.
    pub fn replicas(&self) -> &[PgNode] {
        &self.replicas
    }

    /// All nodes, primary first.
    pub fn nodes(&self) -> Vec<&PgNode> {
        std::iter::once(&self.primary)
            .chain(self.replicas.iter())
            .collect()
    }

    /// Directory holding the PostgreSQL binaries in use (e.g. for `pgbench`).
    pub fn bindir(&self) -> &Path {
        &self.exec.bindir
    }

    /// The cluster's temporary directory: one data directory per node
    /// (named after the node) and one `<node>.log` per node.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// Tears the cluster down: stops every server (`pg_ctl stop -m
    /// immediate`, in parallel) and removes [`base_dir`](Self::base_dir)
    /// unless [`LocalClusterOptions::keep`]. Idempotent; called by `Drop`.
    /// Errors are logged (via `tracing`), not returned.
    pub fn stop(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        thread::scope(|s| {
            for node in self.nodes() {
                s.spawn(move || node.teardown());
            }
        });
        if self.keep {
            tracing::info!(
                "keeping local cluster directory {}",
                self.base_dir.display()
            );
            return;
        }
        remove_dir_retrying(&self.base_dir);
    }

    fn init_primary(&self, opts: &LocalClusterOptions) -> Result<(), LocalClusterError> {
        let primary = &self.primary;
        let pwfile = self.base_dir.join("pwfile");
        write_file(&pwfile, &format!("{SUPERUSER_PASSWORD}\n"))?;
        self.exec.chown(&pwfile)?;

        let mut cmd = self.exec.command("initdb");
        cmd.arg("-D")
            .arg(&primary.data_dir)
            .args([
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]);
        run(cmd, None, Duration::from_secs(300))?;
        let _ = fs::remove_file(&pwfile);

        let senders = (opts.replicas + 2).max(10);
        let mut conf = String::new();
        conf.push_str("\n# --- switchyard local cluster ---\n");
        conf.push_str("listen_addresses = '127.0.0.1'\n");
        let _ = writeln!(conf, "port = {}", primary.port);
        let _ = writeln!(
            conf,
            "unix_socket_directories = {}",
            conf_quote(&primary.data_dir.to_string_lossy())
        );
        conf.push_str("max_connections = 300\n");
        conf.push_str("wal_level = replica\n");
        let _ = writeln!(conf, "max_wal_senders = {senders}");
        let _ = writeln!(conf, "max_replication_slots = {senders}");
        conf.push_str("hot_standby = on\n");
        conf.push_str("wal_keep_size = '256MB'\n");
        conf.push_str("password_encryption = 'scram-sha-256'\n");
        conf.push_str("shared_buffers = '128MB'\n");
        if opts.fsync {
            conf.push_str("fsync = on\n");
        } else {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        if !opts.extra_conf.is_empty() {
            conf.push_str("# --- extra_conf ---\n");
            for line in &opts.extra_conf {
                conf.push_str(line);
                conf.push('\n');
            }
        }
        append_file(&primary.data_dir.join("postgresql.conf"), &conf)?;

        let hba = format!(
            "# switchyard local cluster\n\
             # TYPE  DATABASE     USER       ADDRESS       METHOD\n\
             local   all          all                      trust\n\
             local   replication  all                      trust\n\
             host    all          {MD5_USER}    127.0.0.1/32  md5\n\
             host    all          {TRUST_USER}  127.0.0.1/32  trust\n\
             host    all          all        127.0.0.1/32  scram-sha-256\n\
             host    replication  all        127.0.0.1/32  scram-sha-256\n"
        );
        write_file(&primary.data_dir.join("pg_hba.conf"), &hba)?;
        Ok(())
    }

    /// Creates the well-known roles and database in single-user mode
    /// (`postgres --single`), before the server first starts, so that the
    /// replicas copied afterwards have them too.
    fn bootstrap_roles(&self) -> Result<(), LocalClusterError> {
        // Single-user mode runs one statement per line.
        let in_postgres = format!(
            "CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}';\n\
             CREATE DATABASE {APP_DB} OWNER {APP_USER};\n\
             CREATE ROLE {CLUSTER_USER} LOGIN SUPERUSER PASSWORD '{CLUSTER_PASSWORD}';\n\
             CREATE ROLE {TRUST_USER} LOGIN;\n\
             SET password_encryption = 'md5';\n\
             CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}';\n\
             GRANT ALL ON DATABASE {APP_DB} TO {MD5_USER}, {TRUST_USER};\n"
        );
        // PG15: the public schema is writable by the database owner only.
        let in_app = format!("GRANT ALL ON SCHEMA public TO {MD5_USER}, {TRUST_USER};\n");
        self.single_user("postgres", &in_postgres)?;
        self.single_user(APP_DB, &in_app)
    }

    fn single_user(&self, db: &str, sql: &str) -> Result<(), LocalClusterError> {
        let mut cmd = self.exec.command("postgres");
        cmd.arg("--single")
            .arg("-D")
            .arg(&self.primary.data_dir)
            .args(["-c", "exit_on_error=true", db]);
        run(cmd, Some(sql), Duration::from_secs(120)).map(drop)
    }

    /// Makes each replica a copy of the (cleanly shut down, never started)
    /// primary data directory, configured as a standby: the cold-copy
    /// equivalent of `pg_basebackup -R`, and much cheaper.
    fn copy_replicas(&self) -> Result<(), LocalClusterError> {
        let primary = &self.primary;
        let exec = &self.exec;
        let results: Vec<Result<(), LocalClusterError>> = thread::scope(|s| {
            let handles: Vec<_> = self
                .replicas
                .iter()
                .map(|replica| {
                    s.spawn(move || {
                        copy_tree(&primary.data_dir, &replica.data_dir, exec)?;
                        let signal = replica.data_dir.join("standby.signal");
                        write_file(&signal, "")?;
                        exec.chown(&signal)?;
                        // Later lines win: override the primary's port and
                        // socket directory.
                        append_file(
                            &replica.data_dir.join("postgresql.conf"),
                            &format!(
                                "\n# --- switchyard local cluster: {} ---\nport = {}\n\
                                 unix_socket_directories = {}\n",
                                replica.name,
                                replica.port,
                                conf_quote(&replica.data_dir.to_string_lossy())
                            ),
                        )
                    })
                })
                .collect();
            handles.into_iter().map(join_result).collect()
        });
        results.into_iter().collect()
    }

    /// Points each replica at the (started) primary, starts it and waits
    /// until it streams; replicas are handled in parallel.
    fn start_replicas(&mut self, avoid: &[u16]) -> Result<(), LocalClusterError> {
        let primary = &self.primary;
        let results: Vec<Result<(), LocalClusterError>> = thread::scope(|s| {
            let handles: Vec<_> = self
                .replicas
                .iter_mut()
                .map(|replica| s.spawn(move || start_replica(primary, replica, avoid)))
                .collect();
            handles.into_iter().map(join_result).collect()
        });
        results.into_iter().collect()
    }
}

fn join_result(
    handle: thread::ScopedJoinHandle<'_, Result<(), LocalClusterError>>,
) -> Result<(), LocalClusterError> {
    handle
        .join()
        .unwrap_or_else(|_| Err(LocalClusterError::Setup("setup thread panicked".into())))
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes `replica`'s `primary_conninfo`, starts it and waits until it
/// streams from `primary`.
fn start_replica(
    primary: &PgNode,
    replica: &mut PgNode,
    avoid: &[u16],
) -> Result<(), LocalClusterError> {
    let started = Instant::now();
    // application_name makes the replica recognisable in pg_stat_replication.
    let conninfo = format!(
        "host=127.0.0.1 port={} user={SUPERUSER} password={SUPERUSER_PASSWORD} \
         application_name={}",
        primary.port, replica.name
    );
    append_file(
        &replica.data_dir.join("postgresql.auto.conf"),
        &format!("primary_conninfo = {}\n", conf_quote(&conninfo)),
    )?;
    replica.start_retrying_port(avoid)?;
    let t_start = started.elapsed();
    wait_streaming(primary, replica)?;
    tracing::debug!(
        "{} streaming after {:?} (started {t_start:?})",
        replica.name,
        started.elapsed()
    );
    Ok(())
}

/// Recursively copies directory `src` to the new directory `dst`
/// (permissions kept, owned by the run-as user). Sockets and other special
/// files are skipped.
fn copy_tree(src: &Path, dst: &Path, exec: &Exec) -> Result<(), LocalClusterError> {
    let meta = fs::metadata(src).map_err(io_at(format!("reading {}", src.display())))?;
    fs::DirBuilder::new()
        .mode(meta.mode() & 0o7777)
        .create(dst)
        .map_err(io_at(format!("creating {}", dst.display())))?;
    exec.chown(dst)?;
    let entries = fs::read_dir(src).map_err(io_at(format!("reading {}", src.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_at(format!("reading {}", src.display())))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let file_type = entry
            .file_type()
            .map_err(io_at(format!("reading {}", from.display())))?;
        if file_type.is_dir() {
            copy_tree(&from, &to, exec)?;
        } else if file_type.is_file() {
            fs::copy(&from, &to).map_err(io_at(format!(
                "copying {} to {}",
                from.display(),
                to.display()
            )))?;
            exec.chown(&to)?;
        } else if file_type.is_symlink() {
            let target =
                fs::read_link(&from).map_err(io_at(format!("reading {}", from.display())))?;
            std::os::unix::fs::symlink(&target, &to)
                .map_err(io_at(format!("creating {}", to.display())))?;
            if let Some(user) = &exec.run_as {
                std::os::unix::fs::lchown(&to, Some(user.uid), Some(user.gid))
                    .map_err(io_at(format!("chown {}", to.display())))?;
            }
        }
    }
    Ok(())
}

/// Polls until `replica` is in recovery with a streaming WAL receiver.
fn wait_streaming(primary: &PgNode, replica: &PgNode) -> Result<(), LocalClusterError> {
    let deadline = Instant::now() + STREAMING_TIMEOUT;
    let mut delay = Duration::from_millis(5);
    let mut last;
    loop {
        last = replica.psql(
            "postgres",
            "SELECT pg_is_in_recovery(), coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')",
        );
        if matches!(&last, Ok(s) if s == "t|streaming") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(100));
    }
    let state = match last {
        Ok(s) => format!("last state (in_recovery|receiver status): {s}"),
        Err(e) => format!("last check failed: {e}"),
    };
    Err(LocalClusterError::Timeout(format!(
        "{} did not start streaming from {} within {}s; {state}\n--- tail of {} ---\n{}\n--- tail of {} ---\n{}",
        replica.name,
        primary.name,
        STREAMING_TIMEOUT.as_secs(),
        replica.log_file.display(),
        log_tail(&replica.log_file, 20),
        primary.log_file.display(),
        log_tail(&primary.log_file, 20),
    )))
}

/// Directories cluster directories may be created in, most preferred
/// first: `$SWITCHYARD_CLUSTER_TMPDIR` (if set), the temp dir, `/tmp`.
fn candidate_parents() -> Vec<PathBuf> {
    let absolute = |dir: PathBuf| {
        if dir.is_absolute() {
            dir
        } else {
            std::env::current_dir().unwrap_or_default().join(dir)
        }
    };
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os(CLUSTER_TMPDIR_ENV).filter(|d| !d.is_empty()) {
        dirs.push(absolute(PathBuf::from(dir)));
    }
    dirs.push(absolute(std::env::temp_dir()));
    dirs.push(PathBuf::from("/tmp"));
    let mut unique = Vec::new();
    for dir in dirs {
        if !unique.contains(&dir) {
            unique.push(dir);
        }
    }
    unique
}

/// Picks the parent of the cluster directory: the first candidate (see
/// [`candidate_parents`]) that exists, that the run-as user can traverse,
/// and that keeps socket paths short enough.
fn choose_parent(run_as: Option<&RunAs>, replicas: usize) -> PathBuf {
    // <parent>/switchyard-cluster-<pid>-<n>/replica<N>/.s.PGSQL.<port>
    let longest_node = format!("replica{replicas}").len().max("primary".len());
    let suffix = 1 + DIR_PREFIX.len() + 10 + 1 + 20 + 1 + longest_node + "/.s.PGSQL.65535".len();
    let usable = |dir: &Path| {
        dir.is_dir()
            && dir.as_os_str().len() + suffix <= MAX_SOCKET_PATH
            && run_as.map_or(true, |u| traversable_by(dir, u))
    };
    let candidates = candidate_parents();
    for (i, dir) in candidates.iter().enumerate() {
        if usable(dir) {
            if i > 0 {
                tracing::debug!(
                    "{} is unusable for the cluster (missing, path too long, or not \
                     traversable by the server user); using {}",
                    candidates[0].display(),
                    dir.display()
                );
            }
            return dir.clone();
        }
    }
    candidates[0].clone()
}

/// Creates `<parent>/switchyard-cluster-<pid>-<n>` (mode 0700, owned by the
/// run-as user) with an OWNER file recording this process.
fn create_base_dir(run_as: Option<&RunAs>, replicas: usize) -> Result<PathBuf, LocalClusterError> {
    let parent = choose_parent(run_as, replicas);
    if let Some(user) = run_as {
        if !traversable_by(&parent, user) {
            return Err(LocalClusterError::Setup(format!(
                "the `{}` OS user cannot traverse {} (set {CLUSTER_TMPDIR_ENV} to a directory \
                 it can reach)",
                user.name,
                parent.display()
            )));
        }
    }
    let pid = std::process::id();
    let start_time = process_start_time("self").unwrap_or(0);
    loop {
        let n = CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("{DIR_PREFIX}{pid}-{n}"));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                let owned = (|| {
                    write_file(&dir.join(OWNER_FILE), &format!("{pid} {start_time}\n"))?;
                    if let Some(user) = run_as {
                        std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))
                            .map_err(io_at(format!("chown {}", dir.display())))?;
                    }
                    Ok(())
                })();
                if let Err(e) = owned {
                    let _ = fs::remove_dir_all(&dir);
                    return Err(e);
                }
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_at(format!("creating {}", dir.display()))(e)),
        }
    }
}

fn remove_dir_retrying(dir: &Path) {
    for attempt in 0..5 {
        match fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) if attempt == 4 => {
                tracing::warn!("could not remove {}: {e}", dir.display());
            }
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Stops and removes cluster directories whose owning process is gone
/// (e.g. a killed test binary). Kept directories are stopped, not removed.
fn reap_stale_clusters(exec: &Exec) {
    for parent in candidate_parents() {
        let Ok(entries) = fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
                continue;
            }
            let dir = entry.path();
            let Ok(owner) = fs::read_to_string(dir.join(OWNER_FILE)) else {
                continue;
            };
            let mut fields = owner.split_whitespace();
            let (Some(pid), Some(start)) = (fields.next(), fields.next()) else {
                continue;
            };
            let alive = match (process_start_time(pid), start.parse::<u64>()) {
                (Some(actual), Ok(0)) => actual > 0,
                (Some(actual), Ok(recorded)) => actual == recorded,
                (None, _) => false,
                (Some(_), Err(_)) => true,
            };
            if alive {
                continue;
            }
            if let Ok(nodes) = fs::read_dir(&dir) {
                for node in nodes.flatten() {
                    let data_dir = node.path();
                    if postmaster_pid(&data_dir).is_some_and(is_live_postgres) {
                        tracing::warn!(
                            "stopping stale local cluster server {}",
                            data_dir.display()
                        );
                        if let Err(e) = exec.pg_ctl_stop(&data_dir, StopMode::Immediate) {
                            tracing::warn!("could not stop {}: {e}", data_dir.display());
                        }
                    }
                }
            }
            if !dir.join(KEEP_FILE).exists() {
                tracing::info!("removing stale local cluster directory {}", dir.display());
                remove_dir_retrying(&dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn postmaster_pids(cluster: &LocalCluster) -> Vec<u32> {
        cluster
            .nodes()
            .iter()
            .map(|n| postmaster_pid(n.data_dir()).expect("postmaster.pid"))
            .collect()
    }

    #[test]
    fn cluster_starts_replicates_and_cleans_up() {
        let t0 = Instant::now();
        let cluster = LocalCluster::start(LocalClusterOptions {
            keep: false,
            ..LocalClusterOptions::default()
        })
        .expect("start local cluster (is PostgreSQL installed? apt-get install -y postgresql)");
        eprintln!("LocalCluster::start took {:?}", t0.elapsed());

        let primary = cluster.primary();
        assert_eq!(primary.name(), "primary");
        assert_eq!(cluster.replicas().len(), 1);
        let replica = &cluster.replicas()[0];
        assert_eq!(replica.name(), "replica1");
        assert_ne!(primary.port(), replica.port());
        assert_eq!(cluster.nodes().len(), 2);
        assert_eq!(primary.addr(), format!("127.0.0.1:{}", primary.port()));

        assert_eq!(
            primary
                .psql("postgres", "SELECT pg_is_in_recovery()")
                .unwrap(),
            "f"
        );
        assert_eq!(
            replica
                .psql(
                    "postgres",
                    "SELECT pg_is_in_recovery(), status FROM pg_stat_wal_receiver"
                )
                .unwrap(),
            "t|streaming"
        );
        assert_eq!(
            primary
                .psql(
                    "postgres",
                    "SELECT application_name, state FROM pg_stat_replication"
                )
                .unwrap(),
            "replica1|streaming"
        );

        // Roles and password storage.
        let roles = primary
            .psql(
                "postgres",
                "SELECT rolname, left(rolpassword, 5) FROM pg_authid \
                 WHERE rolname IN ('app','md5user','switchyard','trustuser','postgres') \
                 ORDER BY rolname",
            )
            .unwrap();
        let roles: Vec<&str> = roles.lines().collect();
        assert_eq!(roles.len(), 5, "{roles:?}");
        assert_eq!(roles[0], "app|SCRAM");
        assert!(roles[1].starts_with("md5user|md5"), "{roles:?}");
        assert_eq!(roles[2], "postgres|SCRAM");
        assert_eq!(roles[3], "switchyard|SCRAM");
        assert_eq!(roles[4], "trustuser|");

        // TCP logins per pg_hba.conf, on both nodes.
        for node in cluster.nodes() {
            for (user, password, ok) in [
                (APP_USER, APP_PASSWORD, true),
                (MD5_USER, MD5_PASSWORD, true),
                (TRUST_USER, "", true),
                (CLUSTER_USER, CLUSTER_PASSWORD, true),
                (SUPERUSER, SUPERUSER_PASSWORD, true),
                (APP_USER, "wrong", false),
                (MD5_USER, "wrong", false),
            ] {
                let mut cmd = node.exec.command("psql");
                cmd.env("PGPASSWORD", password)
                    .args(["-X", "-A", "-t", "-w", "-h", "127.0.0.1", "-p"])
                    .arg(node.port().to_string())
                    .args(["-U", user, "-d", APP_DB, "-c", "SELECT current_user"]);
                let result = run(cmd, None, Duration::from_secs(30));
                match result {
                    Ok(out) if ok => assert_eq!(out.stdout.trim(), user),
                    Err(e) if !ok => assert!(
                        e.to_string().contains("authentication failed"),
                        "{user}: {e}"
                    ),
                    other => panic!(
                        "{} {user}/{password}: unexpected {:?}",
                        node.name(),
                        other.map(|o| o.stdout)
                    ),
                }
            }
        }

        // Writes on the primary show up on the replica.
        primary
            .psql(
                APP_DB,
                "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2), (3);",
            )
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match replica.psql(APP_DB, "SELECT count(*) FROM t") {
                Ok(n) if n == "3" => break,
                other => {
                    assert!(Instant::now() < deadline, "not replicated: {other:?}");
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
        // md5user and trustuser may create tables in app's public schema.
        primary
            .psql(APP_DB, "SET ROLE md5user; CREATE TABLE m (id int); SET ROLE trustuser; CREATE TABLE tr (id int);")
            .unwrap();
        // SQL errors are reported.
        let err = primary
            .psql(APP_DB, "SELECT * FROM missing_table")
            .unwrap_err();
        assert!(err.to_string().contains("missing_table"), "{err}");

        let pids = postmaster_pids(&cluster);
        let base = cluster.base_dir().to_path_buf();
        assert!(base.is_dir());
        drop(cluster);
        assert!(!base.exists(), "{} not removed", base.display());
        for pid in pids {
            assert!(is_zombie_or_gone(pid), "postmaster {pid} still running");
        }
    }

    #[test]
    fn failover_promote_and_restart() {
        let cluster = LocalCluster::start(LocalClusterOptions {
            replicas: 2,
            keep: false,
            ..LocalClusterOptions::default()
        })
        .expect("start local cluster");
        let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
        assert_eq!(ports.len(), 3);
        assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);
        for r in cluster.replicas() {
            assert_eq!(
                r.psql("postgres", "SELECT pg_is_in_recovery()").unwrap(),
                "t"
            );
        }
        let primary = cluster.primary();
        primary.stop(StopMode::Fast).unwrap();
        assert!(primary.psql("postgres", "SELECT 1").is_err());
        let r1 = &cluster.replicas()[0];
        r1.promote().unwrap();
        assert_eq!(
            r1.psql("postgres", "SELECT pg_is_in_recovery()").unwrap(),
            "f"
        );
        r1.psql(APP_DB, "CREATE TABLE after_failover (id int)")
            .unwrap();
        primary.start().unwrap();
        assert_eq!(primary.psql("postgres", "SELECT 1").unwrap(), "1");
    }

    #[test]
    fn bindir_is_found_and_resolved() {
        let dir = find_pg_bindir().expect("PostgreSQL binaries (apt-get install -y postgresql)");
        assert!(has_required_binaries(&dir));
        assert!(!dir.starts_with("/usr/local/bin"), "{}", dir.display());
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<LocalCluster>();
        assert_send_sync::<PgNode>();
        assert_send_sync::<LocalClusterError>();
    }

    #[test]
    fn passwd_parsing() {
        let u = parse_passwd_line(
            "postgres:x:101:104:PostgreSQL,,,:/var/lib/postgresql:/bin/bash",
            "postgres",
        )
        .unwrap();
        assert_eq!((u.uid, u.gid), (101, 104));
        assert!(parse_passwd_line("postgresx:x:1:1::/:/bin/sh", "postgres").is_none());
    }
}
