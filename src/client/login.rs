//! A client's way in: protocol negotiation (SSLRequest/GSSENCRequest answered
//! `N` while TLS is off, 3.x minor versions via NegotiateProtocolVersion),
//! authentication, and the login reply (AuthenticationOk, ParameterStatus,
//! BackendKeyData, ReadyForQuery). A CancelRequest ends here too.

use bytes::BytesMut;

use super::conn::{ClientConn, ReadError};
use crate::auth::client_side::{authenticate, AuthChannel, AuthChannelError};
use crate::auth::AuthError;
use crate::error::ClientError;
use crate::protocol::messages::backend;
use crate::protocol::messages::startup::{decode, Startup, StartupError};

/// What the first packets asked for.
#[derive(Debug)]
pub enum Opening {
    /// A session for `user` on `database`, with the client's other startup parameters.
    Session {
        /// Role name.
        user: String,
        /// Client-facing database name (defaults to the user name, as in PostgreSQL).
        database: String,
        /// All startup parameters as sent.
        params: Vec<(String, String)>,
    },
    /// A CancelRequest.
    Cancel {
        /// Key pid.
        pid: i32,
        /// Key secret.
        secret: i32,
    },
}

/// Reads startup packets until a StartupMessage or CancelRequest.
pub async fn negotiate(conn: &mut ClientConn) -> Result<Opening, ReadError> {
    let mut encryption_asked = false;
    loop {
        let packet = conn.read_startup().await?;
        let protocol_error = |e: StartupError| match e {
            StartupError::UnsupportedProtocol(..) => {
                ClientError::UnsupportedProtocol(e.to_string())
            }
            other => ClientError::Protocol(other.to_string()),
        };
        match decode(&packet).map_err(|e| ReadError::Client(protocol_error(e)))? {
            Startup::SslRequest | Startup::GssEncRequest if !encryption_asked => {
                // Bytes pipelined behind the request would bypass the (future)
                // TLS handshake: refuse them (CVE-2021-23214 class).
                if !conn.buf.is_empty() {
                    return Err(ReadError::Client(ClientError::Protocol(
                        "unexpected data after encryption request".into(),
                    )));
                }
                encryption_asked = true;
                conn.send(b"N").await?;
            }
            Startup::SslRequest | Startup::GssEncRequest => {
                return Err(ReadError::Client(ClientError::Protocol(
                    "encryption requested twice".into(),
                )));
            }
            Startup::Cancel { pid, secret } => return Ok(Opening::Cancel { pid, secret }),
            Startup::Startup { minor, params } => return session(conn, minor, params).await,
        }
    }
}

async fn session(
    conn: &mut ClientConn,
    minor: u16,
    params: Vec<(String, String)>,
) -> Result<Opening, ReadError> {
    let unknown: Vec<&str> = params
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("_pq_."))
        .collect();
    if minor > 0 || !unknown.is_empty() {
        let mut out = BytesMut::new();
        backend::negotiate_protocol_version(&mut out, &unknown);
        conn.send(&out).await?;
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let user = get("user")
        .filter(|u| !u.is_empty())
        .ok_or(ReadError::Client(ClientError::NoUser))?;
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    Ok(Opening::Session {
        user,
        database,
        params,
    })
}

impl AuthChannel for ClientConn {
    async fn round_trip(&mut self, out: &[u8]) -> Result<Vec<u8>, AuthChannelError> {
        self.send(out)
            .await
            .map_err(|e| AuthChannelError::Io(e.to_string()))?;
        self.read_password_message().await.map_err(|e| match e {
            ReadError::Closed => AuthChannelError::Io("client closed during authentication".into()),
            ReadError::Client(c) => AuthChannelError::Io(c.to_string()),
        })
    }
}

/// Runs the configured authentication; returns the bytes to send before AuthenticationOk.
pub async fn check_credentials(
    conn: &mut ClientConn,
    ctx: &crate::listener::Context,
    user: &str,
) -> Result<BytesMut, ReadError> {
    let users = ctx.users.load_full();
    let creds = users.get(user);
    let auth_type = ctx.config.load().proxy.auth_type;
    match authenticate(conn, auth_type, user, creds).await {
        Ok(out) => Ok(out),
        Err(AuthChannelError::Auth(AuthError::Malformed(why))) => {
            tracing::debug!(user, why, "malformed authentication");
            Err(ReadError::Client(ClientError::Protocol(format!(
                "malformed authentication message: {why}"
            ))))
        }
        Err(AuthChannelError::Auth(e)) => {
            tracing::info!(user, known = creds.is_some(), error = %e, "client authentication failed");
            Err(ReadError::Client(ClientError::AuthFailed(user.to_string())))
        }
        Err(AuthChannelError::Io(_)) => Err(ReadError::Closed),
    }
}

/// The login reply after authentication: AuthenticationOk, the server's
/// ParameterStatus values, our BackendKeyData, ReadyForQuery.
pub fn login_reply(out: &mut BytesMut, params: &[(String, String)], key: (i32, i32)) {
    backend::auth_ok(out);
    for (name, value) in params {
        backend::parameter_status(out, name, value);
    }
    backend::backend_key_data(out, key.0, key.1);
    backend::ready_for_query(out, backend::IDLE);
}
