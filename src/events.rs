//! The incident timeline: every topology and failover decision, with a time
//! and a reason, kept in a bounded ring in memory and written to the log.
//! Operators read it to see exactly when a node failed and when traffic moved.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A node passed its first health check, or passed again after being down.
    NodeUp,
    /// A node failed `failure_threshold` consecutive checks.
    NodeDown,
    /// The primary failed one check while its replicas heard nothing from
    /// it: it takes nothing new, but it may only have stalled. Not yet a
    /// failover: `node_down` follows at the threshold.
    NodeSuspect,
    /// The primary is down and a failover begins.
    FailoverStarted,
    /// Promotion is not started (no candidate, or a replica still sees the primary).
    FailoverBlocked,
    /// The replica to promote was chosen.
    CandidateChosen,
    /// `pg_promote()` was run on the candidate.
    Promoting,
    /// A node is the primary now and takes writes.
    WritesResumed,
    /// A replica was pointed at the new primary.
    ReplicaRepointed,
    /// A repointed replica's replication slot could not be made on the new
    /// primary; its `primary_slot_name` was cleared so it streams without one.
    ReplicaSlotCleared,
    /// A repointed replica did not stream from the new primary in time.
    ReplicaNotStreaming,
    /// A node will not be routed to until an operator re-admits it.
    NodeFenced,
    /// `synchronous_standby_names` was cleared on the new primary.
    SyncStandbyCleared,
    /// A control action failed.
    ActionFailed,
    /// An operator re-admitted a fenced node (`READMIT`).
    NodeReadmitted,
    /// New transactions are held (`PAUSE`, `KILL`).
    Paused,
    /// Held transactions are released (`RESUME`).
    Resumed,
    /// A new configuration was applied (`RELOAD`, SIGHUP).
    ConfigReloaded,
    /// A configuration file was rejected; the old one stays.
    ConfigRejected,
    /// The proxy was asked to shut down.
    Shutdown,
    /// A node's hardware probe reports ok.
    HardwareOk,
    /// A node's hardware probe reports degraded.
    HardwareDegraded,
    /// A node's hardware probe reports failing: the node counts as down.
    HardwareFailing,
    /// A node's hardware probe could not be read (no failover follows).
    HardwareUnknown,
    /// The primary's hardware would move it (failing, or degraded with
    /// `switchover_on_degraded`), but it changed less than
    /// `switchover.min_interval` ago: not yet.
    HardwareMoveHeld,
    /// A reload added a node.
    NodeAdded,
    /// A reload removed a node; its connections drain.
    NodeRemoved,
    /// A planned switchover began: new transactions are held.
    SwitchoverStarted,
    /// One step of a switchover finished (with its duration).
    SwitchoverStep,
    /// A switchover was refused or abandoned; the old primary serves.
    SwitchoverFailed,
    /// Two or more nodes report primary on the same timeline: writes to all
    /// of them stop until only one is left.
    SplitBrain,
    /// Patroni's leader key names another member, or none (`backend =
    /// "patroni"`), as this proxy reads it.
    PatroniLeaderChanged,
}

impl EventKind {
    /// Stable lower-case name, for logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::NodeUp => "node_up",
            EventKind::NodeDown => "node_down",
            EventKind::NodeSuspect => "node_suspect",
            EventKind::FailoverStarted => "failover_started",
            EventKind::FailoverBlocked => "failover_blocked",
            EventKind::CandidateChosen => "candidate_chosen",
            EventKind::Promoting => "promoting",
            EventKind::WritesResumed => "writes_resumed",
            EventKind::ReplicaRepointed => "replica_repointed",
            EventKind::ReplicaSlotCleared => "replica_slot_cleared",
            EventKind::ReplicaNotStreaming => "replica_not_streaming",
            EventKind::NodeFenced => "node_fenced",
            EventKind::SyncStandbyCleared => "sync_standby_cleared",
            EventKind::ActionFailed => "action_failed",
            EventKind::NodeReadmitted => "node_readmitted",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::ConfigReloaded => "config_reloaded",
            EventKind::ConfigRejected => "config_rejected",
            EventKind::Shutdown => "shutdown",
            EventKind::HardwareOk => "hardware_ok",
            EventKind::HardwareDegraded => "hardware_degraded",
            EventKind::HardwareFailing => "hardware_failing",
            EventKind::HardwareUnknown => "hardware_unknown",
            EventKind::HardwareMoveHeld => "hardware_move_held",
            EventKind::NodeAdded => "node_added",
            EventKind::NodeRemoved => "node_removed",
            EventKind::SwitchoverStarted => "switchover_started",
            EventKind::SwitchoverStep => "switchover_step",
            EventKind::SwitchoverFailed => "switchover_failed",
            EventKind::SplitBrain => "split_brain",
            EventKind::PatroniLeaderChanged => "patroni_leader_changed",
        }
    }

    /// Whether it is logged as a warning: something failed or needs a look.
    pub fn is_warning(self) -> bool {
        matches!(
            self,
            EventKind::NodeDown
                | EventKind::NodeSuspect
                | EventKind::FailoverStarted
                | EventKind::FailoverBlocked
                | EventKind::NodeFenced
                | EventKind::ActionFailed
                | EventKind::ReplicaSlotCleared
                | EventKind::ReplicaNotStreaming
                | EventKind::ConfigRejected
                | EventKind::HardwareDegraded
                | EventKind::HardwareFailing
                | EventKind::HardwareUnknown
                | EventKind::HardwareMoveHeld
                | EventKind::SwitchoverFailed
        )
    }
}

/// One entry of the timeline.
#[derive(Debug, Clone)]
pub struct Event {
    /// Increasing sequence number (for `since=` queries).
    pub seq: u64,
    /// Wall-clock time.
    pub at: SystemTime,
    /// What happened.
    pub kind: EventKind,
    /// The node concerned, if any.
    pub node: Option<String>,
    /// Why, in words.
    pub message: String,
}

/// The bounded timeline.
pub struct Events {
    ring: Mutex<(u64, VecDeque<Event>)>,
    capacity: usize,
    tallies: Mutex<Tallies>,
    /// Each new event, for the notification tasks: bounded, and a sender
    /// never waits (a receiver that falls behind loses the oldest).
    live: tokio::sync::broadcast::Sender<Event>,
}

/// Events a subscriber that falls behind can be short of before it loses some.
const LIVE_CAPACITY: usize = 256;

/// Counts that outlive the bounded ring, for the metrics.
#[derive(Debug, Clone, Default)]
pub struct Tallies {
    /// Events recorded, by kind name.
    pub by_kind: std::collections::BTreeMap<&'static str, u64>,
    /// Failovers completed: writes resumed after a failover started.
    pub failovers: u64,
    /// Seconds from the start of the last completed failover to writes resuming.
    pub last_failover_seconds: Option<f64>,
    /// Switchovers completed.
    pub switchovers: u64,
    /// Write pause of the last completed switchover, in seconds.
    pub last_switchover_seconds: Option<f64>,
    /// When the failover in progress started.
    started: Option<SystemTime>,
    /// When the switchover in progress started.
    switch_started: Option<SystemTime>,
}

impl Tallies {
    fn count(&mut self, kind: EventKind, at: SystemTime) {
        *self.by_kind.entry(kind.as_str()).or_default() += 1;
        match kind {
            EventKind::FailoverStarted => self.started = self.started.or(Some(at)),
            EventKind::SwitchoverStarted => self.switch_started = Some(at),
            EventKind::SwitchoverFailed => self.switch_started = None,
            EventKind::WritesResumed => {
                if let Some(start) = self.switch_started.take() {
                    self.switchovers += 1;
                    let took = at.duration_since(start).unwrap_or_default();
                    self.last_switchover_seconds = Some(took.as_secs_f64());
                } else if let Some(start) = self.started.take() {
                    self.failovers += 1;
                    let took = at.duration_since(start).unwrap_or_default();
                    self.last_failover_seconds = Some(took.as_secs_f64());
                }
            }
            _ => {}
        }
    }
}

impl Events {
    /// A timeline keeping the last `capacity` events.
    pub fn new(capacity: usize) -> Events {
        Events {
            ring: Mutex::new((0, VecDeque::new())),
            capacity: capacity.max(1),
            tallies: Mutex::default(),
            live: tokio::sync::broadcast::channel(LIVE_CAPACITY).0,
        }
    }

    /// Every event recorded from now on. A receiver that falls more than
    /// `LIVE_CAPACITY` behind is told how many it lost.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// Records an event and logs it (warn for failures, info otherwise).
    pub fn record(&self, kind: EventKind, node: Option<&str>, message: impl Into<String>) {
        let message = message.into();
        let at = SystemTime::now();
        self.tallies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .count(kind, at);
        let mut guard = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let (seq, ring) = &mut *guard;
        *seq += 1;
        // One structured line per event, with the seq `/events` shows.
        if kind.is_warning() {
            tracing::warn!(
                seq = *seq,
                event = kind.as_str(),
                node = node.unwrap_or("-"),
                "{message}"
            );
        } else {
            tracing::info!(
                seq = *seq,
                event = kind.as_str(),
                node = node.unwrap_or("-"),
                "{message}"
            );
        }
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        let event = Event {
            seq: *seq,
            at,
            kind,
            node: node.map(str::to_string),
            message,
        };
        if self.live.receiver_count() > 0 {
            // Never blocks; fails only when nobody listens.
            let _ = self.live.send(event.clone());
        }
        ring.push_back(event);
    }

    /// Counts by kind and failover totals.
    pub fn tallies(&self) -> Tallies {
        self.tallies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Events with a sequence number above `seq`, oldest first.
    pub fn since(&self, seq: u64) -> Vec<Event> {
        let guard = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        guard.1.iter().filter(|e| e.seq > seq).cloned().collect()
    }
}

/// A wall-clock time's UTC calendar fields, for the times shown to people
/// and receivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    /// Year.
    pub year: i64,
    /// Month, 1 to 12.
    pub month: u32,
    /// Day of the month, from 1.
    pub day: u32,
    /// Hour, minute and second.
    pub hms: (u64, u64, u64),
    /// Milliseconds past the second.
    pub millis: u32,
}

impl Utc {
    /// `at`'s fields (before 1970: 1970-01-01).
    pub fn of(at: SystemTime) -> Utc {
        let d = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days as i64);
        Utc {
            year,
            month,
            day,
            hms: (rem / 3600, rem % 3600 / 60, rem % 60),
            millis: d.subsec_millis(),
        }
    }

    /// `2026-12-06T02:55:59.123Z`.
    pub fn rfc3339(&self) -> String {
        let (h, m, s) = self.hms;
        format!(
            "{:04}-{:02}-{:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
            self.year, self.month, self.day, self.millis
        )
    }
}

/// The Gregorian date `days` after 1970-01-01: shift to a calendar that
/// starts in March (so the leap day ends a year), then count 400-year eras.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_filters_by_sequence() {
        let events = Events::new(3);
        for i in 0..5 {
            events.record(EventKind::NodeUp, Some("db1"), format!("up {i}"));
        }
        let all = events.since(0);
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(events.since(4).len(), 1);
        assert_eq!(all[2].message, "up 4");
        assert_eq!(events.tallies().by_kind["node_up"], 5);
    }

    #[test]
    fn a_failover_is_counted_when_writes_resume() {
        let events = Events::new(10);
        events.record(EventKind::WritesResumed, Some("db1"), "first primary");
        assert_eq!(events.tallies().failovers, 0);
        events.record(EventKind::FailoverStarted, Some("db1"), "down");
        events.record(EventKind::WritesResumed, Some("db2"), "promoted");
        let t = events.tallies();
        assert_eq!(t.failovers, 1);
        assert!(t.last_failover_seconds.is_some_and(|s| s >= 0.0));
    }

    #[test]
    fn utc_fields_and_rfc3339() {
        use std::time::Duration;
        let at = |secs: u64, ms: u64| {
            Utc::of(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms))
                .rfc3339()
        };
        for (secs, ms, want) in [
            (0, 0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.005Z"),
            (951_868_800, 0, "2000-03-01T00:00:00.000Z"),
            (1_709_251_199, 999, "2024-02-29T23:59:59.999Z"),
            (1_796_525_759, 0, "2026-12-06T02:55:59.000Z"),
            (4_102_444_800, 0, "2100-01-01T00:00:00.000Z"),
        ] {
            assert_eq!(at(secs, ms), want);
        }
    }
}
