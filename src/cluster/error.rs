//! Why an operator's request to the cluster was refused or failed (a
//! switchover, a re-admission, a reloaded node list), and the one SQLSTATE
//! mapping the admin console and `POST /switchover` report them with. The
//! messages are what operators and scripts read: they stay as they are.

use super::health::{ControlError, ProbeError};

/// Why a planned switchover did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchoverError {
    /// There is no primary to move.
    #[error("no primary is serving: nothing to switch over")]
    NoPrimary,
    /// The primary's hardware says it is gone: a failover's business.
    #[error("{0}'s hardware reports failing: it is failed over, not switched over")]
    HardwareFailing(String),
    /// The primary missed its last health check: a failover's business.
    #[error("{0} missed a health check: it is failed over if it stays silent, not switched over")]
    MissedCheck(String),
    /// The requested target is not a live node.
    #[error("no such node: {0}")]
    NoSuchNode(String),
    /// The requested target takes writes already.
    #[error("{0} is already the primary")]
    AlreadyPrimary(String),
    /// The requested target is down, fenced, no replica, or too far behind.
    #[error("{0} is not a healthy replica within failover.max_lag_bytes")]
    UnfitTarget(String),
    /// No replica could take over.
    #[error("no healthy replica within failover.max_lag_bytes")]
    NoFitReplica,
    /// A step failed while the old primary still answered: it serves again.
    #[error("{0}")]
    Restored(StepError),
    /// The old primary stopped answering mid-way: the failover takes over.
    #[error("{0}; the old primary stopped answering: failing over")]
    FailingOver(StepError),
    /// The promotion was sent but not confirmed: writes stay held until
    /// the target completes it (the old primary never takes them again).
    #[error("{0}; the promotion may still complete: writes are held until it does")]
    Unconfirmed(StepError),
    /// The request was never run.
    #[error("the monitor stopped before the switchover ran")]
    MonitorStopped,
    /// With coordination, only the leader moves the primary.
    #[error("this proxy does not lead: {0}")]
    NotLeader(String),
    /// Forwarded to the leader, which answered this (or did not answer).
    #[error("the leading proxy answered: {0}")]
    AtLeader(String),
    /// Patroni moves the primary (`coordination.backend = "patroni"`).
    #[error("Patroni manages this cluster's primary: switch over with patronictl switchover")]
    PatroniManages,
}

/// The step of a switchover that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// A statement on the old primary failed, while `doing` this.
    #[error("{doing}: {error}")]
    OnOld {
        /// The step, for the message.
        doing: &'static str,
        /// What the old primary (or its connection) said.
        error: ControlError,
    },
    /// The old primary failed a health check while transactions drained.
    #[error("draining: {0}")]
    Draining(ProbeError),
    /// The old primary's WAL position could not be read from its answer.
    #[error("the old primary reported no WAL position")]
    NoWalPosition,
    /// The target's replay position could not be read.
    #[error("{0}")]
    ReplayUnknown(ControlError),
    /// The target did not catch up within `switchover.catchup_timeout`.
    #[error("the target did not replay up to {0:X} within switchover.catchup_timeout")]
    NotReplayed(u64),
    /// `pg_promote()` failed on the target.
    #[error("pg_promote() on the target failed: {0}")]
    Promote(ControlError),
    /// The target was asked to promote and did not.
    #[error("the target did not leave recovery within 30 s")]
    StillInRecovery,
    /// The other proxies could not be told (the record was not written).
    #[error("the switchover could not be announced to the other proxies through etcd")]
    NotAnnounced,
    /// This proxy stopped leading before the promotion.
    #[error("this proxy stopped leading before the promotion")]
    LeadershipLost,
}

/// Why a node could not be re-admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadmitError {
    /// No live node has that name.
    #[error("no such node: {0}")]
    NoSuchNode(String),
    /// The node is not fenced: there is nothing to re-admit.
    #[error("node {0} is not fenced")]
    NotFenced(String),
    /// With coordination, only the leader changes the shared record, and
    /// there is none to ask (the reason says why).
    #[error("not re-admitted: {0}")]
    NoLeader(String),
    /// The leader was asked and did not re-admit the node (its reason).
    #[error("the leader did not re-admit it: {0}")]
    AtLeader(String),
    /// The request was never run.
    #[error("the monitor stopped before the node was re-admitted")]
    MonitorStopped,
}

/// Why a reloaded node list was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The reload removes the node taking writes.
    #[error("node {0} is the primary: switch over before removing it")]
    RemovesPrimary(String),
}

impl SwitchoverError {
    /// The SQLSTATE an operator sees: `object_not_in_prerequisite_state`
    /// whatever the reason, the cluster was not in a state to switch over.
    /// (`POST /switchover` derives its HTTP status from it.)
    pub fn sqlstate(&self) -> &'static str {
        match self {
            SwitchoverError::NoPrimary
            | SwitchoverError::HardwareFailing(_)
            | SwitchoverError::MissedCheck(_)
            | SwitchoverError::NoSuchNode(_)
            | SwitchoverError::AlreadyPrimary(_)
            | SwitchoverError::UnfitTarget(_)
            | SwitchoverError::NoFitReplica
            | SwitchoverError::Restored(_)
            | SwitchoverError::FailingOver(_)
            | SwitchoverError::Unconfirmed(_)
            | SwitchoverError::NotLeader(_)
            | SwitchoverError::AtLeader(_)
            | SwitchoverError::PatroniManages
            | SwitchoverError::MonitorStopped => "55000",
        }
    }
}

impl ReadmitError {
    /// The SQLSTATE an operator sees: `undefined_object`, no fenced node of
    /// that name.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ReadmitError::NoSuchNode(_) | ReadmitError::NotFenced(_) => "42704",
            ReadmitError::NoLeader(_)
            | ReadmitError::AtLeader(_)
            | ReadmitError::MonitorStopped => "55000",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_see_the_sqlstates_they_always_did() {
        let step = StepError::NoWalPosition;
        let switchovers = [
            SwitchoverError::NoPrimary,
            SwitchoverError::HardwareFailing("db1".into()),
            SwitchoverError::MissedCheck("db1".into()),
            SwitchoverError::NoSuchNode("db9".into()),
            SwitchoverError::AlreadyPrimary("db1".into()),
            SwitchoverError::UnfitTarget("db2".into()),
            SwitchoverError::NoFitReplica,
            SwitchoverError::Restored(step.clone()),
            SwitchoverError::FailingOver(step.clone()),
            SwitchoverError::Unconfirmed(step),
            SwitchoverError::NotLeader("not the leader (db9)".into()),
            SwitchoverError::AtLeader("no healthy replica".into()),
            SwitchoverError::PatroniManages,
            SwitchoverError::MonitorStopped,
        ];
        for e in switchovers {
            assert_eq!(e.sqlstate(), "55000", "{e}");
        }
        for e in [
            ReadmitError::NoSuchNode("db9".into()),
            ReadmitError::NotFenced("db1".into()),
        ] {
            assert_eq!(e.sqlstate(), "42704", "{e}");
        }
        for e in [
            ReadmitError::NoLeader("etcd is unreachable".into()),
            ReadmitError::AtLeader("node db1 is not fenced".into()),
            ReadmitError::MonitorStopped,
        ] {
            assert_eq!(e.sqlstate(), "55000", "{e}");
        }
    }

    #[test]
    fn messages_read_as_before() {
        let refused = ControlError::Refused {
            addr: "db1".into(),
            code: "42501".into(),
            message: "permission denied".into(),
        };
        let cases = [
            (
                SwitchoverError::FailingOver(StepError::Draining(ProbeError::GaveUp(
                    "hardware probe reports failing: psu".into(),
                ))),
                "draining: hardware probe reports failing: psu; \
                 the old primary stopped answering: failing over",
            ),
            (
                SwitchoverError::Restored(StepError::OnOld {
                    doing: "making the old primary read-only",
                    error: refused,
                }),
                "making the old primary read-only: db1: permission denied (42501)",
            ),
            (
                SwitchoverError::Restored(StepError::NotReplayed(0x16_B374_D848)),
                "the target did not replay up to 16B374D848 within switchover.catchup_timeout",
            ),
            (
                SwitchoverError::MissedCheck("db1".into()),
                "db1 missed a health check: it is failed over if it stays silent, not switched over",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want);
        }
        assert_eq!(
            MembershipError::RemovesPrimary("db1".into()).to_string(),
            "node db1 is the primary: switch over before removing it"
        );
    }
}
