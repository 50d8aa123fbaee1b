//! Throw-away local PostgreSQL clusters (one primary plus N streaming
//! replicas) built from the real PostgreSQL server binaries, for the
//! `switchyard demo` command, the integration tests and the benchmarks.
//!
//! This module owns the public API ([`LocalCluster`], its options, its
//! error type, the well-known roles) and the order of a cluster's life:
//! find the binaries (`binaries`), pick the OS user to run as (`os_user`),
//! reap clusters left behind by dead processes (`stale`), create the
//! cluster directory (`base_dir`), `initdb` and configure the primary,
//! start it and create the roles (`primary`, `node`), then create every
//! replica with `pg_basebackup -R` from the running primary (through a
//! replication slot of its own if asked) and wait until it streams
//! (`replica`). Teardown (on [`LocalCluster::stop`] or drop)
//! stops every server and deletes the directory.
//!
//! The API is blocking (it drives `std::process`): async callers should
//! call it from `tokio::task::spawn_blocking` or outside the runtime.
//!
//! PostgreSQL refuses to run as root, so when the current process is root
//! every PostgreSQL command is run as the `postgres` OS user (created with
//! `useradd` if it does not exist), and the cluster directory is owned by
//! that user.
//!
//! Environment variables:
//! - `SWITCHYARD_KEEP_TMP`: when set, [`LocalClusterOptions::default`] keeps
//!   the cluster directory (data and logs) after teardown;
//! - `SWITCHYARD_CLUSTER_TMPDIR`: directory to create cluster directories
//!   in instead of [`std::env::temp_dir`]; `/dev/shm` makes `start` faster
//!   on slow disks;
//! - `SWITCHYARD_PG_BINDIR`: PostgreSQL bin directory, overriding the search
//!   of [`find_pg_bindir`].

mod base_dir;
mod binaries;
mod exec;
mod node;
mod os_user;
mod primary;
mod replica;
mod stale;
#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::thread;
use std::time::Instant;

pub use binaries::find_pg_bindir;
pub use node::PgNode;

use exec::Exec;

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

/// How a [`LocalCluster`] is built.
#[derive(Debug, Clone)]
pub struct LocalClusterOptions {
    /// Number of streaming replicas to create next to the primary (default 1).
    pub replicas: usize,
    /// Extra `postgresql.conf` lines appended on the primary after the
    /// module's own settings (so they win); replicas inherit them
    /// (`pg_basebackup` copies the primary's configuration files).
    pub extra_conf: Vec<String>,
    /// Files `(name, contents)` written into the primary's data directory
    /// before it first starts, owned by the server's OS user with mode 0600
    /// (what PostgreSQL demands of `ssl_key_file`). A `pg_hba.conf` here
    /// replaces the module's. Replicas copy them with the data directory.
    pub data_files: Vec<(String, String)>,
    /// Whether the servers run with `fsync = on` (default `false`). When
    /// `false`, `synchronous_commit` and `full_page_writes` are off as well.
    pub fsync: bool,
    /// When `true`, teardown stops the servers but leaves the directory
    /// (logs, data) in place. Defaults to whether the `SWITCHYARD_KEEP_TMP`
    /// environment variable is set.
    pub keep: bool,
    /// Whether each replica streams through a physical replication slot
    /// named after it (`pg_basebackup -C -S replicaN`, which also sets its
    /// `primary_slot_name`), as most production setups do. Default `false`.
    pub replication_slots: bool,
}

impl Default for LocalClusterOptions {
    fn default() -> Self {
        LocalClusterOptions {
            replicas: 1,
            extra_conf: Vec::new(),
            data_files: Vec::new(),
            fsync: false,
            keep: std::env::var_os(KEEP_ENV).is_some(),
            replication_slots: false,
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

/// Maps an [`io::Error`] to [`LocalClusterError::IoAt`] with `context`.
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

/// Stale clusters are reaped once per process.
static REAP_STALE: Once = Once::new();

impl LocalCluster {
    /// Creates and starts a cluster: `initdb` the primary, configure and
    /// start it, create the well-known roles and database, then create each
    /// replica with `pg_basebackup -R -X stream -c fast` from the running
    /// primary, start it and wait until it streams (replicas in parallel).
    ///
    /// On failure everything started so far is stopped and removed (kept
    /// instead when [`LocalClusterOptions::keep`]), and the error carries
    /// the tail of the failing command's output or server log.
    pub fn start(opts: LocalClusterOptions) -> Result<LocalCluster, LocalClusterError> {
        let started = Instant::now();
        let bindir = binaries::require_pg_bindir()?;
        let run_as = os_user::resolve_run_as()?;
        REAP_STALE.call_once(|| {
            stale::reap_stale_clusters(&Exec {
                bindir: bindir.clone(),
                run_as: run_as.clone(),
                home: PathBuf::from("/"),
            })
        });

        let ports = node::pick_ports(opts.replicas + 1, &[])?;
        let base_dir = base_dir::create(run_as.as_ref(), opts.replicas, opts.keep)?;
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

        primary::init(&cluster.primary, &base_dir, &opts)?;
        let t_init = started.elapsed();
        cluster.primary.start_retrying_port(&ports)?;
        primary::create_roles(&cluster.primary)?;
        let t_primary = started.elapsed();
        let slots = opts.replication_slots;
        replica::start_all(&cluster.primary, &mut cluster.replicas, &ports, slots)?;
        tracing::debug!(
            "local cluster at {} started in {:?} (initdb {t_init:?}, primary up with roles \
             {t_primary:?})",
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
        base_dir::remove(&self.base_dir);
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
