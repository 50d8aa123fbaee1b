//! Carrying out what the monitor decided: the failover state machine's
//! actions, run over SQL on the nodes' check connections (promote, repoint,
//! clear the sync standby) or outside them (the fence command, events); and
//! publishing the routing snapshot and node status that follow. Used by the
//! monitor loop and the planned switchover alike.

use std::time::Duration;

use super::decide::fit_replicas;
use super::failover::{Action, Primary};
use super::health::Checker;
use super::patroni::MemberStatus;
use super::track::{views, Track};
use super::view::{Health, NodeView, Role};
use super::{Cluster, NodeStatus, Snapshot};
use crate::config::Config;
use crate::events::EventKind;

/// Actions that talk to a node (and may take a while).
pub(super) fn is_slow(action: &Action) -> bool {
    matches!(
        action,
        Action::Promote(_)
            | Action::CatchUp { .. }
            | Action::Repoint { .. }
            | Action::ClearSyncStandby(_)
            | Action::FenceCommand(_)
    )
}

/// Runs one action of the failover state machine.
pub(super) async fn perform(
    cluster: &Cluster,
    config: &Config,
    tracks: &mut [Track],
    action: Action,
) {
    let name = |i: usize| cluster.nodes()[i].name.clone();
    let timeout = config.health.timeout.max(Duration::from_secs(5));
    match action {
        Action::Event(kind, node, msg) => {
            cluster.events.record(kind, node.map(name).as_deref(), msg)
        }
        Action::Fence(i) => {
            cluster.fence(i);
        }
        Action::CloseConns(i) => {
            cluster.retire(i);
            tracks[i].down_on_silence = false;
        }
        Action::CatchUp { candidate, old } => {
            let (kind, msg) = catch_up(tracks, candidate, old, config.health.timeout).await;
            cluster.events.record(kind, Some(&name(candidate)), msg);
        }
        Action::Promote(i) => {
            // Returns at once: the monitor waits for it (and asks again).
            let result = super::promotion::ask(&mut tracks[i].checker, timeout).await;
            let (kind, msg) = match result {
                Ok(_) => (EventKind::Promoting, "pg_promote() started".to_string()),
                Err(e) => (EventKind::ActionFailed, format!("pg_promote() failed: {e}")),
            };
            cluster.events.record(kind, Some(&name(i)), msg);
        }
        Action::Repoint { replica, primary } => {
            super::repoint::repoint_node(cluster, tracks, replica, primary, timeout).await
        }
        Action::ClearSyncStandby(i) => {
            clear_sync_standby(cluster, &mut tracks[i].checker, &name(i), timeout).await
        }
        Action::FenceCommand(i) => spawn_fence_command(cluster, config, i),
    }
}

/// How long the old primary gets to say what it flushed. One that answers
/// does so in milliseconds; one whose power just went will not answer at
/// all, and every millisecond here is write pause.
const OLD_LSN_WAIT: Duration = Duration::from_millis(100);

/// Waits until `candidate` has replayed what `old` has flushed, for at most
/// `limit` in all; the promotion follows either way (the old primary's
/// hardware is failing: waiting longer could mean waiting forever).
async fn catch_up(
    tracks: &mut [Track],
    candidate: usize,
    old: usize,
    limit: Duration,
) -> (EventKind, String) {
    let deadline = tokio::time::Instant::now() + limit;
    let lsn_of = |row: Result<Vec<Option<String>>, _>| {
        row.ok()
            .and_then(|r| r.into_iter().next().flatten())
            .and_then(|s| s.parse::<u64>().ok())
    };
    let flushed = tracks[old]
        .checker
        .control(
            "SELECT (pg_current_wal_flush_lsn() - '0/0')::bigint",
            OLD_LSN_WAIT.min(limit),
        )
        .await;
    let Some(target) = lsn_of(flushed) else {
        return (
            EventKind::ActionFailed,
            "catch-up skipped: the old primary's WAL position could not be read".into(),
        );
    };
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let replayed = tracks[candidate]
            .checker
            .control(
                "SELECT (pg_last_wal_replay_lsn() - '0/0')::bigint",
                left.max(Duration::from_millis(10)),
            )
            .await;
        match lsn_of(replayed) {
            Some(at) if at >= target => {
                return (
                    EventKind::CandidateChosen,
                    format!("caught up with the old primary at {target:X}"),
                )
            }
            at if left.is_zero() => {
                return (
                    EventKind::ActionFailed,
                    format!(
                        "catch-up: replayed {:X} of the old primary's {target:X} within {limit:?}; promoting anyway",
                        at.unwrap_or(0)
                    ),
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(10).min(left)).await,
        }
    }
}

/// Undoes a switchover's freeze of a primary (the read-only default it
/// was given), for a switchover that stopped before its promotion.
pub(super) async fn make_writable(
    checker: &mut Checker,
    timeout: Duration,
) -> Result<(), super::health::ControlError> {
    checker
        .control("ALTER SYSTEM RESET default_transaction_read_only", timeout)
        .await?;
    checker.control("SELECT pg_reload_conf()", timeout).await?;
    Ok(())
}

/// Waits until no server connection to `node` is checked out, up to
/// `limit`; then ends those still busy. Returns how many were.
pub(super) async fn drain(cluster: &Cluster, node: usize, limit: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline && cluster.checked_out(node) > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let busy = cluster.checked_out(node);
    if busy > 0 {
        cluster.retire(node);
    }
    busy
}

/// Clears `synchronous_standby_names` on a new primary that has no standby
/// streaming, so its commits do not wait for one that is not there.
pub(super) async fn clear_sync_standby(
    cluster: &Cluster,
    checker: &mut Checker,
    name: &str,
    timeout: Duration,
) {
    let streaming = checker
        .control(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            timeout,
        )
        .await
        .ok()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| v.parse::<u32>().ok());
    if streaming != Some(0) {
        return;
    }
    let result = async {
        checker
            .control("ALTER SYSTEM SET synchronous_standby_names = ''", timeout)
            .await?;
        checker.control("SELECT pg_reload_conf()", timeout).await
    }
    .await;
    let (kind, msg) = match result {
        Ok(_) => (EventKind::SyncStandbyCleared, "no standby connected: cleared synchronous_standby_names so writes do not wait (sync_policy = availability)".to_string()),
        Err(e) => (EventKind::ActionFailed, format!("clearing synchronous_standby_names failed: {e}")),
    };
    cluster.events.record(kind, Some(name), msg);
}

fn spawn_fence_command(cluster: &Cluster, config: &Config, node: usize) {
    let Some(cmd) = config.failover.fence_command.clone() else {
        return;
    };
    let addr = cluster.nodes()[node].addr.clone();
    let name = cluster.nodes()[node].name.clone();
    let events = cluster.events.clone();
    let limit = config.failover.fence_timeout;
    tokio::spawn(async move {
        let (kind, msg) = match super::fence_command::run(&cmd, &addr, limit).await {
            Ok(()) => (
                EventKind::NodeFenced,
                format!("fence_command succeeded for {addr}"),
            ),
            Err(e) => (EventKind::ActionFailed, format!("fence_command {e}")),
        };
        events.record(kind, Some(&name), msg);
    });
}

/// Publishes the routing snapshot and the status `state` and `tracks` imply.
pub(super) fn publish(cluster: &Cluster, config: &Config, tracks: &[Track], state: &Primary) {
    let views = views(cluster, tracks);
    let primary = state.serving();
    // With Patroni, reads go only to the replicas it would balance to.
    let gate = super::patroni::gate_now(cluster, config);
    let readable = |i: usize| {
        gate.as_ref()
            .is_none_or(|g| g.readable.get(i).copied().unwrap_or(false))
    };
    let snap = Snapshot {
        // Held while the leading proxy moves the primary: no new
        // transaction starts there meanwhile.
        primary: primary.filter(|_| !cluster.writes_held()),
        replicas: fit_replicas(&views, primary, config.routing.max_replica_lag)
            .into_iter()
            .filter(|&i| readable(i))
            .collect(),
        usable: views
            .iter()
            .enumerate()
            .filter(|(i, v)| v.live_role().is_some() && (Some(*i) == primary || readable(*i)))
            .map(|(i, _)| i)
            .collect(),
    };
    if *cluster.snapshot() != snap {
        cluster.publish(snap);
    }
    cluster.set_status(node_status(cluster, &views, primary));
    cluster.set_split_brain(matches!(state, Primary::Split(_)));
}

fn node_status(cluster: &Cluster, views: &[NodeView], primary: Option<usize>) -> Vec<NodeStatus> {
    let primary_lsn = primary.map(|p| views[p].lsn());
    let mut members = cluster
        .patroni()
        .map(|o| MemberStatus::of_nodes(&o.view, &cluster.nodes()))
        .unwrap_or_default();
    views
        .iter()
        .zip(cluster.nodes().iter())
        .enumerate()
        .filter(|(i, _)| !cluster.is_removed(*i))
        .map(|(i, (v, n))| {
            let probe = v.probe.as_ref();
            let hw = cluster.hardware(i);
            let role = match probe.map(|p| p.role) {
                Some(Role::Primary) => "primary",
                Some(Role::Replica) => "replica",
                None => "unknown",
            };
            let state = state_label(v.health, v.down_on_silence);
            NodeStatus {
                name: n.name.clone(),
                addr: n.addr.clone(),
                role,
                state,
                fenced: v.fenced,
                timeline: v.timeline(),
                lsn: v.lsn(),
                lag_bytes: (role == "replica")
                    .then(|| primary_lsn.map(|p| p.saturating_sub(v.lsn())))
                    .flatten(),
                lag_seconds: probe.and_then(|p| p.lag_seconds),
                last_check_seconds_ago: probe.map(|p| p.at.elapsed().as_secs_f64()),
                hardware: hw.status.as_str(),
                hardware_reasons: hw.reasons,
                patroni: members.get_mut(i).and_then(Option::take),
            }
        })
        .collect()
}

/// A node's state as `/status` and `SHOW NODES` show it. A primary down
/// on its replicas' silence alone is `suspect`, as the timeline says
/// (`node_suspect`), until the threshold makes it `down`; new
/// transactions wait for it meanwhile.
fn state_label(health: Health, down_on_silence: bool) -> &'static str {
    match health {
        Health::Up => "up",
        Health::Suspect(_) => "suspect",
        Health::Down if down_on_silence => "suspect",
        Health::Down => "down",
        Health::Unknown => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Target;
    use crate::events::Events;
    use crate::server::Login;

    #[test]
    fn a_primary_down_on_silence_alone_is_shown_suspect() {
        let cases = [
            (Health::Up, false, "up"),
            (Health::Suspect(1), false, "suspect"),
            (Health::Down, true, "suspect"),
            (Health::Down, false, "down"),
            (Health::Unknown, false, "unknown"),
        ];
        for (health, silence, shown) in cases {
            assert_eq!(state_label(health, silence), shown, "{health:?} {silence}");
        }
    }

    /// A cluster of two nodes that routes to node 0 (primary, and the
    /// least loaded for `any`) and node 1 (replica), with the monitor's
    /// per-node tracks. Nothing connects.
    fn routed_cluster() -> (Cluster, Config, Vec<Track>) {
        let config = crate::config::load_str(
            "[[users]]\nname = \"app\"\npassword = \"pw\"\n\
             [cluster]\nnodes = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n",
        )
        .unwrap();
        let cluster = Cluster::new(config.nodes(), Arc::new(Events::new(16)));
        let login = Login {
            user: "app".into(),
            database: "app".into(),
            secret: None,
        };
        let tracks = config
            .nodes()
            .iter()
            .map(|n| Track::new(n, &login, cluster.tls()))
            .collect();
        cluster.publish(Snapshot {
            primary: Some(0),
            replicas: vec![1],
            usable: vec![0, 1],
        });
        (cluster, config, tracks)
    }

    const TARGETS: [Target; 3] = [Target::Primary, Target::Replica, Target::Any];

    #[tokio::test]
    async fn once_a_node_is_fenced_no_checkout_gets_a_connection_to_it_that_lives_on() {
        let (cluster, config, mut tracks) = routed_cluster();
        let before = cluster.route(Target::Primary).expect("routed");
        assert_eq!(before.node, 0);
        // The failover state machine fences with these actions, in this
        // order, and then the monitor publishes the routing that leaves the
        // node out. A checkout on another thread may run at any point in
        // between, while the snapshot still names the node.
        let mut taken = vec![];
        for action in [Action::Fence(0), Action::CloseConns(0)] {
            perform(&cluster, &config, &mut tracks, action.clone()).await;
            for target in TARGETS {
                taken.extend(cluster.route(target).map(|r| (action.clone(), target, r)));
            }
        }
        publish(&cluster, &config, &tracks, &Primary::Serving(1));
        assert!(
            before.retired.is_cancelled(),
            "connections from before the fence end"
        );
        for (after, target, route) in taken {
            assert!(
                route.node != 0 || route.retired.is_cancelled(),
                "{target:?} routed after {after:?}: a connection to the fenced node lives on"
            );
        }
        for target in TARGETS {
            let node = cluster.route(target).map(|r| r.node);
            assert_ne!(node, Some(0), "{target:?} once the routing followed");
        }
    }
}
