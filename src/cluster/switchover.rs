//! Planned switchover: moving the primary on purpose (admin `SWITCHOVER`,
//! `POST /switchover`, a degraded or failing hardware probe) so that no
//! acknowledged commit is lost and clients between transactions see nothing.
//!
//! The sequence, run by the monitor between two ticks: hold new
//! transactions (the routing snapshot loses its primary, so checkouts wait as
//! during a failover) → let running transactions finish, up to
//! `switchover.drain_timeout`, then cancel the rest → make the old primary
//! read-only and end its sessions → wait until the target has replayed the
//! old primary's last WAL → promote the target → fence the old primary and
//! repoint the other replicas → release the held transactions to the new
//! primary. Any failure before the promotion restores the old primary.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::failover::Primary;
use super::monitor::{self, Track};
use super::view::{NodeView, Role};
use super::Cluster;
use crate::config::Config;
use crate::events::EventKind;

/// Longest wait for the target to finish its promotion.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// A switchover someone asked for.
#[derive(Debug)]
pub struct Request {
    /// The node to promote, by name; `None`: the best replica.
    pub target: Option<String>,
    /// Who asked and why, for the timeline.
    pub reason: String,
    /// No drain: running transactions are cancelled at once (failing hardware).
    pub emergency: bool,
    /// Where the outcome goes: the new primary's name, or why not.
    pub reply: Option<oneshot::Sender<Result<String, String>>>,
}

/// The replica to switch to: `requested` if it is a healthy, unfenced
/// replica within `max_lag` bytes, else (when none was named) the one
/// failover would choose.
pub fn pick_target(
    views: &[NodeView],
    old: usize,
    requested: Option<&str>,
    max_lag: u64,
) -> Result<usize, String> {
    let reference = views.get(old).map_or(0, NodeView::lsn);
    let fit = |i: usize| {
        let v = &views[i];
        i != old
            && v.live_role() == Some(Role::Replica)
            && reference.saturating_sub(v.lsn()) <= max_lag
    };
    match requested {
        Some(name) => {
            let i = views
                .iter()
                .position(|v| v.name == name)
                .ok_or_else(|| format!("no such node: {name}"))?;
            if i == old {
                return Err(format!("{name} is already the primary"));
            }
            if !fit(i) {
                return Err(format!(
                    "{name} is not a healthy replica within failover.max_lag_bytes"
                ));
            }
            Ok(i)
        }
        None => (0..views.len())
            .filter(|&i| fit(i))
            .max_by(|&a, &b| {
                let (x, y) = (&views[a], &views[b]);
                (x.lsn(), x.priority)
                    .cmp(&(y.lsn(), y.priority))
                    .then_with(|| y.name.cmp(&x.name))
            })
            .ok_or_else(|| "no healthy replica within failover.max_lag_bytes".to_string()),
    }
}

/// Runs `req` and returns the state that follows: the target serving, or
/// `state` unchanged when the switchover did not happen.
pub(super) async fn run(
    cluster: &Cluster,
    config: &Config,
    tracks: &mut [Track],
    state: &Primary,
    mut req: Request,
) -> Primary {
    let outcome = match state.serving() {
        None => Err("no primary is serving: nothing to switch over".to_string()),
        Some(old) => {
            let views = monitor::views(cluster, tracks);
            let max_lag = config.failover.max_lag_bytes;
            match pick_target(&views, old, req.target.as_deref(), max_lag) {
                Ok(target) => Switch {
                    cluster,
                    config,
                    tracks,
                    old,
                    target,
                }
                .run(&mut req)
                .await
                .map(|()| target),
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = &outcome {
        cluster.events.record(
            EventKind::SwitchoverFailed,
            None,
            format!("switchover not done ({}): {e}", req.reason),
        );
    }
    let next = outcome
        .as_ref()
        .map_or_else(|_| state.clone(), |&t| Primary::Serving(t));
    if let Some(tx) = req.reply {
        let _ = tx.send(outcome.map(|t| cluster.nodes()[t].name.clone()));
    }
    next
}

/// One switchover in progress.
struct Switch<'a> {
    cluster: &'a Cluster,
    config: &'a Config,
    tracks: &'a mut [Track],
    old: usize,
    target: usize,
}

impl Switch<'_> {
    fn name(&self, i: usize) -> String {
        self.cluster.nodes()[i].name.clone()
    }

    fn timeout(&self) -> Duration {
        self.config.health.timeout.max(Duration::from_secs(5))
    }

    /// A step's event, with how long it took.
    fn step(&self, node: usize, since: Instant, what: &str) {
        let ms = since.elapsed().as_millis();
        let msg = format!("{what} ({ms} ms)");
        self.cluster
            .events
            .record(EventKind::SwitchoverStep, Some(&self.name(node)), msg);
    }

    async fn run(mut self, req: &mut Request) -> Result<(), String> {
        let began = Instant::now();
        let (old, target) = (self.old, self.target);
        let msg = format!(
            "{}: moving the primary from {} to {}; new transactions are held",
            req.reason,
            self.name(old),
            self.name(target)
        );
        self.cluster
            .events
            .record(EventKind::SwitchoverStarted, Some(&self.name(old)), msg);
        self.hold();
        let t = Instant::now();
        let drain = if req.emergency {
            Duration::ZERO
        } else {
            self.config.switchover.drain_timeout
        };
        let cancelled = self.drain(drain).await;
        let what = match cancelled {
            0 => "running transactions finished".to_string(),
            n => format!("{n} transaction(s) still running after the drain timeout were cancelled"),
        };
        self.step(old, t, &what);
        if let Err(e) = self.freeze_old_and_catch_up().await {
            self.restore().await;
            return Err(e);
        }
        let t = Instant::now();
        if let Err(e) = self.promote().await {
            self.restore().await;
            return Err(e);
        }
        self.step(target, t, "promoted");
        self.hand_over(began, req.reply.take()).await;
        Ok(())
    }

    /// New transactions wait, as while a failover is in progress.
    fn hold(&self) {
        let mut snap = (*self.cluster.snapshot()).clone();
        snap.primary = None;
        self.cluster.publish(snap);
    }

    /// Waits until no server connection to the old primary is checked out,
    /// up to `limit`; then ends those still busy. Returns how many were.
    async fn drain(&self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && self.cluster.checked_out(self.old) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let busy = self.cluster.checked_out(self.old);
        if busy > 0 {
            self.cluster.retire(self.old);
        }
        busy
    }

    /// Old primary read-only with no sessions left; target replayed its WAL.
    async fn freeze_old_and_catch_up(&mut self) -> Result<(), String> {
        let (old, target, timeout) = (self.old, self.target, self.timeout());
        let t = Instant::now();
        let checker = &mut self.tracks[old].checker;
        for sql in [
            "ALTER SYSTEM SET default_transaction_read_only = on",
            "SELECT pg_reload_conf()",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        ] {
            checker
                .control(sql, timeout)
                .await
                .map_err(|e| format!("making the old primary read-only: {e}"))?;
        }
        self.cluster.retire(old);
        // Commits acknowledged with synchronous_commit = off may still sit in
        // the WAL buffers, unsent: a synchronously committed marker flushes
        // everything before it, so the flush position covers every commit
        // any client was told about.
        for sql in [
            "SET default_transaction_read_only = off",
            "SET synchronous_commit = on",
            "SELECT pg_logical_emit_message(true, 'switchyard', 'switchover')::text",
        ] {
            checker
                .control(sql, timeout)
                .await
                .map_err(|e| format!("flushing the old primary's WAL: {e}"))?;
        }
        let row = checker
            .control("SELECT pg_current_wal_flush_lsn()::text", timeout)
            .await
            .map_err(|e| format!("reading the old primary's WAL position: {e}"))?;
        let last = row
            .first()
            .cloned()
            .flatten()
            .and_then(|s| parse_lsn(&s))
            .ok_or("the old primary reported no WAL position")?;
        self.step(
            old,
            t,
            &format!("read-only, sessions ended, last WAL at {last:X}"),
        );
        let t = Instant::now();
        self.wait_replayed(last).await?;
        self.step(target, t, &format!("replayed up to {last:X}"));
        Ok(())
    }

    async fn wait_replayed(&mut self, lsn: u64) -> Result<(), String> {
        let deadline = Instant::now() + self.config.switchover.catchup_timeout;
        let timeout = self.timeout();
        let checker = &mut self.tracks[self.target].checker;
        loop {
            let row = checker
                .control("SELECT pg_last_wal_replay_lsn()::text", timeout)
                .await?;
            let replayed = row.first().cloned().flatten().and_then(|s| parse_lsn(&s));
            if replayed.is_some_and(|r| r >= lsn) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the target did not replay up to {lsn:X} within switchover.catchup_timeout"
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Promotes the target and waits until it accepts writes. Polled here
    /// rather than with `pg_promote(true)`, which checks only every 100 ms:
    /// that wait is write pause.
    async fn promote(&mut self) -> Result<(), String> {
        let timeout = self.timeout();
        let checker = &mut self.tracks[self.target].checker;
        checker
            .control("SELECT pg_promote(false)", timeout)
            .await
            .map_err(|e| format!("pg_promote() on the target failed: {e}"))?;
        let deadline = Instant::now() + PROMOTE_TIMEOUT;
        loop {
            let in_recovery = checker
                .control("SELECT pg_is_in_recovery()", timeout)
                .await
                .ok()
                .and_then(|r| r.first().cloned().flatten());
            if in_recovery.as_deref() == Some("f") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err("the target did not leave recovery within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The target takes writes: fence the old primary, release the held
    /// transactions, answer whoever asked, then repoint the other replicas.
    async fn hand_over(
        &mut self,
        began: Instant,
        reply: Option<oneshot::Sender<Result<String, String>>>,
    ) {
        let (old, target, timeout) = (self.old, self.target, self.timeout());
        if let Ok(p) = self.tracks[target].checker.probe(timeout).await {
            self.tracks[target].probe = Some(p);
        }
        self.tracks[old].fenced = true;
        let state = Primary::Serving(target);
        monitor::publish(self.cluster, self.config, self.tracks, &state);
        let msg = format!(
            "switchover complete: {} takes writes; write pause {} ms",
            self.name(target),
            began.elapsed().as_millis()
        );
        self.cluster
            .events
            .record(EventKind::WritesResumed, Some(&self.name(target)), msg);
        let msg = format!(
            "old primary after a switchover: read-only and fenced until rebuilt as a replica of {} and re-admitted",
            self.name(target)
        );
        self.cluster
            .events
            .record(EventKind::NodeFenced, Some(&self.name(old)), msg);
        if let Some(tx) = reply {
            let _ = tx.send(Ok(self.name(target)));
        }
        if self.config.failover.repoint_replicas {
            for i in 0..self.tracks.len() {
                if i != old && i != target && self.is_replica(i) {
                    monitor::repoint_node(self.cluster, self.tracks, i, target, timeout).await;
                }
            }
        }
    }

    fn is_replica(&self, i: usize) -> bool {
        self.tracks[i]
            .probe
            .as_ref()
            .is_some_and(|p| p.role == Role::Replica)
            && !self.tracks[i].fenced
    }

    /// The switchover stopped before the promotion: the old primary takes
    /// writes again.
    async fn restore(&mut self) {
        let timeout = self.timeout();
        let checker = &mut self.tracks[self.old].checker;
        let undone = async {
            checker
                .control("ALTER SYSTEM RESET default_transaction_read_only", timeout)
                .await?;
            checker.control("SELECT pg_reload_conf()", timeout).await
        }
        .await;
        if let Err(e) = undone {
            let msg = format!("could not make the old primary writable again: {e}");
            self.cluster
                .events
                .record(EventKind::ActionFailed, Some(&self.name(self.old)), msg);
        }
        monitor::publish(
            self.cluster,
            self.config,
            self.tracks,
            &Primary::Serving(self.old),
        );
    }
}

/// A WAL position as PostgreSQL prints it (`16/B374D848`).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::view::{test_node, Health};

    fn cluster() -> Vec<NodeView> {
        vec![
            test_node("db1", Role::Primary, 1, 1000),
            test_node("db2", Role::Replica, 1, 990),
            test_node("db3", Role::Replica, 1, 1000),
        ]
    }

    #[test]
    fn the_most_advanced_healthy_replica_is_chosen() {
        let mut v = cluster();
        assert_eq!(pick_target(&v, 0, None, 100), Ok(2));
        v[2].health = Health::Down;
        assert_eq!(pick_target(&v, 0, None, 100), Ok(1));
        v[1].hardware_failing = true;
        assert!(pick_target(&v, 0, None, 100).is_err());
    }

    #[test]
    fn a_named_target_must_be_a_fit_replica() {
        let mut v = cluster();
        assert_eq!(pick_target(&v, 0, Some("db2"), 100), Ok(1));
        assert!(
            pick_target(&v, 0, Some("db2"), 5).is_err(),
            "too far behind"
        );
        assert!(
            pick_target(&v, 0, Some("db1"), 100).is_err(),
            "already primary"
        );
        assert!(pick_target(&v, 0, Some("nope"), 100).is_err());
        v[1].fenced = true;
        assert!(pick_target(&v, 0, Some("db2"), 100).is_err());
    }

    #[test]
    fn lsns_parse_like_postgresql_prints_them() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("garbage"), None);
    }
}
