//! The tokio runtime the proxy runs on, sized by `[proxy] workers`.
//!
//! On a small host the proxy shares its cores with PostgreSQL and the
//! application, and a single event loop (PgBouncer's model) does the most
//! work per CPU second: measured on 2 cores under pgbench, a current-thread
//! runtime made 0.6 context switches per transaction against 0.7–1.0 for a
//! 2-worker one, whose workers wake each other through futexes. Bigger hosts
//! get a multi-thread runtime with one worker per two cores by default.

use std::io;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How many worker threads `workers` (0 = auto) means on this host.
pub fn worker_count(workers: usize) -> usize {
    if workers > 0 {
        return workers;
    }
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    (cores / 2).max(1)
}

/// Builds the runtime: a current-thread one for a single worker, else a
/// multi-thread one. CPU-heavy steps (SCRAM key derivation) run on the
/// blocking pool either way, so one slow login never stalls the event loop.
pub fn build(workers: usize) -> io::Result<tokio::runtime::Runtime> {
    match worker_count(workers) {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

/// How often each lag ticker asks to be woken.
const TICK: Duration = Duration::from_millis(100);

/// A tick this late is logged: every task on that worker waited as long.
const WARN_LATE: Duration = Duration::from_millis(100);

/// Upper bounds of the lag histogram's buckets, in seconds (fixed, so the
/// series of many proxies add up).
pub const LAG_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Scheduling delay of the event loops: how much later than asked a timer
/// task got to run. A task that never yields shows here first.
#[derive(Debug, Default)]
pub struct LoopLag {
    /// Ticks per bucket of `LAG_BUCKETS`, plus one for larger lags (not cumulative).
    buckets: [AtomicU64; LAG_BUCKETS.len() + 1],
    sum_us: AtomicU64,
    /// The latest tick's lag.
    last_us: AtomicU64,
}

/// A copy of the lag histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct LagSnapshot {
    /// Cumulative counts per bucket of `LAG_BUCKETS`, then the total (`+Inf`).
    pub cumulative: Vec<u64>,
    /// Sum of all lags, seconds.
    pub sum: f64,
    /// The latest tick's lag, seconds.
    pub last: f64,
}

impl LoopLag {
    /// Records one tick that ran `lag` after it was due.
    pub fn record(&self, lag: Duration) {
        let secs = lag.as_secs_f64();
        let i = LAG_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LAG_BUCKETS.len());
        let us = lag.as_micros() as u64;
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.last_us.store(us, Ordering::Relaxed);
    }

    /// The histogram as Prometheus wants it.
    pub fn snapshot(&self) -> LagSnapshot {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        LagSnapshot {
            cumulative,
            sum: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            last: self.last_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// Measures the event loops' scheduling delay until `shutdown`: one ticker
/// per worker of the current runtime, each sleeping `TICK` and recording how
/// late it woke. On a multi-thread runtime tickers are not bound to a
/// worker, but with as many tickers as workers a stalled worker holding one
/// shows up.
pub async fn watch_lag(lag: std::sync::Arc<LoopLag>, shutdown: CancellationToken) {
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let mut tickers = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (lag, shutdown) = (lag.clone(), shutdown.clone());
        tickers.spawn(async move {
            loop {
                let due = Instant::now() + TICK;
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    _ = shutdown.cancelled() => return,
                }
                let late = Instant::now().saturating_duration_since(due);
                lag.record(late);
                if late > WARN_LATE {
                    tracing::warn!(
                        late_ms = late.as_millis() as u64,
                        "event loop stalled: a timer ran late"
                    );
                }
            }
        });
    }
    while tickers.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_count_is_kept_and_auto_is_at_least_one() {
        assert_eq!(worker_count(3), 3);
        assert!(worker_count(0) >= 1);
    }

    #[test]
    fn lag_buckets_are_cumulative_with_sum_and_last() {
        let lag = LoopLag::default();
        for ms in [0, 3, 3, 200, 9000] {
            lag.record(Duration::from_millis(ms));
        }
        let s = lag.snapshot();
        // le 0.001: 1; 0.005: +2; 0.25: +1; +Inf: +1.
        assert_eq!(s.cumulative, vec![1, 1, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 5]);
        assert!((s.sum - 9.206).abs() < 1e-9);
        assert_eq!(s.last, 9.0);
    }

    #[test]
    fn a_blocked_loop_is_seen_as_lag() {
        let rt = build(1).unwrap();
        let lag = std::sync::Arc::new(LoopLag::default());
        let stop = CancellationToken::new();
        rt.block_on(async {
            let watcher = tokio::spawn(watch_lag(lag.clone(), stop.clone()));
            tokio::time::sleep(Duration::from_millis(150)).await;
            // A task that does not yield for 300 ms holds the only worker.
            tokio::spawn(async { std::thread::sleep(Duration::from_millis(300)) })
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
            stop.cancel();
            watcher.await.unwrap();
        });
        let s = lag.snapshot();
        let over_100ms = s.cumulative.last().unwrap() - s.cumulative[6];
        assert!(over_100ms >= 1, "{s:?}");
    }

    #[test]
    fn both_flavours_run_tasks() {
        for workers in [1, 2] {
            let rt = build(workers).unwrap();
            let n = rt.block_on(async { tokio::spawn(async { 7 }).await.unwrap() });
            assert_eq!(n, 7);
        }
    }
}
