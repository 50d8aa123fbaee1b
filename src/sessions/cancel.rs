//! Cancel keys. Each client gets a BackendKeyData from Switchyard (never a
//! server's), and the map knows which server connection, if any, runs that
//! client's query right now. A CancelRequest must match both pid and secret.
//! With peering on, the pid carries this instance's peer id (`peer_key`).
//!
//! A cancel is sent after it is looked up, so it may reach PostgreSQL when
//! the client's transaction is over. The map counts the cancels on their
//! way per client, and the relay waits for them when it detaches the client
//! from its server: otherwise the server could already run another client's
//! query, and that query would be cancelled. The count lives under the lock
//! the relay takes anyway to point cancels at a server and away again, so a
//! transaction with no cancel pays nothing more.

use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::Notify;

use super::peer_key;

/// Where a cancel for one client should go at this moment.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// Server address.
    pub addr: Arc<str>,
    /// The server connection's own BackendKeyData.
    pub key: (i32, i32),
    /// Whether that connection is encrypted: under `cluster.tls.mode =
    /// "prefer"` its cancel is too (`server::channel`).
    pub tls: bool,
}

/// One client's cancel state, shared by its relay and the CancelRequests for it.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    /// Woken when the last cancel on its way ends.
    idle: Notify,
}

#[derive(Default)]
struct SlotState {
    /// The server running the client's query, while `attached`. Kept after
    /// a detach, for the next attachment's `reuse_addr`.
    target: Option<CancelTarget>,
    /// Whether a query runs on `target`.
    attached: bool,
    /// Cancels looked up and not yet ended.
    sending: u32,
    /// A cancel ended without knowing whether PostgreSQL got it: it may
    /// still arrive.
    doubtful: bool,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// All live clients' cancel keys.
#[derive(Default)]
pub struct CancelMap {
    map: DashMap<i32, (i32, Arc<Slot>)>,
    /// This instance's peer id, carried in every pid it issues.
    peer: Option<u8>,
}

/// A client's registration; dropping it removes the key.
pub struct CancelGuard {
    map: Arc<CancelMap>,
    /// The pid given to the client.
    pub pid: i32,
    /// The secret given to the client.
    pub secret: i32,
    slot: Arc<Slot>,
}

/// A cancel on its way to a client's server. The client's relay waits for
/// it before that server may serve anyone else; dropping it unsettled (an
/// error after sending, a timeout, a dropped task) leaves it doubtful.
pub struct Sending {
    slot: Arc<Slot>,
    target: CancelTarget,
    settled: bool,
}

/// Cancels that were on their way to a server when its client detached.
pub struct Unsettled(Arc<Slot>);

impl CancelMap {
    /// A map whose keys carry `peer` (`None`: wholly random keys).
    pub fn new(peer: Option<u8>) -> CancelMap {
        CancelMap {
            map: DashMap::new(),
            peer,
        }
    }

    /// This instance's peer id, if peering is on.
    pub fn peer_id(&self) -> Option<u8> {
        self.peer
    }

    /// Registers a new client under a fresh random key.
    pub fn register(self: &Arc<Self>) -> CancelGuard {
        let slot = Arc::new(Slot::default());
        loop {
            let pid = peer_key::issue_pid(self.peer, rand::random());
            let secret: i32 = rand::random();
            if let Entry::Vacant(v) = self.map.entry(pid) {
                v.insert((secret, slot.clone()));
                return CancelGuard {
                    map: self.clone(),
                    pid,
                    secret,
                    slot,
                };
            }
        }
    }

    /// A cancel with this key, counted as on its way, if the key is right
    /// and a query runs. The only way to a target: every cancel is counted.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<Sending> {
        // Copy out and drop the map guard before anyone awaits.
        let slot = {
            let entry = self.map.get(&pid)?;
            if entry.0 != secret {
                return None;
            }
            entry.1.clone()
        };
        let target = {
            let mut state = slot.lock();
            // Detached: the target kept for the next attachment is not cloned.
            let target = state.attached.then(|| state.target.clone()).flatten()?;
            state.sending += 1;
            target
        };
        Some(Sending {
            slot,
            target,
            settled: false,
        })
    }
}

impl CancelGuard {
    /// Points cancels at the server connection now serving the client:
    /// at `addr`, with the connection's own `key`, encrypted if `tls`.
    pub fn attach(&self, addr: &Arc<str>, key: (i32, i32), tls: bool) {
        let mut state = self.slot.lock();
        let kept = state.target.take().map(|t| t.addr);
        state.target = Some(CancelTarget {
            addr: super::reuse_addr(kept, addr),
            key,
            tls,
        });
        state.attached = true;
    }

    /// Points cancels nowhere. `Some` if cancels looked up before are still
    /// on their way (or one ended in doubt): wait for them before the server
    /// serves anyone else.
    pub fn detach(&self) -> Option<Unsettled> {
        let mut state = self.slot.lock();
        state.attached = false;
        (state.sending > 0 || state.doubtful).then(|| Unsettled(self.slot.clone()))
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.map.map.remove(&self.pid);
    }
}

impl Sending {
    /// Where to send it.
    pub fn target(&self) -> &CancelTarget {
        &self.target
    }

    /// It reached PostgreSQL (which closed the connection after acting on
    /// it), or never left: nothing of it can arrive later.
    pub fn settle(mut self) {
        self.settled = true;
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        let mut state = self.slot.lock();
        state.sending -= 1;
        state.doubtful |= !self.settled;
        if state.sending == 0 {
            // One waiter at most (the client's relay); a stored permit when
            // it is not waiting yet just makes it look again.
            self.slot.idle.notify_one();
        }
    }
}

impl Unsettled {
    /// Waits until no cancel is on its way. True if each reached PostgreSQL
    /// or never left, so the server may serve another client; false if one
    /// may still arrive, so it must be closed. Bounded by the cancels' own
    /// timeouts.
    pub async fn wait(self) -> bool {
        loop {
            let woken = self.0.idle.notified();
            {
                let mut state = self.0.lock();
                if state.sending == 0 {
                    return !std::mem::take(&mut state.doubtful);
                }
            }
            woken.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_key_finds_the_target() {
        let map = Arc::new(CancelMap::default());
        let g = map.register();
        assert!(
            map.lookup(g.pid, g.secret).is_none(),
            "no query running yet"
        );
        let addr: Arc<str> = "h:1".into();
        g.attach(&addr, (5, 6), false);
        let found = map.lookup(g.pid, g.secret).map(|s| s.target().key);
        assert_eq!(found, Some((5, 6)));
        g.detach();
        assert!(map.lookup(g.pid, g.secret).is_none(), "detached");
        // The next attachment's key and address, whether the node is the
        // last one's or another.
        g.attach(&addr, (7, 8), true);
        let found = map.lookup(g.pid, g.secret).map(|s| s.target().clone());
        assert_eq!(found.map(|t| (t.key, t.tls)), Some(((7, 8), true)));
        g.detach();
        g.attach(&"h:2".into(), (9, 10), false);
        let found = map.lookup(g.pid, g.secret).map(|s| s.target().clone());
        assert_eq!(
            found.map(|t| (t.addr, t.key)),
            Some(("h:2".into(), (9, 10)))
        );
        assert!(map.lookup(g.pid, g.secret.wrapping_add(1)).is_none());
        assert!(map.lookup(g.pid ^ 1, g.secret).is_none());
        let pid = g.pid;
        drop(g);
        assert!(map.map.get(&pid).is_none());
    }

    /// How a cancel looked up while the client was attached ends, and
    /// whether before or after the client detaches.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Ends {
        SettledBefore,
        DoubtfulBefore,
        SettledAfter,
        DoubtfulAfter,
    }

    #[tokio::test]
    async fn a_detach_waits_for_the_cancels_on_their_way_and_hears_their_doubts() {
        use Ends::*;
        let map = Arc::new(CancelMap::default());
        let g = map.register();
        // (the cancels, what the detach waits for: None for nothing, else
        // whether the server may then serve another client)
        let cases: [(&[Ends], Option<bool>); 7] = [
            (&[], None),
            (&[SettledBefore], None),
            (&[DoubtfulBefore], Some(false)),
            (&[SettledAfter], Some(true)),
            (&[DoubtfulAfter], Some(false)),
            (&[SettledAfter, SettledAfter], Some(true)),
            (&[SettledBefore, DoubtfulAfter], Some(false)),
        ];
        for (ends, want) in cases {
            g.attach(&"h:1".into(), (5, 6), false);
            let mut after = Vec::new();
            for &end in ends {
                let s = map.lookup(g.pid, g.secret).expect("attached: a target");
                match end {
                    SettledBefore => s.settle(),
                    DoubtfulBefore => drop(s),
                    SettledAfter | DoubtfulAfter => after.push((s, end == SettledAfter)),
                }
            }
            let unsettled = g.detach();
            assert!(map.lookup(g.pid, g.secret).is_none(), "detached: no target");
            assert_eq!(unsettled.is_some(), want.is_some(), "{ends:?}");
            let Some(unsettled) = unsettled else { continue };
            let waiting = tokio::spawn(unsettled.wait());
            for (s, settle) in after {
                tokio::task::yield_now().await;
                assert!(
                    !waiting.is_finished(),
                    "{ends:?}: done with a cancel on its way"
                );
                if settle {
                    s.settle();
                }
            }
            assert_eq!(Some(waiting.await.unwrap()), want, "{ends:?}");
            assert!(g.detach().is_none(), "{ends:?}: a doubt is heard once");
        }
    }

    #[test]
    fn keys_carry_the_peer_id() {
        let map = Arc::new(CancelMap::new(Some(7)));
        for _ in 0..100 {
            let g = map.register();
            assert!(g.pid >= 0);
            assert_eq!(peer_key::peer_of(g.pid), 7);
        }
        assert_eq!(map.peer_id(), Some(7));
    }
}
