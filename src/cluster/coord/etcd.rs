//! The etcd side of coordination: one task per proxy that holds a lease,
//! publishes this proxy's view under it, campaigns for the leader key,
//! watches the other proxies' views and the topology record, and writes the
//! record when it leads (each write guarded by its leadership). What it
//! learns goes to the monitor as a [`Standing`]; the monitor never waits on
//! etcd.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::gate::{PeerView, Standing};
use super::keys::Keys;
use super::{Ask, Topology};
use crate::config::coordination::CoordinationConfig;

/// Where a forwarded request's outcome goes: what was done, or why not
/// (as the leader said it).
pub(super) type Reply = oneshot::Sender<Result<String, String>>;

/// Runs what another proxy asked for on this (leading) proxy's monitor;
/// the receiver gets its outcome.
pub(super) type OnRequest =
    Box<dyn Fn(Ask, String) -> oneshot::Receiver<Result<String, String>> + Send + Sync>;

/// Something asked of this proxy, which does not lead: written to etcd for
/// the leader.
pub(super) struct Forward {
    pub ask: Ask,
    pub reason: String,
    pub reply: Reply,
}

/// A forwarded request as it sits in etcd.
#[derive(Debug, Serialize, Deserialize)]
struct RequestBody {
    ask: Ask,
    reason: String,
}

/// Its outcome: the new primary, or why not (as the leader said it).
type ResultBody = Result<String, String>;

/// At most this many forwarded switchovers wait for their outcome.
const MAX_PENDING: usize = 16;

/// Why a session with etcd ended (it is started again after a pause).
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The client failed (unreachable, refused, timed out).
    #[error("etcd: {0}")]
    Client(#[from] etcd_client::Error),
    /// Our lease expired: whatever we held is gone.
    #[error("etcd: our lease expired")]
    LeaseLost,
    /// A stream etcd should keep open ended.
    #[error("etcd: the {0} stream ended")]
    StreamEnded(&'static str),
    /// A `[coordination.tls]` file could not be read or used.
    #[error("etcd: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// What the task is given and gives back.
pub(super) struct Channels {
    /// This proxy's id.
    pub me: String,
    pub standing: watch::Sender<Standing>,
    pub own: watch::Receiver<Option<PeerView>>,
    pub record: watch::Receiver<Option<Topology>>,
    pub on_record: Box<dyn Fn(Topology) + Send + Sync>,
    pub forwards: mpsc::Receiver<Forward>,
    pub on_request: OnRequest,
}

/// Runs sessions with etcd until `shutdown`, reconnecting after failures.
/// A session talks to one endpoint; when it ends, the next starts on the
/// next endpoint at once, with a pause once per pass over the list. One
/// client over all endpoints would not do: it spreads requests over them,
/// and every request sent to a member that is down fails, so one dead
/// member of three would end session after session.
pub(super) async fn run(
    cfg: CoordinationConfig,
    keys: Keys,
    mut ch: Channels,
    shutdown: CancellationToken,
) {
    let count = cfg.endpoints.len().max(1);
    // Sessions ended so far: the next one uses the endpoint after.
    let mut ended_sessions = 0usize;
    loop {
        let endpoint = cfg
            .endpoints
            .get(ended_sessions % count)
            .cloned()
            .unwrap_or_default();
        let ended = tokio::select! {
            r = session(&cfg, &endpoint, &keys, &mut ch) => r,
            _ = shutdown.cancelled() => return,
        };
        if let Err(e) = ended {
            tracing::warn!(error = %e, %endpoint, "coordination: session with etcd ended");
        }
        ch.standing.send_modify(|s| {
            s.connected = false;
            s.leader = false;
        });
        ended_sessions += 1;
        if !ended_sessions.is_multiple_of(count) {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn connect(cfg: &CoordinationConfig, endpoint: &str) -> Result<Client, EtcdError> {
    let ttl = cfg.lease_ttl;
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(ttl / 3)
        .with_timeout(ttl / 3)
        .with_keep_alive(ttl / 3, ttl / 3);
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        opts = opts.with_user(u.clone(), p.clone());
    }
    // Read at every connection, not once: a certificate renewed in place
    // is used from the next reconnection on, without a restart.
    if let Some(pem) = crate::tls::EtcdPem::read(&cfg.tls)? {
        opts = opts.with_tls(tls_options(pem, ttl / 3));
    }
    Ok(Client::connect([endpoint], Some(opts)).await?)
}

/// TLS toward etcd from PEM files already read: the server's name is
/// checked against the endpoint's host (a DNS name or an IP address in its
/// subjectAltName), and a client certificate is shown when there is one.
pub(crate) fn tls_options(pem: crate::tls::EtcdPem, handshake: Duration) -> TlsOptions {
    let mut tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(pem.ca))
        .timeout(handshake);
    if let Some((cert, key)) = pem.identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    tls
}

/// One session: a lease, kept alive at a third of its TTL; every beat also
/// republishes our view, campaigns if nobody leads, and refreshes what we
/// know of the others from the watches.
async fn session(
    cfg: &CoordinationConfig,
    endpoint: &str,
    keys: &Keys,
    ch: &mut Channels,
) -> Result<(), EtcdError> {
    let mut client = connect(cfg, endpoint).await?;
    let ttl = cfg.lease_ttl.as_secs().max(1) as i64;
    let lease = client.lease_grant(ttl, None).await?.id();
    let (mut keeper, mut beats) = client.lease_keep_alive(lease).await?;
    let mut watch = client
        .watch(keys.base(), Some(WatchOptions::new().with_prefix()))
        .await?;
    let mut state = Session::new(lease, ch.me.clone());
    state.expires = tokio::time::Instant::now() + cfg.lease_ttl;
    state.refresh(&mut client, keys).await?;
    let view = ch.own.borrow().clone();
    if let Some(v) = &view {
        state.config = v.config.clone();
    }
    publish_view(&mut client, keys, lease, view.as_ref()).await?;
    let mut tick = tokio::time::interval(cfg.lease_ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ch.standing.send_replace(state.standing());
        tokio::select! {
            _ = tick.tick() => {
                let sent = tokio::time::Instant::now();
                keeper.keep_alive().await?;
                match beats.message().await? {
                    // Counted from when the renewal was sent: etcd renewed
                    // the lease no earlier than that.
                    Some(b) if b.ttl() > 0 => {
                        state.expires = sent + Duration::from_secs(b.ttl() as u64);
                    }
                    _ => return Err(EtcdError::LeaseLost),
                }
                if state.leader_id.is_none() {
                    state.campaign(&mut client, keys).await?;
                }
                state.handle_requests(&mut client, keys, &ch.on_request).await?;
            }
            forward = ch.forwards.recv() => {
                let Some(f) = forward else { return Ok(()) };
                state.forward(&mut client, keys, f).await?;
            }
            changed = ch.own.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let view = ch.own.borrow_and_update().clone();
                if let Some(v) = &view {
                    state.config = v.config.clone();
                }
                publish_view(&mut client, keys, lease, view.as_ref()).await?;
            }
            changed = ch.record.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let record = ch.record.borrow_and_update().clone();
                if let (Some(t), true) = (record, state.leads()) {
                    state.write_record(&mut client, keys, t).await?;
                }
            }
            event = watch.message() => {
                let Some(resp) = event? else {
                    return Err(EtcdError::StreamEnded("watch"));
                };
                let record_changed = resp.events().iter().any(|e| {
                    e.kv().is_some_and(|kv| kv.key() == keys.topology().as_bytes())
                        && e.event_type() == EventType::Put
                });
                state.refresh(&mut client, keys).await?;
                if state.leader_id.is_none() {
                    state.campaign(&mut client, keys).await?;
                }
                state.handle_requests(&mut client, keys, &ch.on_request).await?;
                if let (true, Some(t)) = (record_changed, state.record.clone()) {
                    (ch.on_record)(t);
                }
            }
        }
    }
}

async fn publish_view(
    client: &mut Client,
    keys: &Keys,
    lease: i64,
    view: Option<&PeerView>,
) -> Result<(), EtcdError> {
    if let Some(v) = view {
        let body = serde_json::to_vec(v).unwrap_or_default();
        let opts = PutOptions::new().with_lease(lease);
        client.put(keys.proxy(&v.proxy), body, Some(opts)).await?;
    }
    Ok(())
}

/// What one session knows.
struct Session {
    lease: i64,
    me: String,
    /// When our lease runs out unless renewed (from the last renewal).
    expires: tokio::time::Instant,
    leader_id: Option<String>,
    /// The leader key's create revision while we hold it: every write we
    /// make as leader is compared against it, so a deposed leader's late
    /// write fails.
    leader_rev: Option<i64>,
    /// Our configuration's fingerprint, as last published.
    config: String,
    peers: Vec<PeerView>,
    record: Option<Topology>,
    /// Switchovers waiting in etcd for the leader (id, body), as last read.
    requests: Vec<(String, RequestBody)>,
    /// The leader's answers, as last read (id, outcome).
    results: Vec<(String, ResultBody)>,
    /// Our forwarded switchovers waiting for their outcome, by id.
    pending: HashMap<String, Reply>,
}

impl Session {
    fn new(lease: i64, me: String) -> Session {
        Session {
            lease,
            me,
            expires: tokio::time::Instant::now(),
            leader_id: None,
            leader_rev: None,
            config: String::new(),
            peers: vec![],
            record: None,
            requests: vec![],
            results: vec![],
            pending: HashMap::new(),
        }
    }

    fn leads(&self) -> bool {
        self.leader_rev.is_some()
    }

    fn standing(&self) -> Standing {
        Standing {
            connected: true,
            leader: self.leads(),
            leader_id: self.leader_id.clone(),
            lease_until: Some(self.expires.into_std()),
            refused: self.refused(),
            record: self.record.clone(),
            record_read: true,
            peers: self
                .peers
                .iter()
                .filter(|p| p.proxy != self.me)
                .cloned()
                .collect(),
        }
    }

    /// Why we may not join: the leader's view carries another configuration
    /// fingerprint (node list or failover settings).
    fn refused(&self) -> Option<String> {
        let leader = self.leader_id.as_ref().filter(|l| **l != self.me)?;
        let view = self.peers.iter().find(|p| &p.proxy == leader)?;
        (!view.config.is_empty() && !self.config.is_empty() && view.config != self.config)
            .then(|| {
                format!(
                    "refused: this proxy's nodes or failover settings differ from the leader {leader}'s for the same cluster.name; not acting"
                )
            })
    }

    /// Reads every key under the cluster's prefix.
    async fn refresh(&mut self, client: &mut Client, keys: &Keys) -> Result<(), EtcdError> {
        let all = client
            .get(keys.base(), Some(GetOptions::new().with_prefix()))
            .await?;
        self.peers.clear();
        self.requests.clear();
        self.results.clear();
        self.leader_id = None;
        self.record = None;
        let mut still_leader = None;
        for kv in all.kvs() {
            let key = kv.key_str().unwrap_or_default();
            if key == keys.leader() {
                self.leader_id = Some(kv.value_str().unwrap_or_default().to_string());
                if kv.lease() == self.lease {
                    still_leader = Some(kv.create_revision());
                }
            } else if key == keys.topology() {
                self.record = serde_json::from_slice(kv.value()).ok();
            } else if let Some(id) = key.strip_prefix(&keys.proxies()) {
                if let Ok(v) = serde_json::from_slice::<PeerView>(kv.value()) {
                    if v.proxy == id {
                        self.peers.push(v);
                    }
                }
            } else if let Some(id) = key.strip_prefix(&keys.requests()) {
                if let Ok(body) = serde_json::from_slice(kv.value()) {
                    self.requests.push((id.to_string(), body));
                }
            } else if let Some(id) = key.strip_prefix(&keys.results()) {
                if let Ok(body) = serde_json::from_slice(kv.value()) {
                    self.results.push((id.to_string(), body));
                }
            }
        }
        self.leader_rev = still_leader;
        Ok(())
    }

    /// Takes the leader key if nobody holds it (bound to our lease).
    async fn campaign(&mut self, client: &mut Client, keys: &Keys) -> Result<(), EtcdError> {
        if self.config.is_empty() {
            // Not before our view (and its fingerprint) is published.
            return Ok(());
        }
        let me = self.me.clone();
        let opts = PutOptions::new().with_lease(self.lease);
        let txn = Txn::new()
            .when([Compare::create_revision(keys.leader(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(keys.leader(), me.clone(), Some(opts))]);
        let resp = client.txn(txn).await?;
        if resp.succeeded() {
            let rev = resp.header().map_or(0, |h| h.revision());
            tracing::info!(proxy = %me, "coordination: this proxy leads now");
            self.leader_id = Some(me);
            self.leader_rev = Some(rev);
        }
        Ok(())
    }

    /// Writes the topology record, only while we still hold the leader key
    /// created at `leader_rev`.
    async fn write_record(
        &mut self,
        client: &mut Client,
        keys: &Keys,
        mut t: Topology,
    ) -> Result<(), EtcdError> {
        let Some(rev) = self.leader_rev else {
            return Ok(());
        };
        if self.record.as_ref().is_some_and(|r| r.same_as(&t)) {
            return Ok(());
        }
        t.generation = self.record.as_ref().map_or(1, |r| r.generation + 1);
        let body = serde_json::to_vec(&t).unwrap_or_default();
        let txn = Txn::new()
            .when([Compare::create_revision(
                keys.leader(),
                CompareOp::Equal,
                rev,
            )])
            .and_then([TxnOp::put(keys.topology(), body, None)]);
        if client.txn(txn).await?.succeeded() {
            self.record = Some(t);
        } else {
            // Someone else leads now: stop acting at once.
            self.leader_rev = None;
        }
        Ok(())
    }
}

impl Session {
    /// Writes a switchover asked of this proxy for the leader to run (bound
    /// to our lease, so it vanishes with us), and remembers whom to answer.
    async fn forward(
        &mut self,
        client: &mut Client,
        keys: &Keys,
        f: Forward,
    ) -> Result<(), EtcdError> {
        self.pending.retain(|_, reply| !reply.is_closed());
        if self.pending.len() >= MAX_PENDING {
            let why = format!("{MAX_PENDING} requests already wait for the leader");
            let _ = f.reply.send(Err(why));
            return Ok(());
        }
        let id = format!("{}-{:016x}", self.me, rand::random::<u64>());
        let body = RequestBody {
            ask: f.ask,
            reason: f.reason,
        };
        let opts = PutOptions::new().with_lease(self.lease);
        let value = serde_json::to_vec(&body).unwrap_or_default();
        client.put(keys.request(&id), value, Some(opts)).await?;
        self.pending.insert(id, f.reply);
        Ok(())
    }

    /// As leader: takes each waiting request (deleting it in a transaction,
    /// so it runs once even if leadership changes) and runs it on our
    /// monitor, answering under our lease when it is done. As anyone:
    /// passes the leader's answers on to whoever asked.
    async fn handle_requests(
        &mut self,
        client: &mut Client,
        keys: &Keys,
        on_request: &OnRequest,
    ) -> Result<(), EtcdError> {
        for (id, outcome) in std::mem::take(&mut self.results) {
            let Some(reply) = self.pending.remove(&id) else {
                continue;
            };
            let _ = reply.send(outcome);
            client.delete(keys.result(&id), None).await?;
        }
        if !self.leads() {
            return Ok(());
        }
        for (id, body) in std::mem::take(&mut self.requests) {
            let key = keys.request(&id);
            let take = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Greater, 0)])
                .and_then([TxnOp::delete(key, None)]);
            if !client.txn(take).await?.succeeded() {
                continue;
            }
            let outcome = on_request(body.ask, body.reason);
            let (mut client, key, lease) = (client.clone(), keys.result(&id), self.lease);
            tokio::spawn(async move {
                let answer: ResultBody = outcome
                    .await
                    .unwrap_or_else(|_| Err("the leader's monitor stopped before it ran".into()));
                let value = serde_json::to_vec(&answer).unwrap_or_default();
                let opts = PutOptions::new().with_lease(lease);
                if let Err(e) = client.put(key, value, Some(opts)).await {
                    tracing::warn!(error = %e, "coordination: a request's outcome could not be written");
                }
            });
        }
        Ok(())
    }
}
