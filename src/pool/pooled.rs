//! A server connection as the pool hands it out: the wire connection plus
//! what the pool and routing need to know about it (its slot, its node's
//! load, the generation and node incarnation it was opened in, when it was
//! last returned, whether it must close when it comes back). The relay
//! reaches the wire connection through `Deref`, as with any pool's
//! checked-out handle.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::line::{Line, Taken};

use crate::cluster::{NodeHandle, Route};
use crate::measure::tick::Tick;
use crate::server::ServerConn;

/// A server connection owned by a pool, idle or checked out.
pub struct PooledConn {
    // The connection, and after it its slot: the server sees the Terminate
    // and the close before the slot is freed for a new connection. Boxed: a
    // checkout, an attachment and a checkin each move the handle a few
    // times per transaction, and inline it would be copied whole each time.
    held: Box<Held>,
    /// Counted in its node's load (checked out). The count is taken and
    /// given back through `handle`: a guard of its own would clone the
    /// handle, an atomic count each way per transaction.
    counted: bool,
    /// Node index in the cluster.
    node: usize,
    /// The node incarnation this connection belongs to.
    epoch: u64,
    /// Its node's load count and incarnation.
    handle: NodeHandle,
    /// The pool generation it was opened in; `RECONNECT` retires older ones.
    generation: u64,
    /// When it was last returned to the pool.
    last_used: Tick,
    /// A cancel may still reach it: it must serve no other client.
    close_on_return: bool,
}

/// What a pooled connection keeps behind its box: what a transaction does
/// not touch stays out of the handle it moves (at 88 bytes, under 128, a
/// move is a few stores, not a call to `memcpy`).
struct Held {
    conn: ServerConn,
    /// Permits of `max_db_connections` / `max_user_connections`, held
    /// until the connection closes.
    _limits: Vec<OwnedSemaphorePermit>,
    /// Cancelled when the node's connections must close at once.
    retired: CancellationToken,
    /// Last: a connection that closes while checked out frees its pool
    /// slot once it is closed.
    slot: Slot,
}

/// The pool slot a checked-out connection holds: a flag, and the pool's
/// line to give it back to (the connection holds the line's `Arc` from
/// its opening, so a checkout clones none).
struct Slot {
    line: Arc<Mutex<Line<PooledConn>>>,
    held: bool,
}

impl Slot {
    fn free(&mut self) {
        if std::mem::take(&mut self.held) {
            let woken = super::lock(&self.line).give_back(None);
            if let Some(w) = woken {
                w.wake();
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.free();
    }
}

impl PooledConn {
    /// A connection just opened along `route` in pool generation
    /// `generation`, holding `limits` while it lives, whose slot comes
    /// from and goes back to `line` (its pool's).
    pub(super) fn new(
        conn: ServerConn,
        route: &Route,
        generation: u64,
        limits: Vec<OwnedSemaphorePermit>,
        line: &Arc<Mutex<Line<PooledConn>>>,
    ) -> PooledConn {
        PooledConn {
            counted: false,
            node: route.node,
            epoch: route.epoch,
            handle: route.handle.clone(),
            generation,
            // Never returned yet: idle since it was opened.
            last_used: conn.created(),
            close_on_return: false,
            held: Box::new(Held {
                conn,
                _limits: limits,
                retired: route.retired.clone(),
                slot: Slot {
                    line: line.clone(),
                    held: false,
                },
            }),
        }
    }

    /// Marks it checked out: it holds `slot`, of its pool's, and counts in
    /// its node's load.
    pub(super) fn lend(&mut self, slot: Taken<'_, PooledConn>) {
        debug_assert!(!self.held.slot.held);
        slot.forget();
        self.held.slot.held = true;
        if !std::mem::replace(&mut self.counted, true) {
            self.handle.add_load(1);
        }
    }

    /// Leaves its node's load count (it is back).
    pub(super) fn uncount(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.handle.add_load(-1);
        }
    }

    /// Hands its slot to the caller, who gives both back to the line under
    /// one lock. (A connection that closes instead keeps its slot, and
    /// gives it back itself once closed.)
    pub(super) fn unhold(&mut self) {
        let held = std::mem::take(&mut self.held.slot.held);
        debug_assert!(held, "a checked-out connection holds a slot");
    }

    /// Records that it went idle at `now`.
    pub(super) fn set_last_used(&mut self, now: Tick) {
        self.last_used = now;
    }

    /// Closes it when it comes back instead of keeping it: a cancel for its
    /// last client may still arrive and would hit the next client's query.
    pub fn close_on_return(&mut self) {
        self.close_on_return = true;
    }

    /// Whether it must close when it comes back.
    #[inline]
    pub fn closes_on_return(&self) -> bool {
        self.close_on_return
    }

    /// When it was last returned to the pool.
    #[inline]
    pub fn last_used(&self) -> Tick {
        self.last_used
    }

    /// The pool generation it was opened in.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Node index in the cluster.
    #[inline]
    pub fn node(&self) -> usize {
        self.node
    }

    /// The node incarnation this connection belongs to.
    #[inline]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether its node incarnation is still the current one.
    pub fn is_current(&self) -> bool {
        self.handle.is_current(self.epoch)
    }

    /// Cancelled when the node's connections must close at once (node down,
    /// role changed): a relay on this connection stops waiting for it.
    #[inline]
    pub fn retired(&self) -> &CancellationToken {
        &self.held.retired
    }
}

impl PooledConn {
    /// The connection to use, and the token of its node's retirement, borrowed apart.
    pub fn conn_and_retired(&mut self) -> (&mut ServerConn, &CancellationToken) {
        let held = &mut *self.held;
        (&mut held.conn, &held.retired)
    }
}

impl Drop for PooledConn {
    /// A connection that closes while checked out leaves its node's load.
    fn drop(&mut self) {
        if self.counted {
            self.handle.add_load(-1);
        }
    }
}

impl Deref for PooledConn {
    type Target = ServerConn;

    #[inline]
    fn deref(&self) -> &ServerConn {
        &self.held.conn
    }
}

impl DerefMut for PooledConn {
    #[inline]
    fn deref_mut(&mut self) -> &mut ServerConn {
        &mut self.held.conn
    }
}
