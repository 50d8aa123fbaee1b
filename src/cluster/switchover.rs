//! Planned switchover: moving the primary on purpose (admin `SWITCHOVER`,
//! `POST /switchover`, a degraded hardware probe) so that no acknowledged
//! commit is lost and clients between transactions see nothing.
//!
//! The sequence, run by the monitor between two ticks: hold new
//! transactions (the routing snapshot loses its primary, so checkouts wait as
//! during a failover) → let running transactions finish, up to
//! `switchover.drain_timeout`, then cancel the rest → make the old primary
//! read-only and end its sessions → wait until the target has replayed the
//! old primary's last WAL → promote the target → fence the old primary and
//! repoint the other replicas → release the held transactions to the new
//! primary.
//!
//! Every step asks something of the old primary, so it is for a primary that
//! works. One that misses a health check or whose hardware says failing is
//! never switched over but failed over; if that happens mid-way (it stops
//! answering, or its hardware fails), the switchover hands over to the
//! failover within one `health.timeout`. Any other failure before the
//! promotion restores the old primary. Once `pg_promote()` may have reached
//! the target, nothing restores the old primary: writes stay held until the
//! target leaves recovery (or an operator steps in), since a promotion that
//! completes later would lose whatever the old primary took meanwhile.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::actuate;
use super::coord::switch::Switching;
use super::coord::{record_of, Coordination};
use super::error::{StepError, SwitchoverError};
use super::failover::Primary;
use super::hardware::HardwareStatus;
use super::health::{ControlError, ProbeError, LATE_PROBE};
use super::promotion::{self, Waited};
use super::track::{self, Track};
use super::view::{Health, NodeView, Role};
use super::Cluster;
use crate::config::{Config, SyncPolicy};
use crate::events::EventKind;

/// Longest wait for the target to finish its promotion.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the old primary is checked while transactions drain.
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// A switchover someone asked for.
#[derive(Debug)]
pub struct Request {
    /// The node to promote, by name; `None`: the best replica.
    pub target: Option<String>,
    /// Who asked and why, for the timeline.
    pub reason: String,
    /// Where the outcome goes: the new primary's name, or why not.
    pub reply: Option<oneshot::Sender<Result<String, SwitchoverError>>>,
}

/// What a hardware verdict on the serving primary asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A planned switchover.
    Switchover,
    /// Nothing now; the episode that already asked for one goes on.
    Hold,
    /// The hardware is fine again (or unknown): a later degraded reading is
    /// a new episode.
    Rearm,
}

/// The switchover trigger of a hardware verdict. Only `degraded` (with
/// `failover.switchover_on_degraded`) moves the primary on purpose:
/// `failing` means the node is gone, and the failover state machine
/// replaces it without asking anything of it.
pub fn hardware_trigger(status: HardwareStatus, switchover_on_degraded: bool) -> Trigger {
    match status {
        HardwareStatus::Degraded if switchover_on_degraded => Trigger::Switchover,
        HardwareStatus::Degraded | HardwareStatus::Failing => Trigger::Hold,
        HardwareStatus::Ok | HardwareStatus::Unknown => Trigger::Rearm,
    }
}

/// Whether a switchover may start from `old`: only a primary that answered
/// its last health check and whose hardware still runs.
pub fn may_start(old: &NodeView) -> Result<(), SwitchoverError> {
    if old.hardware_failing {
        return Err(SwitchoverError::HardwareFailing(old.name.clone()));
    }
    if old.health != Health::Up {
        return Err(SwitchoverError::MissedCheck(old.name.clone()));
    }
    Ok(())
}

/// Why a switchover stopped before the promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Abort {
    /// The old primary answered, something else failed: it serves again.
    Restore(StepError),
    /// The old primary stopped answering or its hardware says failing:
    /// nothing more is asked of it, the failover takes over.
    Gone(StepError),
    /// `pg_promote()` may have reached the target, which did not confirm:
    /// the old primary must not serve again (writes it took would be lost
    /// when the promotion completes), so writes stay held for the target.
    Unconfirmed(StepError),
}

impl Abort {
    /// The abort a failed statement on the old primary means.
    fn on_old(doing: &'static str, error: ControlError) -> Abort {
        let gone = matches!(error, ControlError::Unreachable(_));
        let step = StepError::OnOld { doing, error };
        if gone {
            Abort::Gone(step)
        } else {
            Abort::Restore(step)
        }
    }
}

impl Abort {
    /// The abort a failed promotion means. Only an error PostgreSQL
    /// itself returned for `pg_promote()` proves it promoted nothing; a
    /// timeout or a lost connection may follow a promotion under way.
    fn on_promote(error: StepError) -> Abort {
        match error {
            StepError::Promote(ControlError::Refused { .. }) => Abort::Restore(error),
            _ => Abort::Unconfirmed(error),
        }
    }

    /// What serves after a switchover from `old` to `target` ended so.
    pub fn next_state(&self, old: usize, target: usize) -> Primary {
        match self {
            Abort::Restore(_) => Primary::Serving(old),
            // The switchover's own events said what began.
            Abort::Gone(_) => Primary::Lost {
                old,
                blocked: None,
                promoted: None,
                started: true,
            },
            Abort::Unconfirmed(_) => Primary::Lost {
                old,
                blocked: None,
                promoted: Some(target),
                started: true,
            },
        }
    }
}

impl From<Abort> for SwitchoverError {
    fn from(abort: Abort) -> SwitchoverError {
        match abort {
            Abort::Restore(e) => SwitchoverError::Restored(e),
            Abort::Gone(e) => SwitchoverError::FailingOver(e),
            Abort::Unconfirmed(e) => SwitchoverError::Unconfirmed(e),
        }
    }
}

/// The replica to switch to: `requested` if it is a healthy, unfenced
/// replica within `max_lag` bytes, else (when none was named) the one
/// failover would choose.
pub fn pick_target(
    views: &[NodeView],
    old: usize,
    requested: Option<&str>,
    max_lag: u64,
) -> Result<usize, SwitchoverError> {
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
                .ok_or_else(|| SwitchoverError::NoSuchNode(name.into()))?;
            if i == old {
                return Err(SwitchoverError::AlreadyPrimary(name.into()));
            }
            if !fit(i) {
                return Err(SwitchoverError::UnfitTarget(name.into()));
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
            .ok_or(SwitchoverError::NoFitReplica),
    }
}

/// Runs `req` and returns the state that follows: the target serving; the
/// old primary still serving when the switchover did not happen; or the old
/// primary lost (failing over) when it stopped answering mid-way.
pub(super) async fn run(
    cluster: &Cluster,
    config: &Config,
    coord: Option<&Coordination>,
    tracks: &mut [Track],
    state: &Primary,
    mut req: Request,
) -> Primary {
    let views = track::views(cluster, tracks);
    let planned = state
        .serving()
        .ok_or(SwitchoverError::NoPrimary)
        .and_then(|old| {
            may_start(&views[old])?;
            let max_lag = config.failover.max_lag_bytes;
            pick_target(&views, old, req.target.as_deref(), max_lag).map(|t| (old, t))
        });
    let (next, outcome) = match planned {
        Err(e) => (state.clone(), Err(e)),
        Ok((old, target)) => {
            let switch = Switch {
                cluster,
                config,
                coord,
                tracks,
                old,
                target,
            };
            match switch.run(&mut req).await {
                Ok(()) => (Primary::Serving(target), Ok(target)),
                Err(abort) => {
                    match &abort {
                        Abort::Gone(e) => fail_over(cluster, tracks, old, e),
                        Abort::Unconfirmed(_) => cluster.retire(old),
                        Abort::Restore(_) => {}
                    }
                    (abort.next_state(old, target), Err(abort.into()))
                }
            }
        }
    };
    let answer = outcome.inspect_err(|why| {
        let msg = format!("switchover not done ({}): {why}", req.reason);
        cluster
            .events
            .record(EventKind::SwitchoverFailed, None, msg);
    });
    if let Some(tx) = req.reply {
        let _ = tx.send(answer.map(|t| cluster.nodes()[t].name.clone()));
    }
    next
}

/// Answers `req` with why this proxy cannot run it (coordination: it does
/// not lead; Patroni moves the primary); nothing changes.
pub(super) fn refuse(
    cluster: &Cluster,
    req: Request,
    e: SwitchoverError,
    state: &Primary,
) -> Primary {
    let msg = format!("switchover not done ({}): {e}", req.reason);
    cluster
        .events
        .record(EventKind::SwitchoverFailed, None, msg);
    if let Some(tx) = req.reply {
        let _ = tx.send(Err(e));
    }
    state.clone()
}

/// The old primary stopped answering during a switchover: it is down now,
/// and the failover state machine takes over from `Lost`.
fn fail_over(cluster: &Cluster, tracks: &mut [Track], old: usize, why: &StepError) {
    let name = cluster.nodes()[old].name.clone();
    tracks[old].mark_down();
    cluster.retire(old);
    let msg = format!("stopped answering during a switchover ({why})");
    cluster.events.record(EventKind::NodeDown, Some(&name), msg);
    cluster.events.record(
        EventKind::FailoverStarted,
        Some(&name),
        "primary is down (during a switchover)",
    );
}

/// One switchover in progress.
struct Switch<'a> {
    cluster: &'a Cluster,
    config: &'a Config,
    /// With coordination: the other proxies hold and drain too.
    coord: Option<&'a Coordination>,
    tracks: &'a mut [Track],
    old: usize,
    target: usize,
}

impl Switch<'_> {
    fn name(&self, i: usize) -> String {
        self.cluster.nodes()[i].name.clone()
    }

    /// Bound of a statement on the target (a promotion may take a moment).
    fn target_timeout(&self) -> Duration {
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

    async fn run(mut self, req: &mut Request) -> Result<(), Abort> {
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
        let announced = self.announce().await?;
        let t = Instant::now();
        let cancelled = self.drain(self.config.switchover.drain_timeout).await?;
        let what = match cancelled {
            0 => "running transactions finished".to_string(),
            n => format!("{n} transaction(s) still running after the drain timeout were cancelled"),
        };
        self.step(old, t, &what);
        if let Some(id) = announced {
            self.await_other_proxies(id).await;
        }
        let prepared = async {
            self.still_leading()?;
            self.freeze_old_and_catch_up().await?;
            self.still_leading()?;
            let t = Instant::now();
            self.promote().await.map_err(Abort::on_promote)?;
            self.step(target, t, "promoted");
            Ok(())
        };
        match prepared.await {
            Ok(()) => {}
            Err(Abort::Restore(e)) => {
                self.restore().await;
                return Err(Abort::Restore(e));
            }
            Err(gone) => return Err(gone),
        }
        self.hand_over(began, req.reply.take()).await;
        Ok(())
    }

    /// With coordination: tells the other proxies, through the record, to
    /// hold and drain too. Returns the announcement's id.
    async fn announce(&mut self) -> Result<Option<u64>, Abort> {
        let Some(c) = self.coord else { return Ok(None) };
        let views = track::views(self.cluster, self.tracks);
        let sw = Switching {
            id: rand::random(),
            from: self.name(self.old),
            to: self.name(self.target),
        };
        let limit = self.config.coordination.lease_ttl;
        if !c
            .announce(record_of(&views, self.old), sw.clone(), limit)
            .await
        {
            return Err(Abort::Restore(StepError::NotAnnounced));
        }
        Ok(Some(sw.id))
    }

    /// Waits until every other live proxy has drained (bounded: one that
    /// neither answers nor vanishes is not waited for past its share).
    async fn await_other_proxies(&self, id: u64) {
        let Some(c) = self.coord else { return };
        let t = Instant::now();
        let limit = self.config.switchover.drain_timeout + self.config.coordination.lease_ttl;
        let late = c.await_drained(id, limit).await;
        let what = match late.as_slice() {
            [] => "every other proxy holds and has drained".to_string(),
            late => format!(
                "proxies {} did not confirm their drain within {limit:?}; going on (the old primary ends their sessions)",
                late.join(", ")
            ),
        };
        self.step(self.old, t, &what);
    }

    /// A proxy that no longer leads stops before changing anything more.
    fn still_leading(&self) -> Result<(), Abort> {
        match self.coord {
            Some(c) if !c.may_act(Instant::now()) => Err(Abort::Restore(StepError::LeadershipLost)),
            _ => Ok(()),
        }
    }

    /// New transactions wait, as while a failover is in progress.
    fn hold(&self) {
        let mut snap = (*self.cluster.snapshot()).clone();
        snap.primary = None;
        self.cluster.publish(snap);
    }

    /// Waits until no server connection to the old primary is checked out,
    /// up to `limit`; then ends those still busy. Returns how many were.
    /// Meanwhile the old primary must keep answering and its hardware must
    /// not fail: a transaction on a hung server never finishes, and waiting
    /// for it would only delay the failover.
    async fn drain(&mut self, limit: Duration) -> Result<usize, Abort> {
        let (cluster, old) = (self.cluster, self.old);
        tokio::select! {
            busy = actuate::drain(cluster, old, limit) => Ok(busy),
            why = self.watch_old() => Err(Abort::Gone(StepError::Draining(why))),
        }
    }

    /// Resolves, with the reason, once the old primary fails a health check
    /// (bounded by `health.timeout`) or its hardware says failing.
    async fn watch_old(&mut self) -> ProbeError {
        let timeout = self.config.health.timeout;
        loop {
            let gone = self.cluster.hardware_failing(self.old, LATE_PROBE);
            let checker = &mut self.tracks[self.old].checker;
            if let Err(e) = checker.probe_until(timeout, false, gone).await {
                return e;
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
    }

    /// One statement on the old primary, bounded by `health.timeout` and
    /// abandoned if its hardware says failing.
    async fn on_old(
        &mut self,
        sql: &str,
        doing: &'static str,
    ) -> Result<Vec<Option<String>>, Abort> {
        let timeout = self.config.health.timeout;
        let gone = self.cluster.hardware_failing(self.old, timeout);
        self.tracks[self.old]
            .checker
            .control_until(sql, timeout, gone)
            .await
            .map_err(|e| Abort::on_old(doing, e))
    }

    /// Old primary read-only with no sessions left; target replayed its WAL.
    async fn freeze_old_and_catch_up(&mut self) -> Result<(), Abort> {
        let (old, target) = (self.old, self.target);
        let t = Instant::now();
        for sql in [
            "ALTER SYSTEM SET default_transaction_read_only = on",
            "SELECT pg_reload_conf()",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        ] {
            self.on_old(sql, "making the old primary read-only").await?;
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
            self.on_old(sql, "flushing the old primary's WAL").await?;
        }
        let doing = "reading the old primary's WAL position";
        let row = self
            .on_old("SELECT pg_current_wal_flush_lsn()::text", doing)
            .await?;
        let last = row
            .first()
            .cloned()
            .flatten()
            .and_then(|s| parse_lsn(&s))
            .ok_or(Abort::Restore(StepError::NoWalPosition))?;
        self.step(
            old,
            t,
            &format!("read-only, sessions ended, last WAL at {last:X}"),
        );
        let t = Instant::now();
        self.wait_replayed(last).await.map_err(Abort::Restore)?;
        self.step(target, t, &format!("replayed up to {last:X}"));
        Ok(())
    }

    async fn wait_replayed(&mut self, lsn: u64) -> Result<(), StepError> {
        let deadline = Instant::now() + self.config.switchover.catchup_timeout;
        let timeout = self.target_timeout();
        let checker = &mut self.tracks[self.target].checker;
        loop {
            let row = checker
                .control("SELECT pg_last_wal_replay_lsn()::text", timeout)
                .await
                .map_err(StepError::ReplayUnknown)?;
            let replayed = row.first().cloned().flatten().and_then(|s| parse_lsn(&s));
            if replayed.is_some_and(|r| r >= lsn) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StepError::NotReplayed(lsn));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Promotes the target and waits until it accepts writes, asking again
    /// while it stays in recovery (see [`promotion`]).
    async fn promote(&mut self) -> Result<(), StepError> {
        let timeout = self.target_timeout();
        let checker = &mut self.tracks[self.target].checker;
        promotion::ask(checker, timeout)
            .await
            .map_err(StepError::Promote)?;
        let deadline = Instant::now() + PROMOTE_TIMEOUT;
        loop {
            match promotion::until_writable(checker, timeout, deadline).await {
                Waited::Writable => return Ok(()),
                Waited::InRecovery => return Err(StepError::StillInRecovery),
                // A poll it missed is not an answer: poll again until the deadline.
                Waited::Unanswered if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Waited::Unanswered => return Err(StepError::StillInRecovery),
            }
        }
    }

    /// The target takes writes: fence the old primary, release the held
    /// transactions, answer whoever asked, then repoint the other replicas.
    async fn hand_over(
        &mut self,
        began: Instant,
        reply: Option<oneshot::Sender<Result<String, SwitchoverError>>>,
    ) {
        let (old, target, timeout) = (self.old, self.target, self.target_timeout());
        if let Ok(p) = self.tracks[target].checker.probe(timeout, false).await {
            self.tracks[target].probe = Some(p);
        }
        // As after a failover: a new primary that inherited
        // synchronous_standby_names has no standby yet (the old primary is
        // read-only and fenced, the others are repointed afterwards), and
        // every released transaction would wait for one.
        let inherited = self.tracks[target]
            .probe
            .as_ref()
            .is_some_and(|p| p.sync_standby_names);
        if inherited && self.config.failover.sync_policy == SyncPolicy::Availability {
            let name = self.name(target);
            let checker = &mut self.tracks[target].checker;
            actuate::clear_sync_standby(self.cluster, checker, &name, timeout).await;
        }
        self.cluster.fence(old);
        let state = Primary::Serving(target);
        actuate::publish(self.cluster, self.config, self.tracks, &state);
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
                    let (cluster, tracks) = (self.cluster, &mut *self.tracks);
                    super::repoint::repoint_node(cluster, tracks, i, target, timeout).await;
                }
            }
        }
    }

    fn is_replica(&self, i: usize) -> bool {
        self.tracks[i]
            .probe
            .as_ref()
            .is_some_and(|p| p.role == Role::Replica)
            && !self.cluster.is_fenced(i)
    }

    /// The switchover stopped before the promotion, the old primary still
    /// answering: it takes writes again.
    async fn restore(&mut self) {
        let timeout = self.config.health.timeout;
        let checker = &mut self.tracks[self.old].checker;
        if let Err(e) = actuate::make_writable(checker, timeout).await {
            let msg = format!("could not make the old primary writable again: {e}");
            self.cluster
                .events
                .record(EventKind::ActionFailed, Some(&self.name(self.old)), msg);
        }
        actuate::publish(
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
    fn only_degraded_hardware_asks_for_a_switchover() {
        use HardwareStatus::*;
        let cases = [
            (Degraded, true, Trigger::Switchover),
            (Degraded, false, Trigger::Hold),
            (Failing, true, Trigger::Hold),
            (Failing, false, Trigger::Hold),
            (Ok, true, Trigger::Rearm),
            (Unknown, true, Trigger::Rearm),
        ];
        for (status, on_degraded, want) in cases {
            assert_eq!(
                hardware_trigger(status, on_degraded),
                want,
                "{status} {on_degraded}"
            );
        }
    }

    #[test]
    fn only_a_primary_that_works_is_switched_over() {
        let mut v = cluster();
        assert_eq!(may_start(&v[0]), Ok(()));
        v[0].health = Health::Suspect(1);
        let db1 = || "db1".to_string();
        assert_eq!(may_start(&v[0]), Err(SwitchoverError::MissedCheck(db1())));
        v[0].health = Health::Up;
        v[0].hardware_failing = true;
        assert_eq!(
            may_start(&v[0]),
            Err(SwitchoverError::HardwareFailing(db1()))
        );
    }

    #[test]
    fn a_silent_old_primary_is_failed_over_one_that_answers_is_restored() {
        let silent = ControlError::Unreachable("db1: timed out after 1s".into());
        assert!(
            matches!(Abort::on_old("freezing", silent), Abort::Gone(m) if m.to_string().contains("timed out"))
        );
        let refused = ControlError::Refused {
            addr: "db1".into(),
            code: "42501".into(),
            message: "permission denied".into(),
        };
        assert!(matches!(
            Abort::on_old("freezing", refused),
            Abort::Restore(_)
        ));
    }

    #[test]
    fn once_a_promotion_may_have_started_the_old_primary_never_serves_again() {
        let refused = ControlError::Refused {
            addr: "db2".into(),
            code: "55000".into(),
            message: "recovery is not in progress".into(),
        };
        let timed_out = ControlError::Unreachable("db2: timed out after 5s".into());
        let lost = |promoted| Primary::Lost {
            old: 0,
            blocked: None,
            promoted,
            started: true,
        };
        let cases = [
            (
                StepError::Promote(refused),
                Primary::Serving(0),
                "refused: nothing promoted",
            ),
            (
                StepError::Promote(timed_out),
                lost(Some(1)),
                "no answer: maybe promoted",
            ),
            (
                StepError::StillInRecovery,
                lost(Some(1)),
                "promoting slowly",
            ),
        ];
        for (error, want, what) in cases {
            assert_eq!(Abort::on_promote(error).next_state(0, 1), want, "{what}");
        }
        let gone = Abort::Gone(StepError::NoWalPosition);
        assert_eq!(
            gone.next_state(0, 1),
            lost(None),
            "the old primary went silent"
        );
    }

    #[test]
    fn lsns_parse_like_postgresql_prints_them() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("garbage"), None);
    }
}
