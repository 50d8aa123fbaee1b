//! CancelRequests being sent on to peers right now, by key, and what became
//! of them. Each hop waits for the next to close before it closes, so a key
//! that arrives while this instance is still forwarding it has come back
//! round a loop of misconfigured peers (A sends id 3 to B, B sends it to A):
//! it is dropped, and the loop ends after one round. The set is bounded, so
//! a flood of CancelRequests cannot make this instance open unbounded
//! connections to its peers.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Forwards in flight at once; more are dropped.
pub const MAX_IN_FLIGHT: usize = 64;

/// What happened to a CancelRequest meant for a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent, and the peer closed the connection (it has served it).
    Forwarded,
    /// The peer could not be reached, or did not close in time.
    Failed,
    /// Dropped: the same key was still being forwarded (a loop, or the same
    /// request twice).
    InFlight,
    /// Dropped: [`MAX_IN_FLIGHT`] forwards were under way.
    Busy,
}

impl Outcome {
    /// Every outcome, in the order of [`Forwards::counts`].
    pub const ALL: [Outcome; 4] = [
        Outcome::Forwarded,
        Outcome::Failed,
        Outcome::InFlight,
        Outcome::Busy,
    ];

    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Failed => "failed",
            Outcome::InFlight => "in_flight",
            Outcome::Busy => "busy",
        }
    }
}

/// Whether a forward of a key may start: `None` if it may, else why not.
pub fn refuse(already_in_flight: bool, in_flight: usize, max: usize) -> Option<Outcome> {
    if already_in_flight {
        Some(Outcome::InFlight)
    } else if in_flight >= max {
        Some(Outcome::Busy)
    } else {
        None
    }
}

/// The keys being forwarded now, and a count per outcome since start.
#[derive(Debug, Default)]
pub struct Forwards {
    keys: Mutex<HashSet<(i32, i32)>>,
    counts: [AtomicU64; 4],
}

/// A forward under way; dropping it takes its key out of the set.
pub struct Forwarding<'a> {
    forwards: &'a Forwards,
    key: (i32, i32),
}

impl Forwards {
    /// Starts forwarding `key`, or says why not (and counts that).
    pub fn begin(&self, key: (i32, i32)) -> Result<Forwarding<'_>, Outcome> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = refuse(keys.contains(&key), keys.len(), MAX_IN_FLIGHT) {
            drop(keys);
            self.count(why);
            return Err(why);
        }
        keys.insert(key);
        Ok(Forwarding {
            forwards: self,
            key,
        })
    }

    /// Adds one to `outcome`'s count.
    pub fn count(&self, outcome: Outcome) {
        self.counts[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Each outcome with its count since start.
    pub fn counts(&self) -> [(Outcome, u64); 4] {
        Outcome::ALL.map(|o| (o, self.counts[o as usize].load(Ordering::Relaxed)))
    }
}

impl Drop for Forwarding<'_> {
    fn drop(&mut self) {
        let mut keys = self.forwards.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forward_starts_unless_its_key_is_out_already_or_too_many_are() {
        let cases = [
            (false, 0, None),
            (false, 63, None),
            (false, 64, Some(Outcome::Busy)),
            (true, 1, Some(Outcome::InFlight)),
            (true, 64, Some(Outcome::InFlight)),
        ];
        for (already, n, want) in cases {
            assert_eq!(refuse(already, n, MAX_IN_FLIGHT), want, "{already} {n}");
        }
    }

    #[test]
    fn a_key_is_in_flight_until_its_forward_ends() {
        let f = Forwards::default();
        let first = f.begin((1, 2)).expect("starts");
        assert_eq!(f.begin((1, 2)).err(), Some(Outcome::InFlight));
        let other = f.begin((1, 3)).expect("another key starts");
        drop(first);
        let again = f.begin((1, 2)).expect("starts again once the first ended");
        drop((other, again));
        let held: Vec<_> = (0..MAX_IN_FLIGHT as i32)
            .map(|i| f.begin((i, 0)).unwrap())
            .collect();
        assert_eq!(f.begin((-1, 0)).err(), Some(Outcome::Busy));
        drop(held);
        f.count(Outcome::Forwarded);
        let counts = f.counts();
        assert_eq!(counts[0], (Outcome::Forwarded, 1));
        assert_eq!(counts[2], (Outcome::InFlight, 1));
        assert_eq!(counts[3], (Outcome::Busy, 1));
    }
}
