//! A future in a heap block of its own, the block taken from (and given
//! back to) a small per-thread stock. A task is one allocation as large as
//! its largest state, kept for the task's whole life: the relay runs each
//! request's work (taking a server, relaying, cleaning up) in such a block,
//! so an idle client's task holds only its idle wait, and a client running
//! transactions back to back reuses the same block with no allocation.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Blocks kept per thread: the clients one worker switches between.
const STOCK: usize = 64;

/// Free blocks and their layouts; freed when the thread ends.
struct Stock(Vec<(Layout, NonNull<u8>)>);

impl Drop for Stock {
    fn drop(&mut self) {
        for (layout, block) in self.0.drain(..) {
            // SAFETY: allocated by `alloc` with this layout, owned by the stock.
            unsafe { dealloc(block.as_ptr(), layout) };
        }
    }
}

thread_local! {
    static STOCK_BLOCKS: RefCell<Stock> = const { RefCell::new(Stock(Vec::new())) };
}

/// A block for `layout` (size > 0): a stocked one, else a new allocation.
fn take_block(layout: Layout) -> NonNull<u8> {
    let stocked = STOCK_BLOCKS.with(|s| {
        let blocks = &mut s.borrow_mut().0;
        let at = blocks.iter().rposition(|(l, _)| *l == layout)?;
        Some(blocks.swap_remove(at).1)
    });
    stocked.unwrap_or_else(|| {
        // SAFETY: `layout` has a non-zero size (checked by the caller).
        NonNull::new(unsafe { alloc(layout) }).unwrap_or_else(|| handle_alloc_error(layout))
    })
}

/// Gives `block` back to the stock, or frees it when the stock is full.
fn give_block(layout: Layout, block: NonNull<u8>) {
    let kept = STOCK_BLOCKS
        .try_with(|s| {
            let blocks = &mut s.borrow_mut().0;
            let room = blocks.len() < STOCK;
            if room {
                blocks.push((layout, block));
            }
            room
        })
        .unwrap_or(false);
    if !kept {
        // SAFETY: allocated by `alloc` with this layout, and no longer used.
        unsafe { dealloc(block.as_ptr(), layout) };
    }
}

/// A future placed in a recycled block; owns it like a `Box` would.
pub struct Recycled<F: Future> {
    ptr: NonNull<F>,
    /// Dropping a `Recycled` drops an `F`.
    _owns: PhantomData<F>,
}

// SAFETY: a `Recycled` owns its future exclusively, like `Box<F>`; the
// block itself is plain memory any thread may free or reuse.
unsafe impl<F: Future + Send> Send for Recycled<F> {}

impl<F: Future> Recycled<F> {
    /// Makes the future in a block. `make` is called with the block ready
    /// and inlined, so that the future (kilobytes for the relay's work) is
    /// built in place rather than built on the stack and copied.
    #[inline(always)]
    pub fn new(make: impl FnOnce() -> F) -> Recycled<F> {
        let layout = Layout::new::<F>();
        let ptr = if layout.size() == 0 {
            NonNull::dangling()
        } else {
            take_block(layout).cast::<F>()
        };
        // SAFETY: the block is valid for `F`'s layout and unused.
        unsafe { ptr.as_ptr().write(make()) };
        Recycled {
            ptr,
            _owns: PhantomData,
        }
    }
}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future stays in its block, never moved, until dropped.
        unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) }.poll(cx)
    }
}

impl<F: Future> Drop for Recycled<F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        // SAFETY: the future was written in `new` and is dropped only here.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        if layout.size() > 0 {
            give_block(layout, self.ptr.cast());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_block_is_reused_and_its_future_dropped() {
        let drops = Arc::new(AtomicUsize::new(0));
        struct Counted(Arc<AtomicUsize>, [u8; 1000]);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut seen = Vec::new();
        for i in 0..3u8 {
            let c = Counted(drops.clone(), [i; 1000]);
            let fut = Recycled::new(|| async move { c.1[999] });
            seen.push(fut.ptr.as_ptr() as usize);
            assert_eq!(fut.await, i);
        }
        assert_eq!(drops.load(Ordering::Relaxed), 3);
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
        // Dropped unfinished: the future inside is dropped too.
        let c = Counted(drops.clone(), [0; 1000]);
        drop(Recycled::new(|| async move {
            std::future::pending::<()>().await;
            drop(c);
        }));
        assert_eq!(drops.load(Ordering::Relaxed), 4);
    }
}
