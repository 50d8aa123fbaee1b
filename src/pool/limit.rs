//! `max_db_connections` and `max_user_connections`: a bound on the server
//! connections, idle or in use, of several pools together (all pools of one
//! database, or of one user). Each server connection holds a permit of every
//! limit its pool is under from the moment it is opened until it closes, so
//! only opening a connection costs anything; a checkout served by an idle
//! connection does not touch the limit. A pool under no limit pays nothing.
//!
//! An idle connection of one pool must not keep another pool of the same
//! database waiting for ever: a full limit first closes the least recently
//! used idle connection of any of its pools, and a connection returned while
//! some checkout waits for room is closed instead of kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{lock, PoolError, PooledConn, Shared};

/// Which limit a checkout ran into, for the client's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{of} \"{name}\" has {key} = {max} server connections")]
pub struct LimitHit {
    /// The configuration key.
    pub key: &'static str,
    /// `database` or `user`.
    pub of: &'static str,
    /// The database's (client-facing) or user's name.
    pub name: String,
    /// The limit.
    pub max: usize,
}

/// One database's or one user's bound on server connections.
pub struct SharedLimit {
    hit: LimitHit,
    slots: Arc<Semaphore>,
    /// Checkouts waiting for a permit now.
    waiting: AtomicUsize,
    /// The pools under this limit, to take an idle connection from.
    pools: Mutex<Vec<Weak<Shared>>>,
}

impl SharedLimit {
    fn new(hit: LimitHit) -> SharedLimit {
        SharedLimit {
            slots: Arc::new(Semaphore::new(hit.max)),
            hit,
            waiting: AtomicUsize::new(0),
            pools: Mutex::default(),
        }
    }

    /// Counts `pool` among the pools under this limit.
    pub(super) fn enroll(&self, pool: &Arc<Shared>) {
        let mut pools = lock(&self.pools);
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(pool));
    }

    /// Whether some checkout waits for room now: a returned connection
    /// should close and hand its place over.
    pub(super) fn wanted(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// A permit for one more server connection, closing an idle connection
    /// of a pool under the limit when it is full, else waiting until
    /// `deadline`.
    pub(super) async fn acquire(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<OwnedSemaphorePermit, PoolError> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        if let Some(conn) = self.take_idle() {
            drop(conn);
            if let Ok(p) = self.slots.clone().try_acquire_owned() {
                return Ok(p);
            }
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let got = tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        match got {
            Ok(Ok(p)) => Ok(p),
            _ => Err(PoolError::Limit(self.hit.clone())),
        }
    }

    /// Removes the least recently used idle connection of the pools under
    /// this limit (the caller drops it, outside any lock).
    fn take_idle(&self) -> Option<PooledConn> {
        let pools: Vec<Arc<Shared>> = lock(&self.pools).iter().filter_map(Weak::upgrade).collect();
        let mut oldest: Option<(usize, crate::measure::tick::Tick)> = None;
        for (i, p) in pools.iter().enumerate() {
            // Idle lists are kept most recently used last.
            if let Some(c) = lock(&p.line).idle.first() {
                if oldest.is_none_or(|(_, t)| c.last_used() < t) {
                    oldest = Some((i, c.last_used()));
                }
            }
        }
        let (i, _) = oldest?;
        let mut line = lock(&pools[i].line);
        (!line.idle.is_empty()).then(|| line.idle.remove(0))
    }
}

/// The limits in force, one per database and per user that has a pool.
/// Fixed at start (the keys need a restart), weakly held so that a name
/// whose pools are all gone leaves nothing behind.
#[derive(Default)]
pub struct Limits {
    max_db: usize,
    max_user: usize,
    by_db: Mutex<HashMap<String, Weak<SharedLimit>>>,
    by_user: Mutex<HashMap<String, Weak<SharedLimit>>>,
}

impl Limits {
    /// `max_db_connections` and `max_user_connections`; 0 is no limit.
    pub fn new(max_db: usize, max_user: usize) -> Limits {
        Limits {
            max_db,
            max_user,
            ..Default::default()
        }
    }

    /// The limits a new pool of (`database`, `user`) is under.
    pub fn for_pool(&self, database: &str, user: &str) -> Vec<Arc<SharedLimit>> {
        let mut out = vec![];
        if self.max_db > 0 {
            out.push(shared(&self.by_db, database, || LimitHit {
                key: "max_db_connections",
                of: "database",
                name: database.to_string(),
                max: self.max_db,
            }));
        }
        if self.max_user > 0 {
            out.push(shared(&self.by_user, user, || LimitHit {
                key: "max_user_connections",
                of: "user",
                name: user.to_string(),
                max: self.max_user,
            }));
        }
        out
    }
}

fn shared(
    map: &Mutex<HashMap<String, Weak<SharedLimit>>>,
    name: &str,
    hit: impl FnOnce() -> LimitHit,
) -> Arc<SharedLimit> {
    let mut map = lock(map);
    if let Some(l) = map.get(name).and_then(Weak::upgrade) {
        return l;
    }
    map.retain(|_, l| l.strong_count() > 0);
    let l = Arc::new(SharedLimit::new(hit()));
    map.insert(name.to_string(), Arc::downgrade(&l));
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_limit_per_name_and_none_when_unset() {
        let none = Limits::new(0, 0);
        assert!(none.for_pool("app", "u").is_empty());
        let both = Limits::new(2, 3);
        let a = both.for_pool("app", "u");
        let b = both.for_pool("app", "v");
        assert_eq!(a.len(), 2);
        assert!(Arc::ptr_eq(&a[0], &b[0]), "one limit per database");
        assert!(!Arc::ptr_eq(&a[1], &b[1]), "one limit per user");
        assert_eq!(a[1].hit.max, 3);
        assert_eq!(
            a[0].hit.to_string(),
            "database \"app\" has max_db_connections = 2 server connections"
        );
        let only_user = Limits::new(0, 1);
        assert_eq!(
            only_user.for_pool("app", "u")[0].hit.key,
            "max_user_connections"
        );
    }

    #[tokio::test]
    async fn a_full_limit_waits_until_the_deadline_then_names_itself() {
        let l = Limits::new(1, 0).for_pool("app", "u").remove(0);
        let held = l.acquire(tokio::time::Instant::now()).await.unwrap();
        let soon = tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        match l.acquire(soon).await {
            Err(PoolError::Limit(hit)) => assert_eq!(hit.key, "max_db_connections"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        drop(held);
        assert!(l.acquire(soon).await.is_ok(), "a freed permit is reusable");
    }
}
