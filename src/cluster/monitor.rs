//! The monitor task: probes every node each tick (faster while anything is in
//! flux, at once when nudged), turns results into node views, runs the pure
//! failover `step`, performs its actions and publishes the routing snapshot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::decide::{fit_replicas, replicas_silent_since, witnesses};
use super::failover::{step, Action, FailoverSettings, Primary};
use super::health::Checker;
use super::view::{Health, NodeView, Probe, Role};
use super::{Cluster, NodeStatus, Snapshot};
use arc_swap::ArcSwap;

use super::hardware::HardwareStatus;
use crate::config::{Config, SyncPolicy};
use crate::events::EventKind;
use crate::server::Login;

/// Probe cadence while a node is suspect or the primary is not serving.
const FAST_TICK: Duration = Duration::from_millis(200);

/// Probe timeout for a node that is already down, or whose hardware says it
/// is gone.
const DOWN_PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// A health check of the primary still unanswered after this is late (one
/// normally answers in a millisecond or two): its hardware probe, if it has
/// one, is asked at once instead of at its next interval.
pub(super) const LATE_PROBE: Duration = Duration::from_millis(100);

/// Our heartbeat's WAL reaches the replicas within this of its commit
/// returning; anything they hear later did not come from us.
const HEARTBEAT_TRAVEL: Duration = Duration::from_millis(50);

/// How often a promotion in progress is checked, and for how long the
/// monitor waits on it before going back to its ticks.
const PROMOTION_POLL: Duration = Duration::from_millis(10);
const PROMOTION_WAIT: Duration = Duration::from_secs(10);

/// What the monitor keeps per node.
pub(crate) struct Track {
    /// The node's check connection (probes and control statements).
    pub(crate) checker: Checker,
    pub(crate) health: Health,
    /// The last successful probe.
    pub(crate) probe: Option<Probe>,
    /// Never routed to until re-admitted.
    pub(crate) fenced: bool,
    /// The replica's position at its first probe after the primary began failing.
    witness_base: Option<u64>,
    witness_fresh: bool,
}

impl Track {
    fn new(node: &crate::config::Node, login: &Login, tls: &crate::tls::SharedConnector) -> Track {
        Track {
            checker: Checker::new(node.addr.clone(), login.clone(), tls.clone()),
            health: Health::Unknown,
            probe: None,
            fenced: false,
            witness_base: None,
            witness_fresh: false,
        }
    }
}

/// Runs until `shutdown`, reading the live configuration at every tick.
pub async fn run(cluster: Arc<Cluster>, live: Arc<ArcSwap<Config>>, shutdown: CancellationToken) {
    let login = health_login(&live.load());
    let mut tracks: Vec<Track> = vec![];
    let mut state = Primary::Discovering;
    let mut failing_since: Option<Instant> = None;
    let mut hardware_acted: Option<usize> = None;
    loop {
        let config = live.load_full();
        let tick_started = tokio::time::Instant::now();
        // Nodes a reload added are probed from this tick on.
        let nodes = cluster.nodes();
        tracks.extend(
            nodes[tracks.len()..]
                .iter()
                .map(|n| Track::new(n, &login, cluster.tls())),
        );
        super::hardware::watch::spawn_new(&cluster, &shutdown);
        apply_readmits(&cluster, &mut tracks);
        probe_all(&cluster, &config, &mut tracks, &state, &mut failing_since).await;
        react_to_hardware(&cluster, &config, &state, &mut hardware_acted);
        // Planned moves run between ticks, on fresh probes.
        if let Some(req) = cluster.next_switchover() {
            state = super::switchover::run(&cluster, &config, &mut tracks, &state, req).await;
        }
        if let Some(candidate) = decide_and_act(&cluster, &config, &mut tracks, &mut state).await {
            // Seen at once, not at the next tick: a tick waits for its
            // slowest probe, and the old primary's may be hanging.
            if await_promotion(&config, &mut tracks[candidate]).await {
                decide_and_act(&cluster, &config, &mut tracks, &mut state).await;
            }
        }
        let in_flux = !matches!(state, Primary::Serving(_))
            || tracks
                .iter()
                .any(|t| matches!(t.health, Health::Suspect(_)));
        let period = if in_flux {
            config.health.interval.min(FAST_TICK)
        } else {
            config.health.interval
        };
        // Ticks start every `period`: a probe that spent its whole timeout
        // does not add a pause before the next one.
        tokio::select! {
            _ = tokio::time::sleep_until(tick_started + period) => {}
            _ = cluster.nudged() => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

fn apply_readmits(cluster: &Cluster, tracks: &mut [Track]) {
    let nodes = cluster.nodes();
    for i in cluster.take_readmits() {
        tracks[i].fenced = false;
        cluster.events.record(
            EventKind::NodeReadmitted,
            Some(&nodes[i].name),
            "re-admitted by an operator (READMIT); routed again once its checks pass",
        );
    }
}

/// One decision: `step` on the current views, its actions performed, the
/// routing published. Bookkeeping first and the new routing published at
/// once, so no client is routed to a node just declared down while the slow
/// actions (promote, repoint) run. Returns the replica it started promoting.
async fn decide_and_act(
    cluster: &Cluster,
    config: &Config,
    tracks: &mut [Track],
    state: &mut Primary,
) -> Option<usize> {
    let settings = failover_settings(config);
    let views = views(cluster, tracks);
    let (next, actions) = step(state, &views, Instant::now(), &settings);
    *state = next;
    let (slow, quick): (Vec<Action>, Vec<Action>) = actions.into_iter().partition(is_slow);
    for action in quick {
        perform(cluster, config, tracks, action).await;
    }
    publish(cluster, config, tracks, state);
    let mut promoted = None;
    if !slow.is_empty() {
        for action in slow {
            if let Action::Promote(c) = action {
                promoted = Some(c);
            }
            perform(cluster, config, tracks, action).await;
        }
        publish(cluster, config, tracks, state);
    }
    promoted
}

/// Polls a node just asked to promote until it leaves recovery (then probes
/// it, so the next `step` sees it), for at most [`PROMOTION_WAIT`]. False
/// when it did not: the ticks take over (and `step` gives up on it after
/// its own timeout).
async fn await_promotion(config: &Config, track: &mut Track) -> bool {
    let timeout = config.health.timeout;
    let deadline = tokio::time::Instant::now() + PROMOTION_WAIT;
    loop {
        let answer = track
            .checker
            .control("SELECT pg_is_in_recovery()", timeout)
            .await;
        match answer.as_ref().map(|row| row.first().cloned().flatten()) {
            Ok(Some(v)) if v == "f" => break,
            Ok(_) if tokio::time::Instant::now() < deadline => {}
            _ => return false,
        }
        tokio::time::sleep(PROMOTION_POLL).await;
    }
    match track.checker.probe(timeout, false).await {
        Ok(p) => {
            track.probe = Some(p);
            track.health = Health::Up;
            true
        }
        Err(_) => false,
    }
}

/// Health checks log in as `[cluster] user`, else as the first user with a server password.
fn health_login(config: &Config) -> Login {
    let (user, password) = match &config.cluster.user {
        Some(u) => (u.clone(), config.cluster.password.clone()),
        None => config
            .users
            .iter()
            .find_map(|u| {
                let pw = u.server_password.clone().or_else(|| {
                    crate::auth::Secret::parse(&u.password)
                        .ok()?
                        .plaintext()
                        .map(str::to_string)
                });
                pw.map(|p| (u.name.clone(), Some(p)))
            })
            .unwrap_or_else(|| ("postgres".into(), None)),
    };
    Login {
        user,
        database: config.health.database.clone(),
        password,
    }
}

/// Actions that talk to a node (and may take a while).
fn is_slow(action: &Action) -> bool {
    matches!(
        action,
        Action::Promote(_)
            | Action::Repoint { .. }
            | Action::ClearSyncStandby(_)
            | Action::FenceCommand(_)
    )
}

fn failover_settings(config: &Config) -> FailoverSettings {
    let f = &config.failover;
    FailoverSettings {
        mode: f.mode,
        max_lag_bytes: f.max_lag_bytes,
        repoint_replicas: f.repoint_replicas,
        clear_sync_standby: f.sync_policy == SyncPolicy::Availability,
        fence_command: f.fence_command.is_some(),
        promote_timeout: Duration::from_secs(30),
    }
}

/// Probes every node and applies what the probes say. The serving primary
/// is probed first, the others after it: what replicas report then covers
/// the primary's probe (a hung primary's silence, or a live one's WAL). A
/// primary probe is abandoned as soon as its hardware probe says failing.
async fn probe_all(
    cluster: &Cluster,
    config: &Config,
    tracks: &mut [Track],
    state: &Primary,
    failing_since: &mut Option<Instant>,
) {
    let started = Instant::now();
    let serving = state.serving().filter(|&p| !cluster.is_removed(p));
    let primary_result = match serving {
        Some(p) => {
            let limit = probe_limit(cluster, config, &tracks[p], p);
            let gone = cluster.hardware_failing(p, LATE_PROBE);
            Some(tracks[p].checker.probe_until(limit, true, gone).await)
        }
        None => None,
    };
    let others = probe_others(cluster, config, tracks, serving).await;
    let failing = match (state, &primary_result) {
        (Primary::Serving(p), Some(r)) => {
            r.is_err()
                || tracks[*p].health != Health::Up
                || cluster.hardware(*p).status == HardwareStatus::Failing
        }
        (Primary::Serving(_), None) | (Primary::Lost { .. }, _) => true,
        _ => false,
    };
    *failing_since = match (failing, *failing_since) {
        (false, _) => None,
        (true, Some(since)) => Some(since),
        (true, None) => Some(quiet_from(tracks, state, started)),
    };
    let threshold = config.health.failure_threshold;
    for (i, result) in others {
        let next = tracks[i].health.after(result.is_ok(), threshold);
        let why = format!("{threshold} consecutive health checks failed");
        apply(
            cluster,
            i,
            &mut tracks[i],
            result,
            next,
            &why,
            *failing_since,
        );
    }
    if let (Some(p), Some(result)) = (serving, primary_result) {
        apply_primary(cluster, config, tracks, p, result, started, *failing_since);
    }
}

/// Every node but the serving primary, probed concurrently (no heartbeat):
/// `(index, result)`, removed nodes left out.
async fn probe_others(
    cluster: &Cluster,
    config: &Config,
    tracks: &mut [Track],
    serving: Option<usize>,
) -> Vec<(usize, Result<Probe, String>)> {
    let probes = tracks
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| Some(*i) != serving && !cluster.is_removed(*i))
        .map(|(i, t)| {
            let limit = probe_limit(cluster, config, t, i);
            async move { (i, t.checker.probe(limit, false).await) }
        });
    futures_util::future::join_all(probes).await
}

/// A node already down, or whose hardware says it is gone, is only probed to
/// notice its return, which is not urgent: a short timeout keeps a hung one
/// from slowing every tick (and with it the detection of a promotion).
fn probe_limit(cluster: &Cluster, config: &Config, track: &Track, node: usize) -> Duration {
    let gone =
        track.health == Health::Down || cluster.hardware(node).status == HardwareStatus::Failing;
    if gone {
        config.health.timeout.min(DOWN_PROBE_TIMEOUT)
    } else {
        config.health.timeout
    }
}

/// When the primary (serving, or just lost) began failing, as far as the
/// replicas can tell: the probe that first failed, but never before our own
/// last heartbeat had time to reach them (that one proves nothing).
fn quiet_from(tracks: &[Track], state: &Primary, started: Instant) -> Instant {
    let primary = match state {
        Primary::Serving(p) | Primary::Lost { old: p, .. } => Some(*p),
        _ => None,
    };
    primary
        .and_then(|p| tracks[p].checker.last_heartbeat())
        .map_or(started, |h| started.max(h + HEARTBEAT_TRAVEL))
}

/// The serving primary's probe result, applied once the replicas' are in:
/// a failed probe they corroborate (none heard from it since it was sent)
/// is enough to call it down.
fn apply_primary(
    cluster: &Cluster,
    config: &Config,
    tracks: &mut [Track],
    p: usize,
    result: Result<Probe, String>,
    started: Instant,
    failing_since: Option<Instant>,
) {
    let threshold = config.health.failure_threshold;
    // Silent for as long as the probe was given: a live primary with any
    // traffic would have sent the replicas something meanwhile.
    let span = config.health.timeout;
    let corroborated =
        result.is_err() && replicas_silent_since(&views(cluster, tracks), p, started, span);
    let next = tracks[p]
        .health
        .after_corroborated(result.is_ok(), corroborated, threshold);
    let why = match (&result, corroborated) {
        (Err(e), true) => {
            format!("health check failed ({e}) and no replica has heard from it since")
        }
        _ => format!("{threshold} consecutive health checks failed"),
    };
    apply(
        cluster,
        p,
        &mut tracks[p],
        result,
        next,
        &why,
        failing_since,
    );
}

/// One node's probe result: its health becomes `next`, a successful probe
/// is kept (and read for witnessing), and changes are events. A node whose
/// role changed, or that went down, has its connections closed.
fn apply(
    cluster: &Cluster,
    i: usize,
    track: &mut Track,
    result: Result<Probe, String>,
    next: Health,
    down_why: &str,
    failing_since: Option<Instant>,
) {
    let name = &cluster.nodes()[i].name;
    let before = std::mem::replace(&mut track.health, next);
    match result {
        Ok(probe) => {
            if track
                .probe
                .as_ref()
                .is_some_and(|old| old.role != probe.role)
            {
                // PgBouncer #1311: connections to a node whose role changed are stale.
                cluster.retire(i);
            }
            update_witness(track, &probe, failing_since);
            track.probe = Some(probe);
        }
        Err(e) => tracing::debug!(node = %name, error = %e, "probe failed"),
    }
    match (before, next) {
        (Health::Unknown | Health::Down, Health::Up) => {
            cluster
                .events
                .record(EventKind::NodeUp, Some(name), "health check passed")
        }
        (b, Health::Down) if b != Health::Down => {
            cluster.retire(i);
            cluster
                .events
                .record(EventKind::NodeDown, Some(name), down_why);
        }
        _ => {}
    }
}

/// A replica witnesses a live primary if, after the primary began failing,
/// it heard from upstream or its received WAL moved (see
/// [`witnesses`]). Once seen, it holds until the primary serves again.
fn update_witness(track: &mut Track, probe: &Probe, failing_since: Option<Instant>) {
    let Some(since) = failing_since.filter(|_| probe.role == Role::Replica) else {
        track.witness_base = None;
        track.witness_fresh = false;
        return;
    };
    let base = *track.witness_base.get_or_insert(probe.lsn);
    track.witness_fresh |= witnesses(probe, Some(base), since);
}

/// A degraded primary gets a planned switchover (with
/// `failover.switchover_on_degraded`), once per episode. A failing one is
/// not switched over: it counts as down, and `step` fails over from it.
fn react_to_hardware(
    cluster: &Cluster,
    config: &Config,
    state: &Primary,
    acted: &mut Option<usize>,
) {
    use super::switchover::{hardware_trigger, Request, Trigger};
    let Some(p) = state.serving() else { return };
    let verdict = cluster.hardware(p);
    match hardware_trigger(verdict.status, config.failover.switchover_on_degraded) {
        Trigger::Rearm => *acted = None,
        Trigger::Switchover if *acted != Some(p) => {
            *acted = Some(p);
            cluster.request_switchover(Request {
                target: None,
                reason: format!(
                    "primary hardware {}: {}",
                    verdict.status,
                    verdict.reasons.join("; ")
                ),
                reply: None,
            });
        }
        Trigger::Switchover | Trigger::Hold => {}
    }
}

/// What the decision logic sees of each node now.
pub(super) fn views(cluster: &Cluster, tracks: &[Track]) -> Vec<NodeView> {
    cluster
        .nodes()
        .iter()
        .zip(tracks)
        .enumerate()
        .map(|(i, (n, t))| NodeView {
            name: n.name.clone(),
            priority: n.priority,
            health: t.health,
            probe: t.probe.clone(),
            witness_fresh: t.witness_fresh,
            // A removed node is out of every decision, like a fenced one.
            fenced: t.fenced || cluster.is_removed(i),
            hardware_failing: cluster.hardware(i).status == HardwareStatus::Failing,
        })
        .collect()
}

async fn perform(cluster: &Cluster, config: &Config, tracks: &mut [Track], action: Action) {
    let name = |i: usize| cluster.nodes()[i].name.clone();
    let timeout = config.health.timeout.max(Duration::from_secs(5));
    match action {
        Action::Event(kind, node, msg) => {
            cluster.events.record(kind, node.map(name).as_deref(), msg)
        }
        Action::Fence(i) => tracks[i].fenced = true,
        Action::CloseConns(i) => cluster.retire(i),
        Action::Promote(i) => {
            // Not `pg_promote(true)`: it checks only every 100 ms, and that
            // wait would be write pause. `await_promotion` polls instead.
            let result = tracks[i]
                .checker
                .control("SELECT pg_promote(false)", timeout)
                .await;
            let (kind, msg) = match result {
                Ok(_) => (EventKind::Promoting, "pg_promote() started".to_string()),
                Err(e) => (EventKind::ActionFailed, format!("pg_promote() failed: {e}")),
            };
            cluster.events.record(kind, Some(&name(i)), msg);
        }
        Action::Repoint { replica, primary } => {
            super::repoint::repoint_node(cluster, tracks, replica, primary, timeout).await
        }
        Action::ClearSyncStandby(i) => {
            clear_sync_standby(cluster, &mut tracks[i].checker, &name(i), timeout).await
        }
        Action::FenceCommand(i) => spawn_fence_command(cluster, config, i),
    }
}

/// Clears `synchronous_standby_names` on a new primary that has no standby
/// streaming, so its commits do not wait for one that is not there.
pub(super) async fn clear_sync_standby(
    cluster: &Cluster,
    checker: &mut Checker,
    name: &str,
    timeout: Duration,
) {
    let streaming = checker
        .control(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            timeout,
        )
        .await
        .ok()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| v.parse::<u32>().ok());
    if streaming != Some(0) {
        return;
    }
    let result = async {
        checker
            .control("ALTER SYSTEM SET synchronous_standby_names = ''", timeout)
            .await?;
        checker.control("SELECT pg_reload_conf()", timeout).await
    }
    .await;
    let (kind, msg) = match result {
        Ok(_) => (EventKind::SyncStandbyCleared, "no standby connected: cleared synchronous_standby_names so writes do not wait (sync_policy = availability)".to_string()),
        Err(e) => (EventKind::ActionFailed, format!("clearing synchronous_standby_names failed: {e}")),
    };
    cluster.events.record(kind, Some(name), msg);
}

fn spawn_fence_command(cluster: &Cluster, config: &Config, node: usize) {
    let Some(cmd) = config.failover.fence_command.clone() else {
        return;
    };
    let addr = cluster.nodes()[node].addr.clone();
    let name = cluster.nodes()[node].name.clone();
    let events = cluster.events.clone();
    tokio::spawn(async move {
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .arg("fence")
            .arg(&addr)
            .env("SWITCHYARD_FENCED_NODE", &addr)
            .output()
            .await;
        let (kind, msg) = match out {
            Ok(o) if o.status.success() => (
                EventKind::NodeFenced,
                format!("fence_command succeeded for {addr}"),
            ),
            Ok(o) => (
                EventKind::ActionFailed,
                format!(
                    "fence_command exited with {}: {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            ),
            Err(e) => (
                EventKind::ActionFailed,
                format!("fence_command could not run: {e}"),
            ),
        };
        events.record(kind, Some(&name), msg);
    });
}

/// Publishes the routing snapshot and the status `state` and `tracks` imply.
pub(super) fn publish(cluster: &Cluster, config: &Config, tracks: &[Track], state: &Primary) {
    let views = views(cluster, tracks);
    let primary = state.serving();
    let snap = Snapshot {
        primary,
        replicas: fit_replicas(&views, primary, config.routing.max_replica_lag),
        usable: views
            .iter()
            .enumerate()
            .filter(|(_, v)| v.live_role().is_some())
            .map(|(i, _)| i)
            .collect(),
    };
    if *cluster.snapshot() != snap {
        cluster.publish(snap);
    }
    cluster.set_status(node_status(cluster, &views, primary));
}

fn node_status(cluster: &Cluster, views: &[NodeView], primary: Option<usize>) -> Vec<NodeStatus> {
    let primary_lsn = primary.map(|p| views[p].lsn());
    views
        .iter()
        .zip(cluster.nodes().iter())
        .enumerate()
        .filter(|(i, _)| !cluster.is_removed(*i))
        .map(|(i, (v, n))| {
            let probe = v.probe.as_ref();
            let hw = cluster.hardware(i);
            let role = match probe.map(|p| p.role) {
                Some(Role::Primary) => "primary",
                Some(Role::Replica) => "replica",
                None => "unknown",
            };
            let state = match v.health {
                Health::Up => "up",
                Health::Suspect(_) => "suspect",
                Health::Down => "down",
                Health::Unknown => "unknown",
            };
            NodeStatus {
                name: n.name.clone(),
                addr: n.addr.clone(),
                role,
                state,
                fenced: v.fenced,
                timeline: v.timeline(),
                lsn: v.lsn(),
                lag_bytes: (role == "replica")
                    .then(|| primary_lsn.map(|p| p.saturating_sub(v.lsn())))
                    .flatten(),
                lag_seconds: probe.and_then(|p| p.lag_seconds),
                last_check_seconds_ago: probe.map(|p| p.at.elapsed().as_secs_f64()),
                hardware: hw.status.as_str(),
                hardware_reasons: hw.reasons,
            }
        })
        .collect()
}
