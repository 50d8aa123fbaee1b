//! Topology, health and failover. The [`Cluster`] handle is what the rest of
//! the proxy sees: where to route a connection now (`route`), a way to wait
//! for that to change (`changed`), and a way to report a broken connection
//! (`nudge`). The [`monitor`] task behind it probes every node, runs the
//! failover state machine ([`failover::step`], pure) and performs its actions.

mod actuate;
pub mod coord;
pub mod decide;
mod error;
pub mod failover;
mod fence_command;
mod fences;
pub mod hardware;
mod hardware_moves;
pub mod health;
mod membership;
pub mod monitor;
pub mod patroni;
mod peer_switch;
mod promotion;
pub mod repoint;
pub mod switchover;
mod track;
pub mod view;
pub mod witness;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

pub use error::{MembershipError, ReadmitError, StepError, SwitchoverError};

use crate::config::{Node, Target};
use crate::events::Events;
use crate::server::{ConnectError, Login, ServerConn};
use health::CONFIRM_PACE;

/// What routing knows right now; replaced as a whole by the monitor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The node taking writes, if any.
    pub primary: Option<usize>,
    /// Replicas fit for read traffic (healthy, on the primary's timeline, within the lag bound).
    pub replicas: Vec<usize>,
    /// Nodes that passed a health check and are not fenced (for `any`).
    pub usable: Vec<usize>,
}

/// What an operator sees of one node (`/status`); refreshed every probe tick.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NodeStatus {
    /// Configured name.
    pub name: String,
    /// `host:port`.
    pub addr: String,
    /// `primary`, `replica` or `unknown` (never probed successfully).
    pub role: &'static str,
    /// `up`, `suspect`, `down` or `unknown`.
    pub state: &'static str,
    /// Never routed to until re-admitted.
    pub fenced: bool,
    /// Timeline last seen.
    pub timeline: u32,
    /// WAL position last seen (bytes).
    pub lsn: u64,
    /// Bytes behind the primary (replicas).
    pub lag_bytes: Option<u64>,
    /// Seconds since the last replayed transaction (replicas).
    pub lag_seconds: Option<f64>,
    /// Seconds since the last successful probe.
    pub last_check_seconds_ago: Option<f64>,
    /// Hardware status: `ok`, `degraded`, `failing` or `unknown`.
    pub hardware: &'static str,
    /// Why, when not ok.
    pub hardware_reasons: Vec<String>,
    /// With `backend = "patroni"`: the Patroni member this node is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patroni: Option<patroni::MemberStatus>,
}

impl NodeStatus {
    /// A node no health check has answered yet. The configured nodes are
    /// listed from the start, not from the end of the first round of
    /// checks, which a probe that hangs holds up for `health.timeout`.
    fn unprobed(node: &Node, hardware: hardware::Verdict) -> NodeStatus {
        NodeStatus {
            name: node.name.clone(),
            addr: node.addr.clone(),
            role: "unknown",
            state: "unknown",
            hardware: hardware.status.as_str(),
            hardware_reasons: hardware.reasons,
            ..NodeStatus::default()
        }
    }
}

/// Where one server connection should go.
#[derive(Debug, Clone)]
pub struct Route {
    /// Node index.
    pub node: usize,
    /// Node address.
    pub addr: Arc<str>,
    /// Incarnation of the node's connections; a newer epoch retires older ones.
    pub epoch: u64,
    /// Cancelled when the node's connections must close (node down, role changed).
    pub retired: CancellationToken,
    /// The node's load count and incarnation, reached without a lookup.
    pub handle: NodeHandle,
}

/// A node's shared state as a pooled connection needs it on every
/// transaction: its count of checked-out connections, and whether an
/// incarnation is still current. Held by the connection, so neither needs
/// a load of the cluster's slot list.
#[derive(Clone)]
pub struct NodeHandle(Arc<membership::Slot>);

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NodeHandle").field(&self.0.addr).finish()
    }
}

impl NodeHandle {
    /// Counts a checked-out connection (`delta` = +1 / -1).
    pub fn add_load(&self, delta: isize) {
        let load = &self.0.load;
        if delta >= 0 {
            load.fetch_add(delta as usize, Ordering::Relaxed);
        } else {
            load.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Whether incarnation `epoch` is the node's current one.
    pub fn is_current(&self, epoch: u64) -> bool {
        self.0.current().0 == epoch
    }
}

/// A node and the incarnation of its connections that a route names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteKey {
    pub node: usize,
    pub epoch: u64,
}

/// A node's connections as of now, and whether it may be routed to at all.
/// One lock over both: fencing or removing a node and `route` reading it
/// are ordered, so a checkout still holding a routing snapshot that names
/// the node cannot get a fresh incarnation of it in the gap before the
/// snapshot that leaves the node out is published.
struct Incarnation {
    epoch: u64,
    retired: CancellationToken,
    /// Never routed to until re-admitted.
    fenced: bool,
    /// Taken out by a reload.
    removed: bool,
}

impl Incarnation {
    fn new() -> Incarnation {
        Incarnation {
            epoch: 0,
            retired: CancellationToken::new(),
            fenced: false,
            removed: false,
        }
    }

    /// Ends it: its connections close at once, new ones are a new epoch.
    fn retire(&mut self) {
        self.retired.cancel();
        self.epoch += 1;
        self.retired = CancellationToken::new();
    }
}

/// A `READMIT` waiting for the monitor: the node, and where its outcome
/// goes.
pub(crate) struct Readmit {
    pub node: usize,
    pub reply: oneshot::Sender<Result<(), ReadmitError>>,
}

/// The routing snapshot with the node slots as they were when it was
/// published, so that a checkout reads both with one load. Slots are only
/// ever appended to, so each node the snapshot names has its slot here; a
/// slot is shared with the current list, so its incarnation (epoch, fenced,
/// removed) is the live one.
struct Routing {
    snap: Arc<Snapshot>,
    slots: Arc<Vec<Arc<membership::Slot>>>,
}

/// The node `target` routes to in `routing`, if any.
fn pick(routing: &Routing, target: Target) -> Option<usize> {
    let (snap, slots) = (&routing.snap, &routing.slots);
    match target {
        Target::Primary => snap.primary,
        Target::Replica => least_loaded(slots, &snap.replicas).or(snap.primary),
        Target::Any => least_loaded(slots, &snap.usable).or(snap.primary),
    }
}

/// Of `candidates`, the node with the fewest checked-out connections (the
/// lowest index on a tie).
fn least_loaded(slots: &[Arc<membership::Slot>], candidates: &[usize]) -> Option<usize> {
    candidates
        .iter()
        .copied()
        .min_by_key(|&i| (slots[i].load.load(Ordering::Relaxed), i))
}

/// The shared topology handle.
pub struct Cluster {
    /// The nodes, by index. Only ever appended to — a reload that removes a
    /// node marks its slot removed — so an index stays valid for good.
    nodes: ArcSwap<Vec<Node>>,
    /// Per-node state, index-aligned with `nodes`.
    slots: ArcSwap<Vec<Arc<membership::Slot>>>,
    routing: ArcSwap<Routing>,
    status: ArcSwap<Vec<NodeStatus>>,
    changed: watch::Sender<u64>,
    nudge: Notify,
    /// Fenced nodes an operator re-admitted, for the monitor to apply.
    readmits: Mutex<Vec<Readmit>>,
    /// Planned switchovers asked for, for the monitor to run.
    switchovers: Mutex<Vec<switchover::Request>>,
    /// The incident timeline.
    pub events: Arc<Events>,
    /// TLS toward the nodes (`[cluster.tls]`), for pools and health checks alike.
    tls: crate::tls::SharedConnector,
    /// Bumped by every [`Cluster::retire`] and [`Cluster::fence`]: pools sweep their idle lists when it moves.
    retirements: std::sync::atomic::AtomicU64,
    /// Bumped by every hardware verdict, so the monitor can stop waiting for
    /// a primary whose hardware just said it is gone.
    hardware_seen: watch::Sender<u64>,
    /// The serving primary whose failing hardware is held back by
    /// `switchover.min_interval` (the monitor sets it each tick).
    hardware_held: Mutex<Option<usize>>,
    /// Replicas repointed after a promotion that did not stream from the new
    /// primary within `repoint::STREAMING_BOUND`.
    not_streaming: Arc<std::sync::atomic::AtomicU64>,
    /// Two or more nodes report primary on one timeline (writes stopped).
    split_brain: std::sync::atomic::AtomicBool,
    /// New transactions wait: the leading proxy moves the primary.
    writes_held: std::sync::atomic::AtomicBool,
    /// With `[coordination]`: where this proxy stands among the others.
    coordination: Mutex<Option<coord::CoordinationStatus>>,
    /// With `backend = "patroni"`: Patroni's view, as last read.
    patroni: arc_swap::ArcSwapOption<patroni::Observed>,
    /// Requests the pools held while nothing was routable.
    holds: crate::measure::holds::Holds,
}

/// Why no server connection could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A node answered with an error that is the client's business (unknown
    /// database, auth failure).
    #[error(transparent)]
    Login(ConnectError),
    /// The node could not be reached.
    #[error(transparent)]
    Unreachable(ConnectError),
}

impl Cluster {
    /// A cluster over `nodes`; nothing is routable until the monitor's first checks.
    pub fn new(nodes: Vec<Node>, events: Arc<Events>) -> Cluster {
        let slots: Vec<_> = nodes.iter().map(membership::Slot::new).collect();
        let status = nodes
            .iter()
            .zip(&slots)
            .map(|(n, s)| NodeStatus::unprobed(n, lock(&s.hardware).clone()))
            .collect();
        Cluster {
            nodes: ArcSwap::from_pointee(nodes),
            slots: ArcSwap::from_pointee(slots),
            routing: ArcSwap::from_pointee(Routing {
                snap: Arc::default(),
                slots: Arc::default(),
            }),
            status: ArcSwap::from_pointee(status),
            changed: watch::channel(0).0,
            nudge: Notify::new(),
            readmits: Mutex::new(vec![]),
            switchovers: Mutex::new(vec![]),
            events,
            tls: Default::default(),
            retirements: Default::default(),
            hardware_seen: watch::channel(0).0,
            hardware_held: Mutex::new(None),
            split_brain: Default::default(),
            writes_held: Default::default(),
            coordination: Mutex::new(None),
            patroni: Default::default(),
            holds: Default::default(),
            not_streaming: Default::default(),
        }
    }

    /// Requests held for a routable node: their waits and the time writes
    /// were unavailable.
    pub fn holds(&self) -> &crate::measure::holds::Holds {
        &self.holds
    }

    /// The same cluster, reaching its nodes with `tls` (shared with the
    /// proxy's TLS state, so a reload reaches every new server connection).
    pub fn with_tls(mut self, tls: crate::tls::SharedConnector) -> Cluster {
        self.tls = tls;
        self
    }

    /// TLS toward the nodes.
    pub fn tls(&self) -> &crate::tls::SharedConnector {
        &self.tls
    }

    /// Every node ever configured, by index; removed ones included (see
    /// [`Cluster::is_removed`]).
    pub fn nodes(&self) -> Arc<Vec<Node>> {
        self.nodes.load_full()
    }

    fn slot(&self, node: usize) -> Arc<membership::Slot> {
        self.slots.load()[node].clone()
    }

    /// The current routing snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.routing.load().snap.clone()
    }

    /// Where a connection for `target` goes now; `None` when nothing is routable.
    /// `replica` falls back to the primary when no replica qualifies.
    pub fn route(&self, target: Target) -> Option<Route> {
        self.routed(target, |slot, node, inc| Route {
            node,
            addr: slot.addr.clone(),
            epoch: inc.epoch,
            retired: inc.retired.clone(),
            handle: NodeHandle(slot.clone()),
        })
    }

    /// [`Cluster::route`]'s node and epoch only: enough to pick an idle
    /// connection (a checkout), without the clones a new one needs.
    pub fn route_key(&self, target: Target) -> Option<RouteKey> {
        let routing = self.routing.load();
        let node = pick(&routing, target)?;
        // The incarnation as `routed` reads it, without its lock.
        let (epoch, routable) = routing.slots[node].current();
        routable.then_some(RouteKey { node, epoch })
    }

    fn routed<R>(
        &self,
        target: Target,
        make: impl FnOnce(&Arc<membership::Slot>, usize, &Incarnation) -> R,
    ) -> Option<R> {
        let routing = self.routing.load();
        let node = pick(&routing, target)?;
        let slot = &routing.slots[node];
        let inc = lock(&slot.incarnation);
        // The snapshot may predate a fence or a removal whose routing is not
        // published yet: nothing until it is (the checkout waits for it).
        if inc.fenced || inc.removed {
            return None;
        }
        Some(make(slot, node, &inc))
    }

    /// Opens a logged-in connection along `route`.
    pub async fn connect(
        &self,
        route: &Route,
        login: &Login,
        timeout: Duration,
    ) -> Result<ServerConn, ClusterError> {
        // A connect to a node that is declared down meanwhile (a hang) must not
        // make the client wait out the whole connect timeout.
        let tls = self.tls.current();
        let attempt = tokio::select! {
            r = ServerConn::connect(&route.addr, login, &tls, timeout) => r,
            _ = route.retired.cancelled() => Err(ConnectError::Timeout(route.addr.to_string())),
        };
        match attempt {
            Ok(mut conn) => {
                conn.share_addr(&route.addr);
                Ok(conn)
            }
            Err(e @ (ConnectError::Refused { .. } | ConnectError::Auth { .. }))
                if !is_node_state_error(&e) =>
            {
                Err(ClusterError::Login(e))
            }
            Err(e) => {
                self.nudge();
                Err(ClusterError::Unreachable(e))
            }
        }
    }

    /// Resolves when the routing snapshot changes (or at once if it changed
    /// since `seen`). Returns the new version.
    pub async fn changed(&self, seen: u64) -> u64 {
        let mut rx = self.changed.subscribe();
        let _ = rx.wait_for(|v| *v != seen).await;
        let v = *rx.borrow();
        v
    }

    /// The current snapshot version (for `changed`).
    pub fn version(&self) -> u64 {
        *self.changed.borrow()
    }

    /// Asks the monitor to probe now (a pooled connection broke, a connect was refused).
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// Every node's status, as of the last probe tick.
    pub fn status(&self) -> Arc<Vec<NodeStatus>> {
        self.status.load_full()
    }

    pub(crate) fn set_status(&self, status: Vec<NodeStatus>) {
        self.status.store(Arc::new(status));
    }

    /// Whether two or more nodes report primary on one timeline now, so
    /// that writes to all of them are stopped (an alert, not a state a
    /// cluster recovers from alone).
    pub fn split_brain(&self) -> bool {
        self.split_brain.load(Ordering::Relaxed)
    }

    pub(crate) fn set_split_brain(&self, on: bool) {
        self.split_brain.store(on, Ordering::Relaxed);
    }

    /// Whether new transactions wait while another proxy moves the primary.
    pub(crate) fn writes_held(&self) -> bool {
        self.writes_held.load(Ordering::Relaxed)
    }

    pub(crate) fn set_writes_held(&self, on: bool) {
        self.writes_held.store(on, Ordering::Relaxed);
    }

    /// Where this proxy stands among the others, with `[coordination]` on.
    pub fn coordination(&self) -> Option<coord::CoordinationStatus> {
        lock(&self.coordination).clone()
    }

    pub(crate) fn set_coordination(&self, status: coord::CoordinationStatus) {
        *lock(&self.coordination) = Some(status);
    }

    /// Patroni's view of the cluster, with `backend = "patroni"`.
    pub fn patroni(&self) -> Option<Arc<patroni::Observed>> {
        self.patroni.load_full()
    }

    pub(crate) fn set_patroni(&self, observed: patroni::Observed) {
        self.patroni.store(Some(Arc::new(observed)));
    }

    /// Replaces the routing snapshot and wakes held clients.
    pub(crate) fn publish(&self, snap: Snapshot) {
        let slots = self.slots.load_full();
        self.routing.store(Arc::new(Routing {
            snap: Arc::new(snap),
            slots,
        }));
        self.changed.send_modify(|v| *v += 1);
    }

    /// Retires every connection to `node`: idle ones are dropped at checkout,
    /// active ones see `retired` cancelled and end at once.
    pub(crate) fn retire(&self, node: usize) {
        self.slot(node).change(Incarnation::retire);
        self.retirements
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Fences `node`: never routed to until [`Cluster::unfence`], and its
    /// connections retired, in one step. True if it was not fenced before.
    pub(crate) fn fence(&self, node: usize) -> bool {
        let slot = self.slot(node);
        let newly = slot.change(|inc| {
            inc.retire();
            !std::mem::replace(&mut inc.fenced, true)
        });
        self.retirements
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        newly
    }

    /// Lifts `node`'s fence (an operator re-admitted it): routed again once
    /// its checks pass.
    pub(crate) fn unfence(&self, node: usize) {
        self.slot(node).change(|inc| inc.fenced = false);
    }

    /// Whether `node` is fenced.
    pub fn is_fenced(&self, node: usize) -> bool {
        lock(&self.slot(node).incarnation).fenced
    }

    /// How many retirements there have been: a pool whose last sweep saw an
    /// older count may hold idle connections to a retired incarnation.
    pub fn retirements(&self) -> u64 {
        self.retirements.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Asks the monitor to un-fence `name` (admin `READMIT`) and waits for
    /// the outcome. The node is then checked like any other: if it still
    /// claims to be a primary on an older timeline, the fencing rule
    /// applies again. With coordination the leader does it, in the shared
    /// record every proxy follows.
    pub async fn readmit(&self, name: &str) -> Result<(), ReadmitError> {
        let outcome = self.queue_readmit(name)?;
        outcome.await.unwrap_or(Err(ReadmitError::MonitorStopped))
    }

    /// Queues a `READMIT` of `name` for the monitor; the receiver gets its
    /// outcome.
    pub(crate) fn queue_readmit(
        &self,
        name: &str,
    ) -> Result<oneshot::Receiver<Result<(), ReadmitError>>, ReadmitError> {
        let node = self
            .index_of(name)
            .ok_or_else(|| ReadmitError::NoSuchNode(name.into()))?;
        if !self.status().iter().any(|s| s.name == name && s.fenced) {
            return Err(ReadmitError::NotFenced(name.into()));
        }
        let (reply, outcome) = oneshot::channel();
        lock(&self.readmits).push(Readmit { node, reply });
        self.nudge();
        Ok(outcome)
    }

    /// Asks the monitor for a planned switchover (to `target`, or the best
    /// replica) and waits for its outcome: the new primary's name, or why not.
    pub async fn switchover(
        &self,
        target: Option<String>,
        reason: String,
    ) -> Result<String, SwitchoverError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.request_switchover(switchover::Request {
            target,
            reason,
            reply: Some(tx),
        });
        rx.await.map_err(|_| SwitchoverError::MonitorStopped)?
    }

    /// Queues a switchover request for the monitor.
    pub(crate) fn request_switchover(&self, req: switchover::Request) {
        lock(&self.switchovers).push(req);
        self.nudge();
    }

    /// The oldest queued switchover request.
    pub(crate) fn next_switchover(&self) -> Option<switchover::Request> {
        let mut q = lock(&self.switchovers);
        (!q.is_empty()).then(|| q.remove(0))
    }

    /// Server connections to `node` checked out now.
    pub fn checked_out(&self, node: usize) -> usize {
        self.slots.load()[node].load.load(Ordering::Relaxed)
    }

    /// The node's last hardware verdict.
    pub fn hardware(&self, node: usize) -> hardware::Verdict {
        lock(&self.slots.load()[node].hardware).clone()
    }

    /// Records a hardware verdict; returns the previous status.
    pub(crate) fn set_hardware(
        &self,
        node: usize,
        v: hardware::Verdict,
    ) -> hardware::HardwareStatus {
        let before = std::mem::replace(&mut *lock(&self.slot(node).hardware), v).status;
        self.hardware_seen.send_modify(|n| *n += 1);
        before
    }

    /// Holds back the failing hardware of `node`: the serving primary, which
    /// changed less than `switchover.min_interval` ago. It then does not
    /// count as gone ([`Cluster::hardware_gone`]). `None`: nothing held.
    pub(crate) fn hold_hardware(&self, node: Option<usize>) {
        let before = std::mem::replace(&mut *lock(&self.hardware_held), node);
        if before != node {
            // A lifted hold is news to whoever waits for failing hardware.
            self.hardware_seen.send_modify(|n| *n += 1);
        }
    }

    /// Whether `node` counts as gone for its hardware: the verdict in force
    /// is `failing` and not held back by `switchover.min_interval`.
    pub fn hardware_gone(&self, node: usize) -> bool {
        self.hardware(node).status == hardware::HardwareStatus::Failing
            && *lock(&self.hardware_held) != Some(node)
    }

    /// Resolves once `node`'s hardware counts as gone ([`Cluster::hardware_gone`];
    /// at once if it does already), with the reasons. After `late`, and every
    /// [`CONFIRM_PACE`] after that until dropped (the check it races has
    /// answered), asks the node's hardware watcher to probe now rather than
    /// at its next interval: a health check running late is the moment to
    /// ask the baseboard, and the node's silence is evidence of its own, so
    /// the readings that confirm a `failing` one need not wait an interval
    /// each. A node that answers its checks is never asked.
    pub(crate) async fn hardware_failing(&self, node: usize, late: Duration) -> String {
        let mut seen = self.hardware_seen.subscribe();
        let first = tokio::time::Instant::now() + late;
        let mut ask = tokio::time::interval_at(first, CONFIRM_PACE);
        ask.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.hardware_gone(node) {
                let reasons = self.hardware(node).reasons.join("; ");
                return format!("hardware probe reports failing: {reasons}");
            }
            tokio::select! {
                _ = ask.tick() => self.slot(node).probe_now.notify_one(),
                changed = seen.changed() => {
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }

    /// Resolves when someone asks for an early hardware probe of `node`.
    pub(crate) async fn hardware_probe_asked(&self, node: usize) {
        let slot = self.slot(node);
        slot.probe_now.notified().await
    }

    /// Repointed replicas that did not stream from their new primary within
    /// `repoint::STREAMING_BOUND`, since start (for a metric).
    pub fn replicas_not_streaming(&self) -> u64 {
        self.not_streaming.load(Ordering::Relaxed)
    }

    /// The counter behind [`Cluster::replicas_not_streaming`], for the task
    /// that watches a repointed replica.
    pub(crate) fn not_streaming_counter(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.not_streaming.clone()
    }

    /// Re-admissions requested since the last call.
    pub(crate) fn take_readmits(&self) -> Vec<Readmit> {
        std::mem::take(&mut *lock(&self.readmits))
    }

    pub(crate) async fn nudged(&self) {
        self.nudge.notified().await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Errors that say the node, not the login, is the problem (starting up,
/// shutting down, in recovery, too many connections).
fn is_node_state_error(e: &ConnectError) -> bool {
    match e {
        ConnectError::Refused { error, .. } => matches!(
            error.code.as_str(),
            "57P03" | "57P01" | "57P02" | "53300" | "08006"
        ),
        _ => false,
    }
}
