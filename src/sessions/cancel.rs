//! Cancel keys. Each client gets a BackendKeyData from Switchyard (never a
//! server's), and the map knows which server connection, if any, runs that
//! client's query right now. A CancelRequest must match both pid and secret.
//! With peering on, the pid carries this instance's peer id (`peer_key`).

use std::sync::{Arc, Mutex};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::peer_key;

/// Where a cancel for one client should go at this moment.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// Server address.
    pub addr: Arc<str>,
    /// The server connection's own BackendKeyData.
    pub key: (i32, i32),
}

type Slot = Arc<Mutex<Option<CancelTarget>>>;

/// All live clients' cancel keys.
#[derive(Default)]
pub struct CancelMap {
    map: DashMap<i32, (i32, Slot)>,
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
    slot: Slot,
}

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
        let slot: Slot = Arc::default();
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

    /// The target for a cancel with this key, if the key is right and a query runs.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        // Copy out and drop the map guard before anyone awaits.
        let slot = {
            let entry = self.map.get(&pid)?;
            if entry.0 != secret {
                return None;
            }
            entry.1.clone()
        };
        let target = slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        target
    }
}

impl CancelGuard {
    /// Points cancels at the server connection now serving the client (or nowhere).
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.map.map.remove(&self.pid);
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
        g.set(Some(CancelTarget {
            addr: "h:1".into(),
            key: (5, 6),
        }));
        assert_eq!(map.lookup(g.pid, g.secret).map(|t| t.key), Some((5, 6)));
        assert!(map.lookup(g.pid, g.secret.wrapping_add(1)).is_none());
        assert!(map.lookup(g.pid ^ 1, g.secret).is_none());
        let pid = g.pid;
        drop(g);
        assert!(map.map.get(&pid).is_none());
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
