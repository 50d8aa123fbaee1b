//! Running PostgreSQL binaries: a clean environment, the right OS user, a
//! timeout, and captured output whose tail ends up in errors.

use std::fs;
use std::io::{Read, Write as _};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::os_user::RunAs;
use super::{io_at, LocalClusterError, StopMode, SUPERUSER};

/// Seconds `pg_ctl` waits for start/stop/promote.
pub(super) const PG_CTL_WAIT_SECS: u64 = 60;

/// How to run PostgreSQL binaries: where they are and as whom.
#[derive(Debug, Clone)]
pub(super) struct Exec {
    pub(super) bindir: PathBuf,
    pub(super) run_as: Option<RunAs>,
    /// HOME and working directory of the children.
    pub(super) home: PathBuf,
}

impl Exec {
    /// A command for `program` from the bin directory, run as the run-as
    /// user, with no inherited `PG*` (libpq / server) environment variables.
    pub(super) fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("PG") {
                cmd.env_remove(var);
            }
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

    /// Gives `path` to the run-as user (no-op when running as ourselves).
    pub(super) fn chown(&self, path: &Path) -> Result<(), LocalClusterError> {
        if let Some(user) = &self.run_as {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                .map_err(io_at(format!("chown {}", path.display())))?;
        }
        Ok(())
    }

    /// `pg_ctl <action> -D <data_dir> <args> -w -s -t <wait>`.
    pub(super) fn pg_ctl(
        &self,
        action: &str,
        data_dir: &Path,
        args: &[&str],
    ) -> Result<(), LocalClusterError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg(action)
            .arg("-D")
            .arg(data_dir)
            .args(args)
            .args(["-w", "-s", "-t"])
            .arg(PG_CTL_WAIT_SECS.to_string());
        run(cmd, None, Duration::from_secs(PG_CTL_WAIT_SECS + 15)).map(drop)
    }

    pub(super) fn pg_ctl_stop(
        &self,
        data_dir: &Path,
        mode: StopMode,
    ) -> Result<(), LocalClusterError> {
        self.pg_ctl("stop", data_dir, &["-m", mode.as_arg()])
    }
}

/// `program arg arg...`, for error messages.
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

/// Last `max_lines` lines of `text`.
fn tail(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}

/// Last `max_lines` lines of the file at `path`.
pub(super) fn log_tail(path: &Path, max_lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => tail(&String::from_utf8_lossy(&bytes), max_lines),
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

/// Appends the tail of the server log `log_file` to the output of a
/// [`LocalClusterError::Command`] or the message of a
/// [`LocalClusterError::Timeout`].
pub(super) fn with_log_tail(err: LocalClusterError, log_file: &Path) -> LocalClusterError {
    let extra = format!(
        "--- tail of {} ---\n{}",
        log_file.display(),
        log_tail(log_file, 30)
    );
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

fn spawn_reader<R: Read + Send + 'static>(mut reader: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = reader.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd` to completion (killing it after `timeout`), feeding it
/// `input` on stdin, and returns its stdout; fails unless it exits
/// successfully.
pub(super) fn run(
    mut cmd: Command,
    input: Option<&str>,
    timeout: Duration,
) -> Result<String, LocalClusterError> {
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
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => {
                thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(20));
            }
            Ok(None) => break None,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io_at(format!("waiting for `{desc}`"))(e));
            }
        }
    };
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    if let Some(w) = writer {
        let _ = w.join();
    }
    let join =
        |h: Option<thread::JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
    let stdout = join(stdout);
    let output = || tail(&format!("{stdout}{}", join(stderr)), 40);
    match status {
        Some(status) if status.success() => Ok(stdout),
        Some(status) => Err(LocalClusterError::Command {
            cmd: desc,
            status: status.to_string(),
            output: output(),
        }),
        None => Err(LocalClusterError::Timeout(format!(
            "`{desc}` did not finish within {}s; output:\n{}",
            timeout.as_secs(),
            output()
        ))),
    }
}
