//! Read buffers for connections: their usual size, a per-thread stock of
//! client buffers, and shrinking a buffer that one large message grew.
//!
//! An idle client holds no buffer: it gives its empty buffer back to the
//! stock before it waits for its socket, and takes one when the socket is
//! readable. A client running transactions back to back takes and gives back
//! the same buffer, so the hot path allocates nothing; the stock is bounded,
//! so what it keeps is small whatever the number of clients.

use std::cell::RefCell;

use bytes::BytesMut;

/// The size of a new read buffer, and what a grown one goes back to.
pub const SIZE: usize = 16 * 1024;

/// A buffer whose allocation grew beyond this (one large message, a COPY)
/// is not kept once it is empty.
pub const KEEP_UP_TO: usize = 64 * 1024;

/// Client buffers kept per thread: enough for the clients one worker
/// switches between, at most 1 MiB a thread.
const STOCK: usize = 64;

thread_local! {
    static STOCKED: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty client buffer of [`SIZE`]: one from this thread's stock, else a
/// new one.
pub fn take() -> BytesMut {
    STOCKED
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(SIZE))
}

/// Gives an empty client buffer back to this thread's stock; one that grew
/// (or is still shared, or the stock is full) is freed instead.
pub fn give(mut buf: BytesMut) {
    debug_assert!(buf.is_empty());
    if grown(&mut buf) || !buf.try_reclaim(SIZE) {
        return;
    }
    // A thread being torn down has no stock left: the buffer is freed.
    let _ = STOCKED.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < STOCK {
            s.push(buf);
        }
    });
}

/// Replaces an empty buffer whose allocation grew beyond [`KEEP_UP_TO`]
/// with a new one of [`SIZE`]; otherwise leaves it alone (no allocation).
pub fn shrink(buf: &mut BytesMut) {
    if buf.is_empty() && grown(buf) {
        *buf = BytesMut::with_capacity(SIZE);
    }
}

/// Frees an empty client buffer whose allocation grew beyond
/// [`KEEP_UP_TO`]; the next read takes one from the stock.
pub fn forget_if_grown(buf: &mut BytesMut) {
    if buf.is_empty() && grown(buf) {
        *buf = BytesMut::new();
    }
}

/// Whether the empty `buf`'s allocation is larger than [`KEEP_UP_TO`].
/// `capacity` counts only what lies past the read position, so a buffer
/// read far into is first moved back to its start (no copy: it is empty).
fn grown(buf: &mut BytesMut) -> bool {
    buf.capacity() > KEEP_UP_TO || buf.try_reclaim(KEEP_UP_TO + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grown_buffer_is_shrunk_once_empty() {
        let mut buf = BytesMut::with_capacity(SIZE);
        buf.extend_from_slice(&vec![0u8; 200 * 1024]);
        shrink(&mut buf);
        assert!(buf.capacity() >= 200 * 1024, "not empty: kept");
        buf.clear();
        shrink(&mut buf);
        assert_eq!(buf.capacity(), SIZE);
    }

    #[test]
    fn a_buffer_read_to_its_end_is_reused_whole() {
        let mut buf = take();
        let ptr = buf.as_ptr();
        buf.extend_from_slice(&[1u8; SIZE - 10]);
        let _ = buf.split_to(SIZE - 10);
        give(buf);
        let again = take();
        assert_eq!(again.as_ptr(), ptr, "the same allocation comes back");
        assert!(again.capacity() >= SIZE);
    }

    fn stocked() -> usize {
        STOCKED.with(|s| s.borrow().len())
    }

    #[test]
    fn a_grown_client_buffer_is_not_stocked() {
        let mut buf = take();
        buf.reserve(KEEP_UP_TO * 2);
        let before = stocked();
        give(buf);
        assert_eq!(stocked(), before);
        give(take());
        assert_eq!(stocked(), before + 1, "a buffer of the usual size is");
    }
}
