//! Errors sent to clients, counted by SQLSTATE class and by who made them
//! (`/metrics`, `/status`): an SLO on errors the proxy causes must not count
//! a client's own division by zero.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Who made an ErrorResponse a client got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// Switchyard itself (pool timeouts, a lost server, bad input, ...).
    Proxy,
    /// PostgreSQL, relayed.
    Server,
}

impl Origin {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Proxy => "proxy",
            Origin::Server => "server",
        }
    }
}

/// Errors sent to clients, by SQLSTATE class and origin. Errors are rare:
/// a mutex is fine.
#[derive(Debug, Default)]
pub struct ErrorCounts(Mutex<BTreeMap<(String, Origin), u64>>);

impl ErrorCounts {
    /// Counts one error with `sqlstate` that Switchyard made.
    pub fn add(&self, sqlstate: &str) {
        self.record(Origin::Proxy, sqlstate);
    }

    /// Counts one error with `sqlstate` that PostgreSQL sent.
    pub fn add_server(&self, sqlstate: &str) {
        self.record(Origin::Server, sqlstate);
    }

    /// Counts one error with `sqlstate` made by `origin`.
    pub fn record(&self, origin: Origin, sqlstate: &str) {
        let class = sqlstate.get(..2).unwrap_or("??").to_string();
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((class, origin))
            .or_default() += 1;
    }

    /// Counts so far, by class and origin.
    pub fn by_origin(&self) -> BTreeMap<(String, Origin), u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts so far, by class.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((class, _), n) in self.by_origin() {
            *out.entry(class).or_default() += n;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_add_up_across_origins() {
        let e = ErrorCounts::default();
        e.add("08006");
        e.add_server("08P01");
        e.add_server("22012");
        e.add("x");
        let by = e.by_origin();
        assert_eq!(by[&("08".into(), Origin::Proxy)], 1);
        assert_eq!(by[&("08".into(), Origin::Server)], 1);
        assert_eq!(by[&("??".into(), Origin::Proxy)], 1);
        assert_eq!(e.snapshot()["08"], 2);
        assert_eq!(e.snapshot()["22"], 1);
    }
}
