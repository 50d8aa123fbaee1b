//! Latency histograms (hdrhistogram) for queries, transactions and pool
//! waits. Recording must not serialize the workers: each thread counts into
//! its own shard (`measure::shard`: a load and a store per sample, no lock),
//! in buckets laid out as the histogram's, and a scrape merges the shards
//! into one.

use std::sync::atomic::{AtomicU64, Ordering};

use super::shard::{self, SHARDS};

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

/// Per-thread histograms, merged when read.
pub struct Latencies {
    slots: Box<[Slot]>,
}

/// One slot's samples: per kind, counts in the buckets of the histogram
/// they are merged into ([`bucket`]). Recording is an index computed from
/// the value's leading zeros and an increment: a histogram's own record
/// (bounds, resize and min/max bookkeeping) was 56 instructions, two per
/// transaction.
struct Slot {
    counts: [Box<[AtomicU64]>; KINDS],
}

/// Values below this are their own bucket; above, each power of two
/// `[2^k, 2^(k+1))` is split into `HALF` buckets of equal width. This is
/// the layout of an hdrhistogram of 2 significant digits from 1 (256
/// sub-buckets, half of them per power of two above the first).
const EXACT: u64 = 256;
const HALF: u64 = 128;
/// log2(EXACT).
const EXACT_BITS: u32 = 8;

/// The bucket of `micros` (at most [`MAX_MICROS`]). Pure.
fn bucket(micros: u64) -> usize {
    if micros < EXACT {
        return micros as usize;
    }
    let k = 63 - micros.leading_zeros();
    let sub = (micros >> (k - 7)) - HALF;
    (EXACT + u64::from(k - EXACT_BITS) * HALF + sub) as usize
}

/// The lowest value of bucket `i`: what a merge records its count as,
/// which falls in the same bucket of the merged histogram. Pure.
fn bucket_floor(i: usize) -> u64 {
    let i = i as u64;
    if i < EXACT {
        return i;
    }
    let k = EXACT_BITS as u64 + (i - EXACT) / HALF;
    let sub = (i - EXACT) % HALF;
    (HALF + sub) << (k - 7)
}

/// Buckets up to [`MAX_MICROS`].
fn buckets() -> usize {
    bucket(MAX_MICROS) + 1
}

impl Default for Latencies {
    fn default() -> Self {
        let slots = (0..SHARDS)
            .map(|_| Slot {
                counts: std::array::from_fn(|_| {
                    (0..buckets()).map(|_| AtomicU64::new(0)).collect()
                }),
            })
            .collect();
        Latencies { slots }
    }
}

impl Latencies {
    /// Records one sample of `micros` into this thread's slot.
    pub fn record(&self, kind: Kind, micros: u64) {
        self.record_all(&[(kind, micros)]);
    }

    /// Records several samples (a query and the transaction it ended)
    /// into this thread's slot.
    pub fn record_all(&self, samples: &[(Kind, u64)]) {
        if samples.is_empty() {
            return;
        }
        let shard = shard::mine();
        let slot = &self.slots[shard.index];
        for &(kind, micros) in samples {
            // 0 counts as 1, the histogram's lowest value; beyond its
            // range, as its highest.
            let i = bucket(micros.clamp(1, MAX_MICROS));
            if let Some(c) = slot.counts[kind as usize].get(i) {
                shard::add(c, 1, shard);
            }
        }
    }

    /// All samples of `kind` so far, merged across slots.
    pub fn merged(&self, kind: Kind) -> Histogram<u64> {
        let mut out = new_histogram();
        for slot in &self.slots {
            for (i, n) in slot.counts[kind as usize].iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    // Within the histogram's range: recording cannot fail.
                    let _ = out.record_n(bucket_floor(i), n);
                }
            }
        }
        out
    }
}

/// An empty histogram of µs samples with the bounds every one here shares.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 2).expect("static histogram bounds are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More threads than shards: the owners' samples and those of the
    /// threads that share the last shard all count.
    #[test]
    fn samples_from_many_threads_merge() {
        let l = std::sync::Arc::new(Latencies::default());
        let threads: Vec<_> = (0..2 * SHARDS as u64)
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
        assert_eq!(q.len(), 100 * 2 * SHARDS as u64);
        let median = q.value_at_quantile(0.5);
        assert!((8000..=9200).contains(&median), "{median}");
        assert_eq!(l.merged(Kind::Wait).len(), 1);
        assert_eq!(l.merged(Kind::Transaction).len(), 0);
        assert_eq!(l.merged(Kind::Transaction).max(), 0);
    }

    #[test]
    fn the_buckets_are_the_merged_histograms() {
        let h = new_histogram();
        let mut values: Vec<u64> = (1..5000).collect();
        for k in 8..32 {
            let p = 1u64 << k;
            values.extend([p - 1, p, p + 1, p + p / 3, 2 * p - 1]);
        }
        values.retain(|&v| v <= MAX_MICROS);
        values.extend([MAX_MICROS - 1, MAX_MICROS]);
        for v in values {
            let i = bucket(v);
            assert_eq!(bucket_floor(i), h.lowest_equivalent(v), "{v}");
            assert!(i < buckets(), "{v}");
            if v > 1 {
                assert!(bucket(v - 1) <= i, "monotonic at {v}");
            }
        }
        assert_eq!(buckets(), bucket(MAX_MICROS) + 1);
    }

    #[test]
    fn samples_of_0_and_1_count_as_1_beside_the_others() {
        let l = Latencies::default();
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
