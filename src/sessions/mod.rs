//! Tables about client sessions that other tasks read: the cancel keys
//! (`cancel`), which instance issued a key (`peer_key`), the cancels being
//! sent on to peers (`forwards`) and who is connected and what they are
//! doing (`registry`), and how many clients of each database and user are
//! logged in (`seats`), and the memory budget for large held messages
//! (`budget`).

use std::sync::Arc;

pub mod budget;
pub mod cancel;
pub mod forwards;
pub mod peer_key;
pub mod registry;
pub mod seats;

/// The node address a table holds for a client's next server: `kept`, the
/// one it held for the last, when it is the same node's copy (nearly
/// always), else a clone of `addr`. Reusing it saves an atomic count to
/// clone and another to drop, per transaction.
fn reuse_addr(kept: Option<Arc<str>>, addr: &Arc<str>) -> Arc<str> {
    kept.filter(|a| Arc::ptr_eq(a, addr))
        .unwrap_or_else(|| addr.clone())
}
