//! The accept loop and the state every client task shares. The listener
//! applies `max_client_conn`, spawns one tracked task per client, and on
//! shutdown stops accepting and waits (bounded) for clients to finish.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::secret::Credentials;
use crate::client::cancel::CancelMap;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::events::{EventKind, Events};
use crate::pool::server_conn::Login;
use crate::pool::{Pool, PoolSettings, Pools};

/// State shared by all client tasks; a cheap `Arc` to clone.
pub struct Context {
    /// The configuration in force; a reload swaps it (the monitor reads it too).
    pub config: Arc<ArcSwap<Config>>,
    /// Where the configuration was read from (`RELOAD` re-reads it).
    pub config_path: Option<PathBuf>,
    /// Users' credentials, verifiers precomputed; a reload swaps them.
    pub users: ArcSwap<HashMap<String, Credentials>>,
    /// Server connection pools.
    pub pools: Pools,
    /// The nodes.
    pub cluster: Arc<Cluster>,
    /// Live clients' cancel keys.
    pub cancels: Arc<CancelMap>,
    /// Cancelled when the proxy shuts down.
    pub shutdown: CancellationToken,
    /// Logged-in clients.
    pub clients: Arc<crate::client::registry::Registry>,
    /// Latency histograms.
    pub latencies: crate::metrics::latency::Latencies,
    /// Errors sent to clients, by SQLSTATE class.
    pub errors: Arc<crate::metrics::ErrorCounts>,
    /// This proxy's Prometheus recorder (filled at each scrape).
    pub prometheus: metrics_exporter_prometheus::PrometheusRecorder,
    /// Record per-query timings and latency histograms (`[http] metrics`).
    pub record_metrics: bool,
    /// TLS toward clients and toward PostgreSQL; a reload rebuilds it.
    pub tls: crate::tls::Tls,
    /// Scheduling delay of the event loops.
    pub loop_lag: Arc<crate::runtime::LoopLag>,
}

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A user's password could not be parsed.
    #[error("user {0}: {1}")]
    BadUser(String, &'static str),
    /// A TLS certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

impl Context {
    /// Builds the shared state for `config`.
    pub fn new(config: Config, shutdown: CancellationToken) -> Result<Context, RunError> {
        let users = credentials(&config)?;
        let tls = crate::tls::Tls::new(&config)?;
        let cluster = Cluster::new(config.nodes(), Arc::new(Events::new(1000)))
            .with_tls(tls.connector().clone());
        let cluster = Arc::new(cluster);
        let record_metrics = config.http.metrics;
        Ok(Context {
            config: Arc::new(ArcSwap::from_pointee(config)),
            config_path: None,
            users: ArcSwap::from_pointee(users),
            pools: Pools::default(),
            cluster,
            cancels: Arc::default(),
            shutdown,
            clients: Arc::default(),
            latencies: Default::default(),
            errors: Default::default(),
            prometheus: crate::metrics::recorder(),
            record_metrics,
            tls,
            loop_lag: Arc::default(),
        })
    }

    /// The pool serving `database` (client-facing name) for `user`.
    pub fn pool_for(&self, database: &str, user: &str) -> Pool {
        self.pools
            .get_or_create((database.to_string(), user.to_string()), |paused| {
                let (login, settings) = self.pool_settings(database, user);
                Pool::new(login, settings, self.cluster.clone(), paused)
            })
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
            target,
        };
        let password = self
            .users
            .load()
            .get(user)
            .and_then(|c| c.server_password.clone());
        let login = Login {
            user: user.to_string(),
            database: dbname,
            password,
        };
        (login, settings)
    }

    /// Re-reads the configuration file and applies it without closing any
    /// client connection: users and passwords, pool sizes and timeouts, and
    /// settings read per new client. Returns one line per setting that needs a
    /// restart to change. An invalid file changes nothing.
    pub fn reload(&self) -> Result<Vec<String>, String> {
        let events = &self.cluster.events;
        let new = self.read_config().inspect_err(|e| {
            events.record(
                EventKind::ConfigRejected,
                None,
                format!("configuration rejected, the running one stays: {e}"),
            );
        })?;
        let users = credentials(&new).map_err(|e| e.to_string())?;
        // Certificate files are re-read; on failure nothing changes.
        let tls = crate::tls::Tls::prepare(&new).map_err(|e| {
            let e = e.to_string();
            events.record(
                EventKind::ConfigRejected,
                None,
                format!("configuration rejected, the running one stays: {e}"),
            );
            e
        })?;
        let ignored = crate::config::reload::needs_restart(&self.config.load(), &new);
        let node_changes = self.cluster.apply_nodes(&new.nodes()).inspect_err(|e| {
            events.record(
                EventKind::ConfigRejected,
                None,
                format!("configuration rejected, the running one stays: {e}"),
            );
        })?;
        self.tls.install(tls);
        self.users.store(Arc::new(users));
        self.config.store(Arc::new(new));
        for ((db, user), pool) in self.pools.all() {
            let (login, settings) = self.pool_settings(&db, &user);
            pool.update(login, settings);
        }
        let mut msg = "configuration reloaded".to_string();
        if !node_changes.is_empty() {
            msg.push_str(&format!("; {}", node_changes.join(", ")));
        }
        if !ignored.is_empty() {
            msg.push_str(&format!(
                "; needs a restart (not applied): {}",
                ignored.join(", ")
            ));
        }
        events.record(EventKind::ConfigReloaded, None, msg);
        Ok(ignored
            .into_iter()
            .map(|k| format!("{k} changed: takes effect after a restart"))
            .collect())
    }

    fn read_config(&self) -> Result<Config, String> {
        let path = self
            .config_path
            .as_ref()
            .ok_or("started without a configuration file")?;
        crate::config::load(path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Every configured user's credentials, verifiers precomputed.
fn credentials(config: &Config) -> Result<HashMap<String, Credentials>, RunError> {
    let mut users = HashMap::new();
    for u in &config.users {
        let creds = Credentials::new(&u.password, u.server_password.as_deref())
            .map_err(|e| RunError::BadUser(u.name.clone(), e))?;
        users.insert(u.name.clone(), creds);
    }
    Ok(users)
}

/// How [`serve`] runs besides the client listener.
#[derive(Default)]
pub struct Options {
    /// Serve the HTTP endpoints (`crate::http`) here.
    pub http: Option<TcpListener>,
    /// The file the configuration came from: `RELOAD` (and SIGHUP) re-read it.
    pub config_path: Option<PathBuf>,
    /// Reload on SIGHUP (the binary; not tests running several proxies).
    pub reload_on_sighup: bool,
}

/// Serves clients on `listener` until `shutdown` resolves, then stops
/// accepting, lets running transactions finish for up to
/// `proxy.shutdown_timeout`, and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    serve(config, listener, Options::default(), shutdown).await
}

/// [`run`], also serving the HTTP endpoints (`crate::http`) on `http` when given.
pub async fn run_with_http(
    config: Config,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let opts = Options {
        http,
        ..Default::default()
    };
    serve(config, listener, opts, shutdown).await
}

/// [`run`] with [`Options`]. Admin `SHUTDOWN` ends it like `shutdown` does.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    opts: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let token = CancellationToken::new();
    let mut ctx = Context::new(config, token.clone())?;
    ctx.config_path = opts.config_path;
    let ctx = Arc::new(ctx);
    let tracker = TaskTracker::new();
    tracker.spawn(reaper(ctx.clone()));
    tracker.spawn(stats_periods(ctx.clone()));
    tracker.spawn(crate::runtime::watch_lag(
        ctx.loop_lag.clone(),
        token.clone(),
    ));
    if opts.reload_on_sighup {
        tracker.spawn(reload_on_sighup(ctx.clone()));
    }
    if let Some(http) = opts.http {
        tracker.spawn(crate::http::serve(http, ctx.clone()));
    }
    tracker.spawn(crate::cluster::monitor::run(
        ctx.cluster.clone(),
        ctx.config.clone(),
        token.clone(),
    ));
    let clients = Arc::new(Semaphore::new(ctx.config.load().proxy.max_client_conn));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let permit = clients.clone().try_acquire_owned().ok();
                    let ctx = ctx.clone();
                    let span = tracing::debug_span!("client", %peer);
                    tracker.spawn(tracing::Instrument::instrument(crate::client::handle(stream, ctx, permit), span));
                }
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = &mut shutdown => break,
            _ = token.cancelled() => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for running transactions");
    token.cancel();
    tracker.close();
    let grace = ctx.config.load().proxy.shutdown_timeout;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("shutdown_timeout reached with clients still in transactions; closing them");
    }
    Ok(())
}

/// Closes idle server connections past their idle timeout or lifetime.
async fn reaper(ctx: Arc<Context>) {
    let period = {
        let config = ctx.config.load();
        let p = &config.proxy;
        (p.server_idle_timeout.min(p.server_lifetime) / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(30))
    };
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => ctx.pools.reap_all(Instant::now()),
            _ = ctx.shutdown.cancelled() => return,
        }
    }
}

/// Ends a `SHOW STATS` averaging period every `proxy.stats_period`.
async fn stats_periods(ctx: Arc<Context>) {
    let period = ctx
        .config
        .load()
        .proxy
        .stats_period
        .max(Duration::from_millis(100));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                for (_, pool) in ctx.pools.all() {
                    pool.stats().roll(now);
                }
            }
            _ = ctx.shutdown.cancelled() => return,
        }
    }
}

/// Reloads the configuration file on each SIGHUP.
async fn reload_on_sighup(ctx: Arc<Context>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload with the admin RELOAD command");
        return;
    };
    loop {
        tokio::select! {
            Some(()) = hup.recv() => match ctx.reload() {
                Ok(restart) => tracing::info!(needs_restart = ?restart, "SIGHUP: configuration reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: configuration rejected; the running one stays"),
            },
            _ = ctx.shutdown.cancelled() => return,
        }
    }
}
