//! The monitor task: probes every node each tick (faster while anything is in
//! flux, at once when nudged), turns results into node views, runs the pure
//! failover `step`, performs its actions and publishes the routing snapshot.
//! The loop and its timing live here; the rules are pure (`decide`,
//! `witness`, `failover`), applying a probe result is `track`'s, running
//! actions and publishing `actuate`'s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::actuate::{is_slow, perform, publish};
use super::coord::gate::{self, Held};
use super::coord::{Ask, AskReply, Coordination};
use super::decide::replicas_silent_since;
use super::failover::{step, Action, Appointed, FailoverSettings, Primary, SentPromotion};
use super::fences;
use super::health::{ProbeError, LATE_PROBE};
use super::peer_switch::{finish_interrupted, PeerSwitchover};
use super::promotion::{self, Waited};
use super::switchover::Request;
use super::track::{views, Track};
use super::view::{Health, NodeView, Probe, Timers};
use super::witness::{failure_start, primary_failing, Failure};
use super::{Cluster, ReadmitError, SwitchoverError};
use arc_swap::ArcSwap;

use super::hardware_moves::HardwareMoves;
use crate::config::coordination::Backend;
use crate::config::{Config, SyncPolicy};
use crate::events::EventKind;
use crate::server::Login;

/// Probe cadence while a node is suspect or the primary is not serving.
const FAST_TICK: Duration = Duration::from_millis(200);

/// Probe timeout for a node that is already down, or whose hardware says it
/// is gone.
const DOWN_PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// Our heartbeat's WAL reaches the replicas within this of its commit
/// returning; anything they hear later did not come from us.
const HEARTBEAT_TRAVEL: Duration = Duration::from_millis(50);

/// How often a promotion in progress is checked, and for how long the
/// monitor waits on it before going back to its ticks.
const PROMOTION_WAIT: Duration = Duration::from_secs(10);

/// Runs until `shutdown`, reading the live configuration at every tick.
pub async fn run(cluster: Arc<Cluster>, live: Arc<ArcSwap<Config>>, shutdown: CancellationToken) {
    let login = health_login(&live.load());
    let mut tracks: Vec<Track> = vec![];
    let mut state = Primary::Discovering;
    let mut failing_since: Option<Instant> = None;
    let mut hardware = HardwareMoves::default();
    let coord = {
        let (nudge, asks) = (cluster.clone(), cluster.clone());
        let on_request = move |ask, reason| run_asked(&asks, ask, reason);
        Coordination::start(
            &live.load(),
            move |_| nudge.nudge(),
            on_request,
            shutdown.clone(),
        )
    };
    let mut peer_switch = PeerSwitchover::default();
    let mut held: Option<Held> = None;
    let mut refused: Option<String> = None;
    // With coordination, nothing is decided before the shared record's
    // fences are known (for at most one lease), so a restarted proxy never
    // routes to a node another proxy fenced.
    let started = tokio::time::Instant::now();
    let mut fences_known = coord.is_none();
    let mut record_fences: Option<Vec<String>> = None;
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
        hardware.pace(&cluster, &config, &state);
        // Probes only read, so a shutdown cuts them short: a node that
        // stopped answering must not hold the exit up for `health.timeout`.
        tokio::select! {
            _ = probe_all(&cluster, &config, &mut tracks, &state, &mut failing_since) => {}
            _ = shutdown.cancelled() => return,
        }
        if !fences_known {
            let waited = started.elapsed() > config.coordination.lease_ttl;
            fences_known = fences::restore(&cluster, coord.as_ref(), waited);
            if !fences_known {
                tokio::time::sleep(FAST_TICK).await;
                continue;
            }
        }
        let leading = not_leading(coord.as_ref());
        let fenced_before = fenced_now(&cluster, tracks.len());
        fences::follow(
            &cluster,
            coord.as_ref(),
            leading.as_ref(),
            &mut record_fences,
        );
        let limit = forward_limit(&config);
        fences::readmit(&cluster, coord.as_ref(), leading.as_ref(), limit);
        forget_readmitted(&cluster, &mut tracks, &fenced_before);
        hardware.react(&cluster, &config, &state);
        // Planned moves run between ticks, on fresh probes. One that lost
        // the old primary mid-way leaves it lost before any replica was
        // asked whether it still hears it: the failover decides only after
        // the next tick's probes asked them (the witness rule).
        let mut unasked = false;
        if let Some(req) = cluster.next_switchover() {
            let patroni = config.coordination.backend == Backend::Patroni;
            state = match not_leading(coord.as_ref()) {
                _ if patroni => super::switchover::refuse(
                    &cluster,
                    req,
                    SwitchoverError::PatroniManages,
                    &state,
                ),
                None => {
                    let c = coord.as_ref();
                    super::switchover::run(&cluster, &config, c, &mut tracks, &state, req).await
                }
                Some(Held::NotLeader(Some(_))) => {
                    // Another proxy leads: it runs the switchover.
                    let c = coord.as_ref().expect("only with coordination");
                    let asked = c.forward(Ask::Switchover(req.target), req.reason, limit);
                    tokio::spawn(async move {
                        let outcome = asked.await.map_err(SwitchoverError::AtLeader);
                        if let Some(reply) = req.reply {
                            let _ = reply.send(outcome);
                        }
                    });
                    state
                }
                Some(why) => {
                    let e = SwitchoverError::NotLeader(why.to_string());
                    super::switchover::refuse(&cluster, req, e, &state)
                }
            };
            unasked = matches!(state, Primary::Lost { .. });
        }
        // A switchover just run moved the primary: its hardware waits now.
        hardware.pace(&cluster, &config, &state);
        let mut act = Acting {
            cluster: &cluster,
            config: &config,
            coord: coord.as_ref(),
            held: &mut held,
        };
        let promoting = if unasked {
            None
        } else {
            act.decide(&mut tracks, &mut state).await
        };
        if let Some(candidate) = promoting {
            // Seen at once, not at the next tick: a tick waits for its
            // slowest probe, and the old primary's may be hanging.
            if await_promotion(&config, &mut tracks[candidate]).await {
                act.decide(&mut tracks, &mut state).await;
            }
        }
        if let Some(c) = &coord {
            let leads = not_leading(Some(c)).is_none();
            if leads {
                finish_interrupted(&cluster, &config, c, &mut tracks, &state).await;
            }
            peer_switch
                .tick(&cluster, &config, c, &mut tracks, &state, leads)
                .await;
            c.observe(&state, &views(&cluster, &tracks), &config);
            let status = c.status(held.as_ref());
            if status.refused != refused {
                if let Some(why) = &status.refused {
                    cluster
                        .events
                        .record(EventKind::ConfigRejected, None, why.clone());
                }
                refused = status.refused.clone();
            }
            cluster.set_coordination(status);
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

/// Runs on this (leading) proxy what another proxy asked of it; the
/// receiver gets the outcome as text for the record.
fn run_asked(cluster: &Cluster, ask: Ask, reason: String) -> AskReply {
    let (tx, rx) = tokio::sync::oneshot::channel();
    match ask {
        Ask::Switchover(target) => {
            let (reply, outcome) = tokio::sync::oneshot::channel();
            let reply = Some(reply);
            cluster.request_switchover(Request {
                target,
                reason,
                reply,
            });
            tokio::spawn(async move {
                let r = outcome
                    .await
                    .unwrap_or(Err(SwitchoverError::MonitorStopped));
                let _ = tx.send(r.map_err(|e| e.to_string()));
            });
        }
        Ask::Readmit(node) => {
            let queued = cluster.queue_readmit(&node);
            tokio::spawn(async move {
                let r = match queued {
                    Ok(outcome) => outcome.await.unwrap_or(Err(ReadmitError::MonitorStopped)),
                    Err(e) => Err(e),
                };
                let _ = tx.send(
                    r.map(|()| format!("{node} re-admitted"))
                        .map_err(|e| e.to_string()),
                );
            });
        }
    }
    rx
}

/// How long a switchover handed to the leader may take before whoever
/// asked is told there was no answer: all its bounded steps, and a lease.
fn forward_limit(config: &Config) -> Duration {
    let s = &config.switchover;
    s.drain_timeout * 2
        + s.catchup_timeout
        + Duration::from_secs(30)
        + config.coordination.lease_ttl * 2
}

/// With coordination on and this proxy not the leader: who is.
fn not_leading(coord: Option<&Coordination>) -> Option<Held> {
    gate::may_act(&coord?.standing(), Instant::now()).err()
}

/// What a decision needs besides the nodes.
struct Acting<'a> {
    cluster: &'a Cluster,
    config: &'a Config,
    coord: Option<&'a Coordination>,
    /// Why this proxy was last held back from acting, said once.
    held: &'a mut Option<Held>,
}

impl Acting<'_> {
    /// One decision: `step` on the current views, its actions performed,
    /// the routing published. Bookkeeping first and the new routing
    /// published at once, so no client is routed to a node just declared
    /// down while the slow actions (promote, repoint) run. With coordination
    /// the gate decides first whether this proxy acts or only follows.
    /// Returns the replica it started promoting.
    async fn decide(&mut self, tracks: &mut [Track], state: &mut Primary) -> Option<usize> {
        let (cluster, config) = (self.cluster, self.config);
        let views = views(cluster, tracks);
        let now = Instant::now();
        let mut settings = failover_settings(config);
        settings.appointed = super::patroni::gate_now(cluster, config).map(|g| Appointed {
            node: g.leader,
            min_timeline: g.min_timeline,
            draining: g.draining,
        });
        if let Some(c) = self.coord {
            settings.promotion_sent = promotion_sent(c, &views);
            let (gated, verdict) = c.gate(settings, state, &views, config, now);
            self.note(verdict.err(), state);
            settings = gated;
        }
        let (next, actions) = step(state, &views, now, &settings);
        *state = next;
        let (slow, quick): (Vec<Action>, Vec<Action>) = actions.into_iter().partition(is_slow);
        for action in quick {
            perform(cluster, config, tracks, action).await;
        }
        publish(cluster, config, tracks, state);
        let mut promoted = None;
        if !slow.is_empty() {
            for action in slow {
                if self.coord.is_some_and(|c| !c.may_act(Instant::now())) {
                    let msg = "leadership lost mid-step: the rest is left to the next leader";
                    cluster.events.record(EventKind::ActionFailed, None, msg);
                    break;
                }
                if let Action::Promote(c) = action {
                    if !self.mark_promoting(tracks, state, c).await {
                        break;
                    }
                    promoted = Some(c);
                }
                perform(cluster, config, tracks, action).await;
            }
            publish(cluster, config, tracks, state);
        }
        promoted
    }

    /// With coordination: the record says which node is being promoted in
    /// place of which primary before `pg_promote()` is sent, so a leader
    /// that takes over mid-way promotes no other, and no proxy writes to
    /// that primary meanwhile. The primary is named here, not taken from
    /// the record etcd holds, which may predate it. False when etcd did not
    /// take it.
    async fn mark_promoting(&self, tracks: &[Track], state: &Primary, candidate: usize) -> bool {
        let Some(c) = self.coord else { return true };
        let views = views(self.cluster, tracks);
        let node = views[candidate].name.clone();
        // `Promote` comes only with `Promoting`; otherwise the mark names
        // no primary to keep out (`old` = the node), only the node.
        let old = match state {
            Primary::Promoting { old, .. } => *old,
            _ => candidate,
        };
        let record = super::coord::record_of(&views, old);
        if c.mark_promoting(record, &node, self.config.coordination.lease_ttl)
            .await
        {
            return true;
        }
        let msg = format!("the promotion of {node} could not be recorded in etcd: not promoting");
        self.cluster
            .events
            .record(EventKind::ActionFailed, None, msg);
        false
    }

    /// Records why this proxy is held back while the primary is in
    /// question, once per reason: not while it is only suspect, when no
    /// failover has started to be held back from.
    fn note(&mut self, held: Option<Held>, state: &Primary) {
        let in_question = matches!(state, Primary::Lost { started: true, .. });
        let held = held.filter(|_| in_question);
        if held != *self.held {
            if let Some(h) = &held {
                self.cluster
                    .events
                    .record(EventKind::FailoverBlocked, None, h.to_string());
            }
            *self.held = held;
        }
    }
}

/// The promotion the shared record says the leader sent, by node index
/// (whatever this proxy's own state: it may have started since, or never
/// seen the primary down).
fn promotion_sent(c: &Coordination, views: &[NodeView]) -> Option<SentPromotion> {
    let (old, candidate) = c.promotion_sent()?;
    let at = |name: &str| views.iter().position(|v| v.name == name);
    Some(SentPromotion {
        old: at(&old)?,
        candidate: at(&candidate)?,
    })
}

/// Polls a node just asked to promote until it leaves recovery (then probes
/// it, so the next `step` sees it), for at most [`PROMOTION_WAIT`]. False
/// when it did not: the ticks take over (and `step` gives up on it after
/// its own timeout).
async fn await_promotion(config: &Config, track: &mut Track) -> bool {
    let timeout = config.health.timeout;
    let deadline = Instant::now() + PROMOTION_WAIT;
    match promotion::until_writable(&mut track.checker, timeout, deadline).await {
        Waited::Writable => {}
        Waited::InRecovery | Waited::Unanswered => return false,
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
        secret: password.map(crate::auth::server_side::ServerSecret::Password),
    }
}

fn fenced_now(cluster: &Cluster, nodes: usize) -> Vec<bool> {
    (0..nodes).map(|i| cluster.is_fenced(i)).collect()
}

/// A node re-admitted this tick (here or through the shared record) is
/// judged only on checks made from now on: its last one may be from before
/// an operator rebuilt it (a primary on the old timeline), and would fence
/// it again at once.
fn forget_readmitted(cluster: &Cluster, tracks: &mut [Track], fenced_before: &[bool]) {
    for (i, track) in tracks.iter_mut().enumerate() {
        if fenced_before.get(i) == Some(&true) && !cluster.is_fenced(i) {
            track.forget();
        }
    }
}

fn failover_settings(config: &Config) -> FailoverSettings {
    let f = &config.failover;
    // Patroni points its replicas at the new primary and sets
    // `synchronous_standby_names` itself: doing it too would fight it.
    let patroni = config.coordination.backend == Backend::Patroni;
    FailoverSettings {
        mode: f.mode,
        max_lag_bytes: f.max_lag_bytes,
        repoint_replicas: f.repoint_replicas && !patroni,
        clear_sync_standby: f.sync_policy == SyncPolicy::Availability && !patroni,
        fence_command: f.fence_command.is_some(),
        promote_timeout: Duration::from_secs(30),
        promotion_sent: None,
        appointed: None,
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
    let answered = primary_result.as_ref().map(Result::is_ok);
    let (up, hardware_failing) = match state {
        Primary::Serving(p) => (tracks[*p].health == Health::Up, cluster.hardware_gone(*p)),
        _ => (false, false),
    };
    let failing = primary_failing(state, answered, up, hardware_failing);
    let quiet = quiet_from(tracks, state, started);
    *failing_since = failure_start(failing, *failing_since, quiet);
    let failure = failing_since.map(|since| Failure {
        since,
        sender_timeout: sender_timeout(tracks, state),
    });
    let threshold = config.health.failure_threshold;
    for (i, result) in others {
        tracks[i].record(cluster, i, result, false, threshold, failure.as_ref());
    }
    if let (Some(p), Some(result)) = (serving, primary_result) {
        apply_primary(cluster, config, tracks, p, result, started, failure);
    }
}

/// The `wal_sender_timeout` of the primary (serving, or just lost) as it
/// last said, while it answered: how often it pings idle replicas.
fn sender_timeout(tracks: &[Track], state: &Primary) -> std::time::Duration {
    let primary = match state {
        Primary::Serving(p) | Primary::Lost { old: p, .. } => Some(*p),
        _ => None,
    };
    primary
        .and_then(|p| tracks[p].probe.as_ref())
        .map_or(Timers::POSTGRES_DEFAULTS.sender_timeout, |probe| {
            probe.timers.sender_timeout
        })
}

/// Every node but the serving primary, probed concurrently (no heartbeat):
/// `(index, result)`, removed nodes left out.
async fn probe_others(
    cluster: &Cluster,
    config: &Config,
    tracks: &mut [Track],
    serving: Option<usize>,
) -> Vec<(usize, Result<Probe, ProbeError>)> {
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

fn probe_limit(cluster: &Cluster, config: &Config, track: &Track, node: usize) -> Duration {
    let short = short_probe(
        track.health,
        track.down_on_silence,
        cluster.hardware_gone(node),
    );
    if short {
        config.health.timeout.min(DOWN_PROBE_TIMEOUT)
    } else {
        config.health.timeout
    }
}

/// Whether a node gets the short probe timeout. A node already down, or
/// whose hardware says it is gone, is only probed to notice its return,
/// which is not urgent: a short timeout keeps a hung one from slowing every
/// tick (and with it the detection of a promotion). A primary down on its
/// replicas' silence alone is only suspect: its next probes decide whether
/// it is down, and a saturated node's login can take most of a second.
fn short_probe(health: Health, down_on_silence: bool, hardware_gone: bool) -> bool {
    (health == Health::Down && !down_on_silence) || hardware_gone
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
    result: Result<Probe, ProbeError>,
    started: Instant,
    failure: Option<Failure>,
) {
    let threshold = config.health.failure_threshold;
    // Silent for as long as the probe was given: a live primary with any
    // traffic would have sent the replicas something meanwhile. Only while
    // its heartbeats commit: a read-only load writes no WAL, and a primary
    // too slow for its heartbeat (CPU, disk) sends its replicas nothing
    // although it lives; their silence then proves nothing, and one slow
    // probe would cut every transaction in flight.
    let span = config.health.timeout;
    let corroborated = result.is_err()
        && !tracks[p].checker.heartbeat_failing()
        && replicas_silent_since(&views(cluster, tracks), p, started, span);
    tracks[p].record(
        cluster,
        p,
        result,
        corroborated,
        threshold,
        failure.as_ref(),
    );
}

#[cfg(test)]
mod tests {
    use super::Health;

    #[test]
    fn only_a_node_down_by_the_threshold_or_its_hardware_gets_the_short_probe() {
        // (health, down on silence alone, hardware gone) -> short timeout
        let cases = [
            (Health::Up, false, false, false),
            (Health::Suspect(2), false, false, false),
            (Health::Unknown, false, false, false),
            (Health::Down, true, false, false),
            (Health::Down, false, false, true),
            (Health::Down, true, true, true),
            (Health::Up, false, true, true),
        ];
        for (health, silence, gone, short) in cases {
            let got = super::short_probe(health, silence, gone);
            assert_eq!(got, short, "{health:?} {silence} {gone}");
        }
    }

    #[test]
    fn with_patroni_replicas_and_sync_standbys_are_left_to_it() {
        let base = "[cluster]\nnodes = [\"127.0.0.1:5432\"]\n[failover]\nmode = \"follow\"\n";
        let patroni = "[coordination]\nbackend = \"patroni\"\n\
                       patroni = { scope = \"orders\", endpoints = [\"http://127.0.0.1:2379\"] }\n";
        // (extra configuration) -> (repoint replicas, clear sync standbys)
        for (extra, want) in [("", (true, true)), (patroni, (false, false))] {
            let config = crate::config::load_str(&format!("{base}{extra}")).unwrap();
            let s = super::failover_settings(&config);
            assert_eq!((s.repoint_replicas, s.clear_sync_standby), want, "{extra}");
        }
    }
}
