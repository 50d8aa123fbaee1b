//! Several proxies in front of one cluster, one decision: coordination
//! through etcd (`[coordination] backend = "etcd"`). Every proxy observes
//! and publishes its view; one leader, elected through a lease, acts, and
//! only when a majority of the live proxies' views agree (see [`gate`]).
//! The monitor asks [`Coordination::standing`] and never waits on etcd.

pub(crate) mod etcd;
pub mod gate;
mod keys;
pub mod switch;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use std::time::{Duration, Instant};

use crate::config::coordination::Backend;
use crate::config::Config;

use super::failover::{FailoverSettings, Primary};
use super::view::{Health, NodeView};
use gate::{Held, PeerView, Standing};
use switch::Switching;

/// Where the outcome of a request run by the leader arrives: what was
/// done, or why not.
pub type AskReply = oneshot::Receiver<Result<String, String>>;

/// What a proxy that does not lead asks the leader to do, through etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ask {
    /// A planned switchover, to this node or (None) the best replica.
    Switchover(Option<String>),
    /// Un-fence this node (`READMIT`): the record, which every proxy
    /// follows, stops naming it.
    Readmit(String),
}

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
    /// A planned switchover the leader announced and has not finished.
    #[serde(default)]
    pub switching: Option<Switching>,
    /// The node the leader sent `pg_promote()` to while `primary` was lost:
    /// a leader that takes over mid-failover promotes no other.
    #[serde(default)]
    pub promoting: Option<String>,
}

impl Topology {
    /// The same content, whatever the generation.
    pub fn same_as(&self, other: &Topology) -> bool {
        self.primary == other.primary
            && self.timeline == other.timeline
            && self.fenced == other.fenced
            && self.switching == other.switching
            && self.promoting == other.promoting
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
    forwards: mpsc::Sender<etcd::Forward>,
}

impl Coordination {
    /// Starts the coordination task when `[coordination]` asks for one;
    /// `on_record` runs whenever another proxy's record arrives, and
    /// `on_request` runs (while this proxy leads) a switchover another proxy
    /// was asked for.
    pub fn start(
        config: &Config,
        on_record: impl Fn(Topology) + Send + Sync + 'static,
        on_request: impl Fn(Ask, String) -> AskReply + Send + Sync + 'static,
        shutdown: CancellationToken,
    ) -> Option<Coordination> {
        let cfg = config.coordination.clone();
        // With `patroni`, Patroni decides: the proxies do not coordinate.
        if cfg.backend != Backend::Etcd {
            return None;
        }
        let me = proxy_id();
        let keys = keys::Keys::new(&cfg.prefix, &config.cluster.name);
        let (standing_tx, standing) = watch::channel(Standing::default());
        let (own, own_rx) = watch::channel(None);
        let (record, record_rx) = watch::channel(None);
        let (forwards, forwards_rx) = mpsc::channel(4);
        let channels = etcd::Channels {
            me: me.clone(),
            standing: standing_tx,
            own: own_rx,
            record: record_rx,
            on_record: Box::new(on_record),
            forwards: forwards_rx,
            on_request: Box::new(on_request),
        };
        tokio::spawn(etcd::run(cfg, keys, channels, shutdown));
        Some(Coordination {
            me,
            standing,
            own,
            record,
            forwards,
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

    /// Asks for the record to say this (written only while we lead). Sent
    /// again while etcd's record differs, not only when ours changed: a
    /// proxy that comes to lead after its record last changed must still
    /// write it.
    pub fn publish_record(&self, t: Topology) {
        let stored = self.record();
        self.record.send_if_modified(|r| {
            let changed = !r.as_ref().is_some_and(|old| old.same_as(&t))
                || !stored.as_ref().is_some_and(|s| s.same_as(&t));
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
        // Read before publishing: the borrow must end before the send.
        let drained = self.own.borrow().as_ref().and_then(|v| v.drained);
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
            drained,
            cancel_route: config.cancel_route(),
        });
        // Only what this proxy decided while leading: a record made while
        // following (serving the primary a leader's promotion replaces)
        // would undo that promotion's mark once this proxy leads.
        if let (Some(p), true) = (state.serving(), self.may_act(Instant::now())) {
            self.publish_record(record_of(views, p));
        }
    }
}

impl Coordination {
    /// The shared record as last read.
    pub fn record(&self) -> Option<Topology> {
        self.standing.borrow().record.clone()
    }

    /// Marks in the record (as leader) that `node` is being promoted in
    /// place of `current`'s primary, and waits, at most `limit`, until etcd
    /// holds it. False when it does not: then nothing is promoted.
    pub async fn mark_promoting(&self, current: Topology, node: &str, limit: Duration) -> bool {
        let mut t = current;
        t.promoting = Some(node.to_string());
        self.publish_record(t);
        self.await_standing(limit, |s| {
            s.record.as_ref().and_then(|r| r.promoting.as_deref()) == Some(node)
        })
        .await
    }

    /// The primary a leader sent `pg_promote()` in place of, and the node
    /// it sent it to, as the record says.
    pub fn promotion_sent(&self) -> Option<(String, String)> {
        let r = self.record()?;
        Some((r.primary?, r.promoting?))
    }

    /// Acknowledges switchover `id`: this proxy holds its new transactions
    /// and none is running on the old primary any more.
    pub fn acknowledge(&self, id: u64) {
        self.own.send_if_modified(|v| match v {
            Some(v) if v.drained != Some(id) => {
                v.drained = Some(id);
                true
            }
            _ => false,
        });
    }

    /// Announces a switchover in the record (as leader) and waits, at most
    /// `limit`, until etcd holds it. False when it does not: the record
    /// could not be written (we may no longer lead).
    pub async fn announce(&self, mut current: Topology, sw: Switching, limit: Duration) -> bool {
        current.switching = Some(sw.clone());
        self.publish_record(current);
        self.await_standing(limit, |s| {
            s.record.as_ref().and_then(|r| r.switching.as_ref()) == Some(&sw)
        })
        .await
    }

    /// Waits, at most `limit`, until every live proxy has acknowledged
    /// switchover `id` (a proxy that vanished drops out when its lease
    /// expires). Returns the ones that did not.
    pub async fn await_drained(&self, id: u64, limit: Duration) -> Vec<String> {
        let all_in = |s: &Standing| switch::not_drained(&s.peers, id).is_empty();
        self.await_standing(limit, all_in).await;
        let s = self.standing.borrow();
        switch::not_drained(&s.peers, id)
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    async fn await_standing(&self, limit: Duration, done: impl Fn(&Standing) -> bool) -> bool {
        let mut rx = self.standing.clone();
        let waited = tokio::time::timeout(limit, rx.wait_for(|s| done(s))).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Hands what was asked of this proxy, which does not lead, to the
    /// leader through etcd. The leader's outcome arrives, or after `limit`
    /// why there was none.
    pub fn forward(
        &self,
        ask: Ask,
        reason: String,
        limit: Duration,
    ) -> impl std::future::Future<Output = Result<String, String>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let forward = etcd::Forward {
            ask,
            reason,
            reply: tx,
        };
        let queued = self.forwards.try_send(forward).is_ok();
        async move {
            if !queued {
                return Err("too many requests wait to be handed to the leader".into());
            }
            match tokio::time::timeout(limit, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err("the session with etcd ended before the leader answered".into()),
                Err(_) => Err(format!("no answer within {limit:?}")),
            }
        }
    }
}

/// How the record's fenced set changed from `before` to `now`: the nodes
/// newly fenced, and the ones re-admitted.
pub fn fence_changes<'a>(before: &[String], now: &'a [String]) -> (Vec<&'a str>, Vec<String>) {
    let added = now
        .iter()
        .filter(|n| !before.contains(n))
        .map(String::as_str)
        .collect();
    let removed = before
        .iter()
        .filter(|n| !now.contains(n))
        .cloned()
        .collect();
    (added, removed)
}

/// The record saying `primary` takes writes, with the nodes fenced now.
pub fn record_of(views: &[NodeView], primary: usize) -> Topology {
    let mut fenced: Vec<String> = views
        .iter()
        .filter(|v| v.fenced)
        .map(|v| v.name.clone())
        .collect();
    fenced.sort();
    Topology {
        generation: 0,
        primary: views.get(primary).map(|p| p.name.clone()),
        timeline: views.get(primary).map_or(0, NodeView::timeline),
        fenced,
        switching: None,
        promoting: None,
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
    fn a_follower_applies_what_changed_in_the_record_fences_only() {
        let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // (before, now) -> (newly fenced, re-admitted)
        type Names = &'static [&'static str];
        let cases: [(Names, Names, Names, Names); 5] = [
            (&[], &[], &[], &[]),
            (&[], &["db1"], &["db1"], &[]),
            (&["db1"], &[], &[], &["db1"]),
            (&["db1"], &["db1"], &[], &[]),
            (&["db1", "db2"], &["db2", "db3"], &["db3"], &["db1"]),
        ];
        for (before, now, added, removed) in cases {
            let (b, n) = (v(before), v(now));
            let (a, r) = fence_changes(&b, &n);
            assert_eq!(a, added.to_vec(), "{before:?} -> {now:?}");
            assert_eq!(r, v(removed), "{before:?} -> {now:?}");
        }
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
