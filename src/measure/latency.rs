//! Latency histograms (hdrhistogram) for queries, transactions and pool
//! waits. Recording must not serialize the workers: each thread records into
//! its own slot (a mutex only the scrape ever contends for), and a scrape
//! merges the slots.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

/// What a latency sample measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// From a request (Query, or an extended batch) to its ReadyForQuery.
    Query = 0,
    /// From the first request of a transaction to the ReadyForQuery that ends it.
    Transaction = 1,
    /// A client's wait for a server connection.
    Wait = 2,
}

const KINDS: usize = 3;
/// Samples are microseconds, clamped to one hour.
pub(crate) const MAX_MICROS: u64 = 3_600_000_000;

/// Per-worker histograms, merged when read.
pub struct Latencies {
    slots: Vec<Mutex<Slot>>,
}

/// One slot's samples. Samples of at most a microsecond (1 after
/// clamping) are only counted: every transaction whose server was idle
/// records a wait of 0, and a histogram's record was 56 instructions.
struct Slot {
    histograms: [Histogram<u64>; KINDS],
    ones: [u64; KINDS],
}

impl Default for Latencies {
    fn default() -> Self {
        // More slots than worker threads: blocking-pool threads that record
        // rarely share a slot with a worker only by chance.
        let workers = std::thread::available_parallelism().map_or(4, |n| n.get());
        Latencies::with_slots(workers * 4)
    }
}

impl Latencies {
    /// Histograms with `n` recording slots.
    pub fn with_slots(n: usize) -> Latencies {
        // A power of two, so a thread's slot is a mask away, not a division.
        let slots = (0..n.max(1).next_power_of_two())
            .map(|_| {
                Mutex::new(Slot {
                    histograms: std::array::from_fn(|_| new_histogram()),
                    ones: [0; KINDS],
                })
            })
            .collect();
        Latencies { slots }
    }

    /// Records one sample of `micros` into this thread's slot.
    pub fn record(&self, kind: Kind, micros: u64) {
        self.record_all(&[(kind, micros)]);
    }

    /// Records several samples (a query and the transaction it ended)
    /// under one lock of this thread's slot.
    pub fn record_all(&self, samples: &[(Kind, u64)]) {
        if samples.is_empty() {
            return;
        }
        let slot = &self.slots[thread_slot() & (self.slots.len() - 1)];
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        for &(kind, micros) in samples {
            if micros <= 1 {
                slot.ones[kind as usize] += 1;
            } else {
                // Clamped to the histogram's range, so recording cannot fail.
                let _ = slot.histograms[kind as usize].record(micros.min(MAX_MICROS));
            }
        }
    }

    /// All samples of `kind` so far, merged across slots.
    pub fn merged(&self, kind: Kind) -> Histogram<u64> {
        let mut out = new_histogram();
        for slot in &self.slots {
            let slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            // Same bounds and precision everywhere: adding cannot fail.
            let _ = out.add(&slot.histograms[kind as usize]);
            let ones = slot.ones[kind as usize];
            if ones > 0 {
                let _ = out.record_n(1, ones);
            }
        }
        out
    }
}

/// An empty histogram of µs samples with the bounds every one here shares.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 2).expect("static histogram bounds are valid")
}

/// A small per-thread index, assigned on first use.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: Cell<Option<usize>> = const { Cell::new(None) };
    }
    SLOT.with(|s| match s.get() {
        Some(i) => i,
        None => {
            let i = NEXT.fetch_add(1, Ordering::Relaxed);
            s.set(Some(i));
            i
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_from_many_threads_merge() {
        let l = std::sync::Arc::new(Latencies::with_slots(3));
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for i in 0..100u64 {
                        l.record(Kind::Query, 1000 * (t + 1) + i);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        l.record(Kind::Wait, 0); // clamped, not lost
        let q = l.merged(Kind::Query);
        assert_eq!(q.len(), 600);
        assert!(q.value_at_quantile(0.5) >= 3000 && q.value_at_quantile(0.5) <= 4200);
        assert_eq!(l.merged(Kind::Wait).len(), 1);
        assert_eq!(l.merged(Kind::Transaction).len(), 0);
        assert_eq!(l.merged(Kind::Transaction).max(), 0);
    }

    #[test]
    fn samples_of_0_and_1_count_as_1_beside_the_others() {
        let l = Latencies::with_slots(2);
        for micros in [0, 1, 1, 0, 5, 2, 7_000_000_000] {
            l.record(Kind::Wait, micros);
        }
        let w = l.merged(Kind::Wait);
        assert_eq!(w.len(), 7);
        assert_eq!(w.count_at(1), 4);
        assert_eq!(w.value_at_quantile(0.5), 1);
        assert_eq!(w.min(), 1);
        assert!(w.max() >= MAX_MICROS);
        // A merge reads the counts; it does not take them away.
        assert_eq!(l.merged(Kind::Wait).len(), 7);
    }
}
