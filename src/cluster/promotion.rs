//! Asking a replica to promote, and waiting until it takes writes.
//!
//! PostgreSQL can lose a promotion request. Its startup process may be woken
//! by the request while it waits for WAL, find its WAL receiver gone, and
//! then sleep out `wal_retrieve_retry_interval` (5 s by default) before it
//! looks for the request again. So while the node stays in recovery the
//! request is sent again. A repeat is harmless: PostgreSQL acts on the
//! first one it sees, and removes a leftover signal file when it next starts.
//!
//! Polled here rather than with `pg_promote(true)`, which checks only every
//! 100 ms: that wait is write pause.

use std::time::{Duration, Instant};

use super::health::{Checker, ControlError};

/// Starts a promotion and returns at once.
const PROMOTE: &str = "SELECT pg_promote(false)";

/// How often a node asked to promote is asked whether it has.
const POLL: Duration = Duration::from_millis(5);

/// How long a node may stay in recovery before it is asked again. A
/// promotion PostgreSQL acted on shows within milliseconds.
const ASK_AGAIN_AFTER: Duration = Duration::from_millis(250);

/// How a wait for a promotion ended.
#[derive(Debug)]
pub(super) enum Waited {
    /// The node left recovery.
    Writable,
    /// Still in recovery at the deadline.
    InRecovery,
    /// The node did not answer a poll.
    Unanswered,
}

/// Sends the promotion request.
pub(super) async fn ask(checker: &mut Checker, timeout: Duration) -> Result<(), ControlError> {
    checker.control(PROMOTE, timeout).await.map(drop)
}

/// Polls a node that was just asked to promote until it leaves recovery or
/// `deadline` passes, asking again every [`ASK_AGAIN_AFTER`]. Stops at the
/// first poll it does not answer.
pub(super) async fn until_writable(
    checker: &mut Checker,
    timeout: Duration,
    deadline: Instant,
) -> Waited {
    let mut asked = Instant::now();
    loop {
        match checker.control("SELECT pg_is_in_recovery()", timeout).await {
            Ok(row) if row.first().cloned().flatten().as_deref() == Some("f") => {
                return Waited::Writable
            }
            Ok(_) => {}
            Err(_) => return Waited::Unanswered,
        }
        let now = Instant::now();
        if now >= deadline {
            return Waited::InRecovery;
        }
        if now.duration_since(asked) >= ASK_AGAIN_AFTER {
            tracing::info!("promotion not shown yet: asking again");
            // One that arrives as recovery ends fails ("recovery is not in
            // progress"): the next poll sees the node writable.
            let _ = ask(checker, timeout).await;
            asked = now;
        }
        tokio::time::sleep(POLL).await;
    }
}
