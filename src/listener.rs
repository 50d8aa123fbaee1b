//! The accept loop and the state every client task shares. The listener
//! applies `max_client_conn`, spawns one tracked task per client, and on
//! shutdown stops accepting and waits (bounded) for clients to finish.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::secret::Credentials;
use crate::client::cancel::CancelMap;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::events::Events;
use crate::pool::server_conn::Login;
use crate::pool::{Pool, PoolSettings, Pools};

/// State shared by all client tasks; a cheap `Arc` to clone.
pub struct Context {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// Users' credentials, verifiers precomputed.
    pub users: HashMap<String, Credentials>,
    /// Server connection pools.
    pub pools: Pools,
    /// The nodes.
    pub cluster: Arc<Cluster>,
    /// Live clients' cancel keys.
    pub cancels: Arc<CancelMap>,
    /// Cancelled when the proxy shuts down.
    pub shutdown: CancellationToken,
}

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A user's password could not be parsed.
    #[error("user {0}: {1}")]
    BadUser(String, &'static str),
}

impl Context {
    /// Builds the shared state for `config`.
    pub fn new(config: Config, shutdown: CancellationToken) -> Result<Context, RunError> {
        let mut users = HashMap::new();
        for u in &config.users {
            let creds = Credentials::new(&u.password, u.server_password.as_deref())
                .map_err(|e| RunError::BadUser(u.name.clone(), e))?;
            users.insert(u.name.clone(), creds);
        }
        let cluster = Arc::new(Cluster::new(config.nodes(), Arc::new(Events::new(1000))));
        Ok(Context {
            config: Arc::new(config),
            users,
            pools: Pools::default(),
            cluster,
            cancels: Arc::default(),
            shutdown,
        })
    }

    /// The pool serving `database` (client-facing name) for `user`.
    pub fn pool_for(&self, database: &str, user: &str) -> Pool {
        self.pools
            .get_or_create((database.to_string(), user.to_string()), || {
                let (dbname, target, size) = self.config.database(database);
                let p = &self.config.proxy;
                let settings = PoolSettings {
                    size,
                    checkout_timeout: p.checkout_timeout,
                    idle_timeout: p.server_idle_timeout,
                    lifetime: p.server_lifetime,
                    connect_timeout: p.server_connect_timeout,
                    hold_timeout: self.config.failover.hold_timeout,
                    target,
                };
                let password = self.users.get(user).and_then(|c| c.server_password.clone());
                let login = Login {
                    user: user.to_string(),
                    database: dbname,
                    password,
                };
                Pool::new(login, settings, self.cluster.clone())
            })
    }
}

/// Serves clients on `listener` until `shutdown` resolves, then stops
/// accepting, lets running transactions finish for up to
/// `proxy.shutdown_timeout`, and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    run_with_http(config, listener, None, shutdown).await
}

/// [`run`], also serving the HTTP endpoints (`crate::http`) on `http` when given.
pub async fn run_with_http(
    config: Config,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    crate::metrics::describe();
    let token = CancellationToken::new();
    let ctx = Arc::new(Context::new(config, token.clone())?);
    let tracker = TaskTracker::new();
    tracker.spawn(reaper(ctx.clone()));
    if let Some(http) = http {
        tracker.spawn(crate::http::serve(http, ctx.cluster.clone(), token.clone()));
    }
    tracker.spawn(crate::cluster::monitor::run(
        ctx.cluster.clone(),
        ctx.config.clone(),
        token.clone(),
    ));
    let clients = Arc::new(Semaphore::new(ctx.config.proxy.max_client_conn));
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
        }
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for running transactions");
    token.cancel();
    tracker.close();
    if tokio::time::timeout(ctx.config.proxy.shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown_timeout reached with clients still in transactions; closing them");
    }
    Ok(())
}

/// Closes idle server connections past their idle timeout or lifetime.
async fn reaper(ctx: Arc<Context>) {
    let p = &ctx.config.proxy;
    let period = (p.server_idle_timeout.min(p.server_lifetime) / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(30));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => ctx.pools.reap_all(Instant::now()),
            _ = ctx.shutdown.cancelled() => return,
        }
    }
}
