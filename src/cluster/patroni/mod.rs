//! Patroni's view of the cluster (`[coordination] backend = "patroni"`),
//! read from the keys Patroni keeps in etcd v3 under
//! `<namespace>/<scope>/`: who holds the leader key, each member's
//! address, role, state and WAL position, a switchover asked for, the
//! synchronous standbys. [`parse`] turns the keys into a [`PatroniView`]
//! (pure); [`watch`] keeps it current in the [`Cluster`] and records a
//! `patroni_leader_changed` event when the leader changes. Or, with
//! `patroni.rest`, from Patroni's REST API: [`rest`] turns `GET /cluster`
//! into the same view (pure; it carries less: no WAL positions of the
//! leader, no history), [`poll`] reads it every second and shows it the
//! same way (`shown`). [`gate`] says
//! what routing may do with it: writes only to Patroni's leader once its
//! own probe says primary, none while a switchover drains it, reads only
//! from the replicas Patroni balances to.

pub mod gate;
pub mod parse;
mod poll;
pub mod rest;
mod shown;
mod watch;

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::config::coordination::Backend;
use crate::config::Config;

/// What Patroni's keys say about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PatroniView {
    /// The member holding the leader key: Patroni's primary, or the member
    /// it is promoting (the key moves before the promotion ends).
    pub leader: Option<String>,
    /// Every member with a key, by name.
    pub members: Vec<Member>,
    /// A switchover or failover asked of Patroni and not done yet.
    pub failover: Option<ScheduledSwitchover>,
    /// Synchronous replication as Patroni last set it up.
    pub sync: Option<SyncState>,
    /// The leader's WAL position as it last published it (bytes).
    pub leader_lsn: Option<u64>,
    /// Maintenance mode: Patroni neither fails over nor switches over.
    pub paused: bool,
    /// The database system identifier, once Patroni bootstrapped it.
    pub system_id: Option<String>,
    /// The last change of timeline (a promotion), from Patroni's history.
    pub last_switch: Option<TimelineSwitch>,
}

/// One Patroni member, as its `members/<name>` key says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Patroni's `name` of the member.
    pub name: String,
    /// PostgreSQL's host and port, from `conn_url`.
    pub host: Option<String>,
    pub port: Option<u16>,
    pub role: Role,
    /// Patroni's state of PostgreSQL: `running`, `starting`, `stopped`, ...
    pub state: String,
    pub timeline: Option<u32>,
    /// WAL position (bytes): written on a primary, received or replayed on
    /// a replica.
    pub lsn: Option<u64>,
    /// Bytes behind the leader's last published position (not the leader).
    pub lag_bytes: Option<u64>,
    /// Patroni's REST API.
    pub api_url: Option<String>,
    pub tags: Tags,
}

/// A member's role. Patroni before 3.1 says `master` for `primary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Replica,
    /// The leader of a standby cluster: a replica of another cluster.
    StandbyLeader,
    /// A primary being stopped to become a replica.
    Demoted,
    /// A replica being promoted.
    Promoted,
    Uninitialized,
    /// Missing, or a role this version does not know.
    Unknown,
}

impl Role {
    /// As Patroni 3.1 and later name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::StandbyLeader => "standby_leader",
            Role::Demoted => "demoted",
            Role::Promoted => "promoted",
            Role::Uninitialized => "uninitialized",
            Role::Unknown => "unknown",
        }
    }
}

/// What Patroni says of one configured node, beside Switchyard's own view
/// of it (`/status`, `SHOW NODES`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    /// The member's name in Patroni.
    pub member: String,
    /// It holds Patroni's leader key.
    pub leader: bool,
    pub role: Role,
    /// Patroni's state of its PostgreSQL (`running`, `streaming`, ...).
    pub state: String,
    pub timeline: Option<u32>,
    pub lag_bytes: Option<u64>,
}

impl MemberStatus {
    /// Each configured node's member in `view`, by index.
    pub fn of_nodes(
        view: &PatroniView,
        nodes: &[crate::config::Node],
    ) -> Vec<Option<MemberStatus>> {
        let mut out = vec![None; nodes.len()];
        for m in &view.members {
            if let Some(i) = gate::node_of(m, nodes) {
                out[i] = Some(MemberStatus {
                    member: m.name.clone(),
                    leader: view.leader.as_deref() == Some(m.name.as_str()),
                    role: m.role,
                    state: m.state.clone(),
                    timeline: m.timeline,
                    lag_bytes: m.lag_bytes,
                });
            }
        }
        out
    }
}

/// The tags that change what Patroni does with a member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tags {
    /// Never becomes the leader.
    pub nofailover: bool,
    /// Takes no read traffic (Patroni's `/replica` check answers 503).
    pub noloadbalance: bool,
    /// Never a synchronous standby.
    pub nosync: bool,
}

/// The `failover` key: a switchover from `leader` (or a failover) to
/// `candidate` (or the best member), maybe at a set time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduledSwitchover {
    pub leader: Option<String>,
    pub candidate: Option<String>,
    /// ISO 8601, as Patroni wrote it.
    pub scheduled_at: Option<String>,
}

/// The `sync` key: the leader and its synchronous standbys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncState {
    pub leader: String,
    pub standbys: Vec<String>,
    /// With quorum commit: how many of them a commit waits for.
    pub quorum: Option<u32>,
}

/// The last line of Patroni's timeline history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineSwitch {
    /// The timeline that ended.
    pub timeline: u32,
    /// Where it ended (bytes).
    pub lsn: u64,
    pub at: Option<String>,
    /// The member promoted then.
    pub leader: Option<String>,
}

/// What this proxy knows of Patroni now, for `/status` and (later) routing.
#[derive(Debug, Clone, Serialize)]
pub struct Observed {
    /// `<namespace>/<scope>/`: where the view is read in etcd (with the
    /// REST API, only the cluster's name).
    pub prefix: String,
    /// The watch on etcd runs (or the last poll of the REST API was
    /// answered), so the view is current; otherwise it is the last one read.
    pub connected: bool,
    /// Why the last session with etcd ended (or why no member's REST API
    /// answered), while not connected.
    pub error: Option<String>,
    /// etcd's revision the view is as of; from the REST API, how many
    /// answers were read up to it (0: none read yet).
    pub revision: i64,
    #[serde(flatten)]
    pub view: PatroniView,
    /// When the switchover request in `view.failover` was first seen.
    #[serde(skip)]
    pub failover_seen: Option<std::time::Instant>,
}

/// What Patroni allows now, with `backend = "patroni"`: its leader and
/// readable replicas among the configured nodes, and whether a switchover
/// drains the leader (for at most `failover.hold_timeout`, the longest a
/// held query waits anyway).
pub fn gate_now(cluster: &Cluster, config: &Config) -> Option<gate::Gate> {
    if config.coordination.backend != Backend::Patroni {
        return None;
    }
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    Some(gate::gate(
        cluster.patroni().as_deref(),
        &cluster.nodes(),
        std::time::Instant::now(),
        unix_now,
        config.failover.hold_timeout,
    ))
}

/// The task that keeps [`Cluster::patroni`] current, when `[coordination]`
/// says `backend = "patroni"`: the etcd watch, or the REST API's poller
/// with `patroni.rest` (the configuration has exactly one); it ends at
/// `shutdown`.
pub fn watcher(
    cluster: &Arc<Cluster>,
    config: &Config,
    shutdown: CancellationToken,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let coordination = &config.coordination;
    let cfg = match (coordination.backend, &coordination.patroni) {
        (Backend::Patroni, Some(p)) => p.clone(),
        _ => return None,
    };
    let cluster = cluster.clone();
    Some(async move {
        if cfg.rest.is_empty() {
            watch::run(cluster, cfg, shutdown).await
        } else {
            poll::run(cluster, cfg, shutdown).await
        }
    })
}
