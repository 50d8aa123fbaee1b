//! `proxy.max_memory`: one budget, shared by every client, for the large
//! messages the proxy must hold whole (a Query, a Parse). Each such message
//! reserves its length before its body is read; small ones cost nothing
//! here (each client's own buffers bound them). A message that cannot fit
//! waits for others to finish, up to a limit, and is then refused.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Messages held whole up to this size need no part of the budget.
pub const FREE_UP_TO: usize = 64 * 1024;

/// The bytes left for large held messages.
#[derive(Debug)]
pub struct Budget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// Room for one held message, given back when dropped.
#[derive(Debug)]
pub struct Grant {
    len: usize,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Why a message got no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Larger than the whole budget: it can never fit.
    #[error("a message larger than max_memory")]
    Never,
    /// The budget stayed in use by other messages for the whole wait.
    #[error("max_memory in use by other messages")]
    Busy,
}

impl Budget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Budget {
        Budget {
            bytes: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            total,
        }
    }

    /// The configured size.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Room for a message of `len` bytes to be held whole, waiting up to
    /// `wait` for others to give theirs back.
    pub async fn reserve(&self, len: usize, wait: Duration) -> Result<Grant, Denied> {
        if len <= FREE_UP_TO {
            return Ok(Grant { len, _permit: None });
        }
        let n = u32::try_from(len).map_err(|_| Denied::Never)?;
        if len > self.total {
            return Err(Denied::Never);
        }
        let permit = tokio::time::timeout(wait, self.bytes.clone().acquire_many_owned(n));
        match permit.await {
            Ok(Ok(p)) => Ok(Grant {
                len,
                _permit: Some(p),
            }),
            Ok(Err(_)) => Err(Denied::Never),
            Err(_) => Err(Denied::Busy),
        }
    }
}

impl Grant {
    /// Whether this room suffices for a message of `len` bytes.
    pub fn covers(&self, len: usize) -> bool {
        len <= self.len
    }
}

/// The length of a message to be held whole that starts at the front of
/// `buf` and has not all arrived, when it needs part of the budget.
/// `held(tag, len)` says which messages are held whole.
pub fn large_incomplete(buf: &[u8], held: impl Fn(u8, usize) -> bool) -> Option<usize> {
    let h = buf.get(..5)?;
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    (len > FREE_UP_TO && buf.len() <= len && held(h[0], len)).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn large_messages_share_the_budget_and_small_ones_are_free() {
        let b = Budget::new(300 * 1024);
        let wait = Duration::from_millis(20);
        let small = b.reserve(FREE_UP_TO, wait).await.unwrap();
        assert!(small.covers(FREE_UP_TO) && !small.covers(FREE_UP_TO + 1));
        let first = b.reserve(200 * 1024, wait).await.unwrap();
        assert_eq!(b.reserve(200 * 1024, wait).await.err(), Some(Denied::Busy));
        assert_eq!(b.reserve(400 * 1024, wait).await.err(), Some(Denied::Never));
        drop(first);
        assert!(b.reserve(200 * 1024, wait).await.is_ok());
    }

    #[test]
    fn only_incomplete_large_held_messages_need_room() {
        let frame = |tag: u8, len: usize, have: usize| {
            let mut v = vec![tag];
            v.extend((len as u32).to_be_bytes());
            v.resize(have, b'x');
            v
        };
        let q = |t: u8, _| t == b'Q';
        let big = FREE_UP_TO + 10;
        assert_eq!(large_incomplete(&frame(b'Q', big, 100), q), Some(big));
        assert_eq!(
            large_incomplete(&frame(b'Q', big, big + 1), q),
            None,
            "complete"
        );
        assert_eq!(
            large_incomplete(&frame(b'E', big, 100), q),
            None,
            "streamed"
        );
        assert_eq!(large_incomplete(&frame(b'Q', 100, 50), q), None, "small");
        assert_eq!(large_incomplete(b"Q\0\0", q), None);
    }
}
