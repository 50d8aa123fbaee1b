//! The accept loop. The listener builds the shared `Context`, starts the
//! background tasks, applies `max_client_conn` and `max_pending_logins`
//! (a connection past them is refused at once, before any TLS handshake),
//! spawns one tracked task per client, and on shutdown stops accepting and
//! waits (bounded) for clients to finish.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::connection::Admitted;
use crate::context::{Context, RunError};
use crate::error::ClientError;

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
    // Before the monitor: its first events are worth sending too.
    crate::notify::spawn_all(
        &ctx.config().notify,
        &ctx.cluster().events,
        ctx.notify_stats(),
        &tracker,
        &token,
    )?;
    if let Some(http) = opts.http {
        tracker.spawn(crate::http::serve(http, ctx.clone()));
    }
    tracker.spawn(crate::cluster::monitor::run(
        ctx.cluster().clone(),
        ctx.live_config().clone(),
        token.clone(),
    ));
    let patroni = crate::cluster::patroni::watcher(ctx.cluster(), &ctx.config(), token.clone());
    if let Some(watcher) = patroni {
        tracker.spawn(watcher);
    }
    let limits = Limits::new(&ctx.config().proxy);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => spawn_client(&tracker, &limits, &ctx, stream, peer),
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
    // Idle clients wait on their registry entries, not on the token.
    ctx.clients().stop();
    tracker.close();
    let grace = ctx.config().proxy.shutdown_timeout;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("shutdown_timeout reached with clients still in transactions; closing them");
    }
    Ok(())
}

/// Starts the task of one accepted connection: served, refused, or (too
/// many refusals under way) none, the socket closed at once.
fn spawn_client(
    tracker: &TaskTracker,
    limits: &Limits,
    ctx: &Arc<Context>,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) {
    let span = tracing::debug_span!("client", %peer);
    let ctx = ctx.clone();
    match limits.admit() {
        Admission::Serve(admitted) => {
            set_keepalive(&stream, ctx.config().proxy.tcp_keepidle);
            let served = crate::connection::serve(stream, ctx, admitted);
            tracker.spawn(tracing::Instrument::instrument(served, span));
        }
        Admission::Refuse(why, slot) => {
            let refused = async move {
                crate::connection::refuse(stream, ctx, why).await;
                drop(slot);
            };
            tracker.spawn(tracing::Instrument::instrument(refused, span));
        }
        Admission::Close => {
            tracing::debug!(%peer, "too many refusals under way: connection closed unheard");
        }
    }
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

/// The limits applied at accept, before any byte is read: `max_client_conn`,
/// `max_pending_logins`, and as many connections being refused at once as
/// may be logging in (a flood past the limits holds no more than that).
struct Limits {
    clients: Arc<Semaphore>,
    logins: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    max_logins: usize,
}

/// What becomes of an accepted connection.
enum Admission {
    /// Logged in and served.
    Serve(Admitted),
    /// Heard out briefly (a CancelRequest is served) and refused with this error.
    Refuse(ClientError, OwnedSemaphorePermit),
    /// Closed unheard: too many refusals already under way.
    Close,
}

/// Which limit refuses a connection, given which places were free; `None`:
/// it is admitted. `max_client_conn` is named first: it is the one an
/// operator would raise.
fn refusal(client_free: bool, login_free: bool, max_logins: usize) -> Option<ClientError> {
    match (client_free, login_free) {
        (true, true) => None,
        (false, _) => Some(ClientError::TooManyClients),
        (true, false) => Some(ClientError::TooManyPendingLogins(max_logins)),
    }
}

impl Limits {
    fn new(p: &crate::config::ProxyConfig) -> Limits {
        Limits {
            clients: Arc::new(Semaphore::new(p.max_client_conn)),
            logins: Arc::new(Semaphore::new(p.max_pending_logins)),
            refusals: Arc::new(Semaphore::new(p.max_pending_logins)),
            max_logins: p.max_pending_logins,
        }
    }

    fn admit(&self) -> Admission {
        let client = self.clients.clone().try_acquire_owned().ok();
        let login = match client {
            Some(_) => self.logins.clone().try_acquire_owned().ok(),
            None => None,
        };
        match refusal(client.is_some(), login.is_some(), self.max_logins) {
            None => match (client, login) {
                (Some(client), Some(login)) => Admission::Serve(Admitted { client, login }),
                _ => Admission::Close,
            },
            Some(why) => match self.refusals.clone().try_acquire_owned() {
                Ok(slot) => Admission::Refuse(why, slot),
                Err(_) => Admission::Close,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_named_is_the_first_reached() {
        assert!(refusal(true, true, 5).is_none());
        let msg = |c, l| refusal(c, l, 5).map(|e| e.to_string()).unwrap_or_default();
        assert!(msg(false, true).contains("max_client_conn"));
        assert!(msg(false, false).contains("max_client_conn"));
        assert!(msg(true, false).contains("max_pending_logins = 5"));
    }

    #[test]
    fn refusals_are_bounded_and_places_come_back() {
        let p = crate::config::ProxyConfig {
            max_client_conn: 2,
            max_pending_logins: 1,
            ..Default::default()
        };
        let limits = Limits::new(&p);
        let first = limits.admit();
        assert!(matches!(first, Admission::Serve(_)));
        // The one login place is taken: refused, once; then closed unheard.
        let second = limits.admit();
        assert!(matches!(
            second,
            Admission::Refuse(ClientError::TooManyPendingLogins(1), _)
        ));
        assert!(matches!(limits.admit(), Admission::Close));
        drop(second);
        // A login that ended frees its place; the client place stays taken.
        let Admission::Serve(a) = first else {
            unreachable!()
        };
        drop(a.login);
        let third = limits.admit();
        assert!(matches!(third, Admission::Serve(_)));
        // Both client places are taken now.
        assert!(matches!(
            limits.admit(),
            Admission::Refuse(ClientError::TooManyClients, _)
        ));
        drop((a.client, third));
        assert!(matches!(limits.admit(), Admission::Serve(_)));
    }
}
