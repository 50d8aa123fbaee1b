//! The cluster directory on disk: where it goes (`SWITCHYARD_CLUSTER_TMPDIR`,
//! the temp dir or `/tmp`), creating it with its OWNER (and KEEP) marker,
//! removing it, and writing files in it.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use super::os_user::{traversable_by, RunAs};
use super::stale::process_start_time;
use super::{io_at, LocalClusterError};

/// Environment variable naming the directory cluster directories are
/// created in, instead of the temp dir (e.g. `/dev/shm`, much faster).
const CLUSTER_TMPDIR_ENV: &str = "SWITCHYARD_CLUSTER_TMPDIR";
/// Prefix of the cluster directories.
pub(super) const DIR_PREFIX: &str = "switchyard-cluster-";
/// File in a cluster directory that records the owning process.
pub(super) const OWNER_FILE: &str = "OWNER";
/// File in a cluster directory that marks it as kept (not to be deleted).
pub(super) const KEEP_FILE: &str = "KEEP";
/// Longest path a unix socket may have (`sun_path` minus the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Numbers the cluster directories of this process.
static CLUSTER_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Directories cluster directories may be created in, most preferred
/// first: `$SWITCHYARD_CLUSTER_TMPDIR` (if set), the temp dir, `/tmp`.
pub(super) fn candidate_parents() -> Vec<PathBuf> {
    let env_dir = std::env::var_os(CLUSTER_TMPDIR_ENV).filter(|d| !d.is_empty());
    let mut dirs: Vec<PathBuf> = Vec::new();
    for dir in env_dir
        .map(PathBuf::from)
        .into_iter()
        .chain([std::env::temp_dir(), PathBuf::from("/tmp")])
    {
        let dir = std::env::current_dir().unwrap_or_default().join(dir);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// The first candidate parent (see [`candidate_parents`]) that exists, that
/// the run-as user can traverse, and that keeps socket paths short enough.
fn choose_parent(run_as: Option<&RunAs>, replicas: usize) -> Result<PathBuf, LocalClusterError> {
    // <parent>/switchyard-cluster-<pid>-<n>/replica<N>/.s.PGSQL.<port>
    let longest_node = format!("replica{replicas}").len().max("primary".len());
    let suffix = 1 + DIR_PREFIX.len() + 10 + 1 + 20 + 1 + longest_node + "/.s.PGSQL.65535".len();
    let candidates = candidate_parents();
    candidates
        .iter()
        .find(|dir| {
            dir.is_dir()
                && dir.as_os_str().len() + suffix <= MAX_SOCKET_PATH
                && run_as.is_none_or(|u| traversable_by(dir, u))
        })
        .cloned()
        .ok_or_else(|| {
            LocalClusterError::Setup(format!(
                "none of {candidates:?} is a directory with a short enough path that the \
                 server's OS user can traverse (set {CLUSTER_TMPDIR_ENV} to one)"
            ))
        })
}

/// Creates `<parent>/switchyard-cluster-<pid>-<n>` (mode 0700, owned by the
/// run-as user) with an OWNER file recording this process, and a KEEP file
/// if `keep`.
pub(super) fn create(
    run_as: Option<&RunAs>,
    replicas: usize,
    keep: bool,
) -> Result<PathBuf, LocalClusterError> {
    let parent = choose_parent(run_as, replicas)?;
    let pid = std::process::id();
    loop {
        let n = CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("{DIR_PREFIX}{pid}-{n}"));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_at(format!("creating {}", dir.display()))(e)),
        }
        let marked = (|| {
            let start_time = process_start_time("self").unwrap_or(0);
            write_file(&dir.join(OWNER_FILE), &format!("{pid} {start_time}\n"))?;
            if keep {
                write_file(
                    &dir.join(KEEP_FILE),
                    "kept: SWITCHYARD_KEEP_TMP / keep option\n",
                )?;
            }
            if let Some(user) = run_as {
                std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))
                    .map_err(io_at(format!("chown {}", dir.display())))?;
            }
            Ok(())
        })();
        return match marked {
            Ok(()) => Ok(dir),
            Err(e) => {
                remove(&dir);
                Err(e)
            }
        };
    }
}

/// Removes `dir` recursively, retrying briefly (a server that was just
/// stopped may still be deleting files); failures are logged.
pub(super) fn remove(dir: &Path) {
    for attempt in 1..=5 {
        match fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) if attempt == 5 => tracing::warn!("could not remove {}: {e}", dir.display()),
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

pub(super) fn write_file(path: &Path, text: &str) -> Result<(), LocalClusterError> {
    fs::write(path, text).map_err(io_at(format!("writing {}", path.display())))
}

pub(super) fn append_file(path: &Path, text: &str) -> Result<(), LocalClusterError> {
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(io_at(format!("appending to {}", path.display())))
}
