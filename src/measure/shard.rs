//! Per-thread shards of counters that every transaction adds to (pool
//! totals, latency buckets). A shard has one writer, the thread that owns
//! it, so an add is a load and a store: no atomic read-modify-write, whose
//! locked instruction costs what dozens of plain ones do, several times per
//! transaction. Readers (a scrape, `SHOW STATS`) sum the shards.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Shards each sharded counter keeps. The first `SHARDS - 1` threads that
/// add own one each (the runtime's workers, which do nearly every add);
/// threads after them share the last and add to it atomically.
pub const SHARDS: usize = 8;

/// The shard a thread adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Index into a counter's shards.
    pub index: usize,
    /// Whether this thread is the shard's only writer.
    pub owned: bool,
}

/// A value on a cache line of its own: shards that share a line would make
/// their writers take it from each other.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

/// This thread's shard. Threads get indices in the order they first ask,
/// never reused, so an owned shard has one writer for the process's life.
pub fn mine() -> Shard {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    let i = INDEX.with(|c| {
        if c.get() == usize::MAX {
            c.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        c.get()
    });
    shard_of(i)
}

/// The shard of the thread that asked `i`-th. Pure.
fn shard_of(i: usize) -> Shard {
    Shard {
        index: i.min(SHARDS - 1),
        owned: i < SHARDS - 1,
    }
}

/// Adds `v` to `counter`, a counter of `shard`.
#[inline]
pub fn add(counter: &AtomicU64, v: u64, shard: Shard) {
    if shard.owned {
        add_owned(counter, v);
    } else {
        counter.fetch_add(v, Ordering::Relaxed);
    }
}

/// [`add`] on a shard this thread owns.
#[inline]
pub fn add_owned(counter: &AtomicU64, v: u64) {
    // One writer: nobody else's add can fall between the two.
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(v),
        Ordering::Relaxed,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_first_threads_own_a_shard_each_and_the_rest_share_the_last() {
        let table: Vec<_> = (0..10).map(shard_of).collect();
        for (i, s) in table.iter().enumerate().take(SHARDS - 1) {
            assert_eq!(
                *s,
                Shard {
                    index: i,
                    owned: true
                }
            );
        }
        for s in &table[SHARDS - 1..] {
            assert_eq!(
                *s,
                Shard {
                    index: SHARDS - 1,
                    owned: false
                }
            );
        }
    }

    #[test]
    fn a_thread_keeps_its_shard() {
        assert_eq!(mine(), mine());
    }

    /// More threads than shards add at once: owners and sharers alike, no
    /// add is lost.
    #[test]
    fn adds_from_many_threads_all_count() {
        let counters: Arc<[Padded<AtomicU64>; SHARDS]> = Arc::new(Default::default());
        let threads: Vec<_> = (0..2 * SHARDS)
            .map(|_| {
                let counters = counters.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let s = mine();
                        add(&counters[s.index].0, 1, s);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let sum: u64 = counters.iter().map(|c| c.0.load(Ordering::Relaxed)).sum();
        assert_eq!(sum, 2 * SHARDS as u64 * 10_000);
    }
}
