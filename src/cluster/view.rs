//! What the decision logic sees of each node: health, the last successful
//! probe, and flags. Plain data, filled in by the health checkers.

use std::time::{Duration, Instant};

/// A node's role as the node itself reports it (`pg_is_in_recovery()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not in recovery: accepts writes.
    Primary,
    /// In recovery: a standby.
    Replica,
}

/// One successful probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Role reported.
    pub role: Role,
    /// Timeline of the latest checkpoint (`pg_control_checkpoint()`), or of
    /// the received WAL on a replica when it is newer.
    pub timeline: u32,
    /// WAL position: `pg_current_wal_lsn()` on a primary, the received (or
    /// replayed) position on a replica.
    pub lsn: u64,
    /// Replayed position (replicas; equals `lsn` on a primary).
    pub replay_lsn: u64,
    /// `pg_stat_wal_receiver.status = 'streaming'` (replicas).
    pub streaming: bool,
    /// Seconds since the last replayed transaction (replicas), if known.
    pub lag_seconds: Option<f64>,
    /// `synchronous_standby_names` is set.
    pub sync_standby_names: bool,
    /// When a replica's WAL receiver last heard from its upstream (WAL or a
    /// keepalive), on our clock; `None` without a running WAL receiver.
    pub last_heard: Option<Instant>,
    /// The replication timers the node runs with.
    pub timers: Timers,
    /// When the probe ran.
    pub at: Instant,
}

/// A node's replication timers, read at every probe (a reload may change
/// them). Between them they bound how long a replica streaming from a live
/// but idle primary goes without hearing from it (`witness::keepalive_period`).
/// Zero means disabled, as in PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// `wal_sender_timeout`: a WAL sender pings its standby once half of it
    /// passed without a reply.
    pub sender_timeout: Duration,
    /// `wal_receiver_timeout`: a WAL receiver pings its sender once half of
    /// it passed without a word from it.
    pub receiver_timeout: Duration,
    /// `wal_receiver_status_interval`: how often a WAL receiver reports to
    /// its sender, idle or not.
    pub status_interval: Duration,
}

impl Timers {
    /// PostgreSQL's defaults: 60 s, 60 s, 10 s.
    pub const POSTGRES_DEFAULTS: Timers = Timers {
        sender_timeout: Duration::from_secs(60),
        receiver_timeout: Duration::from_secs(60),
        status_interval: Duration::from_secs(10),
    };
}

/// What a replica says of a primary that stopped answering us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Testimony {
    /// Nothing either way: the primary serves, the node is no replica, its
    /// WAL receiver lost the primary (as it does at once when the primary
    /// crashes), or it heard nothing for longer than a live primary's
    /// keepalives allow.
    Nothing,
    /// It heard from the primary after the primary began failing: the
    /// primary lives, only we lost it.
    Alive,
    /// Its WAL receiver still looks connected to the primary and has heard
    /// nothing yet, but a live, idle primary is only heard from once per
    /// keepalive period, which has not passed: `window` is how long it is
    /// waited for after the last thing the replica heard (`None`: keepalives
    /// are off, nothing bounds it).
    Listening {
        /// One keepalive period and some slack.
        window: Option<Duration>,
    },
}

/// Health of a node, from consecutive probe results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Never checked successfully: no traffic goes there.
    Unknown,
    /// Last probe succeeded.
    Up,
    /// Some probes failed, fewer than the threshold.
    Suspect(u32),
    /// `failure_threshold` consecutive probes failed.
    Down,
}

impl Health {
    /// The next health after a probe.
    pub fn after(self, ok: bool, threshold: u32) -> Health {
        match (self, ok) {
            (_, true) => Health::Up,
            (Health::Unknown, false) => Health::Unknown,
            (Health::Down, false) => Health::Down,
            (Health::Up, false) if threshold <= 1 => Health::Down,
            (Health::Up, false) => Health::Suspect(1),
            (Health::Suspect(n), false) if n + 1 >= threshold => Health::Down,
            (Health::Suspect(n), false) => Health::Suspect(n + 1),
        }
    }

    /// The next health of the serving primary after a probe: as
    /// [`Health::after`], except that a failed probe the replicas
    /// corroborate (none heard from it meanwhile) makes it down at once.
    /// Each kind of evidence can be wrong alone — a slow query, a quiet
    /// primary — but a primary that answers nobody is not serving.
    pub fn after_corroborated(self, ok: bool, corroborated: bool, threshold: u32) -> Health {
        match self {
            Health::Up | Health::Suspect(_) if !ok && corroborated => Health::Down,
            _ => self.after(ok, threshold),
        }
    }

    /// Up or only suspect: still usable.
    pub fn usable(self) -> bool {
        matches!(self, Health::Up | Health::Suspect(_))
    }
}

/// Everything the decision logic knows about one node.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Name for events.
    pub name: String,
    /// Promotion tie-breaker (higher wins).
    pub priority: i32,
    /// Health from probes.
    pub health: Health,
    /// The last successful probe.
    pub probe: Option<Probe>,
    /// What it says of a primary that stopped answering us: a replica that
    /// witnesses it alive, or may yet, blocks a promotion.
    pub witness: Testimony,
    /// Never routed to until an operator re-admits it.
    pub fenced: bool,
    /// Its hardware probe says `failing`: it counts as down.
    pub hardware_failing: bool,
    /// Down on its replicas' silence alone (fewer than `failure_threshold`
    /// probes failed): its connections stay open until a promotion is sent.
    pub down_on_silence: bool,
    /// The primary it was last repointed at, and when.
    pub repointed: Option<(usize, Instant)>,
}

impl NodeView {
    /// The reported role, if the node is usable and not fenced.
    pub fn live_role(&self) -> Option<Role> {
        if self.fenced || self.hardware_failing || !self.health.usable() {
            return None;
        }
        self.probe.as_ref().map(|p| p.role)
    }

    /// Timeline last seen, 0 if never probed.
    pub fn timeline(&self) -> u32 {
        self.probe.as_ref().map_or(0, |p| p.timeline)
    }

    /// WAL position last seen, 0 if never probed.
    pub fn lsn(&self) -> u64 {
        self.probe.as_ref().map_or(0, |p| p.lsn)
    }
}

/// A healthy node with one probe, for the decision tables.
#[cfg(test)]
pub(crate) fn test_node(name: &str, role: Role, tl: u32, lsn: u64) -> NodeView {
    NodeView {
        name: name.into(),
        priority: 0,
        health: Health::Up,
        probe: Some(Probe {
            role,
            timeline: tl,
            lsn,
            replay_lsn: lsn,
            streaming: role == Role::Replica,
            lag_seconds: None,
            sync_standby_names: false,
            last_heard: None,
            timers: Timers::POSTGRES_DEFAULTS,
            at: Instant::now(),
        }),
        witness: Testimony::Nothing,
        fenced: false,
        hardware_failing: false,
        down_on_silence: false,
        repointed: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_needs_threshold_failures_to_go_down() {
        let mut h = Health::Unknown;
        h = h.after(false, 3);
        assert_eq!(h, Health::Unknown, "never up: stays unknown");
        h = h.after(true, 3);
        assert_eq!(h, Health::Up);
        h = h.after(false, 3);
        h = h.after(false, 3);
        assert_eq!(h, Health::Suspect(2));
        assert!(h.usable());
        h = h.after(false, 3);
        assert_eq!(h, Health::Down);
        assert_eq!(h.after(true, 3), Health::Up);
        assert_eq!(Health::Up.after(false, 1), Health::Down);
    }

    #[test]
    fn a_failed_probe_the_replicas_corroborate_is_enough() {
        let t = 3;
        assert_eq!(Health::Up.after_corroborated(false, true, t), Health::Down);
        assert_eq!(
            Health::Suspect(1).after_corroborated(false, true, t),
            Health::Down
        );
        assert_eq!(
            Health::Up.after_corroborated(false, false, t),
            Health::Suspect(1),
            "uncorroborated: the threshold applies"
        );
        assert_eq!(Health::Up.after_corroborated(true, true, t), Health::Up);
        assert_eq!(
            Health::Unknown.after_corroborated(false, true, t),
            Health::Unknown,
            "never up: nothing to lose"
        );
    }
}
