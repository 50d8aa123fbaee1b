//! One accepted connection, start to end: login, then the admin console or
//! the query relay. Errors end here: they are sent to the client with a
//! SQLSTATE and logged, and never reach the listener.

use std::sync::Arc;

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

/// Serves one accepted connection. `permit` is `None` when `max_client_conn`
/// is reached: the client is still heard out (it may be a CancelRequest) and
/// then refused with 53300.
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
    permit: Option<OwnedSemaphorePermit>,
) -> impl std::future::Future<Output = ()> + Send {
    let admitted = permit.is_some();
    async move {
        let session = Box::pin(admit(stream, ctx, admitted)).await;
        if let Some(session) = session {
            session.run().await;
            tracing::debug!("client disconnected");
        }
        drop(permit);
    }
}

/// Logs the client in and returns its session; `None` when it is done
/// already (refused, a cancel request, or an admin console client, served
/// here to its end).
async fn admit(stream: TcpStream, ctx: Arc<Context>, admitted: bool) -> Option<Box<Session>> {
    let mut conn = ClientConn::new(stream, ctx.errors().clone());
    let login_timeout = ctx.config().proxy.client_login_timeout;
    let outcome = tokio::time::timeout(login_timeout, login(&mut conn, &ctx, admitted)).await;
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
    let (cancel, wanted) = (logged_in.cancel, logged_in.wanted);
    Some(Box::new(Session::new(conn, ctx, pool, cancel, wanted, reg)))
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
}

/// Negotiates, authenticates and sends the login reply. `None`: a cancel was served.
async fn login(
    conn: &mut ClientConn,
    ctx: &Arc<Context>,
    admitted: bool,
) -> Result<Option<LoggedIn>, ReadError> {
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
    if !admitted {
        return Err(ReadError::Client(ClientError::TooManyClients));
    }
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
        }));
    }
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
    }))
}
