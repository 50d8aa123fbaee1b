//! Server connection pools, one per (client-facing database, user). A pool
//! bounds the connections to its size with slots (a checked-out connection
//! holds one; waiting checkouts queue in [`line`]), keeps idle connections
//! most-recently-used first, and closes them when idle or old for too long.
//! Locks are std mutexes held for a push or pop, never across `.await`.
//! The wire connection itself is [`crate::server::ServerConn`]; the pool
//! wraps it in a [`PooledConn`] with its own bookkeeping.

mod hot;
mod limit;
mod line;
mod pooled;
pub mod stats;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::auth::server_side::ServerSecret;
use crate::cluster::{Cluster, ClusterError, Route, RouteKey};
use crate::config::Target;
use crate::measure::tick::Tick;
use crate::server::Login;
use hot::{Expiry, Hot};
pub use limit::{LimitHit, Limits, SharedLimit};
use line::{Line, Served, Taken, Wait};
pub use pooled::PooledConn;

/// Timeouts a pool works with.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Connections in the pool (idle + checked out), at most.
    pub size: usize,
    /// Longest wait for a free slot.
    pub checkout_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// Connections older than this are closed when next idle.
    pub lifetime: Duration,
    /// Longest connect + login.
    pub connect_timeout: Duration,
    /// Longest wait for a routable node (a failover in progress).
    pub hold_timeout: Duration,
    /// Longest wait while the pool is paused (`None`: as long as it takes).
    pub query_wait_timeout: Option<Duration>,
    /// Where this pool's connections go.
    pub target: Target,
}

/// Why no server connection was handed out.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No slot became free within `checkout_timeout`.
    #[error("checkout timed out")]
    Timeout,
    /// The pool stayed paused past `query_wait_timeout`.
    #[error("paused past query_wait_timeout")]
    PausedTooLong(Duration),
    /// No node became routable within `hold_timeout`.
    #[error("no routable server within hold_timeout")]
    HoldTimeout,
    /// Opening a new connection failed.
    #[error(transparent)]
    Connect(#[from] ClusterError),
    /// `max_db_connections` or `max_user_connections` left no room within `checkout_timeout`.
    #[error("{0}")]
    Limit(LimitHit),
    /// `proxy.max_pools` pools exist already.
    #[error("max_pools ({0}) reached")]
    TooManyPools(usize),
}

/// ParameterStatus (name, value) pairs as a server reported them.
pub type ServerParams = Arc<Vec<(String, String)>>;

/// A cheap, cloneable handle to one pool.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    /// Swapped by a reload (a changed server password).
    login: ArcSwap<Login>,
    /// Swapped by a reload.
    settings: ArcSwap<PoolSettings>,
    /// What checkouts and checkins read of `settings`, stored with it.
    hot: Hot,
    /// Slots, idle connections and waiting checkouts. An `Arc`: a
    /// connection gives its slot back to it itself.
    line: Arc<Mutex<Line<PooledConn>>>,
    cluster: Arc<Cluster>,
    /// ParameterStatus values of the first server connection, replayed to clients at login.
    params: Mutex<Option<ServerParams>>,
    /// Server statement names some server of this pool accepted: a client's
    /// Parse of one of these is answered without taking a server.
    known_statements: Mutex<HashSet<Arc<str>>>,
    /// Traffic counters.
    stats: stats::PoolStats,
    /// True while `PAUSE`d: checkouts wait for `RESUME`.
    paused: watch::Sender<bool>,
    /// `paused`'s value, for the check of every checkout: a load, where
    /// the channel's value is behind a read lock (two atomic
    /// read-modify-writes). Written before the channel, by `set_paused`.
    paused_now: AtomicBool,
    /// Bumped by `RECONNECT`: older connections close instead of returning.
    generation: AtomicU64,
    /// Connections being opened (logging in) now.
    opening: AtomicUsize,
    /// Checkouts waiting for a routable node (a failover) now.
    held: AtomicUsize,
    /// `max_db_connections` / `max_user_connections` this pool is under
    /// (empty when unset: opening a connection then costs nothing more).
    limits: Vec<Arc<SharedLimit>>,
    /// Since when the reaper has found the pool unused (no client, no
    /// server connection); only the reaper reads or writes it.
    unused_since: Mutex<Option<Tick>>,
}

impl Drop for Shared {
    /// Idle connections hold the line they sit in (to give a slot back
    /// when checked out): emptied here, or neither would be freed.
    fn drop(&mut self) {
        let left = lock(&self.line).drain();
        drop(left);
    }
}

/// A slot, and the connection that came back with it if any.
enum Turn<'a> {
    Conn(PooledConn, Taken<'a, PooledConn>),
    Slot(Taken<'a, PooledConn>),
}

/// Counts a gauge up while alive.
struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    fn up(g: &'a AtomicUsize) -> Gauge<'a> {
        g.fetch_add(1, Ordering::Relaxed);
        Gauge(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A pool's numbers for `SHOW POOLS` and the metrics.
#[derive(Debug, Clone, Default)]
pub struct PoolCounts {
    /// Idle server connections.
    pub idle: usize,
    /// Connections logging in.
    pub opening: usize,
    /// Checkouts held for a routable node.
    pub held: usize,
    /// Configured size.
    pub size: usize,
    /// Paused.
    pub paused: bool,
}

/// An idle server connection, as `SHOW SERVERS` shows it.
#[derive(Debug, Clone)]
pub struct IdleServer {
    /// Node address.
    pub addr: Arc<str>,
    /// The server's local socket address.
    pub local: Option<std::net::SocketAddr>,
    /// Backend process id.
    pub pid: i32,
    /// When it was opened.
    pub connected_at: std::time::SystemTime,
    /// When it was last returned.
    pub idle_since: std::time::SystemTime,
    /// Statements prepared on it.
    pub prepared: usize,
}

impl Pool {
    /// An empty pool under `limits`; connections are opened on demand.
    pub fn new(
        login: Login,
        settings: PoolSettings,
        cluster: Arc<Cluster>,
        paused: bool,
        limits: Vec<Arc<SharedLimit>>,
    ) -> Pool {
        let shared = Shared {
            login: ArcSwap::from_pointee(login),
            hot: Hot::new(&settings),
            line: Arc::new(Mutex::new(Line::new(settings.size))),
            settings: ArcSwap::from_pointee(settings),
            cluster,
            params: Mutex::new(None),
            known_statements: Mutex::default(),
            stats: Default::default(),
            paused: watch::Sender::new(paused),
            paused_now: AtomicBool::new(paused),
            generation: AtomicU64::new(0),
            opening: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            unused_since: Mutex::new(None),
            limits,
        };
        let shared = Arc::new(shared);
        for l in &shared.limits {
            l.enroll(&shared);
        }
        Pool { shared }
    }

    /// Takes a server connection on the node the pool's target routes to now:
    /// an idle one if there is one, else a new one. While nothing is routable
    /// (a failover) the request is held up to `hold_timeout`; a free slot is
    /// awaited, from `since`, up to `checkout_timeout`. Also returns the time
    /// it read last, for the caller's wait and first request: no second
    /// clock read.
    ///
    /// The usual wait (at many clients per server, a transaction's) is for
    /// a slot, and ends with a connection handed over as it came back: it
    /// reads the settings kept as atomics, not the shared ones, and the
    /// rest is left to [`Pool::checkout_slow`].
    pub async fn checkout(&self, since: Tick) -> Result<(PooledConn, Tick), PoolError> {
        let s = &self.shared;
        if s.paused_now.load(Ordering::Acquire) {
            return self.checkout_slow(None).await;
        }
        let turn = self.turn(since).await?;
        let key = s.cluster.route_key(s.hot.target());
        let now = Tick::now();
        let expiry = s.hot.expiry();
        let slot = match turn {
            Turn::Conn(mut conn, slot) => {
                if key.is_some_and(|k| fits(&conn, k, now, expiry)) {
                    conn.lend(slot);
                    return Ok((conn, now));
                }
                // Not where the target routes now: kept for a checkout
                // that it suits, and this one looks further.
                lock(&s.line).idle.push(conn);
                slot
            }
            Turn::Slot(slot) => slot,
        };
        if let Some(mut conn) = key.and_then(|k| self.pop_usable(k, now, expiry)) {
            conn.lend(slot);
            return Ok((conn, now));
        }
        // The slot it waited for goes along, not back to the line.
        self.checkout_slow(Some(slot)).await
    }

    /// [`Pool::checkout`]'s other cases: a pause, a new connection, a hold.
    /// A held request gives its slot back while it waits: otherwise the
    /// first `pool_size` held requests would keep the others queued for
    /// slots, and those would time out after `checkout_timeout` instead of
    /// being held. The clock is read for a deadline only once that deadline
    /// can matter.
    async fn checkout_slow(
        &self,
        mut slot: Option<Taken<'_, PooledConn>>,
    ) -> Result<(PooledConn, Tick), PoolError> {
        let s = &self.shared;
        let settings = s.settings.load_full();
        if slot.is_none() {
            self.resumed(settings.query_wait_timeout).await?;
        }
        // Set at the first hold: `hold_timeout` bounds the wait for a
        // routable node, from when it begins.
        let mut deadline = None;
        // Begun at the first wait; ends once something is routable, or with
        // the checkout (a timeout).
        let mut hold = None;
        loop {
            let version = s.cluster.version();
            let slot = match slot.take() {
                Some(t) => t,
                None => match self.turn(Tick::now()).await? {
                    Turn::Conn(conn, t) => {
                        lock(&s.line).idle.push(conn);
                        t
                    }
                    Turn::Slot(t) => t,
                },
            };
            let now = Tick::now();
            let found = s
                .cluster
                .route_key(settings.target)
                .and_then(|key| self.pop_usable(key, now, Expiry::from(&*settings)));
            // Routable again (an idle connection, or a route to open one
            // along): the wait for the topology ends here, before the time
            // a new connection takes.
            if let Some(mut conn) = found {
                drop(hold.take());
                conn.lend(slot);
                return Ok((conn, now));
            }
            if let Some(route) = s.cluster.route(settings.target) {
                drop(hold.take());
                let room_by = tokio::time::Instant::now() + settings.checkout_timeout;
                match self.open(&route, room_by).await {
                    Ok(mut conn) => {
                        conn.lend(slot);
                        return Ok((conn, Tick::now()));
                    }
                    Err(PoolError::Connect(ClusterError::Unreachable(e))) => {
                        tracing::debug!(error = %e, "routed node unreachable; holding for the topology to change");
                    }
                    Err(e) => return Err(e),
                }
            }
            drop(slot);
            let wait = s.cluster.changed(version);
            let _held = Gauge::up(&s.held);
            let wants_primary = settings.target == Target::Primary;
            hold.get_or_insert_with(|| s.cluster.holds().begin(wants_primary));
            let until = *deadline
                .get_or_insert_with(|| tokio::time::Instant::now() + settings.hold_timeout);
            if tokio::time::timeout_at(until, wait).await.is_err() {
                return Err(PoolError::HoldTimeout);
            }
        }
    }

    /// The usual checkout, done at once: an idle connection on the node the
    /// target routes to, when the pool is not paused and a slot is free
    /// (and nobody waits for one). `None` leaves the rest (waits, new
    /// connections, holds) to [`Pool::checkout`]. Also returns the time it
    /// read for the expiry check, so that the caller need not read the
    /// clock again.
    pub fn checkout_now(&self) -> Option<(PooledConn, Tick)> {
        let s = &self.shared;
        if s.paused_now.load(Ordering::Acquire) {
            return None;
        }
        let key = s.cluster.route_key(s.hot.target())?;
        let mut line = lock(&s.line);
        if !line.can_take() {
            return None;
        }
        let now = Tick::now();
        let mut conn = pop_usable(&mut line, &s.cluster, key, now, s.hot.expiry())?;
        line.try_take();
        drop(line);
        conn.lend(Taken::new(&s.line));
        Some((conn, now))
    }

    /// A slot of the pool: at once if one is free and nobody waits, else
    /// in line from `since` (with the connection that freed it, if it
    /// stayed open) within `checkout_timeout`.
    async fn turn(&self, since: Tick) -> Result<Turn<'_>, PoolError> {
        let line = &*self.shared.line;
        match Wait::new(line, since, || self.start_timer()).await {
            Served::Conn(conn) => Ok(Turn::Conn(conn, Taken::new(line))),
            Served::Slot => Ok(Turn::Slot(Taken::new(line))),
            Served::TimedOut => Err(PoolError::Timeout),
        }
    }

    /// Starts the line's timer: it ends each wait `checkout_timeout` after
    /// it began, and itself once nobody waits. It holds the pool weakly (an
    /// unused pool is still dropped).
    fn start_timer(&self) {
        let pool = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut timer = Timer(pool);
            while let Some(ns) = timer.expire() {
                tokio::time::sleep(Duration::from_nanos(ns)).await;
            }
            // Ended as it should: nothing for its drop to undo.
            timer.0 = Weak::new();
        });
    }

    fn pop_usable(&self, route: RouteKey, now: Tick, expiry: Expiry) -> Option<PooledConn> {
        let mut line = lock(&self.shared.line);
        pop_usable(&mut line, &self.shared.cluster, route, now, expiry)
    }

    /// Opens a connection along `route`, within the database's and user's
    /// limits (waiting for room until `room_by`).
    async fn open(
        &self,
        route: &Route,
        room_by: tokio::time::Instant,
    ) -> Result<PooledConn, PoolError> {
        let s = &self.shared;
        let generation = s.generation.load(Ordering::Relaxed);
        let mut permits = Vec::new();
        for l in &s.limits {
            permits.push(l.acquire(room_by).await?);
        }
        let opening = Gauge::up(&s.opening);
        let conn = s
            .cluster
            .connect(route, &s.login.load(), s.settings.load().connect_timeout)
            .await?;
        drop(opening);
        tracing::debug!(addr = %conn.addr(), pid = conn.key().0, "server connection opened");
        let mut params = lock(&s.params);
        if params.is_none() {
            *params = Some(Arc::new(conn.params().to_vec()));
        }
        Ok(PooledConn::new(conn, route, generation, permits, &s.line))
    }

    /// Returns a connection whose transaction status is idle. Its slot is freed.
    pub fn checkin(&self, conn: PooledConn) {
        self.checkin_at(conn, Tick::now());
    }

    /// [`Pool::checkin`] with the time its last answer came (read once
    /// for the query's latency, not again here).
    pub fn checkin_at(&self, mut conn: PooledConn, now: Tick) {
        conn.uncount();
        let current = conn.is_current()
            && conn.generation() == self.shared.generation.load(Ordering::Relaxed);
        // Its idle time is not counted: it was busy, not idle, since it
        // last went back to the pool (`server_idle_timeout` counts time in
        // the pool, as PgBouncer's does).
        let stale = !current || self.shared.hot.expiry().outlived(conn.created(), now);
        // Another pool under the same limit waits for room: hand it this place.
        let wanted = self.shared.limits.iter().any(|l| l.wanted());
        if stale || wanted || !conn.buf().is_empty() || conn.closes_on_return() {
            // Dropped: it closes, then gives its slot back.
            return;
        }
        conn.set_last_used(now);
        conn.unhold();
        // To the first in line with its slot, or to the idle list.
        let woken = lock(&self.shared.line).give_back(Some(conn));
        if let Some(w) = woken {
            w.wake();
        }
    }

    /// The server's ParameterStatus values for a client's login reply, opening a
    /// connection the first time (which also proves the database and login work).
    pub async fn server_params(&self) -> Result<ServerParams, PoolError> {
        if let Some(p) = lock(&self.shared.params).clone() {
            return Ok(p);
        }
        let (conn, _) = self.checkout(Tick::now()).await?;
        let params = Arc::new(conn.params().to_vec());
        self.checkin(conn);
        Ok(params)
    }

    /// Closes idle connections past their idle timeout or lifetime.
    pub fn reap(&self, now: Tick) {
        let expiry = self.shared.hot.expiry();
        lock(&self.shared.line)
            .idle
            .retain(|c| !expired(c, now, expiry));
    }

    /// Whether the pool, reached through this handle only (the map's), has
    /// served nobody for `server_idle_timeout`: no client holds it, no
    /// server connection is idle, opening or held. Called by the reaper,
    /// which keeps the time it first found it unused.
    fn idle_since_long(&self, now: Tick) -> bool {
        let s = &self.shared;
        let unused = Arc::strong_count(s) == 1
            && lock(&s.line).idle.is_empty()
            && s.opening.load(Ordering::Relaxed) == 0
            && s.held.load(Ordering::Relaxed) == 0;
        let mut since = lock(&s.unused_since);
        match (unused, *since) {
            (false, _) => {
                *since = None;
                false
            }
            (true, None) => {
                *since = Some(now);
                false
            }
            (true, Some(t)) => now.since(t) >= s.settings.load().idle_timeout,
        }
    }

    /// Records that a server accepted the statement `name` (its text parses here).
    pub fn learn_statement(&self, name: Arc<str>) {
        let mut known = lock(&self.shared.known_statements);
        // Bounded: a client generating endless distinct texts cannot grow it forever.
        if known.len() < 10_000 {
            known.insert(name);
        }
    }

    /// Whether some server of this pool accepted the statement `name`.
    pub fn knows_statement(&self, name: &str) -> bool {
        lock(&self.shared.known_statements).contains(name)
    }

    /// The pool's traffic counters.
    pub fn stats(&self) -> &stats::PoolStats {
        &self.shared.stats
    }

    /// Waits while the pool is paused, at most `limit`.
    async fn resumed(&self, limit: Option<Duration>) -> Result<(), PoolError> {
        // The common case, not paused, costs a load and no subscription.
        if !self.shared.paused_now.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut rx = self.shared.paused.subscribe();
        // Only errs when the sender is gone, and the pool owns it.
        let resumed = rx.wait_for(|paused| !paused);
        match limit {
            None => drop(resumed.await),
            Some(limit) => match tokio::time::timeout(limit, resumed).await {
                Ok(_) => {}
                Err(_) => return Err(PoolError::PausedTooLong(limit)),
            },
        }
        Ok(())
    }

    /// Pauses (`true`) or resumes the pool's checkouts.
    pub fn set_paused(&self, paused: bool) {
        self.shared.paused_now.store(paused, Ordering::Release);
        self.shared.paused.send_replace(paused);
    }

    /// Closes idle connections now and the others when they are returned
    /// (`RECONNECT`, `KILL`).
    pub fn reconnect(&self) {
        self.shared.generation.fetch_add(1, Ordering::Relaxed);
        let idle = std::mem::take(&mut lock(&self.shared.line).idle);
        drop(idle);
    }

    /// Numbers for `SHOW POOLS` and the metrics.
    pub fn counts(&self) -> PoolCounts {
        let s = &self.shared;
        PoolCounts {
            idle: lock(&s.line).idle.len(),
            opening: s.opening.load(Ordering::Relaxed),
            held: s.held.load(Ordering::Relaxed),
            size: s.settings.load().size,
            paused: *s.paused.borrow(),
        }
    }

    /// The idle connections, for `SHOW SERVERS`.
    pub fn idle_servers(&self) -> Vec<IdleServer> {
        let now = (Tick::now(), std::time::SystemTime::now());
        let ago = |t: Tick| now.1 - now.0.since(t);
        lock(&self.shared.line)
            .idle
            .iter()
            .map(|c| IdleServer {
                addr: c.addr().clone(),
                local: c.local(),
                pid: c.key().0,
                connected_at: c.connected_at(),
                idle_since: ago(c.last_used()),
                prepared: c.statements().len(),
            })
            .collect()
    }

    /// The pool's settings.
    pub fn settings(&self) -> Arc<PoolSettings> {
        self.shared.settings.load_full()
    }

    /// What new server connections log in as.
    pub fn login(&self) -> Arc<Login> {
        self.shared.login.load_full()
    }

    /// Gives new server connections `secret` to log in with (a looked-up
    /// user's, from a client's latest login); open ones stay.
    pub fn set_secret(&self, secret: ServerSecret) {
        let mut login = Login::clone(&self.shared.login.load());
        login.secret = Some(secret);
        self.shared.login.store(Arc::new(login));
    }

    /// Applies reloaded settings. A smaller size takes effect as connections
    /// are returned: the surplus slots are claimed and never given back.
    pub fn update(&self, login: Login, new: PoolSettings) {
        self.shared.login.store(Arc::new(login));
        let new_size = new.size;
        self.shared.hot.store(&new);
        let old = self.shared.settings.swap(Arc::new(new));
        let woken = lock(&self.shared.line).resize(old.size, new_size);
        woken.into_iter().for_each(std::task::Waker::wake);
    }
}

/// Takes the most recently used idle connection on `route` that is still
/// usable, closing (dropping) the unusable ones it meets.
fn pop_usable(
    line: &mut Line<PooledConn>,
    cluster: &Cluster,
    route: RouteKey,
    now: Tick,
    expiry: Expiry,
) -> Option<PooledConn> {
    // Connections to retired incarnations are closed here (dropped), in
    // one sweep after each retirement rather than a check of every idle
    // connection at every checkout.
    let retirements = cluster.retirements();
    // A checkout with nothing retired since the last sweep (nearly all)
    // writes nothing.
    if line.swept != retirements {
        line.swept = retirements;
        line.idle.retain(PooledConn::is_current);
    }
    while let Some(pos) = line.idle.iter().rposition(|c| c.node() == route.node) {
        let conn = line.idle.remove(pos);
        if fits(&conn, route, now, expiry) {
            return Some(conn);
        }
    }
    None
}

/// Whether `conn` can serve a checkout routed along `route` at `now`. A
/// server that died (or was terminated) while this connection sat idle must
/// not cost the next client an error. The route's epoch was the node's
/// current one as it was read.
fn fits(conn: &PooledConn, route: RouteKey, now: Tick, expiry: Expiry) -> bool {
    conn.node() == route.node
        && conn.epoch() == route.epoch
        && !(expired(conn, now, expiry) || conn.is_broken())
}

/// A pool line's timer task, by its weak hold on the pool.
struct Timer(Weak<Shared>);

impl Timer {
    /// Ends the waits that are due; the time until the next one is.
    fn expire(&self) -> Option<u64> {
        let s = self.0.upgrade()?;
        let timeout = s.hot.checkout_timeout_ns();
        let (woken, next) = lock(&s.line).expire(Tick::now(), timeout);
        woken.into_iter().for_each(std::task::Waker::wake);
        next
    }
}

impl Drop for Timer {
    /// Only when the task is dropped before it ended (its runtime shut
    /// down): the next wait then starts a new timer.
    fn drop(&mut self) {
        if let Some(s) = self.0.upgrade() {
            lock(&s.line).timer_stopped();
        }
    }
}

/// Whether a connection has outlived its lifetime or idle timeout.
fn expired(conn: &PooledConn, now: Tick, e: Expiry) -> bool {
    e.expired(conn.created(), conn.last_used(), now)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the data inconsistent
    // (push/pop/replace only), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pool's key: (client-facing database, user).
pub type PoolKey = (String, String);

/// All pools, keyed by (client-facing database, user). A pool is added
/// only once a server login for it succeeded, and dropped after it served
/// nobody for `server_idle_timeout`, so clients asking for databases that
/// do not exist leave nothing behind.
#[derive(Default)]
pub struct Pools {
    pools: Mutex<HashMap<PoolKey, Pool>>,
    paused: Mutex<Paused>,
    /// One async gate per key being created: concurrent first clients of a
    /// (database, user) wait for one server login instead of each opening
    /// a connection past the pool's size. Weak, so finished ones vanish.
    creating: Mutex<HashMap<PoolKey, std::sync::Weak<tokio::sync::Mutex<()>>>>,
    /// Pools dropped so far (the metrics forget their series when it moves).
    evicted: AtomicU64,
    /// `max_db_connections` and `max_user_connections`.
    limits: Limits,
}

/// What `PAUSE` covers: everything, or some databases.
#[derive(Default)]
struct Paused {
    all: bool,
    databases: HashSet<String>,
}

impl Pools {
    /// No pools yet; the ones made later are under `limits`.
    pub fn new(limits: Limits) -> Pools {
        Pools {
            limits,
            ..Default::default()
        }
    }

    /// The server connection limits a new pool for `key` is under.
    pub fn limits_for(&self, key: &PoolKey) -> Vec<Arc<SharedLimit>> {
        self.limits.for_pool(&key.0, &key.1)
    }

    /// The pool for `key`, if it exists.
    pub fn get(&self, key: &PoolKey) -> Option<Pool> {
        lock(&self.pools).get(key).cloned()
    }

    /// Whether a pool of `database` created now starts paused.
    pub fn paused_for(&self, database: &str) -> bool {
        let p = lock(&self.paused);
        p.all || p.databases.contains(database)
    }

    /// The gate that serialises the creation of the pool for `key`.
    pub fn creation_gate(&self, key: &PoolKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut creating = lock(&self.creating);
        if let Some(gate) = creating.get(key).and_then(std::sync::Weak::upgrade) {
            return gate;
        }
        creating.retain(|_, g| g.strong_count() > 0);
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        creating.insert(key.clone(), Arc::downgrade(&gate));
        gate
    }

    /// Adds `pool` (its server login succeeded) under `key` unless `max`
    /// pools exist; returns the pool now under `key`.
    pub fn insert(&self, key: PoolKey, pool: Pool, max: usize) -> Result<Pool, PoolError> {
        let mut pools = lock(&self.pools);
        if let Some(p) = pools.get(&key) {
            return Ok(p.clone());
        }
        if pools.len() >= max {
            return Err(PoolError::TooManyPools(max));
        }
        pool.set_paused(self.paused_for(&key.0));
        pools.insert(key, pool.clone());
        Ok(pool)
    }

    /// Runs `reap` on every pool, and drops the pools that served nobody
    /// for their `server_idle_timeout`.
    pub fn reap_all(&self, now: Tick) {
        for (_, p) in self.all() {
            p.reap(now);
        }
        let mut pools = lock(&self.pools);
        let before = pools.len();
        pools.retain(|_, p| !p.idle_since_long(now));
        let dropped = before - pools.len();
        if dropped > 0 {
            self.evicted.fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }

    /// How many pools were dropped so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Every pool with its (database, user), sorted.
    pub fn all(&self) -> Vec<((String, String), Pool)> {
        let mut v: Vec<_> = lock(&self.pools)
            .iter()
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Pauses or resumes `database` (all databases when `None`), including
    /// pools created later.
    pub fn set_paused(&self, database: Option<&str>, paused: bool) {
        {
            let mut p = lock(&self.paused);
            match (database, paused) {
                (None, _) => {
                    p.all = paused;
                    p.databases.clear();
                }
                (Some(db), true) => {
                    p.databases.insert(db.to_string());
                }
                (Some(db), false) => {
                    p.databases.remove(db);
                }
            }
        }
        for ((db, _), pool) in self.all() {
            if database.is_none_or(|d| d == db) {
                pool.set_paused(paused);
            }
        }
    }
}
