//! Finding the PostgreSQL binaries the cluster needs (`initdb`, `pg_ctl`,
//! `postgres`, `psql`, `pg_basebackup`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::LocalClusterError;

/// Environment variable that overrides [`find_pg_bindir`]'s search.
const BINDIR_ENV: &str = "SWITCHYARD_PG_BINDIR";
/// Binaries the cluster needs from the bin directory.
const REQUIRED_BINARIES: [&str; 5] = ["initdb", "pg_ctl", "postgres", "psql", "pg_basebackup"];

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether `dir` holds every binary the cluster needs.
pub(super) fn has_required_binaries(dir: &Path) -> bool {
    REQUIRED_BINARIES
        .iter()
        .all(|b| is_executable_file(&dir.join(b)))
}

/// Returns the directory holding the PostgreSQL server binaries (`initdb`,
/// `pg_ctl`, `postgres`, `psql`, `pg_basebackup`), or `None`.
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

    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .filter_map(|dir| fs::canonicalize(dir.join("initdb")).ok())
            .filter_map(|real| real.parent().map(Path::to_path_buf))
            .find(|dir| has_required_binaries(dir))
    });
    if on_path.is_some() {
        return on_path;
    }

    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_required_binaries(&dir) {
            return Some(dir);
        }
    }

    let mut versions: Vec<(Vec<u64>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version: Vec<u64> = name
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            let bin = entry.path().join("bin");
            has_required_binaries(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

/// [`find_pg_bindir`], or an error saying what is missing and how to fix it.
pub(super) fn require_pg_bindir() -> Result<PathBuf, LocalClusterError> {
    find_pg_bindir().ok_or_else(|| {
        LocalClusterError::BinariesNotFound(format!(
            "no directory with {} found on $PATH, via `pg_config --bindir` or under \
             /usr/lib/postgresql/*/bin (set {BINDIR_ENV} to point at one); install \
             PostgreSQL, e.g. `apt-get install -y postgresql`",
            REQUIRED_BINARIES.join(", ")
        ))
    })
}
