//! What a notification receiver gets and what happens after each attempt:
//! pure decisions, tested as tables.

use std::time::Duration;

use crate::config::notify::EventGroup;
use crate::events::EventKind;
use crate::http_client::FetchError;

/// The groups an event belongs to (none: never sent).
pub fn groups_of(kind: EventKind) -> &'static [EventGroup] {
    use EventGroup as G;
    use EventKind as K;
    match kind {
        K::FailoverStarted | K::Promoting => &[G::Failover],
        K::FailoverBlocked => &[G::Failover, G::NoPrimary],
        K::SplitBrain => &[G::NoPrimary],
        K::SwitchoverStarted | K::SwitchoverFailed => &[G::Switchover],
        K::WritesResumed => &[G::WritesResumed],
        K::NodeDown => &[G::NodeDown],
        K::NodeUp => &[G::NodeUp],
        K::NodeFenced => &[G::NodeFenced],
        K::HardwareDegraded => &[G::HardwareDegraded],
        K::HardwareFailing => &[G::HardwareFailing],
        K::HardwareOk => &[G::HardwareOk],
        K::ConfigRejected => &[G::ConfigRejected],
        _ => &[],
    }
}

/// The first of `wanted` that `kind` belongs to.
pub fn wanted_group(kind: EventKind, wanted: &[EventGroup]) -> Option<EventGroup> {
    groups_of(kind).iter().copied().find(|g| wanted.contains(g))
}

/// How urgent an event is (PagerDuty's severities).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Writes are, or may soon be, impossible without a person.
    Critical,
    /// Something failed; automation is handling it.
    Warning,
    /// Things went back to normal, or moved as planned.
    Info,
}

impl Severity {
    /// The name PagerDuty and the JSON body use.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// How urgent `kind` is.
pub fn severity(kind: EventKind) -> Severity {
    use EventKind as K;
    match kind {
        K::FailoverBlocked | K::SplitBrain | K::HardwareFailing | K::NodeFenced => {
            Severity::Critical
        }
        k if k.is_warning() => Severity::Warning,
        _ => Severity::Info,
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The receiver took it.
    Delivered,
    /// Try again after a pause (the receiver or the way to it failed).
    Retry,
    /// Give up: the receiver refused it, and would refuse it again.
    Refused,
}

/// The verdict on an attempt's result: `None` when it timed out.
pub fn verdict(result: Option<&Result<u16, FetchError>>) -> Verdict {
    match result {
        Some(Ok(status)) => match status {
            200..=299 => Verdict::Delivered,
            // Too many requests, a timeout or a server-side fault pass.
            408 | 425 | 429 | 500..=599 => Verdict::Retry,
            _ => Verdict::Refused,
        },
        // A certificate that does not verify will not verify next time.
        Some(Err(FetchError::Handshake(_) | FetchError::NoTls | FetchError::ServerName(_))) => {
            Verdict::Refused
        }
        Some(Err(_)) | None => Verdict::Retry,
    }
}

/// The pause before attempt `attempt + 1` (`attempt` from 1): doubling from
/// 1 s, at most 30 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let io = || FetchError::Connect(std::io::Error::other("refused"));
        for (result, want) in [
            (Some(Ok(200)), Verdict::Delivered),
            (Some(Ok(202)), Verdict::Delivered),
            (Some(Ok(500)), Verdict::Retry),
            (Some(Ok(503)), Verdict::Retry),
            (Some(Ok(429)), Verdict::Retry),
            (Some(Ok(400)), Verdict::Refused),
            (Some(Ok(401)), Verdict::Refused),
            (Some(Ok(404)), Verdict::Refused),
            (Some(Ok(301)), Verdict::Refused),
            (Some(Err(io())), Verdict::Retry),
            (Some(Err(FetchError::Truncated)), Verdict::Retry),
            (Some(Err(FetchError::NoTls)), Verdict::Refused),
            (None, Verdict::Retry),
        ] {
            let shown = format!("{result:?}");
            assert_eq!(verdict(result.as_ref()), want, "{shown}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        let secs: Vec<u64> = (1..=8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn groups_and_severities() {
        use EventGroup as G;
        use EventKind as K;
        let wanted = [G::Failover, G::NoPrimary, G::NodeDown];
        for (kind, group, sev) in [
            (K::FailoverStarted, Some(G::Failover), Severity::Warning),
            (K::FailoverBlocked, Some(G::Failover), Severity::Critical),
            (K::SplitBrain, Some(G::NoPrimary), Severity::Critical),
            (K::NodeDown, Some(G::NodeDown), Severity::Warning),
            // A primary that may only have stalled pages nobody.
            (K::NodeSuspect, None, Severity::Warning),
            (K::NodeUp, None, Severity::Info),
            (K::SwitchoverStarted, None, Severity::Info),
            (K::WritesResumed, None, Severity::Info),
            (K::ReplicaRepointed, None, Severity::Info),
            (K::HardwareFailing, None, Severity::Critical),
        ] {
            assert_eq!(wanted_group(kind, &wanted), group, "{kind:?}");
            assert_eq!(severity(kind), sev, "{kind:?}");
        }
        assert_eq!(
            wanted_group(K::FailoverBlocked, &[G::NoPrimary]),
            Some(G::NoPrimary)
        );
    }
}
