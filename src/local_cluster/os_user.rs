//! The OS user PostgreSQL runs as: ourselves normally, the `postgres` user
//! (created if missing) when we are root, since PostgreSQL refuses to run
//! as root.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::{io_at, LocalClusterError};

/// OS user the servers run as when we are root.
const PG_OS_USER: &str = "postgres";

/// The OS user PostgreSQL commands run as when we are root.
#[derive(Debug, Clone)]
pub(super) struct RunAs {
    pub(super) name: String,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

/// Our effective uid, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    // real, effective, saved, filesystem
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// Parses an `/etc/passwd` line, if it is `user`'s.
pub(super) fn parse_passwd_line(line: &str, user: &str) -> Option<RunAs> {
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

/// Looks `user` up in `/etc/passwd` (where `useradd` puts it).
fn lookup_user(user: &str) -> Option<RunAs> {
    fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find_map(|l| parse_passwd_line(l, user))
}

/// `None` when we are not root (commands run as ourselves); otherwise the
/// `postgres` OS user, created if missing.
pub(super) fn resolve_run_as() -> Result<Option<RunAs>, LocalClusterError> {
    if effective_uid() != Some(0) {
        return Ok(None);
    }
    // One useradd at a time; parallel tests may all find the user missing.
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
pub(super) fn traversable_by(dir: &Path, who: &RunAs) -> bool {
    dir.ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .all(|a| match fs::metadata(a) {
            Ok(m) if m.uid() == who.uid => m.mode() & 0o100 != 0,
            Ok(m) if m.gid() == who.gid => m.mode() & 0o010 != 0,
            Ok(m) => m.mode() & 0o001 != 0,
            Err(_) => false,
        })
}
