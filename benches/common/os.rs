//! Operating-system helpers of the benchmarks that run PgBouncer: who we
//! are, a user's ids, a private scratch directory, a free port.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::Context as _;

/// Whether this process runs as root (PgBouncer refuses to).
pub fn is_root() -> bool {
    // /proc/self is owned by the effective uid.
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// (uid, gid) of `user` from /etc/passwd.
pub fn lookup_user(user: &str) -> Option<(u32, u32)> {
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

/// A port nothing listens on (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A private directory under the temp dir (mode 0700); removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    /// `<tmp>/<prefix>-<pid>`, emptied first.
    pub fn create(prefix: &str) -> anyhow::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700))?;
        Ok(TempDir { path })
    }

    /// Writes `name` (mode 0600) and returns its path.
    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<String> {
        let path = self.path.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        Ok(path.to_string_lossy().into_owned())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
