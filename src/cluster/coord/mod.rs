//! Several proxies in front of one cluster, one decision: coordination
//! through etcd (`[coordination] backend = "etcd"`). Every proxy observes
//! and publishes its view; one leader, elected through a lease, acts, and
//! only when a majority of the live proxies' views agree (see [`gate`]).
//! The monitor asks [`Coordination::standing`] and never waits on etcd.

mod etcd;
pub mod gate;
mod keys;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use std::time::Instant;

use crate::config::coordination::Backend;
use crate::config::Config;

use super::failover::{FailoverSettings, Primary};
use super::view::{Health, NodeView};
use gate::{Held, PeerView, Standing};

/// The shared record of who the primary is, written only by the leader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Grows with every change.
    pub generation: u64,
    /// The node that takes writes.
    pub primary: Option<String>,
    /// Its timeline.
    pub timeline: u32,
    /// Nodes fenced: never routed to until re-admitted. Read back by every
    /// proxy when it starts, so a fence outlives the proxy that set it.
    #[serde(default)]
    pub fenced: Vec<String>,
}

impl Topology {
    /// The same content, whatever the generation.
    pub fn same_as(&self, other: &Topology) -> bool {
        self.primary == other.primary
            && self.timeline == other.timeline
            && self.fenced == other.fenced
    }
}

/// What `/status` and the metrics say about coordination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CoordinationStatus {
    /// This proxy's id.
    pub proxy: String,
    /// etcd answers and our lease is alive.
    pub connected: bool,
    /// This proxy leads.
    pub leader: bool,
    /// Who leads, when known.
    pub leader_id: Option<String>,
    /// Live proxies, this one included.
    pub proxies: usize,
    /// Why this proxy does not act while the primary is in question.
    pub held: Option<String>,
    /// Why this proxy is refused (its configuration differs from the leader's).
    pub refused: Option<String>,
    /// The primary this proxy routes writes to.
    pub primary: Option<String>,
    /// Nodes this proxy counts as down.
    pub down: Vec<String>,
    /// The other live proxies' views.
    pub peers: Vec<PeerView>,
}

/// This proxy's handle on the coordination task.
pub struct Coordination {
    me: String,
    standing: watch::Receiver<Standing>,
    own: watch::Sender<Option<PeerView>>,
    record: watch::Sender<Option<Topology>>,
}

impl Coordination {
    /// Starts the coordination task when `[coordination]` asks for one;
    /// `on_record` runs whenever another proxy's record arrives.
    pub fn start(
        config: &Config,
        on_record: impl Fn(Topology) + Send + Sync + 'static,
        shutdown: CancellationToken,
    ) -> Option<Coordination> {
        let cfg = config.coordination.clone();
        if cfg.backend == Backend::None {
            return None;
        }
        let me = proxy_id();
        let keys = keys::Keys::new(&cfg.prefix, &config.cluster.name);
        let (standing_tx, standing) = watch::channel(Standing::default());
        let (own, own_rx) = watch::channel(None);
        let (record, record_rx) = watch::channel(None);
        let channels = etcd::Channels {
            me: me.clone(),
            standing: standing_tx,
            own: own_rx,
            record: record_rx,
            on_record: Box::new(on_record),
        };
        tokio::spawn(etcd::run(cfg, keys, channels, shutdown));
        Some(Coordination {
            me,
            standing,
            own,
            record,
        })
    }

    /// This proxy's id among the others.
    pub fn id(&self) -> &str {
        &self.me
    }

    /// For `/status` and the metrics, with why we are held back.
    pub fn status(&self, held: Option<&Held>) -> CoordinationStatus {
        let s = self.standing();
        let own = self.own.borrow().clone();
        CoordinationStatus {
            proxy: self.me.clone(),
            connected: s.connected,
            leader: s.leader,
            leader_id: s.leader_id,
            proxies: s.peers.len() + 1,
            held: held.map(ToString::to_string),
            refused: s.refused,
            primary: own.as_ref().and_then(|v| v.primary.clone()),
            down: own.map(|v| v.down).unwrap_or_default(),
            peers: s.peers,
        }
    }

    /// What the task knows now.
    pub fn standing(&self) -> Standing {
        self.standing.borrow().clone()
    }

    /// Publishes this proxy's view (sent only when it changed).
    pub fn publish_view(&self, mut view: PeerView) {
        view.proxy = self.me.clone();
        self.own.send_if_modified(|v| {
            let changed = v.as_ref() != Some(&view);
            if changed {
                *v = Some(view);
            }
            changed
        });
    }

    /// Asks for the record to say this (written only while we lead).
    pub fn publish_record(&self, t: Topology) {
        self.record.send_if_modified(|r| {
            let changed = !r.as_ref().is_some_and(|old| old.same_as(&t));
            if changed {
                *r = Some(t);
            }
            changed
        });
    }
}

impl Coordination {
    /// The settings `step` runs with now, and why this proxy is held back
    /// if it is: the failover of the primary in question needs the quorum,
    /// anything else only the leadership.
    pub fn gate(
        &self,
        settings: FailoverSettings,
        state: &Primary,
        views: &[NodeView],
        config: &Config,
        now: Instant,
    ) -> (FailoverSettings, Result<(), Held>) {
        let standing = self.standing();
        let primary = match state {
            Primary::Serving(p) | Primary::Lost { old: p, .. } => views.get(*p),
            _ => None,
        };
        let verdict = match primary {
            Some(p) => gate::may_fail_over(&standing, config.failover.quorum, &p.name, now),
            None => gate::may_act(&standing, now),
        };
        (gate::gated(settings, &verdict), verdict)
    }

    /// The nodes the shared record says are fenced, once it has been read
    /// (None before: the caller waits, bounded, before routing anything).
    pub fn fenced_by_record(&self) -> Option<Vec<String>> {
        let s = self.standing.borrow();
        s.record_read.then(|| {
            s.record
                .as_ref()
                .map(|r| r.fenced.clone())
                .unwrap_or_default()
        })
    }

    /// Whether this proxy may still act now (checked again before every
    /// slow action: a lease lost mid-step stops the rest of it).
    pub fn may_act(&self, now: Instant) -> bool {
        gate::may_act(&self.standing(), now).is_ok()
    }

    /// Publishes this proxy's view of the nodes, and the record when it
    /// leads and a primary serves.
    pub fn observe(&self, state: &Primary, views: &[NodeView], config: &Config) {
        let serving = state.serving().and_then(|p| views.get(p));
        self.publish_view(PeerView {
            proxy: String::new(),
            down: views
                .iter()
                .filter(|v| v.health == Health::Down || v.hardware_failing)
                .map(|v| v.name.clone())
                .collect(),
            primary: serving.map(|p| p.name.clone()),
            timeline: serving.map_or(0, NodeView::timeline),
            config: fingerprint(config),
        });
        if let Some(p) = serving {
            let mut fenced: Vec<String> = views
                .iter()
                .filter(|v| v.fenced)
                .map(|v| v.name.clone())
                .collect();
            fenced.sort();
            self.publish_record(Topology {
                generation: 0,
                primary: Some(p.name.clone()),
                timeline: p.timeline(),
                fenced,
            });
        }
    }
}

/// What proxies of one cluster must agree on, hashed: the node list (names,
/// addresses, priorities) and the failover settings that decide who is
/// promoted. Pools, users and timeouts may differ between proxies.
pub fn fingerprint(config: &Config) -> String {
    use sha2::{Digest, Sha256};
    let mut nodes: Vec<String> = config
        .nodes()
        .iter()
        .map(|n| format!("node {} {} {}", n.name, n.addr, n.priority))
        .collect();
    nodes.sort();
    let f = &config.failover;
    let text = format!(
        "{}\nmode {:?}\nquorum {:?}\nmax_lag {}\nrepoint {}\nsync {:?}",
        nodes.join("\n"),
        f.mode,
        f.quorum,
        f.max_lag_bytes,
        f.repoint_replicas,
        f.sync_policy
    );
    let digest = Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// `<hostname>-<random>`: unique per process, readable in `SHOW PROXIES`.
fn proxy_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "proxy".into());
    format!("{host}-{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str, nodes: &str) -> Config {
        crate::config::load_str(&format!(
            "[[users]]\nname = \"app\"\npassword = \"pw\"\n{extra}\n[cluster]\nnodes = [{nodes}]\n"
        ))
        .unwrap()
    }

    #[test]
    fn proxies_must_agree_on_nodes_and_failover_settings_only() {
        let two = "\"10.0.0.1:5432\", \"10.0.0.2:5432\"";
        let base = fingerprint(&config("", two));
        let same = [
            ("[proxy]\ndefault_pool_size = 7\n", two, "pool size"),
            ("[health]\ninterval = \"2s\"\n", two, "health timing"),
            ("", "\"10.0.0.2:5432\", \"10.0.0.1:5432\"", "node order"),
        ];
        for (extra, nodes, what) in same {
            assert_eq!(fingerprint(&config(extra, nodes)), base, "{what}");
        }
        let differs = [
            ("", "\"10.0.0.1:5432\"", "a node fewer"),
            ("", "\"10.0.0.1:5432\", \"10.0.0.3:5432\"", "another node"),
            ("[failover]\nmode = \"follow\"\n", two, "failover mode"),
            ("[failover]\nquorum = \"leader\"\n", two, "quorum"),
            ("[failover]\nmax_lag_bytes = 1\n", two, "max lag"),
        ];
        for (extra, nodes, what) in differs {
            assert_ne!(fingerprint(&config(extra, nodes)), base, "{what}");
        }
    }
}
