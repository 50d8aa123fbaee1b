//! What the hot path records for metrics to read later: latency histograms
//! (`latency`) and errors sent to clients by class (`errors`). Rendering them
//! is `metrics`'s job, at scrape time.

pub mod errors;
pub mod latency;

pub use errors::ErrorCounts;
