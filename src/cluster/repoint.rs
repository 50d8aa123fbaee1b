//! Pointing a replica at a new primary so that it streams again, and
//! checking that it does.
//!
//! A replica that streams through a physical replication slot
//! (`primary_slot_name`) cannot stream from a primary without that slot, and
//! slots are not carried over to a standby: a freshly promoted replica has
//! none. So before a replica is repointed, its slot is created on the new
//! primary (reserving WAL at once); if that is impossible, the replica's
//! slot name is cleared so it streams without one, and an event says so.
//! Then `primary_conninfo` gets the new host and port, and the replica's
//! configuration is reloaded. A task of its own then watches
//! `pg_stat_replication` on the new primary until the replica streams, and
//! raises an event (and a counter) if it does not within
//! [`STREAMING_BOUND`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::health::{Checker, ControlError};
use super::track::Track;
use super::Cluster;
use crate::events::{EventKind, Events};

/// How long a repointed replica may take to stream from its new primary. A
/// standby whose stream broke retries only every `wal_retrieve_retry_interval`
/// (5 s by default), and then switches timeline: a few seconds are normal.
pub const STREAMING_BOUND: Duration = Duration::from_secs(15);

/// How often the new primary is asked whether the replica streams.
const STREAMING_POLL: Duration = Duration::from_millis(200);

/// SQLSTATE `duplicate_object`: the slot is there already.
const DUPLICATE_OBJECT: &str = "42710";

/// How a replica streams now, from its own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Upstream {
    conninfo: String,
    /// `primary_slot_name`, if set.
    slot: Option<String>,
    /// The name it shows in the primary's `pg_stat_replication`.
    application_name: String,
}

/// What creating the replica's slot on the new primary came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotOutcome {
    /// Created now.
    Created,
    /// It was there already (an earlier repoint, or an operator).
    Existed,
    /// It cannot be made: the replica must stream without a slot.
    Impossible(String),
}

impl SlotOutcome {
    /// Reads the answer to `pg_create_physical_replication_slot`.
    pub fn of(result: &Result<Vec<Option<String>>, ControlError>) -> SlotOutcome {
        match result {
            Ok(_) => SlotOutcome::Created,
            Err(ControlError::Refused { code, .. }) if code == DUPLICATE_OBJECT => {
                SlotOutcome::Existed
            }
            Err(e) => SlotOutcome::Impossible(e.to_string()),
        }
    }
}

/// Points `replica` at `primary` (creating its slot there first), records
/// the outcome, and starts watching that it streams.
pub(super) async fn repoint_node(
    cluster: &Cluster,
    tracks: &mut [Track],
    replica: usize,
    primary: usize,
    timeout: Duration,
) {
    let nodes = cluster.nodes();
    let (name, new_name) = (&nodes[replica].name, &nodes[primary].name);
    tracks[replica].repointed = Some((primary, std::time::Instant::now()));
    match repoint(cluster, tracks, replica, primary, timeout).await {
        Ok((upstream, slot)) => {
            let via = match (&upstream.slot, slot) {
                (Some(s), Some(SlotOutcome::Created)) => format!(", slot {s} created there"),
                (Some(s), Some(SlotOutcome::Existed)) => format!(", slot {s} already there"),
                _ => String::new(),
            };
            let msg = format!("primary_conninfo now points at {new_name}{via}");
            cluster
                .events
                .record(EventKind::ReplicaRepointed, Some(name), msg);
            let watch = Watch {
                events: cluster.events.clone(),
                not_streaming: cluster.not_streaming_counter(),
                replica: name.clone(),
                primary: new_name.clone(),
                application_name: upstream.application_name,
            };
            tokio::spawn(watch.run(tracks[primary].checker.sibling()));
        }
        Err(e) => {
            let msg = format!("repointing failed: {e}");
            cluster
                .events
                .record(EventKind::ActionFailed, Some(name), msg);
        }
    }
}

/// The repoint itself: the slot first (or clearing it, with an event),
/// then the conninfo. Returns how the replica streamed and what became of
/// its slot.
async fn repoint(
    cluster: &Cluster,
    tracks: &mut [Track],
    replica: usize,
    primary: usize,
    timeout: Duration,
) -> Result<(Upstream, Option<SlotOutcome>), ControlError> {
    let nodes = cluster.nodes();
    let upstream = read_upstream(&mut tracks[replica].checker, timeout).await?;
    let mut outcome = None;
    if let Some(slot) = &upstream.slot {
        let made = ensure_slot(&mut tracks[primary].checker, slot, timeout).await;
        if let SlotOutcome::Impossible(why) = &made {
            clear_slot(&mut tracks[replica].checker, timeout).await?;
            let msg = format!(
                "replication slot {slot} could not be created on {} ({why}); cleared \
                 primary_slot_name so the replica streams without one",
                nodes[primary].name
            );
            let name = Some(nodes[replica].name.as_str());
            cluster
                .events
                .record(EventKind::ReplicaSlotCleared, name, msg);
        }
        outcome = Some(made);
    }
    let checker = &mut tracks[replica].checker;
    set_conninfo(checker, &upstream.conninfo, &nodes[primary].addr, timeout).await?;
    Ok((upstream, outcome))
}

async fn read_upstream(checker: &mut Checker, timeout: Duration) -> Result<Upstream, ControlError> {
    let row = checker
        .control(
            "SELECT current_setting('primary_conninfo'), current_setting('primary_slot_name'), \
             current_setting('cluster_name')",
            timeout,
        )
        .await?;
    let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let conninfo = text(0);
    let slot = Some(text(1)).filter(|s| !s.is_empty());
    let application_name = application_name(&conninfo, &text(2));
    Ok(Upstream {
        conninfo,
        slot,
        application_name,
    })
}

/// Creates the physical slot `slot` on the new primary, reserving WAL at
/// once (so nothing the replica still needs is recycled before it connects).
async fn ensure_slot(checker: &mut Checker, slot: &str, timeout: Duration) -> SlotOutcome {
    let sql = format!(
        "SELECT pg_create_physical_replication_slot({}, true)::text",
        quote(slot)
    );
    SlotOutcome::of(&checker.control(&sql, timeout).await)
}

async fn clear_slot(checker: &mut Checker, timeout: Duration) -> Result<(), ControlError> {
    checker
        .control("ALTER SYSTEM SET primary_slot_name = ''", timeout)
        .await
        .map(drop)
}

async fn set_conninfo(
    checker: &mut Checker,
    current: &str,
    new_primary: &str,
    timeout: Duration,
) -> Result<(), ControlError> {
    let conninfo = rewrite_conninfo(current, new_primary);
    let sql = format!("ALTER SYSTEM SET primary_conninfo = {}", quote(&conninfo));
    checker.control(&sql, timeout).await?;
    checker
        .control("SELECT pg_reload_conf()", timeout)
        .await
        .map(drop)
}

/// A SQL string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `conninfo` with its host and port replaced by `addr` (`host:port`).
pub fn rewrite_conninfo(conninfo: &str, addr: &str) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "5432"));
    let kept: Vec<&str> = conninfo
        .split_whitespace()
        .filter(|kv| {
            !kv.starts_with("host=") && !kv.starts_with("port=") && !kv.starts_with("hostaddr=")
        })
        .collect();
    let mut out = format!("host={host} port={port}");
    for kv in kept {
        out.push(' ');
        out.push_str(kv);
    }
    out
}

/// The name a standby's WAL receiver shows the primary: `application_name`
/// from its conninfo, else its `cluster_name`, else PostgreSQL's default.
pub fn application_name(conninfo: &str, cluster_name: &str) -> String {
    let given = conninfo
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("application_name="))
        .map(|v| v.trim_matches('\'').to_string())
        .filter(|v| !v.is_empty());
    given
        .or_else(|| Some(cluster_name.to_string()).filter(|c| !c.is_empty()))
        .unwrap_or_else(|| "walreceiver".into())
}

/// Watching one repointed replica until it streams from its new primary.
struct Watch {
    events: Arc<Events>,
    not_streaming: Arc<AtomicU64>,
    replica: String,
    primary: String,
    application_name: String,
}

impl Watch {
    /// Polls the new primary's `pg_stat_replication` (on a connection of
    /// its own: the monitor must not wait for this) up to [`STREAMING_BOUND`].
    async fn run(self, mut primary: Checker) {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND application_name = {}",
            quote(&self.application_name)
        );
        let deadline = tokio::time::Instant::now() + STREAMING_BOUND;
        let mut last = String::from("no answer yet");
        while tokio::time::Instant::now() < deadline {
            match primary
                .control(&sql, STREAMING_POLL.max(Duration::from_secs(1)))
                .await
            {
                Ok(row) if row.first().cloned().flatten().is_some_and(|n| n != "0") => {
                    tracing::info!(replica = %self.replica, primary = %self.primary, "repointed replica streams");
                    return;
                }
                Ok(_) => last = "not in pg_stat_replication as streaming".into(),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(STREAMING_POLL).await;
        }
        self.not_streaming.fetch_add(1, Ordering::Relaxed);
        let msg = format!(
            "not streaming from {} {} s after it was repointed ({last}); the next failover may find no candidate",
            self.primary,
            STREAMING_BOUND.as_secs()
        );
        self.events
            .record(EventKind::ReplicaNotStreaming, Some(&self.replica), msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_gets_the_new_host_and_port_and_keeps_the_rest() {
        let old = "user=postgres passfile='/x' host=127.0.0.1 port=5432 application_name=replica2 sslmode=prefer";
        assert_eq!(
            rewrite_conninfo(old, "10.0.0.9:6543"),
            "host=10.0.0.9 port=6543 user=postgres passfile='/x' application_name=replica2 sslmode=prefer"
        );
        assert_eq!(rewrite_conninfo("", "h:1"), "host=h port=1");
    }

    #[test]
    fn the_name_a_standby_shows_its_primary() {
        let cases = [
            ("host=a application_name=replica2", "", "replica2"),
            ("host=a application_name='r3'", "c", "r3"),
            ("host=a", "clustr", "clustr"),
            ("host=a application_name=", "", "walreceiver"),
            ("", "", "walreceiver"),
        ];
        for (conninfo, cluster_name, want) in cases {
            assert_eq!(application_name(conninfo, cluster_name), want, "{conninfo}");
        }
    }

    #[test]
    fn a_slot_that_exists_is_fine_any_other_failure_means_no_slot() {
        let refused = |code: &str| {
            Err(ControlError::Refused {
                addr: "db2".into(),
                code: code.into(),
                message: "m".into(),
            })
        };
        assert_eq!(SlotOutcome::of(&Ok(vec![])), SlotOutcome::Created);
        assert_eq!(SlotOutcome::of(&refused("42710")), SlotOutcome::Existed);
        assert!(matches!(
            SlotOutcome::of(&refused("53400")),
            SlotOutcome::Impossible(m) if m.contains("53400")
        ));
        assert!(matches!(
            SlotOutcome::of(&Err(ControlError::Unreachable("gone".into()))),
            SlotOutcome::Impossible(_)
        ));
    }
}
