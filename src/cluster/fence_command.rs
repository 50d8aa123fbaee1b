//! Running `failover.fence_command` for an old primary: bounded in time
//! (`failover.fence_timeout`, after which the hook and everything it
//! started are killed) and in what it may print (the first
//! [`OUTPUT_LIMIT`] bytes of each stream are kept, the rest drained). What
//! it prints goes to the log only: events are served without credentials
//! on `/events`, and a hook's stderr may carry a BMC password or a token.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes of each of the hook's output streams kept for the log.
pub const OUTPUT_LIMIT: u64 = 4096;

/// Why the hook did not succeed (its output is in the log, not here).
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// It could not be started.
    #[error("could not run: {0}")]
    Spawn(std::io::Error),
    /// It exited with a failure.
    #[error("exited with {0} (its output is in the log)")]
    Failed(std::process::ExitStatus),
    /// It ran past `fence_timeout` and was killed with what it started.
    #[error("timed out after {0:?}; it and its children were killed")]
    TimedOut(Duration),
}

/// Runs `sh -c cmd fence <addr>` (with `SWITCHYARD_FENCED_NODE=<addr>`) in a
/// process group of its own, for at most `limit`.
pub async fn run(cmd: &str, addr: &str, limit: Duration) -> Result<(), FenceError> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .arg("fence")
        .arg(addr)
        .env("SWITCHYARD_FENCED_NODE", addr)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(FenceError::Spawn)?;
    let group = child.id();
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let finished = async {
        let (out, err, status) = tokio::join!(bounded(out), bounded(err), child.wait());
        (out, err, status)
    };
    match tokio::time::timeout(limit, finished).await {
        Ok((out, err, status)) => {
            let status = status.map_err(FenceError::Spawn)?;
            if !out.is_empty() || !err.is_empty() {
                tracing::info!(node = %addr, %status, stdout = %out, stderr = %err, "fence_command output");
            }
            if status.success() {
                Ok(())
            } else {
                Err(FenceError::Failed(status))
            }
        }
        Err(_) => {
            if let Some(pgid) = group {
                // The whole group (its id is the hook's pid): what the hook
                // started dies with it. The shell's own kill (no procps
                // needed) rather than unsafe libc.
                let _ = tokio::process::Command::new("sh")
                    .args(["-c", &format!("kill -KILL -{pgid}")])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await;
            }
            let _ = child.wait().await;
            tracing::warn!(node = %addr, ?limit, "fence_command timed out and was killed");
            Err(FenceError::TimedOut(limit))
        }
    }
}

/// The first [`OUTPUT_LIMIT`] bytes of `stream`, as text; the rest is read
/// and dropped so that the hook never blocks on a full pipe.
async fn bounded(stream: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut kept = Vec::new();
    let _ = (&mut stream)
        .take(OUTPUT_LIMIT)
        .read_to_end(&mut kept)
        .await;
    let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
    String::from_utf8_lossy(&kept).trim().to_string()
}
