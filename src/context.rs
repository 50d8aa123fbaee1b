//! The state every task shares (`Context`): live configuration and
//! credentials, pools, the cluster handle, cancel keys, the client registry,
//! metrics state, TLS, the shutdown token; and how a reload replaces the
//! configuration without closing any client connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::{ArcSwap, Guard};
use metrics_exporter_prometheus::PrometheusRecorder;
use tokio_util::sync::CancellationToken;

use crate::auth::secret::Credentials;
use crate::auth::server_side::ServerSecret;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::events::{EventKind, Events};
use crate::measure::latency::Latencies;
use crate::measure::window::Percentiles;
use crate::measure::ErrorCounts;
use crate::pool::{Pool, PoolError, PoolSettings, Pools, ServerParams};
use crate::runtime::LoopLag;
use crate::server::Login;
use crate::sessions::cancel::CancelMap;
use crate::sessions::forwards::Forwards;
use crate::sessions::registry::Registry;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The proxy was started without a file to re-read.
    #[error("started without a configuration file")]
    NoFile,
    /// The file could not be read, parsed or validated.
    #[error("{0}")]
    Read(String),
    /// A user's password could not be parsed.
    #[error(transparent)]
    Users(#[from] RunError),
    /// A certificate or key file could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The node list cannot be applied.
    #[error("{0}")]
    Nodes(crate::cluster::MembershipError),
    /// Reading the file stopped short (a panic on the blocking pool).
    #[error("reading the configuration stopped short: {0}")]
    Interrupted(String),
}

/// What a reload reads and derives off the event loop: the file, every
/// user's verifiers and the certificate files.
struct ReadReload {
    config: Config,
    users: HashMap<String, Credentials>,
    tls: crate::tls::Prepared,
}

/// A reload that passed every check, ready to install.
struct PreparedReload {
    config: Config,
    users: HashMap<String, Credentials>,
    tls: crate::tls::Prepared,
    ignored: Vec<String>,
    node_changes: Vec<String>,
}

/// State shared by all client tasks; a cheap `Arc` to clone. Fields are
/// private: tasks read through the accessors, and only a reload replaces
/// configuration, credentials and TLS.
pub struct Context {
    /// The configuration in force; a reload swaps it (the monitor reads it too).
    config: Arc<ArcSwap<Config>>,
    /// Where the configuration was read from (`RELOAD` re-reads it).
    config_path: Option<PathBuf>,
    /// Users' credentials, verifiers precomputed; a reload swaps them.
    users: ArcSwap<HashMap<String, Credentials>>,
    /// Server connection pools.
    pools: Pools,
    /// The nodes.
    cluster: Arc<Cluster>,
    /// Live clients' cancel keys.
    cancels: Arc<CancelMap>,
    /// CancelRequests being sent on to peers, and their outcomes.
    peer_cancels: Forwards,
    /// Cancelled when the proxy shuts down.
    shutdown: CancellationToken,
    /// Logged-in clients.
    clients: Arc<Registry>,
    /// Logged-in clients per database and per user.
    seats: Arc<crate::sessions::seats::Seats>,
    /// `proxy.max_memory`, for large messages held whole.
    budget: Arc<crate::sessions::budget::Budget>,
    /// Latency histograms.
    latencies: Latencies,
    /// Snapshots of them, for the last minutes' percentiles.
    recent: crate::measure::window::Recent,
    /// Notification delivery outcomes.
    notify_stats: Arc<crate::notify::Stats>,
    /// Errors sent to clients, by SQLSTATE class.
    errors: Arc<ErrorCounts>,
    /// This proxy's own Prometheus recorder, made at the first scrape.
    prometheus: std::sync::Mutex<Option<(u64, Arc<PrometheusRecorder>)>>,
    /// Record per-query timings and latency histograms (`[http] metrics`).
    record_metrics: bool,
    /// TLS toward clients and toward PostgreSQL; a reload rebuilds it.
    tls: crate::tls::Tls,
    /// The client socket's address, which a reload cannot change: `trust`
    /// is checked against it (`config::trust_allowed_on`).
    listening: Option<SocketAddr>,
    /// Scheduling delay of the event loops.
    loop_lag: Arc<LoopLag>,
    /// Held by the reload under way: one at a time, so that two overlapping
    /// ones (SIGHUP and `RELOAD`) cannot install the older file last.
    reloading: tokio::sync::Mutex<()>,
    /// Users found by `proxy.auth_query`, cached for `proxy.auth_query_ttl`.
    auth_cache: crate::auth_query::AuthCache,
}

/// The latency series, in the order `Context::latency_totals` gives them.
pub const LATENCY_SERIES: [&str; 4] = ["query", "transaction", "checkout_wait", "held"];

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A user's password could not be parsed.
    #[error("user {0}: {1}")]
    BadUser(String, &'static str),
    /// A TLS certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The configuration cannot serve on the socket given (`trust` off loopback).
    #[error("{0}")]
    Refused(String),
    /// A `[[notify]]` receiver cannot be set up (its CA file).
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
}

impl Context {
    /// Builds the shared state for `config`.
    pub fn new(config: Config, shutdown: CancellationToken) -> Result<Context, RunError> {
        let users = credentials(&config)?;
        let tls = crate::tls::Tls::new(&config)?;
        if config.coordination.backend == crate::config::coordination::Backend::Etcd {
            // The coordination task reads these files at each connection to
            // etcd, where a bad one would only show as a connection that
            // keeps failing: read them once here so the start fails naming it.
            crate::tls::EtcdPem::read(&config.coordination.tls)?;
        }
        if let Some(p) = &config.coordination.patroni {
            // The same for the etcd Patroni uses.
            crate::tls::EtcdPem::read_as(&p.tls, &crate::tls::PATRONI_TLS)?;
        }
        let cluster = Cluster::new(config.nodes(), Arc::new(Events::new(1000)))
            .with_tls(tls.connector().clone());
        let cluster = Arc::new(cluster);
        let record_metrics = config.http.metrics;
        // Fixed until a restart: grants taken count against one total.
        let budget = Arc::new(crate::sessions::budget::Budget::new(
            config.proxy.max_memory,
        ));
        // Validated to fit (MAX_PEER_ID); fixed until a restart, like the keys issued.
        let peer_id = config.proxy.peer_id.and_then(|id| u8::try_from(id).ok());
        // Fixed until a restart: the pools of a name share one from their first on.
        let limits = crate::pool::Limits::new(
            config.proxy.max_db_connections,
            config.proxy.max_user_connections,
        );
        Ok(Context {
            config: Arc::new(ArcSwap::from_pointee(config)),
            config_path: None,
            users: ArcSwap::from_pointee(users),
            pools: Pools::new(limits),
            cluster,
            cancels: Arc::new(CancelMap::new(peer_id)),
            peer_cancels: Forwards::default(),
            shutdown,
            clients: Arc::default(),
            seats: Arc::default(),
            budget,
            latencies: Default::default(),
            recent: Default::default(),
            notify_stats: Arc::default(),
            errors: Default::default(),
            prometheus: std::sync::Mutex::new(None),
            record_metrics,
            tls,
            listening: None,
            loop_lag: Arc::default(),
            reloading: tokio::sync::Mutex::new(()),
            auth_cache: Default::default(),
        })
    }

    /// Remembers the file the configuration came from, for `RELOAD`.
    pub fn with_config_path(mut self, path: Option<PathBuf>) -> Context {
        self.config_path = path;
        self
    }

    /// Remembers the address the client socket is bound to, for `RELOAD`.
    pub fn with_listening(mut self, addr: SocketAddr) -> Context {
        self.listening = Some(addr);
        self
    }

    /// The configuration in force now.
    pub fn config(&self) -> Guard<Arc<Config>> {
        self.config.load()
    }

    /// The live configuration cell, for tasks that follow reloads (the monitor).
    pub fn live_config(&self) -> &Arc<ArcSwap<Config>> {
        &self.config
    }

    /// Users' credentials now.
    pub fn users(&self) -> Arc<HashMap<String, Credentials>> {
        self.users.load_full()
    }

    /// The stored credentials of `user`, who is not in `[[users]]`, by
    /// `proxy.auth_query` (cached for `proxy.auth_query_ttl`); `None` when
    /// there is no such user or no `proxy.auth_user`.
    pub async fn look_up(
        &self,
        user: &str,
        database: &str,
    ) -> Result<Option<Credentials>, crate::auth_query::fetch::LookupError> {
        let config = self.config.load_full();
        if config.proxy.auth_user.is_none() {
            return Ok(None);
        }
        let ttl = config.proxy.auth_query_ttl;
        if let Some(cached) = self.auth_cache.fresh(user, Instant::now(), ttl) {
            return Ok(cached);
        }
        // A few lookups at a time: a burst of made-up names must not open a
        // server connection each. A waiter may find its answer cached.
        let _turn = self.auth_cache.turn().await;
        if let Some(cached) = self.auth_cache.fresh(user, Instant::now(), ttl) {
            return Ok(cached);
        }
        let users = self.users();
        let found =
            crate::auth_query::fetch::fetch(&self.cluster, &config, &users, user, database).await?;
        self.auth_cache
            .store(user, found.clone(), Instant::now(), ttl);
        Ok(found)
    }

    /// The server connection pools.
    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    /// The nodes and their routing.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Live clients' cancel keys.
    pub fn cancels(&self) -> &Arc<CancelMap> {
        &self.cancels
    }

    /// CancelRequests being sent on to peers, and their outcomes.
    pub fn peer_cancels(&self) -> &Forwards {
        &self.peer_cancels
    }

    /// Cancelled when the proxy shuts down.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Logged-in clients.
    pub fn clients(&self) -> &Arc<Registry> {
        &self.clients
    }

    /// The memory budget for large messages held whole (`proxy.max_memory`).
    pub fn budget(&self) -> &Arc<crate::sessions::budget::Budget> {
        &self.budget
    }

    /// Logged-in clients per database and per user.
    pub fn seats(&self) -> &Arc<crate::sessions::seats::Seats> {
        &self.seats
    }

    /// Latency histograms.
    pub fn latencies(&self) -> &Latencies {
        &self.latencies
    }

    /// Notification delivery outcomes.
    pub fn notify_stats(&self) -> &Arc<crate::notify::Stats> {
        &self.notify_stats
    }

    /// Every latency histogram since start, in `LATENCY_SERIES` order.
    pub fn latency_totals(&self) -> Vec<hdrhistogram::Histogram<u64>> {
        use crate::measure::latency::Kind;
        vec![
            self.latencies.merged(Kind::Query),
            self.latencies.merged(Kind::Transaction),
            self.latencies.merged(Kind::Wait),
            self.cluster.holds().durations(),
        ]
    }

    /// Keeps this moment's latency histograms for the windows to come.
    pub fn snapshot_latencies(&self, now: Instant) {
        self.recent.push(now, self.latency_totals());
    }

    /// Percentiles of each latency series (`LATENCY_SERIES`) over each
    /// window (`measure::window::WINDOWS`).
    pub fn latency_windows(&self) -> Vec<(&'static str, &'static str, Percentiles)> {
        let (now, totals) = (Instant::now(), self.latency_totals());
        let windows: Vec<_> = crate::measure::window::WINDOWS
            .iter()
            .map(|&(name, span)| (name, self.recent.last(&totals, now, span)))
            .collect();
        let mut out = Vec::new();
        for (i, series) in LATENCY_SERIES.iter().enumerate() {
            for (window, last) in &windows {
                out.push((
                    *series,
                    *window,
                    crate::measure::window::percentiles(&last[i]),
                ));
            }
        }
        out
    }

    /// Cancels the query of our client with this key, if it has one
    /// running. The client's relay waits for this before its server serves
    /// anyone else, so the outcome is reported: a cancel that may still
    /// arrive has the server closed instead.
    pub async fn cancel_local(&self, pid: i32, secret: i32) {
        let Some(sending) = self.cancels.lookup(pid, secret) else {
            return;
        };
        let target = sending.target();
        let tls = self.cluster().tls().current();
        let via = crate::server::channel(tls.mode, target.tls);
        match crate::server::send_cancel(&target.addr, target.key, via, &tls).await {
            Ok(()) => sending.settle(),
            Err(e) => {
                tracing::warn!(error = %e, "could not forward cancel request");
                if !e.may_arrive() {
                    sending.settle();
                }
            }
        }
    }

    /// Errors sent to clients, by SQLSTATE class.
    pub fn errors(&self) -> &Arc<ErrorCounts> {
        &self.errors
    }

    /// This proxy's Prometheus recorder, made by `make` the first time and
    /// again after pools were dropped, so their series go with them (every
    /// value is set afresh at each scrape: nothing else is lost).
    pub fn prometheus(&self, make: fn() -> PrometheusRecorder) -> Arc<PrometheusRecorder> {
        let epoch = self.pools.evicted();
        let mut slot = self.prometheus.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some((e, rec)) if *e == epoch => rec.clone(),
            _ => {
                let rec = Arc::new(make());
                *slot = Some((epoch, rec.clone()));
                rec
            }
        }
    }

    /// Whether per-query timings are recorded (`[http] metrics`).
    pub fn record_metrics(&self) -> bool {
        self.record_metrics
    }

    /// TLS toward clients and toward PostgreSQL.
    pub fn tls(&self) -> &crate::tls::Tls {
        &self.tls
    }

    /// Scheduling delay of the event loops.
    pub fn loop_lag(&self) -> &Arc<LoopLag> {
        &self.loop_lag
    }

    /// The pool serving `database` (client-facing name) for `user`, with
    /// what its servers report at login. A new pool is kept only once a
    /// server login for it succeeded, and only while fewer than
    /// `proxy.max_pools` exist: a client naming a database that does not
    /// exist gets PostgreSQL's error and leaves nothing behind.
    /// `looked_up` is what a user found by `auth_query` logs into
    /// PostgreSQL with, from this client's login: the pool takes it, so
    /// its new server connections follow the latest login.
    pub async fn pool_for(
        &self,
        database: &str,
        user: &str,
        looked_up: Option<ServerSecret>,
    ) -> Result<(Pool, ServerParams), PoolError> {
        let key = (database.to_string(), user.to_string());
        let existing = |pool: &Pool| {
            if let Some(secret) = &looked_up {
                pool.set_secret(secret.clone());
            }
        };
        if let Some(pool) = self.pools.get(&key) {
            existing(&pool);
            let params = pool.server_params().await?;
            return Ok((pool, params));
        }
        // Held across the server login on purpose (an async mutex): the
        // first clients of a new pool share one login, not one each.
        let gate = self.pools.creation_gate(&key);
        let _creating = gate.lock().await;
        if let Some(pool) = self.pools.get(&key) {
            existing(&pool);
            let params = pool.server_params().await?;
            return Ok((pool, params));
        }
        let (mut login, settings) = self.pool_settings(database, user);
        if looked_up.is_some() {
            login.secret = looked_up;
        }
        let paused = self.pools.paused_for(database);
        let limits = self.pools.limits_for(&key);
        let candidate = Pool::new(login, settings, self.cluster.clone(), paused, limits);
        let params = candidate.server_params().await?;
        let max = self.config.load().proxy.max_pools;
        Ok((self.pools.insert(key, candidate, max)?, params))
    }

    /// What the configuration in force says about the pool (`database`, `user`).
    fn pool_settings(&self, database: &str, user: &str) -> (Login, PoolSettings) {
        let config = self.config.load();
        let (dbname, target, size) = config.database(database);
        let p = &config.proxy;
        let settings = PoolSettings {
            size,
            checkout_timeout: p.checkout_timeout,
            idle_timeout: p.server_idle_timeout,
            lifetime: p.server_lifetime,
            connect_timeout: p.server_connect_timeout,
            hold_timeout: config.failover.hold_timeout,
            query_wait_timeout: Some(p.query_wait_timeout).filter(|t| !t.is_zero()),
            target,
        };
        let password = self
            .users
            .load()
            .get(user)
            .and_then(|c| c.server_password.clone())
            .map(ServerSecret::Password);
        let login = Login {
            user: user.to_string(),
            database: dbname,
            secret: password,
        };
        (login, settings)
    }

    /// Re-reads the configuration file and applies it without closing any
    /// client connection: users and passwords, pool sizes and timeouts, and
    /// settings read per new client. Returns one line per setting that needs a
    /// restart to change. An invalid file changes nothing.
    pub async fn reload(&self) -> Result<Vec<String>, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let prepared = self.prepare_reload().await.inspect_err(|e| {
            self.cluster.events.record(
                EventKind::ConfigRejected,
                None,
                format!("configuration rejected, the running one stays: {e}"),
            );
        })?;
        Ok(self.apply_reload(prepared))
    }

    /// Everything a reload can fail at, before anything changes.
    async fn prepare_reload(&self) -> Result<PreparedReload, ReloadError> {
        let path = self.config_path.clone().ok_or(ReloadError::NoFile)?;
        // File reads, and a PBKDF2 per plaintext user (milliseconds each, so
        // seconds for a thousand users), on the blocking pool: on the event
        // loop they would stall every client it serves, all of them with
        // `workers = 1`.
        let listening = self.listening;
        let ReadReload { config, users, tls } =
            tokio::task::spawn_blocking(move || read_reload(&path, listening))
                .await
                .map_err(|e| ReloadError::Interrupted(e.to_string()))??;
        let ignored = crate::config::reload::needs_restart(&self.config.load(), &config);
        let node_changes = self
            .cluster
            .apply_nodes(&config.nodes())
            .map_err(ReloadError::Nodes)?;
        Ok(PreparedReload {
            config,
            users,
            tls,
            ignored,
            node_changes,
        })
    }

    /// Installs a prepared reload; returns one line per setting that needs a restart.
    fn apply_reload(&self, r: PreparedReload) -> Vec<String> {
        self.tls.install(r.tls);
        self.users.store(Arc::new(r.users));
        self.config.store(Arc::new(r.config));
        for ((db, user), pool) in self.pools.all() {
            let (mut login, settings) = self.pool_settings(&db, &user);
            if login.secret.is_none() && !self.users.load().contains_key(&user) {
                // A looked-up user's secret came from a client's login, not the file.
                login.secret = pool.login().secret.clone();
            }
            pool.update(login, settings);
        }
        let mut msg = "configuration reloaded".to_string();
        if !r.node_changes.is_empty() {
            msg.push_str(&format!("; {}", r.node_changes.join(", ")));
        }
        if !r.ignored.is_empty() {
            msg.push_str(&format!(
                "; needs a restart (not applied): {}",
                r.ignored.join(", ")
            ));
        }
        self.cluster
            .events
            .record(EventKind::ConfigReloaded, None, msg);
        r.ignored
            .into_iter()
            .map(|k| format!("{k} changed: takes effect after a restart"))
            .collect()
    }
}

/// The blocking half of a reload: reads and checks the file (`trust`
/// against the socket clients reach, `listening`: the file's `listen`
/// waits for a restart), derives every user's verifiers and reads the
/// certificate files. Changes nothing.
fn read_reload(
    path: &std::path::Path,
    listening: Option<SocketAddr>,
) -> Result<ReadReload, ReloadError> {
    let read = |e: String| ReloadError::Read(format!("{}: {e}", path.display()));
    let config = crate::config::load(path).map_err(|e| read(e.to_string()))?;
    if let Some(addr) = listening {
        crate::config::trust_allowed_on(&config, addr).map_err(read)?;
    }
    let users = credentials(&config)?;
    // Certificate files are re-read; on failure nothing changes.
    let tls = crate::tls::Tls::prepare(&config)?;
    Ok(ReadReload { config, users, tls })
}

/// Every configured user's credentials, verifiers precomputed.
fn credentials(config: &Config) -> Result<HashMap<String, Credentials>, RunError> {
    let mut users = HashMap::new();
    for u in &config.users {
        let creds = Credentials::new(&u.name, &u.password, u.server_password.as_deref())
            .map_err(|e| RunError::BadUser(u.name.clone(), e))?;
        users.insert(u.name.clone(), creds);
    }
    Ok(users)
}
