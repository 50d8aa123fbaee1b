//! What the hot path records for metrics to read later: latency histograms
//! (`latency`), errors sent to clients by class and origin (`errors`), and
//! requests held for a routable node (`holds`); `window` keeps what the last
//! minutes' percentiles need; `tick` is the clock the hot path reads;
//! `shard` lets each thread add to counters of its own.
//! Rendering them is `metrics`'s job, at scrape time.

pub mod errors;
pub mod holds;
pub mod latency;
pub mod shard;
pub mod tick;
pub mod window;

pub use errors::ErrorCounts;
