//! A client's way in: encryption (SSLRequest answered `S` and the TLS
//! handshake done when `[proxy.tls]` is on, `N` when off; a TLS ClientHello as
//! the very first bytes is PostgreSQL 17's direct TLS; GSSENCRequest is always
//! `N`), protocol negotiation (3.x minor versions via NegotiateProtocolVersion),
//! authentication, and the login reply (AuthenticationOk, ParameterStatus,
//! BackendKeyData, ReadyForQuery). A CancelRequest ends here too. With
//! `proxy.tls.client_cert_user`, the client certificate must name the user
//! before the password is asked for.

use bytes::BytesMut;

use super::conn::{ClientConn, ReadError};
use crate::auth::client_side::{authenticate, AuthChannel, AuthChannelError};
use crate::auth::server_side::ServerSecret;
use crate::auth::{AuthError, Secret};
use crate::config::{AuthType, ProxyTlsMode};
use crate::error::ClientError;
use crate::protocol::messages::backend;
use crate::protocol::messages::startup::{decode, Startup, StartupError};
use crate::tls::client_cert::{self, Refusal};
use crate::tls::{Acceptor, ALPN_POSTGRESQL};

/// First byte of a TLS handshake record; a startup packet's first byte (the
/// top of a length of at most 10000) is always 0.
const TLS_HANDSHAKE: u8 = 0x16;

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

/// Reads startup packets until a StartupMessage or CancelRequest, doing the
/// TLS handshake on the way when the client asks and `tls` allows it.
pub async fn negotiate(conn: &mut ClientConn, tls: &Acceptor) -> Result<Opening, ReadError> {
    if conn.buf.is_empty() && conn.fill().await? == 0 {
        return Err(ReadError::Closed);
    }
    let mut ssl_answered = false;
    let mut gss_refused = false;
    if conn.buf.first() == Some(&TLS_HANDSHAKE) {
        direct_tls(conn, tls).await?;
        ssl_answered = true;
    }
    loop {
        let packet = conn.read_startup().await?;
        let protocol_error = |e: StartupError| match e {
            StartupError::UnsupportedProtocol(..) => {
                ClientError::UnsupportedProtocol(e.to_string())
            }
            other => ClientError::Protocol(other.to_string()),
        };
        let startup = decode(&packet).map_err(|e| ReadError::Client(protocol_error(e)))?;
        if matches!(startup, Startup::SslRequest | Startup::GssEncRequest) && !conn.buf.is_empty() {
            // Bytes pipelined behind the request would bypass the TLS
            // handshake: refuse them (CVE-2021-23214).
            return Err(ReadError::Client(ClientError::Protocol(
                "unexpected data after encryption request".into(),
            )));
        }
        match startup {
            Startup::SslRequest if !ssl_answered => {
                ssl_answered = true;
                match tls.config() {
                    None => conn.send(b"N").await?,
                    Some(config) => {
                        conn.send(b"S").await?;
                        let accepted = conn.stream.accept(config.clone()).await;
                        handshake(conn, accepted, tls)?;
                    }
                }
            }
            Startup::GssEncRequest if !gss_refused && !conn.stream.is_tls() => {
                gss_refused = true;
                conn.send(b"N").await?;
            }
            Startup::SslRequest | Startup::GssEncRequest => {
                return Err(ReadError::Client(ClientError::Protocol(
                    "encryption requested twice".into(),
                )));
            }
            // libpq sends cancels in plaintext, even when its session is TLS.
            Startup::Cancel { pid, secret } => return Ok(Opening::Cancel { pid, secret }),
            Startup::Startup { .. }
                if tls.mode == ProxyTlsMode::Require && !conn.stream.is_tls() =>
            {
                return Err(ReadError::Client(ClientError::TlsRequired));
            }
            Startup::Startup { minor, params } => return session(conn, minor, params).await,
        }
    }
}

/// What a connection that is refused (a limit reached) gets to say first.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// A CancelRequest: served all the same, it may be what frees the proxy.
    Cancel {
        /// Key pid.
        pid: i32,
        /// Key secret.
        secret: i32,
    },
    /// Anything else: the client is told why and closed.
    Tell,
}

/// The reply to an encryption request on a refused connection.
#[derive(Debug, PartialEq, Eq)]
pub enum RefusedEncryption {
    /// `N`: the startup packet follows in plaintext, and the refusal after it.
    No,
    /// The ErrorResponse itself in place of `S`, with no handshake (what
    /// PostgreSQL sends when it cannot serve a connection at all).
    ErrorNow,
}

/// On a refused connection, TLS is never started: with TLS on the
/// request is answered by the refusal itself; with TLS off by `N`, as
/// it always is, so the client then reads the refusal after its startup
/// packet. A GSSENCRequest always gets `N`.
pub fn refused_encryption(startup: &Startup, tls_on: bool) -> RefusedEncryption {
    match startup {
        Startup::SslRequest if tls_on => RefusedEncryption::ErrorNow,
        _ => RefusedEncryption::No,
    }
}

/// Reads what a refused connection opens with, answering at most two
/// encryption requests with `N`, and never doing a TLS handshake.
pub async fn refused_opening(conn: &mut ClientConn, tls_on: bool) -> Result<Refused, ReadError> {
    if conn.buf.is_empty() && conn.fill().await? == 0 {
        return Err(ReadError::Closed);
    }
    if conn.buf.first() == Some(&TLS_HANDSHAKE) {
        // Direct TLS: nothing can be said to it before a handshake.
        return Err(ReadError::Closed);
    }
    for _ in 0..3 {
        let packet = conn.read_startup().await?;
        let startup = decode(&packet).map_err(|_| ReadError::Closed)?;
        match startup {
            Startup::Cancel { pid, secret } => return Ok(Refused::Cancel { pid, secret }),
            Startup::Startup { .. } => return Ok(Refused::Tell),
            Startup::SslRequest | Startup::GssEncRequest => {
                match refused_encryption(&startup, tls_on) {
                    RefusedEncryption::ErrorNow => return Ok(Refused::Tell),
                    RefusedEncryption::No => conn.send(b"N").await?,
                }
            }
        }
    }
    Err(ReadError::Closed)
}

/// PostgreSQL 17 direct TLS: the handshake starts at once (the ClientHello is
/// already in `conn.buf`), and ALPN must have agreed on `postgresql`.
async fn direct_tls(conn: &mut ClientConn, tls: &Acceptor) -> Result<(), ReadError> {
    let Some(config) = tls.config() else {
        tracing::debug!("direct TLS connection while proxy.tls.mode = disable: closed");
        return Err(ReadError::Closed);
    };
    let accepted = conn
        .stream
        .accept_direct(&mut conn.buf, config.clone())
        .await;
    handshake(conn, accepted, tls)?;
    if conn.stream.alpn_protocol().as_deref() != Some(ALPN_POSTGRESQL) {
        return Err(ReadError::Client(ClientError::TlsNoAlpn));
    }
    Ok(())
}

/// After a handshake: on success the client may use SCRAM-SHA-256-PLUS with
/// our certificate; a failure is logged and counted (the client cannot be told).
fn handshake(
    conn: &mut ClientConn,
    outcome: std::io::Result<()>,
    tls: &Acceptor,
) -> Result<(), ReadError> {
    match outcome {
        Ok(()) => {
            conn.end_point = tls.end_point().cloned();
            Ok(())
        }
        Err(e) => {
            tracing::info!(error = %e, "client TLS handshake failed");
            Err(ReadError::Client(ClientError::TlsHandshake))
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

/// `proxy.tls.client_cert_user`: refuses a client whose certificate does not
/// name `user` (or that has none) before any password is asked for.
pub fn check_certificate(conn: &ClientConn, tls: &Acceptor, user: &str) -> Result<(), ReadError> {
    let cert = conn.stream.peer_certificate();
    match client_cert::check(tls.client_cert_user(), user, cert.as_deref()) {
        Ok(()) => Ok(()),
        Err(Refusal::NoCertificate) => {
            tracing::info!(
                user,
                "client without a certificate refused (client_cert_user)"
            );
            Err(ReadError::Client(ClientError::CertificateRequired))
        }
        Err(Refusal::OtherUser(cn)) => {
            tracing::info!(user, certificate_cn = ?cn, "client certificate names another user (client_cert_user)");
            Err(ReadError::Client(ClientError::CertAuthFailed(
                user.to_string(),
            )))
        }
    }
}

/// A client that proved who it is.
pub struct Checked {
    /// The bytes to send before AuthenticationOk.
    pub reply: BytesMut,
    /// For a user found by `auth_query`: what to log into PostgreSQL with.
    pub looked_up: Option<ServerSecret>,
}

/// Runs the configured authentication. A user not in `[[users]]` is looked
/// up with `proxy.auth_query` (not for the admin console, whose users are
/// Switchyard's own); an unknown one goes through the same exchange as a
/// wrong password. The admin console (`admin`) never trusts: its users
/// always prove their password, whatever `auth_type` says.
pub async fn check_credentials(
    conn: &mut ClientConn,
    ctx: &crate::context::Context,
    user: &str,
    database: &str,
    admin: bool,
) -> Result<Checked, ReadError> {
    let users = ctx.users();
    let (creds, looked_up) = match users.get(user) {
        Some(c) => (Some(c.clone()), false),
        None if admin => (None, false),
        None => match ctx.look_up(user, database).await {
            Ok(found) => (found, true),
            Err(e) => {
                tracing::warn!(user, error = %e, "auth_query lookup failed");
                return Err(ReadError::Client(ClientError::ServerLoginFailed));
            }
        },
    };
    let creds = creds.as_ref();
    let configured = ctx.config().proxy.auth_type;
    let auth_type = method(configured, admin, creds.map(|c| &c.secret));
    let end_point = conn.end_point.clone();
    match authenticate(conn, auth_type, user, creds, end_point.as_deref()).await {
        Ok(passed) => Ok(Checked {
            looked_up: creds
                .filter(|_| looked_up)
                .and_then(|c| crate::auth_query::server_secret(c, passed.client_key)),
            reply: passed.reply,
        }),
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

/// The method a login goes through. Under `trust` the admin console still
/// asks for the password (SHUTDOWN, KILL and SWITCHOVER live there): with
/// SCRAM, or with md5 for a password stored as an md5 verifier, which SCRAM
/// cannot check; an unknown user gets SCRAM, like any unknown user.
fn method(configured: AuthType, admin: bool, secret: Option<&Secret>) -> AuthType {
    match (configured, secret) {
        (AuthType::Trust, Some(Secret::Md5(_))) if admin => AuthType::Md5,
        (AuthType::Trust, _) if admin => AuthType::ScramSha256,
        (other, _) => other,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_never_starts_tls() {
        let cancel = Startup::Cancel { pid: 1, secret: 2 };
        let cases = [
            (Startup::SslRequest, true, RefusedEncryption::ErrorNow),
            (Startup::SslRequest, false, RefusedEncryption::No),
            (Startup::GssEncRequest, true, RefusedEncryption::No),
            (Startup::GssEncRequest, false, RefusedEncryption::No),
            (cancel, true, RefusedEncryption::No),
        ];
        for (startup, tls_on, want) in cases {
            assert_eq!(
                refused_encryption(&startup, tls_on),
                want,
                "{startup:?} {tls_on}"
            );
        }
    }

    #[test]
    fn the_admin_console_never_trusts() {
        let plain = Secret::Plain("pw".into());
        let md5 = Secret::Md5(format!("md5{}", "0".repeat(32)));
        let scram = Secret::parse(&postgres_protocol::password::scram_sha_256(b"pw")).unwrap();
        use AuthType::{Md5, ScramSha256 as Scram, Trust};
        let cases = [
            (Trust, false, Some(&plain), Trust),
            (Trust, false, None, Trust),
            (Trust, true, Some(&plain), Scram),
            (Trust, true, Some(&scram), Scram),
            (Trust, true, Some(&md5), Md5),
            (Trust, true, None, Scram),
            (Md5, true, Some(&plain), Md5),
            (Scram, true, Some(&plain), Scram),
            (Scram, false, None, Scram),
        ];
        for (configured, admin, secret, want) in cases {
            assert_eq!(
                method(configured, admin, secret),
                want,
                "{configured:?} admin={admin} {secret:?}"
            );
        }
    }
}
