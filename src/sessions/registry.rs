//! Who is connected: one entry per logged-in client, for `SHOW CLIENTS`,
//! `SHOW SERVERS`, `SHOW POOLS`, the client gauges and `KILL`. A client
//! updates its own entry (atomics, and a mutex nobody else holds for long)
//! when it waits for, takes or returns a server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::SystemTime;

use dashmap::DashMap;
use futures_util::task::AtomicWaker;

/// A client's state, PgBouncer's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Logged in, holding no server, nothing asked.
    Idle = 0,
    /// Asked for a server and waiting for one (pool full, paused, or held
    /// during a failover).
    Waiting = 1,
    /// Linked to a server connection.
    Active = 2,
}

impl ClientState {
    /// The label used in metrics and the admin console.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Waiting => "waiting",
            ClientState::Active => "active",
        }
    }

    fn from_u8(v: u8) -> ClientState {
        match v {
            1 => ClientState::Waiting,
            2 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }
}

/// The server connection a client holds, as shown by `SHOW SERVERS`.
#[derive(Debug, Clone)]
pub struct Linked {
    /// Node address (`host:port`).
    pub addr: Arc<str>,
    /// The server's local socket address.
    pub local: Option<SocketAddr>,
    /// Backend process id.
    pub pid: i32,
    /// When the server connection was opened.
    pub connected_at: SystemTime,
    /// Statements prepared on it.
    pub prepared: usize,
}

/// One connected client.
#[derive(Debug)]
pub struct ClientInfo {
    /// Unique per process, shown as `id`/`ptr`.
    pub id: u64,
    /// Login user (one copy shared by the clients of the name).
    pub user: Arc<str>,
    /// Client-facing database (one copy shared by the clients of the name).
    pub database: Arc<str>,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The proxy's address on this connection.
    pub local: Option<SocketAddr>,
    /// When the client connected.
    pub connected_at: SystemTime,
    /// `application_name` from the startup packet.
    pub application_name: String,
    /// Set by admin `KILL` of the client's database: the client is
    /// disconnected.
    killed: AtomicBool,
    /// The client's task, woken by `KILL` and by the proxy's shutdown. A
    /// waker slot of its own, not a cancellation token's waiter list (its
    /// locks and allocations).
    wake: AtomicWaker,
    /// Wakes of `wake` so far: each takes the waker out of the slot.
    rings: AtomicUsize,
    /// The waker the client's task last put in `wake` (its data and vtable
    /// pointers) and `rings` then. Written by that task alone, so plain
    /// stores: the task registers again only when its waker changed or a
    /// wake took it, not at every wait (two atomic read-modify-writes a
    /// registration, at three waits per transaction).
    registered: [AtomicUsize; 3],
    state: AtomicU8,
    pinned: std::sync::OnceLock<&'static str>,
    /// Unix µs of the last state change (request_time / wait start).
    since_us: AtomicU64,
    link: Mutex<Option<Linked>>,
}

impl ClientInfo {
    /// The client's state now.
    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// When the current state began.
    pub fn since(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH
            + std::time::Duration::from_micros(self.since_us.load(Ordering::Relaxed))
    }

    /// Moves to `state`, holding `link` (a server, when active). The link
    /// is shown only while the client is active (see [`ClientInfo::link`]),
    /// so leaving that state does not take the lock to clear it: that was
    /// a second lock per transaction. The next activation replaces it.
    pub fn set(&self, state: ClientState, link: Option<Linked>) {
        debug_assert!(link.is_none() || state == ClientState::Active);
        if state == ClientState::Active {
            *self.link.lock().unwrap_or_else(|e| e.into_inner()) = link;
        }
        self.enter(state);
    }

    /// Marks the start of `state`. Release: a reader that sees `Active`
    /// sees the link stored before it.
    fn enter(&self, state: ClientState) {
        self.state.store(state as u8, Ordering::Release);
        self.since_us.store(coarse_unix_micros(), Ordering::Relaxed);
    }

    /// Moves to `Active` on the server at `addr` that `link` describes
    /// (given the address to hold: the last link's when it is the same
    /// node's, see `reuse_addr`).
    pub fn activate(&self, addr: &Arc<str>, link: impl FnOnce(Arc<str>) -> Linked) {
        {
            let mut held = self.link.lock().unwrap_or_else(|e| e.into_inner());
            let kept = held.take().map(|l| l.addr);
            *held = Some(link(super::reuse_addr(kept, addr)));
        }
        self.enter(ClientState::Active);
    }

    /// `KILL`: the client's task is woken and ends the session.
    fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.ring();
    }

    /// Wakes the client's task. Counted before the waker is taken: a task
    /// that reads the count unchanged still has its waker in the slot (a
    /// wake after the read finds it there).
    fn ring(&self) {
        self.rings.fetch_add(1, Ordering::AcqRel);
        self.wake.wake();
    }

    /// Makes sure `waker` is in the slot that `KILL` and shutdown wake.
    /// Called by the client's task alone (see `registered`).
    fn watch(&self, waker: &Waker) {
        let rings = self.rings.load(Ordering::Acquire);
        let mine = [
            waker.data() as usize,
            std::ptr::from_ref(waker.vtable()) as usize,
            rings,
        ];
        if self
            .registered
            .iter()
            .zip(mine)
            .all(|(r, m)| r.load(Ordering::Relaxed) == m)
        {
            return;
        }
        self.wake.register(waker);
        for (r, m) in self.registered.iter().zip(mine) {
            r.store(m, Ordering::Relaxed);
        }
    }

    /// Whether `KILL` reached the client.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// Ready once `KILL` reaches the client. To be polled by the client's
    /// own task only (see `registered`).
    pub fn killed(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            self.watch(cx.waker());
            if self.is_killed() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Marks the client pinned to its server connection, for `why` (the
    /// first reason stays).
    pub fn pin(&self, why: &'static str) {
        let _ = self.pinned.set(why);
    }

    /// Whether the client is pinned to its server connection.
    pub fn is_pinned(&self) -> bool {
        self.pinned.get().is_some()
    }

    /// Why the client is pinned, if it is.
    pub fn pin_reason(&self) -> Option<&'static str> {
        self.pinned.get().copied()
    }

    /// The server connection held now.
    pub fn link(&self) -> Option<Linked> {
        if self.state.load(Ordering::Acquire) != ClientState::Active as u8 {
            return None;
        }
        self.link.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// All logged-in clients.
#[derive(Debug, Default)]
pub struct Registry {
    clients: DashMap<u64, Arc<ClientInfo>>,
    next: AtomicU64,
    /// User and database names of logged-in clients.
    names: Names,
    /// The proxy is shutting down: every client's task was woken to see it.
    stopping: AtomicBool,
}

/// One copy of each user and database name in use: thousands of clients
/// of one pool share two strings instead of holding two each. Names no
/// client uses any more are swept as the table grows.
#[derive(Debug, Default)]
struct Names(Mutex<std::collections::HashMap<String, std::sync::Weak<str>>>);

impl Names {
    /// Logged-in clients' names: at most one per pool and admin user, so
    /// the table stays small; a sweep past this many keeps it so.
    const SWEEP_PAST: usize = 4096;

    fn intern(&self, name: String) -> Arc<str> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = map.get(name.as_str()).and_then(std::sync::Weak::upgrade) {
            return kept;
        }
        if map.len() >= Self::SWEEP_PAST {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let kept: Arc<str> = name.as_str().into();
        map.insert(name, Arc::downgrade(&kept));
        kept
    }
}

/// What a client tells the registry about itself at login.
pub struct Arrival {
    /// Login user.
    pub user: String,
    /// Client-facing database.
    pub database: String,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The proxy's address on this connection.
    pub local: Option<SocketAddr>,
    /// `application_name` from the startup packet.
    pub application_name: String,
}

/// Removes the client from the registry when dropped.
pub struct Registration {
    registry: Arc<Registry>,
    /// The client's entry.
    pub info: Arc<ClientInfo>,
}

/// Why an idle client's wait was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// The proxy is shutting down.
    Shutdown,
    /// An operator ran `KILL` on the client's database.
    Killed,
}

impl Registration {
    /// Whether the proxy is shutting down.
    pub fn stopping(&self) -> bool {
        self.registry.stopping.load(Ordering::Acquire)
    }

    /// Ready once the proxy shuts down or `KILL` reaches the client.
    pub fn interrupted(&self) -> impl Future<Output = Interrupt> + '_ {
        std::future::poll_fn(move |cx| {
            self.info.watch(cx.waker());
            if self.stopping() {
                Poll::Ready(Interrupt::Shutdown)
            } else if self.info.is_killed() {
                Poll::Ready(Interrupt::Killed)
            } else {
                Poll::Pending
            }
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.clients.remove(&self.info.id);
    }
}

impl Registry {
    /// Adds a client, idle.
    pub fn register(self: &Arc<Self>, a: Arrival) -> Registration {
        let now = SystemTime::now();
        let database = self.names.intern(a.database);
        let info = Arc::new(ClientInfo {
            id: self.next.fetch_add(1, Ordering::Relaxed) + 1,
            user: self.names.intern(a.user),
            database,
            peer: a.peer,
            local: a.local,
            connected_at: now,
            application_name: a.application_name,
            killed: AtomicBool::new(false),
            wake: AtomicWaker::new(),
            rings: AtomicUsize::new(0),
            registered: Default::default(),
            state: AtomicU8::new(ClientState::Idle as u8),
            pinned: Default::default(),
            since_us: AtomicU64::new(unix_micros(now)),
            link: Mutex::new(None),
        });
        self.clients.insert(info.id, info.clone());
        Registration {
            registry: self.clone(),
            info,
        }
    }

    /// Disconnects every client of `database` now logged in (admin
    /// `KILL`); clients that log in afterwards are not touched.
    pub fn kill_database(&self, database: &str) {
        for c in self.clients.iter().filter(|c| *c.database == *database) {
            c.kill();
        }
    }

    /// The proxy shuts down: every client's task is woken to see it (and
    /// ends between transactions).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for c in self.clients.iter() {
            c.ring();
        }
    }

    /// A copy of every entry (no map guard outlives this call).
    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = self.clients.iter().map(|e| e.value().clone()).collect();
        v.sort_by_key(|c| c.id);
        v
    }
}

/// Microseconds since the Unix epoch.
pub fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The wall clock to the kernel's tick (a few milliseconds), for the times
/// `SHOW CLIENTS` shows: a state changes three times per transaction, and
/// the coarse clock is read without the time stamp counter.
fn coarse_unix_micros() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } != 0 {
        return unix_micros(SystemTime::now());
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_is_the_wall_clock_to_a_tick() {
        let fine = unix_micros(SystemTime::now());
        let coarse = coarse_unix_micros();
        // A tick is at most 10 ms (HZ = 100); allow for a slow test host.
        assert!(fine.abs_diff(coarse) < 1_000_000, "{fine} vs {coarse}");
    }

    fn arrival(user: &str) -> Arrival {
        Arrival {
            user: user.into(),
            database: "app".into(),
            peer: None,
            local: None,
            application_name: String::new(),
        }
    }

    /// User `u` logging in to `database`.
    fn arrival_to(database: &str) -> Arrival {
        Arrival {
            database: database.into(),
            ..arrival("u")
        }
    }

    #[test]
    fn entries_live_as_long_as_their_registration() {
        let r = Arc::new(Registry::default());
        let a = r.register(arrival("a"));
        let b = r.register(arrival("b"));
        assert_eq!(r.all().len(), 2);
        b.info.set(ClientState::Waiting, None);
        assert_eq!(r.all()[1].state(), ClientState::Waiting);
        drop(b);
        let all = r.all();
        assert_eq!(all.len(), 1);
        assert_eq!(&*all[0].user, "a");
        assert_eq!(a.info.state(), ClientState::Idle);
    }

    #[test]
    fn clients_of_one_name_share_it_and_unused_names_go() {
        let names = Names::default();
        let a = names.intern("app".into());
        let b = names.intern("app".into());
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        // A name no client holds is made afresh, not revived.
        let c = names.intern("app".into());
        assert_eq!(&*c, "app");
        assert_eq!(Arc::strong_count(&c), 1);
    }

    #[test]
    fn kill_reaches_the_databases_clients_and_not_later_ones() {
        let reg = Arc::new(Registry::default());
        let (a, b, other) = (
            reg.register(arrival_to("app")),
            reg.register(arrival_to("app")),
            reg.register(arrival_to("other")),
        );
        reg.kill_database("app");
        assert!(a.info.is_killed() && b.info.is_killed());
        assert!(!other.info.is_killed());
        let later = reg.register(arrival_to("app"));
        assert!(!later.info.is_killed());
    }

    #[tokio::test]
    async fn kill_and_stop_wake_a_waiting_client() {
        let reg = Arc::new(Registry::default());
        let wait = |r: Registration| tokio::spawn(async move { r.interrupted().await });
        let (a, b) = (
            wait(reg.register(arrival_to("app"))),
            wait(reg.register(arrival_to("b"))),
        );
        // Both tasks are parked on their waits before anything happens.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        reg.kill_database("app");
        assert_eq!(a.await.unwrap(), Interrupt::Killed);
        assert!(!b.is_finished());
        reg.stop();
        assert_eq!(b.await.unwrap(), Interrupt::Shutdown);
    }

    /// A wake takes the task's waker out of the slot: the next wait puts
    /// it back, though the task and its waker are the same, and a later
    /// `KILL` still wakes it. Waits that follow one another, as in every
    /// transaction, register once.
    #[tokio::test]
    async fn a_wait_after_a_wake_registers_again() {
        let reg = Arc::new(Registry::default());
        let r = reg.register(arrival_to("app"));
        let info = r.info.clone();
        // The wait of a session mode client in a transaction: shutdown
        // wakes it, and it waits on for `KILL`.
        let task = tokio::spawn(async move { r.info.killed().await });
        let settle = || tokio::time::sleep(std::time::Duration::from_millis(20));
        settle().await;
        let registered = info.registered[2].load(Ordering::Relaxed);
        reg.stop();
        settle().await;
        assert!(!task.is_finished());
        // The task saw the wake and registered anew, counting it.
        assert_eq!(info.registered[2].load(Ordering::Relaxed), registered + 1);
        reg.kill_database("app");
        let finished = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        finished.expect("KILL woke the task").unwrap();
    }

    #[tokio::test]
    async fn waits_that_follow_one_another_register_once() {
        let reg = Arc::new(Registry::default());
        let r = reg.register(arrival_to("app"));
        for _ in 0..3 {
            // Polled once each, as a `select!` polls its branches.
            let mut wait = std::pin::pin!(r.interrupted());
            let waker = futures_util::task::noop_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            assert!(wait.as_mut().poll(&mut cx).is_pending());
        }
        let seen = r
            .info
            .registered
            .each_ref()
            .map(|a| a.load(Ordering::Relaxed));
        let waker = futures_util::task::noop_waker();
        assert_eq!(seen[0], waker.data() as usize);
        assert_eq!(seen[2], 0);
        // A wake takes it: the next wait registers again.
        reg.stop();
        let mut wait = std::pin::pin!(r.interrupted());
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        assert_eq!(r.info.registered[2].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_activation_shows_its_server_and_keeps_the_address_of_the_same_node() {
        let reg = Arc::new(Registry::default());
        let r = reg.register(arrival("a"));
        let link = |addr: Arc<str>, pid| Linked {
            addr,
            local: None,
            pid,
            connected_at: SystemTime::UNIX_EPOCH,
            prepared: 0,
        };
        let (one, two): (Arc<str>, Arc<str>) = ("h:1".into(), "h:2".into());
        r.info.activate(&one, |a| link(a, 10));
        assert_eq!(r.info.state(), ClientState::Active);
        assert_eq!(r.info.link().map(|l| l.pid), Some(10));
        r.info.set(ClientState::Idle, None);
        assert!(r.info.link().is_none(), "idle: no server shown");
        // Another server of the same node: the address held is reused.
        r.info.activate(&one.clone(), |a| link(a, 11));
        let shown = r.info.link().unwrap();
        assert_eq!((shown.pid, &*shown.addr), (11, "h:1"));
        assert_eq!(Arc::strong_count(&one), 3, "ours, the entry's, `shown`");
        drop(shown);
        r.info.activate(&two, |a| link(a, 12));
        let shown = r.info.link().unwrap();
        assert_eq!((shown.pid, &*shown.addr), (12, "h:2"));
        assert_eq!(Arc::strong_count(&one), 1, "the old node's address let go");
    }
}
