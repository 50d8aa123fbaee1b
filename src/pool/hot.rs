//! The pool settings every checkout and checkin reads, kept as plain
//! atomics beside the shared [`PoolSettings`]: loading those (an `ArcSwap`)
//! was about 90 instructions, and a transaction took two such loads. A
//! reload stores both; a checkout that reads one field from before a
//! reload and one from after sees two valid settings of its own pool.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use super::PoolSettings;
use crate::config::Target;
use crate::measure::tick::{nanos, Tick};

/// When a server connection is too old to serve again, in nanoseconds
/// (compared with [`Tick`] differences: no `Duration` arithmetic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// Connections older than this close when next idle.
    pub lifetime_ns: u64,
    /// Idle connections older than this close.
    pub idle_ns: u64,
}

impl Expiry {
    /// Past its lifetime, or idle (since `last_used`) past the idle timeout.
    pub fn expired(&self, created: Tick, last_used: Tick, now: Tick) -> bool {
        self.outlived(created, now) || now.nanos_since(last_used) >= self.idle_ns
    }

    /// Past its lifetime (a connection coming back from a client: it was
    /// busy, not idle, since it last went back to the pool).
    pub fn outlived(&self, created: Tick, now: Tick) -> bool {
        now.nanos_since(created) >= self.lifetime_ns
    }
}

impl From<&PoolSettings> for Expiry {
    fn from(s: &PoolSettings) -> Expiry {
        Expiry {
            lifetime_ns: nanos(s.lifetime),
            idle_ns: nanos(s.idle_timeout),
        }
    }
}

/// [`PoolSettings::target`], its [`Expiry`] and its `checkout_timeout`,
/// readable without a lock.
#[derive(Debug)]
pub struct Hot {
    target: AtomicU8,
    lifetime_ns: AtomicU64,
    idle_ns: AtomicU64,
    checkout_timeout_ns: AtomicU64,
}

impl Hot {
    pub fn new(s: &PoolSettings) -> Hot {
        let hot = Hot {
            target: AtomicU8::new(0),
            lifetime_ns: AtomicU64::new(0),
            idle_ns: AtomicU64::new(0),
            checkout_timeout_ns: AtomicU64::new(0),
        };
        hot.store(s);
        hot
    }

    /// Takes reloaded settings.
    pub fn store(&self, s: &PoolSettings) {
        self.target.store(target_code(s.target), Ordering::Relaxed);
        self.lifetime_ns.store(nanos(s.lifetime), Ordering::Relaxed);
        self.idle_ns.store(nanos(s.idle_timeout), Ordering::Relaxed);
        self.checkout_timeout_ns
            .store(nanos(s.checkout_timeout), Ordering::Relaxed);
    }

    pub fn target(&self) -> Target {
        match self.target.load(Ordering::Relaxed) {
            0 => Target::Primary,
            1 => Target::Replica,
            _ => Target::Any,
        }
    }

    pub fn checkout_timeout_ns(&self) -> u64 {
        self.checkout_timeout_ns.load(Ordering::Relaxed)
    }

    pub fn expiry(&self) -> Expiry {
        Expiry {
            lifetime_ns: self.lifetime_ns.load(Ordering::Relaxed),
            idle_ns: self.idle_ns.load(Ordering::Relaxed),
        }
    }
}

fn target_code(t: Target) -> u8 {
    match t {
        Target::Primary => 0,
        Target::Replica => 1,
        Target::Any => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(target: Target, lifetime: Duration, idle_timeout: Duration) -> PoolSettings {
        PoolSettings {
            size: 1,
            checkout_timeout: Duration::from_secs(1),
            idle_timeout,
            lifetime,
            connect_timeout: Duration::from_secs(1),
            hold_timeout: Duration::from_secs(1),
            query_wait_timeout: None,
            target,
        }
    }

    #[test]
    fn what_is_stored_is_read_back_and_a_reload_replaces_it() {
        let (s, m, forever) = (
            Duration::from_secs(1),
            Duration::from_millis(1),
            Duration::MAX,
        );
        let hot = Hot::new(&settings(Target::Primary, s, m));
        for (target, lifetime, idle) in [
            (Target::Primary, s, m),
            (
                Target::Replica,
                Duration::from_secs(3600),
                Duration::from_secs(600),
            ),
            (Target::Any, m, Duration::ZERO),
        ] {
            let new = settings(target, lifetime, idle);
            hot.store(&new);
            assert_eq!(hot.target(), target);
            assert_eq!(hot.expiry(), Expiry::from(&new));
        }
        // Longer than 584 years is as good as forever.
        hot.store(&settings(Target::Any, forever, forever));
        assert_eq!(hot.expiry().lifetime_ns, u64::MAX);
    }

    #[test]
    fn a_connection_expires_by_lifetime_or_idle_time() {
        let t0 = Tick::now();
        let at = |s| t0.plus(Duration::from_secs(s));
        let e = Expiry {
            lifetime_ns: 100_000_000_000,
            idle_ns: 10_000_000_000,
        };
        // (created, last used, now, expired, outlived)
        let cases = [
            (at(0), at(0), at(5), false, false),
            (at(0), at(0), at(10), true, false),
            (at(0), at(95), at(99), false, false),
            (at(0), at(95), at(100), true, true),
        ];
        for (created, used, now, expired, outlived) in cases {
            assert_eq!(e.expired(created, used, now), expired);
            assert_eq!(e.outlived(created, now), outlived);
        }
    }
}
