//! Process liveness (from `/proc`) and reaping of stale clusters: cluster
//! directories whose owning process died without running `Drop` (e.g. a
//! killed test binary) have their servers stopped and are removed, unless
//! they were kept.

use std::fs;
use std::path::Path;

use super::base_dir::{self, candidate_parents, DIR_PREFIX, KEEP_FILE, OWNER_FILE};
use super::exec::Exec;
use super::StopMode;

/// Start time (in clock ticks since boot) of a process (`"self"` or a
/// pid), from `/proc/<pid>/stat`; with the pid it identifies a process
/// even if the pid is reused.
pub(super) fn process_start_time(pid: &str) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (comm) is in parentheses and may contain spaces; field 22 is
    // starttime, i.e. the 20th field after the closing parenthesis.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is a live process (not a zombie) whose comm is `postgres`.
pub(super) fn is_live_postgres(pid: u32) -> bool {
    let comm_ok =
        fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres");
    comm_ok && !is_zombie_or_gone(pid)
}

/// Whether `pid` has exited (possibly not yet reaped by its parent).
pub(super) fn is_zombie_or_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .is_some_and(|i| stat[i + 1..].split_whitespace().next() == Some("Z")),
        Err(_) => true,
    }
}

/// The postmaster's pid from `<data_dir>/postmaster.pid`.
pub(super) fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Whether the process recorded in a cluster directory's OWNER file
/// (`<pid> <start time>`) is still running.
fn owner_alive(owner: &str) -> bool {
    let mut fields = owner.split_whitespace();
    let (Some(pid), Some(Ok(recorded))) = (fields.next(), fields.next().map(str::parse::<u64>))
    else {
        return true; // unreadable: leave it alone
    };
    // A recorded start time of 0 means it was unknown: trust the pid alone.
    process_start_time(pid).is_some_and(|actual| recorded == 0 || actual == recorded)
}

/// Stops and removes cluster directories whose owning process is gone.
/// Kept directories are stopped, not removed.
pub(super) fn reap_stale_clusters(exec: &Exec) {
    for parent in candidate_parents() {
        let Ok(entries) = fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
                continue;
            }
            let dir = entry.path();
            match fs::read_to_string(dir.join(OWNER_FILE)) {
                Ok(owner) if !owner_alive(&owner) => {}
                _ => continue,
            }
            for node in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let data_dir = node.path();
                if postmaster_pid(&data_dir).is_some_and(is_live_postgres) {
                    tracing::warn!("stopping stale local cluster server {}", data_dir.display());
                    if let Err(e) = exec.pg_ctl_stop(&data_dir, StopMode::Immediate) {
                        tracing::warn!("could not stop {}: {e}", data_dir.display());
                    }
                }
            }
            if !dir.join(KEEP_FILE).exists() {
                tracing::info!("removing stale local cluster directory {}", dir.display());
                base_dir::remove(&dir);
            }
        }
    }
}
