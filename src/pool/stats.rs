//! Per-pool traffic counters, the numbers behind PgBouncer's `SHOW STATS`
//! and the `switchyard_*_total` metrics. A client sums its own [`Tally`]
//! while it holds a server and adds it here once per transaction, so the hot
//! path touches shared counters once per transaction, not once per message;
//! and into its thread's shard of them, without atomic read-modify-writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::measure::shard::{self, Padded, SHARDS};

/// What one client did during one attachment to a server.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Server connections handed to the client.
    pub server_assignments: u64,
    /// Transactions completed.
    pub xacts: u64,
    /// Requests answered with ReadyForQuery.
    pub queries: u64,
    /// Bytes received from the client.
    pub received: u64,
    /// Bytes sent to the client.
    pub sent: u64,
    /// Microseconds in transactions.
    pub xact_us: u64,
    /// Microseconds in queries.
    pub query_us: u64,
    /// Microseconds waiting for a server connection.
    pub wait_us: u64,
    /// Parse messages from the client.
    pub client_parses: u64,
    /// Parse messages sent to the server (including injected ones).
    pub server_parses: u64,
    /// Bind messages.
    pub binds: u64,
}

/// Cumulative totals of a pool, as [`Tally`] fields.
pub type Totals = Tally;

/// Shared counters of one pool.
#[derive(Debug)]
pub struct PoolStats {
    /// The totals, per thread that adds (see `measure::shard`).
    counters: Box<[Padded<[AtomicU64; 11]>; SHARDS]>,
    /// Clients pinned to a server connection, ever, by reason (rare: a
    /// mutex is fine).
    pinned: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    averages: Mutex<Averaging>,
}

#[derive(Debug)]
struct Averaging {
    /// When the current period began, and the totals then.
    at: Instant,
    totals: Totals,
    /// The last completed period: what happened, over how many seconds.
    delta: Totals,
    secs: f64,
}

impl Default for PoolStats {
    fn default() -> Self {
        PoolStats {
            counters: Box::default(),
            pinned: Default::default(),
            averages: Mutex::new(Averaging {
                at: Instant::now(),
                totals: Totals::default(),
                delta: Totals::default(),
                secs: 0.0,
            }),
        }
    }
}

impl Tally {
    /// The fields in `SHOW STATS` order.
    pub fn fields(&self) -> [u64; 11] {
        [
            self.server_assignments,
            self.xacts,
            self.queries,
            self.received,
            self.sent,
            self.xact_us,
            self.query_us,
            self.wait_us,
            self.client_parses,
            self.server_parses,
            self.binds,
        ]
    }

    /// The inverse of [`Tally::fields`].
    pub fn from_fields(f: [u64; 11]) -> Tally {
        Tally {
            server_assignments: f[0],
            xacts: f[1],
            queries: f[2],
            received: f[3],
            sent: f[4],
            xact_us: f[5],
            query_us: f[6],
            wait_us: f[7],
            client_parses: f[8],
            server_parses: f[9],
            binds: f[10],
        }
    }

    /// Field-wise sum.
    pub fn plus(&self, other: &Tally) -> Tally {
        let (a, b) = (self.fields(), other.fields());
        Tally::from_fields(std::array::from_fn(|i| a[i] + b[i]))
    }

    /// Field-wise difference (never below zero).
    pub fn minus(&self, earlier: &Tally) -> Tally {
        let (a, b) = (self.fields(), earlier.fields());
        Tally::from_fields(std::array::from_fn(|i| a[i].saturating_sub(b[i])))
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == Tally::default()
    }
}

impl PoolStats {
    /// Counts one client pinned for `why`.
    pub fn pinned(&self, why: &'static str) {
        *self
            .pinned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(why)
            .or_default() += 1;
    }

    /// Clients pinned so far, by reason.
    pub fn pinned_by_reason(&self) -> Vec<(&'static str, u64)> {
        let pinned = self.pinned.lock().unwrap_or_else(|e| e.into_inner());
        pinned.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Adds one client's tally and resets it.
    pub fn add(&self, tally: &mut Tally) {
        if tally.is_empty() {
            return;
        }
        let shard = shard::mine();
        let counters = &self.counters[shard.index].0;
        if shard.owned {
            // Every field, zero or not: a load, an add and a store each,
            // with no branch, where a test per field cost more.
            for (c, v) in counters.iter().zip(tally.fields()) {
                shard::add_owned(c, v);
            }
        } else {
            for (c, v) in counters.iter().zip(tally.fields()) {
                if v != 0 {
                    shard::add(c, v, shard);
                }
            }
        }
        *tally = Tally::default();
    }

    /// Totals so far.
    pub fn totals(&self) -> Totals {
        Tally::from_fields(std::array::from_fn(|i| {
            self.counters
                .iter()
                .map(|s| s.0[i].load(Ordering::Relaxed))
                .sum()
        }))
    }

    /// Ends the current averaging period (every `proxy.stats_period`).
    pub fn roll(&self, now: Instant) {
        let totals = self.totals();
        let mut a = self.averages.lock().unwrap_or_else(|e| e.into_inner());
        a.secs = now.duration_since(a.at).as_secs_f64();
        a.delta = totals.minus(&a.totals);
        a.totals = totals;
        a.at = now;
    }

    /// What happened in the last completed period and its length in seconds
    /// (0 before the first period ends). Feed to [`averages`].
    pub fn last_period(&self) -> (Totals, f64) {
        let a = self.averages.lock().unwrap_or_else(|e| e.into_inner());
        (a.delta, a.secs)
    }
}

/// PgBouncer's averages between two totals `secs` apart: counts and bytes per
/// second; times per transaction or query (µs); wait time per assignment.
pub fn averages(before: &Totals, after: &Totals, secs: f64) -> Totals {
    let d = |a: u64, b: u64| b.saturating_sub(a);
    let per_sec = |a, b| (d(a, b) as f64 / secs).round() as u64;
    let per = |t: u64, n: u64| t.checked_div(n).unwrap_or(0);
    let xacts = d(before.xacts, after.xacts);
    let queries = d(before.queries, after.queries);
    let assignments = d(before.server_assignments, after.server_assignments);
    Tally {
        server_assignments: per_sec(before.server_assignments, after.server_assignments),
        xacts: per_sec(before.xacts, after.xacts),
        queries: per_sec(before.queries, after.queries),
        received: per_sec(before.received, after.received),
        sent: per_sec(before.sent, after.sent),
        xact_us: per(d(before.xact_us, after.xact_us), xacts),
        query_us: per(d(before.query_us, after.query_us), queries),
        wait_us: per(d(before.wait_us, after.wait_us), assignments),
        client_parses: per_sec(before.client_parses, after.client_parses),
        server_parses: per_sec(before.server_parses, after.server_parses),
        binds: per_sec(before.binds, after.binds),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_add_up_and_reset() {
        let s = PoolStats::default();
        let mut t = Tally {
            xacts: 2,
            queries: 3,
            sent: 100,
            ..Default::default()
        };
        s.add(&mut t);
        assert!(t.is_empty());
        t.queries = 1;
        s.add(&mut t);
        let totals = s.totals();
        assert_eq!((totals.xacts, totals.queries, totals.sent), (2, 4, 100));
    }

    #[test]
    fn averages_are_rates_and_per_item_times() {
        let before = Tally::default();
        let after = Tally {
            server_assignments: 20,
            xacts: 20,
            queries: 40,
            received: 1000,
            xact_us: 2000,
            query_us: 2000,
            wait_us: 200,
            ..Default::default()
        };
        let a = averages(&before, &after, 10.0);
        assert_eq!((a.xacts, a.queries, a.received), (2, 4, 100));
        assert_eq!((a.xact_us, a.query_us, a.wait_us), (100, 50, 10));
        // An idle period divides by nothing.
        assert_eq!(averages(&after, &after, 10.0), Tally::default());
    }
}
