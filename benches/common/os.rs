//! Operating-system helpers of the benchmarks that run other programs: who
//! we are, a user's ids, a private scratch directory, a free port, a Debian
//! package installed when missing.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use super::tail;

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

/// Runs `cmd` as a service runs: in a session of its own, as a systemd
/// unit or a container's process would be, not in the benchmark's, which
/// pgbench shares. With the kernel's autogroups (`sched_autogroup_enabled`)
/// a session is one scheduling group: a proxy in pgbench's competes with
/// pgbench's threads inside one share, and was measured to be preempted
/// about twice as often per transaction as the same proxy in a session of
/// its own (docs/benchmarks.md). PostgreSQL has one already (`pg_ctl`
/// starts it so). The process still ends with the benchmark: a new session
/// takes it out of reach of the terminal's Ctrl-C, so it is told when its
/// parent dies.
pub fn own_session(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        })
    }
}

/// A port nothing listens on (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Returns `bin`, installing Debian's `package` with apt-get if it is
/// missing; a service the package starts (named as the package) is stopped.
pub fn ensure_package(bin: &str, package: &str) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(bin);
    if path.is_file() {
        return Ok(path);
    }
    eprintln!("{bin} missing; trying `apt-get install -y {package}`...");
    apt_install(package)?;
    // The benchmarks run their own instance on their own ports and
    // configuration: the package's would be harmless, but would take CPU.
    let _ = Command::new("service")
        .args([package, "stop"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if path.is_file() {
        Ok(path)
    } else {
        bail!("apt-get succeeded but {bin} is still missing")
    }
}

/// `apt-get install -y package`; after a failure (stale package lists,
/// often) `apt-get update` and once more.
fn apt_install(package: &str) -> anyhow::Result<()> {
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
    };
    let first = apt(&["install", "-y", package]);
    if first.as_ref().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    eprintln!("apt-get install failed; running apt-get update and retrying...");
    let _ = apt(&["update"]);
    let second = apt(&["install", "-y", package]).context("running apt-get")?;
    if !second.status.success() {
        bail!(
            "apt-get install -y {package} failed:\n{}",
            tail(&String::from_utf8_lossy(&second.stderr), 10)
        );
    }
    Ok(())
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
