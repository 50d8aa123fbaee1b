//! Errors sent to clients, counted by SQLSTATE class (`/metrics`, `/status`).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Errors sent to clients, by SQLSTATE class. Errors are rare: a mutex is fine.
#[derive(Debug, Default)]
pub struct ErrorCounts(Mutex<BTreeMap<String, u64>>);

impl ErrorCounts {
    /// Counts one error with `sqlstate`.
    pub fn add(&self, sqlstate: &str) {
        let class = sqlstate.get(..2).unwrap_or("??").to_string();
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(class)
            .or_default() += 1;
    }

    /// Counts so far, by class.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
