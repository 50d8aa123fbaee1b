//! The witness rule, all pure. The primary counts as failing once it misses
//! a probe, is not up, or its hardware fails ([`primary_failing`], from
//! [`failure_start`] on); from then each replica is watched for signs that it
//! still lives: the replica heard from it, or its received WAL moved.
//! [`Witness`] is that watch, a state machine fed every successful probe of
//! the replica. The monitor keeps one per node and reads
//! [`Witness::testimony`] into the node views, where a replica that
//! witnessed a live primary blocks a promotion, and so does one that still
//! streams from it and may yet hear it: a live primary with nothing to send
//! sends only a keepalive per [`keepalive_period`].

use std::time::{Duration, Instant};

use super::decide::witnesses;
use super::failover::Primary;
use super::view::{Probe, Role, Testimony, Timers};

/// Waited for past one keepalive period: the keepalive's travel, and the
/// WAL receiver's timer granularity (it looks at its clock every 100 ms).
pub const KEEPALIVE_SLACK: Duration = Duration::from_millis(500);

/// Whether the primary counts as failing this tick (and the replicas are
/// watched for signs of it). A serving one does if its probe failed
/// (`answered`: `None` when it was not probed, having been removed by a
/// reload), if it was not up before this probe, or if its hardware says
/// failing; a lost one always does.
pub fn primary_failing(
    state: &Primary,
    answered: Option<bool>,
    up: bool,
    hardware_failing: bool,
) -> bool {
    match (state, answered) {
        (Primary::Serving(_), Some(ok)) => !ok || !up || hardware_failing,
        (Primary::Serving(_), None) | (Primary::Lost { .. }, _) => true,
        (Primary::Discovering | Primary::Promoting { .. } | Primary::Split(_), _) => false,
    }
}

/// When the primary began failing, after a tick that found it `failing`:
/// `quiet_from` when it starts, the same instant while it lasts, none once
/// it serves again.
pub fn failure_start(
    failing: bool,
    before: Option<Instant>,
    quiet_from: Instant,
) -> Option<Instant> {
    match (failing, before) {
        (false, _) => None,
        (true, Some(since)) => Some(since),
        (true, None) => Some(quiet_from),
    }
}

/// The primary's failure, as the replicas are watched for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// When it began ([`failure_start`]).
    pub since: Instant,
    /// The primary's `wal_sender_timeout`, as it said while it answered.
    pub sender_timeout: Duration,
}

/// The longest a replica streaming from a live primary goes without hearing
/// from it, however idle the primary: `sender_timeout` is the primary's,
/// `replica` the replica's own timers. `None` when neither side pings.
pub fn keepalive_period(sender_timeout: Duration, replica: &Timers) -> Option<Duration> {
    let half = sender_timeout / 2;
    // The sender pings after half its timeout without a reply, but every
    // status report of the receiver is a reply: reports more frequent than
    // that keep the sender from ever pinging.
    let status = replica.status_interval;
    let sender_pings = !sender_timeout.is_zero() && (status.is_zero() || status > half);
    // The receiver pings after half its own timeout without a word, and a
    // live sender answers at once.
    let receiver = replica.receiver_timeout;
    let receiver_pings = !receiver.is_zero();
    [
        sender_pings.then_some(half),
        receiver_pings.then_some(receiver / 2),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// A replica that heard nothing from the failing primary, at its last probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    /// Its WAL receiver does not stream: it lost the primary (a crashed
    /// primary's connections break at once), or never had it.
    Unhooked,
    /// Streaming, and silent for longer than a live primary allows.
    Silent,
    /// Streaming, silent for less than this window (one keepalive period
    /// and [`KEEPALIVE_SLACK`]; `None`: unbounded) since it last heard.
    Listening(Option<Duration>),
}

/// What a replica's `probe` says when it witnessed nothing of `failure`.
/// The window runs from the last thing it heard (before the failure, else
/// it would have witnessed), since the next keepalive is due from then.
pub fn quiet(probe: &Probe, failure: &Failure) -> Quiet {
    if !probe.streaming {
        return Quiet::Unhooked;
    }
    let window = keepalive_period(failure.sender_timeout, &probe.timers)
        .map(|period| period + KEEPALIVE_SLACK);
    let last = probe
        .last_heard
        .map_or(failure.since, |h| h.min(failure.since));
    match window {
        Some(w) if probe.at.saturating_duration_since(last) >= w => Quiet::Silent,
        _ => Quiet::Listening(window),
    }
}

/// One replica's witness state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Witness {
    /// The primary serves (or this node is no replica): nothing to witness.
    #[default]
    Idle,
    /// The primary began failing and this replica has witnessed nothing
    /// yet. `base` is its WAL position at its first probe since (movement
    /// is measured from there); `quiet` what its last probe said.
    Watching {
        /// WAL position at the first probe after the failure began.
        base: u64,
        /// What its last probe said.
        quiet: Quiet,
    },
    /// It witnessed a live primary since the failure began. That holds
    /// until the primary serves again: a primary heard once may be cut off
    /// from us only.
    Seen,
}

impl Witness {
    /// The state after a successful `probe`; `failure` is the primary's,
    /// `None` while it serves.
    pub fn after(self, probe: &Probe, failure: Option<&Failure>) -> Witness {
        let Some(failure) = failure.filter(|_| probe.role == Role::Replica) else {
            return Witness::Idle;
        };
        let base = match self {
            Witness::Idle => probe.lsn,
            Witness::Watching { base, .. } => base,
            Witness::Seen => return Witness::Seen,
        };
        if witnesses(probe, Some(base), failure.since) {
            return Witness::Seen;
        }
        Witness::Watching {
            base,
            quiet: quiet(probe, failure),
        }
    }

    /// What this replica says of the primary, for the node views.
    pub fn testimony(self) -> Testimony {
        match self {
            Witness::Seen => Testimony::Alive,
            Witness::Watching {
                quiet: Quiet::Listening(window),
                ..
            } => Testimony::Listening { window },
            _ => Testimony::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::view::test_node;
    use std::time::Duration;
    use Witness::*;

    #[test]
    fn the_primary_fails_when_it_misses_a_probe_was_not_up_or_its_hardware_fails() {
        let lost = Primary::Lost {
            old: 0,
            blocked: None,
            promoted: None,
            started: true,
        };
        let promoting = Primary::Promoting {
            old: 0,
            candidate: 1,
            since: Instant::now(),
        };
        let serving = Primary::Serving(0);
        // (state, answered, up before, hardware failing) -> failing
        let cases = [
            (&serving, Some(true), true, false, false, "answered, up"),
            (&serving, Some(false), true, false, true, "missed its probe"),
            (&serving, Some(true), false, false, true, "suspect before"),
            (&serving, Some(true), true, true, true, "hardware failing"),
            (&serving, None, true, false, true, "not probed (removed)"),
            (&lost, None, false, false, true, "lost"),
            (&promoting, None, false, false, false, "promoting"),
            (
                &Primary::Discovering,
                None,
                false,
                false,
                false,
                "no primary yet",
            ),
        ];
        for (state, answered, up, hardware, want, what) in cases {
            assert_eq!(
                primary_failing(state, answered, up, hardware),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn a_failure_starts_once_and_ends_when_the_primary_serves() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        // (failing, started before, quiet from) -> started
        let cases = [
            (false, None, t1, None, "serving"),
            (false, Some(t0), t1, None, "serving again"),
            (true, None, t1, Some(t1), "starts"),
            (true, Some(t0), t1, Some(t0), "goes on"),
        ];
        for (failing, before, quiet_from, want, what) in cases {
            assert_eq!(failure_start(failing, before, quiet_from), want, "{what}");
        }
    }

    const SEC: Duration = Duration::from_secs(1);

    /// A replica's probe at `at`: its WAL position, whether its receiver
    /// streams, when it last heard; PostgreSQL's default timers.
    fn replica(at: Instant, lsn: u64, streaming: bool, heard: Option<Instant>) -> Probe {
        let mut p = test_node("r", Role::Replica, 1, lsn).probe.unwrap();
        (p.at, p.streaming, p.last_heard) = (at, streaming, heard);
        p
    }

    #[test]
    fn a_replica_witnesses_from_the_failure_on_until_the_primary_serves() {
        let t0 = Instant::now();
        let failure = Failure {
            since: t0 + SEC,
            sender_timeout: 60 * SEC,
        };
        let f = Some(&failure);
        let (before, after, now) = (Some(t0), Some(t0 + 2 * SEC), t0 + 2 * SEC);
        let w = |base| Watching {
            base,
            quiet: Quiet::Listening(Some(30 * SEC + KEEPALIVE_SLACK)),
        };
        let r = |lsn, streaming, heard| replica(now, lsn, streaming, heard);
        let mut primary = r(100, false, None);
        primary.role = Role::Primary;
        // (state, probe, the primary's failure) -> next state
        let cases = [
            (Idle, r(100, true, after), None, Idle, "primary serves"),
            (Seen, r(100, true, None), None, Idle, "serves again: reset"),
            (Seen, primary, f, Idle, "promoted"),
            (
                Idle,
                r(100, true, before),
                f,
                w(100),
                "first probe: the base",
            ),
            (
                Idle,
                r(100, true, after),
                f,
                Seen,
                "first probe, heard since",
            ),
            (w(100), r(150, true, before), f, Seen, "its WAL moved"),
            (
                w(100),
                r(150, false, before),
                f,
                Watching {
                    base: 100,
                    quiet: Quiet::Unhooked,
                },
                "not streaming",
            ),
            (w(100), r(100, true, before), f, w(100), "silent, listening"),
            (Seen, r(100, true, before), f, Seen, "once seen, it holds"),
        ];
        for (state, probe, failure, want, what) in cases {
            assert_eq!(state.after(&probe, failure), want, "{what}");
        }
    }

    #[test]
    fn a_replica_hears_an_idle_primary_once_per_keepalive_period() {
        let timers = |sender: u32, receiver: u32, status: u32| {
            let t = Timers {
                sender_timeout: sender * SEC,
                receiver_timeout: receiver * SEC,
                status_interval: status * SEC,
            };
            keepalive_period(t.sender_timeout, &t)
        };
        // (wal_sender_timeout, wal_receiver_timeout, status interval) -> period
        let cases = [
            (
                60,
                60,
                10,
                Some(30 * SEC),
                "PostgreSQL's defaults: the receiver pings",
            ),
            (
                4,
                60,
                10,
                Some(2 * SEC),
                "a short sender timeout: the sender pings",
            ),
            (
                30,
                8,
                5,
                Some(4 * SEC),
                "a short receiver timeout: the receiver pings",
            ),
            (
                20,
                60,
                10,
                Some(30 * SEC),
                "reports every 10 s keep the sender quiet",
            ),
            (20, 60, 0, Some(10 * SEC), "no reports: the sender pings"),
            (0, 60, 10, Some(30 * SEC), "no sender timeout"),
            (4, 0, 10, Some(2 * SEC), "no receiver timeout"),
            (60, 0, 10, None, "neither pings: unbounded"),
        ];
        for (sender, receiver, status, want, what) in cases {
            assert_eq!(timers(sender, receiver, status), want, "{what}");
        }
    }

    #[test]
    fn a_streaming_replica_listens_for_one_keepalive_period_from_what_it_last_heard() {
        let t0 = Instant::now();
        let failure = |sender_timeout| Failure {
            since: t0 + SEC,
            sender_timeout,
        };
        let window = 2 * SEC + KEEPALIVE_SLACK;
        let listening = Quiet::Listening(Some(window));
        let ms = Duration::from_millis;
        let mut no_pings = replica(t0 + 60 * SEC, 100, true, Some(t0));
        no_pings.timers.receiver_timeout = Duration::ZERO;
        // (probe, the primary's wal_sender_timeout) -> what the replica says
        let cases = [
            (
                replica(t0 + ms(1400), 100, true, Some(t0)),
                4 * SEC,
                listening,
                "an idle primary cut off from us, 0.4 s in: its keepalive is due",
            ),
            (
                replica(t0 + window - ms(1), 100, true, Some(t0)),
                4 * SEC,
                listening,
                "just short of the window",
            ),
            (
                replica(t0 + window, 100, true, Some(t0)),
                4 * SEC,
                Quiet::Silent,
                "a whole keepalive period without one",
            ),
            (
                replica(t0 + ms(1400), 100, false, Some(t0)),
                4 * SEC,
                Quiet::Unhooked,
                "its receiver lost the primary: a crash",
            ),
            (
                replica(t0 + ms(1400), 100, false, None),
                4 * SEC,
                Quiet::Unhooked,
                "no WAL receiver",
            ),
            (
                replica(t0 + ms(3400), 100, true, None),
                4 * SEC,
                listening,
                "streaming, never heard: from the failure on",
            ),
            (
                replica(t0 + 20 * SEC, 100, true, Some(t0)),
                60 * SEC,
                Quiet::Listening(Some(30 * SEC + KEEPALIVE_SLACK)),
                "PostgreSQL's defaults: up to 30 s",
            ),
            (
                no_pings,
                60 * SEC,
                Quiet::Listening(None),
                "no keepalives at all: it may always hear it yet",
            ),
        ];
        for (probe, sender_timeout, want, what) in cases {
            assert_eq!(quiet(&probe, &failure(sender_timeout)), want, "{what}");
        }
    }

    #[test]
    fn the_testimony_says_alive_listening_or_nothing() {
        let w = Some(3 * SEC);
        let watching = |quiet| Watching { base: 1, quiet };
        let cases = [
            (Idle, Testimony::Nothing),
            (Seen, Testimony::Alive),
            (
                watching(Quiet::Listening(w)),
                Testimony::Listening { window: w },
            ),
            (watching(Quiet::Silent), Testimony::Nothing),
            (watching(Quiet::Unhooked), Testimony::Nothing),
        ];
        for (state, want) in cases {
            assert_eq!(state.testimony(), want, "{state:?}");
        }
    }
}
