//! The accept loop. The listener builds the shared `Context`, starts the
//! background tasks, applies `max_client_conn`, spawns one tracked task per
//! client, and on shutdown stops accepting and waits (bounded) for clients
//! to finish.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::context::{Context, RunError};

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
    // The socket clients reach decides, whatever the file's `listen` says
    // (tests and embedders bind their own).
    let bound = listener
        .local_addr()
        .map_err(|e| RunError::Refused(format!("client listener: {e}")))?;
    crate::config::trust_allowed_on(&config, bound).map_err(RunError::Refused)?;
    let token = CancellationToken::new();
    let ctx = Context::new(config, token.clone())?
        .with_config_path(opts.config_path)
        .with_listening(bound);
    let ctx = Arc::new(ctx);
    let tracker = TaskTracker::new();
    crate::background::spawn(&tracker, &ctx, opts.reload_on_sighup);
    if let Some(http) = opts.http {
        tracker.spawn(crate::http::serve(http, ctx.clone()));
    }
    tracker.spawn(crate::cluster::monitor::run(
        ctx.cluster().clone(),
        ctx.live_config().clone(),
        token.clone(),
    ));
    let clients = Arc::new(Semaphore::new(ctx.config().proxy.max_client_conn));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    set_keepalive(&stream, ctx.config().proxy.tcp_keepidle);
                    let permit = clients.clone().try_acquire_owned().ok();
                    let ctx = ctx.clone();
                    let span = tracing::debug_span!("client", %peer);
                    tracker.spawn(tracing::Instrument::instrument(crate::connection::serve(stream, ctx, permit), span));
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
    let grace = ctx.config().proxy.shutdown_timeout;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("shutdown_timeout reached with clients still in transactions; closing them");
    }
    Ok(())
}

/// Keepalive probes every 10 s after `idle` without traffic, 6 of them, and
/// as long for unacknowledged data (TCP_USER_TIMEOUT): a client whose host
/// vanished, inside a transaction or not, is noticed in about
/// `idle` + 60 s instead of never, and its server connection freed.
fn set_keepalive(stream: &tokio::net::TcpStream, idle: Duration) {
    if idle.is_zero() {
        return;
    }
    const INTERVAL: Duration = Duration::from_secs(10);
    const PROBES: u32 = 6;
    let sock = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(INTERVAL)
        .with_retries(PROBES);
    let _ = sock.set_tcp_keepalive(&keepalive);
    let _ = sock.set_tcp_user_timeout(Some(idle + INTERVAL * PROBES));
}
