//! One accepted connection, start to end: login, then the admin console or
//! the query relay; or, past a limit decided at accept, a refusal that
//! still serves a CancelRequest. Errors end here: they are sent to the
//! client with a SQLSTATE and logged, and never reach the listener.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::client::conn::{ClientConn, ReadError};
use crate::client::login::{self, Opening};
use crate::client::pool_error;
use crate::client::relay::Session;
use crate::client::settings::{self, Untracked};
use crate::context::Context;
use crate::error::ClientError;
use crate::pool::Pool;
use crate::server::settings::Setting;
use crate::sessions::cancel::CancelGuard;
use crate::sessions::registry;
use crate::sessions::seats::{Seat, SeatLimits};

/// How long a refused connection is heard out for its first packets. A
/// client sends them as soon as it is connected, usually before it is even
/// accepted: one second is ample, and bounds what a flood of refused
/// connections can hold.
const REFUSED_WAIT: Duration = Duration::from_secs(1);

/// The permits an admitted connection holds: its place under
/// `max_client_conn` for its whole life, and under `max_pending_logins`
/// until its login ends, however it ends.
pub struct Admitted {
    /// `max_client_conn`.
    pub client: OwnedSemaphorePermit,
    /// `max_pending_logins`.
    pub login: OwnedSemaphorePermit,
}

/// Serves one accepted connection within its limits.
///
/// A task is one allocation as large as its future's largest state, kept
/// while the client stays: the login (SCRAM state, TLS handshake, the
/// console) runs in a box freed before the session starts, so an idle
/// client's task holds little more than the session's idle wait. An
/// `async` block, not an `async fn`, which would keep a second copy of its
/// arguments.
pub fn serve(
    stream: TcpStream,
    ctx: Arc<Context>,
    admitted: Admitted,
) -> impl std::future::Future<Output = ()> + Send {
    let Admitted { client, login } = admitted;
    async move {
        // The seat (per-database and per-user limits) is held as long as
        // the session.
        if let Some((session, _seat)) = Box::pin(admit(stream, ctx, login)).await {
            session.run().await;
            tracing::debug!("client disconnected");
        }
        drop(client);
    }
}

/// Logs the client in and returns its session and seat; `None` when it is
/// done already (refused, a cancel request, or an admin console client,
/// served here to its end). The `max_pending_logins` place goes when the
/// login ends.
async fn admit(
    stream: TcpStream,
    ctx: Arc<Context>,
    login_slot: OwnedSemaphorePermit,
) -> Option<(Box<Session>, Option<Box<Seat>>)> {
    let mut conn = ClientConn::new(stream, ctx.errors().clone());
    let login_timeout = ctx.config().proxy.client_login_timeout;
    let outcome = tokio::time::timeout(login_timeout, login(&mut conn, &ctx)).await;
    drop(login_slot);
    let logged_in = match outcome {
        Err(_) => {
            conn.send_error(&ClientError::LoginTimeout).await;
            return None;
        }
        Ok(Err(ReadError::Closed)) | Ok(Ok(None)) => return None,
        Ok(Err(ReadError::Client(e))) => {
            conn.send_error(&e).await;
            return None;
        }
        Ok(Ok(Some(logged_in))) => logged_in,
    };
    let reg = ctx.clients().register(registry::Arrival {
        user: logged_in.user,
        database: logged_in.database,
        peer: conn.stream.peer_addr().ok(),
        local: conn.stream.local_addr().ok(),
        application_name: logged_in.application_name,
    });
    tracing::debug!(client = reg.info.id, user = %reg.info.user, database = %reg.info.database, "client logged in");
    let Some(pool) = logged_in.pool else {
        crate::admin::serve(conn, ctx, reg).await;
        tracing::debug!("admin client disconnected");
        return None;
    };
    let (cancel, wanted, seat) = (logged_in.cancel, logged_in.wanted, logged_in.seat);
    Some((
        Box::new(Session::new(conn, ctx, pool, cancel, wanted, reg)),
        seat,
    ))
}

/// Serves a connection past a limit (`why`) without a TLS handshake or a
/// login: a CancelRequest is still served (it may be what frees the
/// proxy), anyone else is told `why` (53300) and closed. Silence, or
/// anything unreadable, is closed after [`REFUSED_WAIT`].
pub async fn refuse(stream: TcpStream, ctx: Arc<Context>, why: ClientError) {
    let mut conn = ClientConn::new(stream, ctx.errors().clone());
    let tls_on = ctx.tls().acceptor().config().is_some();
    let heard = tokio::time::timeout(REFUSED_WAIT, login::refused_opening(&mut conn, tls_on)).await;
    match heard {
        Ok(Ok(login::Refused::Cancel { pid, secret })) => {
            crate::cancel_request::serve(&ctx, pid, secret).await;
        }
        Ok(Ok(login::Refused::Tell)) => {
            tracing::debug!(error = %why, "connection refused");
            conn.send_error(&why).await;
        }
        Ok(Err(_)) | Err(_) => tracing::debug!(error = %why, "refused connection closed unheard"),
    }
}

/// A client that passed login.
struct LoggedIn {
    user: String,
    database: String,
    application_name: String,
    /// `None` for the admin console.
    pool: Option<Pool>,
    cancel: CancelGuard,
    /// Settings from the startup packet (or why they cannot be tracked).
    wanted: Result<Vec<Setting>, Untracked>,
    /// Its place under `max_db_client_connections` /
    /// `max_user_client_connections` (none for the admin console).
    seat: Option<Box<Seat>>,
}

/// Negotiates, authenticates and sends the login reply. `None`: a cancel was served.
async fn login(conn: &mut ClientConn, ctx: &Arc<Context>) -> Result<Option<LoggedIn>, ReadError> {
    let tls = ctx.tls().acceptor();
    let (user, database, params) = match login::negotiate(conn, &tls).await? {
        Opening::Cancel { pid, secret } => {
            crate::cancel_request::serve(ctx, pid, secret).await;
            return Ok(None);
        }
        Opening::Session {
            user,
            database,
            params,
        } => (user, database, params),
    };
    let application_name = params
        .iter()
        .find(|(k, _)| k == "application_name")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let wanted = settings::from_startup(&params);
    let admin = crate::admin::is_admin_database(&database);
    login::check_certificate(conn, &tls, &user)?;
    let checked = login::check_credentials(conn, ctx, &user, &database, admin).await?;
    let mut reply = checked.reply;
    if admin {
        if !ctx.config().proxy.admin_users.contains(&user) {
            return Err(ReadError::Client(ClientError::NotAdmin(user)));
        }
        let cancel = ctx.cancels().register();
        login::login_reply(
            &mut reply,
            &crate::admin::server_params(),
            (cancel.pid, cancel.secret),
        );
        conn.send(&reply).await?;
        return Ok(Some(LoggedIn {
            user,
            database,
            application_name,
            pool: None,
            cancel,
            wanted,
            seat: None,
        }));
    }
    // After authentication: a stranger learns nothing of a tenant's load.
    let seat = take_seat(ctx, &database, &user)?;
    let (pool, params) = ctx
        .pool_for(&database, &user, checked.looked_up)
        .await
        .map_err(|e| ReadError::Client(pool_error(e, true)))?;
    let cancel = ctx.cancels().register();
    let mut shown = params.to_vec();
    // What PostgreSQL would report to this client: its own values.
    for (k, v) in wanted.iter().flatten() {
        if let Some(slot) = shown.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(k)) {
            slot.1 = v.clone();
        }
    }
    login::login_reply(&mut reply, &shown, (cancel.pid, cancel.secret));
    conn.send(&reply).await?;
    Ok(Some(LoggedIn {
        user,
        database,
        application_name,
        pool: Some(pool),
        cancel,
        wanted,
        seat,
    }))
}

/// A place under `max_db_client_connections` and `max_user_client_connections`.
/// A seat under the per-database and per-user client limits; none when
/// neither is set (the usual case costs an idle client nothing). Clients
/// that logged in while they were off are not counted if a reload sets them.
fn take_seat(ctx: &Context, database: &str, user: &str) -> Result<Option<Box<Seat>>, ReadError> {
    let limits = {
        let p = &ctx.config().proxy;
        SeatLimits {
            per_db: p.max_db_client_connections,
            per_user: p.max_user_client_connections,
        }
    };
    if limits.per_db == 0 && limits.per_user == 0 {
        return Ok(None);
    }
    let seat = ctx.seats().take(limits, database, user).map_err(|e| {
        tracing::info!(user, database, error = %e, "client refused");
        ReadError::Client(ClientError::NoSeat(e))
    })?;
    // Boxed: the session's task carries it for the client's whole life.
    Ok(Some(Box::new(seat)))
}
