//! One connection from Switchyard to PostgreSQL: opening it, logging in and
//! resetting it. It knows nothing of pools or routing
//! (the pool wraps it with those), so health checks use it as well. The relay
//! reads and writes the stream and buffer through borrowing accessors; the
//! login and reset code here does not sit on the hot path.
//! TLS is negotiated first, as `[cluster.tls]` says (`crate::tls::upstream`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::measure::tick::Tick;

use bytes::{Buf, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::server_side::{Reply, ServerAuth, ServerSecret};
use crate::auth::AuthError;
use crate::config::ClusterTlsMode;
use crate::protocol::messages::backend::decode_parameter_status;
use crate::protocol::messages::error_response::{self, ServerError};
use crate::protocol::{buffer, frame_len};
use crate::tls::upstream::{self, Outcome, UpstreamError};
use crate::tls::{Connector, Stream};

use super::settings::{self, SettingSet};
use super::statements::ServerStatements;

/// Largest message accepted from a server during login.
const MAX_LOGIN_MESSAGE: usize = 1 << 20;

/// Rows kept from a settings read-back: far more than a client may have
/// tracked, so a client past its bound is seen as such, not cut short.
const MAX_SETTINGS_READ: usize = 4096;

/// Why a server connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect or I/O failed.
    #[error("{addr}: {source}")]
    Io {
        /// Node address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Connect + login took longer than `server_connect_timeout`.
    #[error("{0}: timed out connecting")]
    Timeout(String),
    /// PostgreSQL answered the login with an ErrorResponse.
    #[error("{addr}: server refused login: {} ({})", .error.message, .error.code)]
    Refused {
        /// Node address.
        addr: String,
        /// What the server said.
        error: ServerError,
    },
    /// Authentication toward PostgreSQL failed on our side.
    #[error("{addr}: {source}")]
    Auth {
        /// Node address.
        addr: String,
        /// Cause.
        source: AuthError,
    },
    /// The server sent something unexpected.
    #[error("{0}: protocol error during login: {1}")]
    Protocol(String, &'static str),
    /// TLS could not be set up as `cluster.tls` demands.
    #[error("{addr}: {source}")]
    Tls {
        /// Node address.
        addr: String,
        /// Cause.
        source: UpstreamError,
    },
}

/// What to log in as.
#[derive(Clone)]
pub struct Login {
    /// PostgreSQL role.
    pub user: String,
    /// Real database name.
    pub database: String,
    /// What the server's authentication is answered with, if known.
    pub secret: Option<ServerSecret>,
}

// By hand: the password must never reach a log.
impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("database", &self.database)
            .field("secret", &self.secret)
            .finish()
    }
}

/// A logged-in server connection.
pub struct ServerConn {
    /// The socket (plain or TLS); the relay reads and writes it directly.
    stream: Stream,
    /// Read buffer kept with the connection so its allocation is reused.
    buf: BytesMut,
    /// Node address (`host:port`), shared cheaply with the cancel map.
    addr: Arc<str>,
    /// BackendKeyData (pid, secret) for cancelling this connection's query.
    key: (i32, i32),
    /// ParameterStatus values: reported at login, then kept up to date by the relay.
    params: Vec<(String, String)>,
    /// When the connection was opened.
    created: Tick,
    /// Wall-clock time it was opened (`SHOW SERVERS`).
    connected_at: SystemTime,
    /// Its local socket address (`SHOW SERVERS`).
    local: Option<SocketAddr>,
    /// Proxy-named prepared statements this connection holds.
    statements: ServerStatements,
    /// Session-level settings in force beyond the login's (set for a client).
    settings: SettingSet,
}

impl ServerConn {
    /// Opens (with TLS as `tls` says) and logs in a connection to `addr`, all within `timeout`.
    pub async fn connect(
        addr: &str,
        login: &Login,
        tls: &Connector,
        timeout: Duration,
    ) -> Result<ServerConn, ConnectError> {
        tokio::time::timeout(timeout, Self::connect_inner(addr, login, tls))
            .await
            .map_err(|_| ConnectError::Timeout(addr.to_string()))?
    }

    async fn connect_inner(
        addr: &str,
        login: &Login,
        tls: &Connector,
    ) -> Result<ServerConn, ConnectError> {
        let io = |source| ConnectError::Io {
            addr: addr.to_string(),
            source,
        };
        let (stream, end_point) = match upstream::start(open_tcp(addr).await?, addr, tls).await {
            Ok(Outcome::Tls(stream, end_point)) => (stream, end_point),
            Ok(Outcome::Plain(stream)) => (stream, None),
            // libpq's `prefer`: a failed handshake is retried without TLS.
            Err(e) if tls.mode == ClusterTlsMode::Prefer && e.prefer_may_retry() => {
                tracing::warn!(node = addr, error = %e, "TLS failed under cluster.tls.mode = prefer; connecting without TLS");
                (Stream::Plain(open_tcp(addr).await?), None)
            }
            Err(source) => {
                tracing::warn!(node = addr, error = %source, "server connection refused by TLS settings");
                return Err(ConnectError::Tls {
                    addr: addr.to_string(),
                    source,
                });
            }
        };
        let local = stream.local_addr().ok();
        let mut conn = ServerConn {
            stream,
            buf: BytesMut::with_capacity(buffer::SIZE),
            addr: addr.into(),
            key: (0, 0),
            params: vec![],
            created: Tick::now(),
            connected_at: SystemTime::now(),
            local,
            statements: Default::default(),
            settings: SettingSet::default(),
        };
        let mut out = BytesMut::new();
        let params = [
            ("user", login.user.as_str()),
            ("database", login.database.as_str()),
        ];
        frontend::startup_message(params, &mut out).map_err(io)?;
        conn.write(&out).await?;
        conn.login(login, end_point).await?;
        Ok(conn)
    }

    /// Writes all of `out` and flushes it (TLS may hold bytes back otherwise).
    async fn write(&mut self, out: &[u8]) -> Result<(), ConnectError> {
        let written = async {
            self.stream.write_all(out).await?;
            self.stream.flush().await
        };
        written.await.map_err(|source| ConnectError::Io {
            addr: self.addr.to_string(),
            source,
        })
    }

    /// Reads the next whole message during login: (tag, body).
    async fn read_message(&mut self) -> Result<(u8, BytesMut), ConnectError> {
        loop {
            let len = frame_len(&self.buf, MAX_LOGIN_MESSAGE)
                .map_err(|_| ConnectError::Protocol(self.addr.to_string(), "bad message length"))?;
            if let Some(len) = len {
                let mut frame = self.buf.split_to(len);
                let tag = frame[0];
                frame.advance(5);
                return Ok((tag, frame));
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|source| ConnectError::Io {
                    addr: self.addr.to_string(),
                    source,
                })?;
            if n == 0 {
                return Err(ConnectError::Protocol(
                    self.addr.to_string(),
                    "server closed the connection",
                ));
            }
        }
    }

    /// Answers one Authentication request, deriving SCRAM keys on the
    /// blocking pool so a single-threaded runtime keeps serving meanwhile.
    async fn answer_auth(
        &self,
        auth: &mut ServerAuth,
        body: BytesMut,
    ) -> Result<Result<Reply, AuthError>, ConnectError> {
        if !ServerAuth::is_costly(&body) {
            return Ok(auth.on_request(&body));
        }
        let mut owned = std::mem::replace(auth, ServerAuth::new("", None, None));
        let (owned, reply) = tokio::task::spawn_blocking(move || {
            let reply = owned.on_request(&body);
            (owned, reply)
        })
        .await
        .map_err(|_| ConnectError::Protocol(self.addr.to_string(), "SCRAM task failed"))?;
        *auth = owned;
        Ok(reply)
    }

    /// `end_point`: the server certificate's channel binding data, under TLS.
    async fn login(
        &mut self,
        login: &Login,
        end_point: Option<Vec<u8>>,
    ) -> Result<(), ConnectError> {
        let mut auth = ServerAuth::new(&login.user, login.secret.as_ref(), end_point);
        let mut authenticated = false;
        loop {
            let (tag, mut body) = self.read_message().await?;
            match tag {
                b'R' if !authenticated => match self.answer_auth(&mut auth, body).await? {
                    Ok(Reply::Ok) => authenticated = true,
                    Ok(Reply::Wait) => {}
                    Ok(Reply::Send(out)) => self.write(&out).await?,
                    Err(source) => {
                        return Err(ConnectError::Auth {
                            addr: self.addr.to_string(),
                            source,
                        })
                    }
                },
                b'E' => {
                    let error = error_response::decode(&body).ok_or_else(|| {
                        ConnectError::Protocol(self.addr.to_string(), "malformed ErrorResponse")
                    })?;
                    return Err(ConnectError::Refused {
                        addr: self.addr.to_string(),
                        error,
                    });
                }
                b'S' if authenticated => self.params.extend(decode_parameter_status(&body)),
                b'K' if authenticated && body.len() == 8 => {
                    self.key = (body.get_i32(), body.get_i32());
                }
                b'N' => {}
                b'Z' if authenticated => return Ok(()),
                _ => {
                    return Err(ConnectError::Protocol(
                        self.addr.to_string(),
                        "unexpected message during login",
                    ))
                }
            }
        }
    }

    /// The socket, for the relay to read and write.
    #[inline]
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// The socket, for the relay to read and write.
    #[inline]
    pub fn stream_mut(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// Bytes read from the server and not yet relayed.
    #[inline]
    pub fn buf(&self) -> &BytesMut {
        &self.buf
    }

    /// Bytes read from the server and not yet relayed.
    #[inline]
    pub fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Frees the read buffer's allocation if one large reply grew it and
    /// it is now empty, so a pooled connection does not keep it for life.
    /// Costs a comparison otherwise.
    #[inline]
    pub fn shrink_buf(&mut self) {
        buffer::shrink(&mut self.buf);
    }

    /// The socket and the read buffer at once: the relay reads into the one
    /// while it writes through the other.
    #[inline]
    pub fn stream_and_buf_mut(&mut self) -> (&mut Stream, &mut BytesMut) {
        (&mut self.stream, &mut self.buf)
    }

    /// Node address (`host:port`).
    #[inline]
    pub fn addr(&self) -> &Arc<str> {
        &self.addr
    }

    /// Holds `addr`, the node's own copy of its address, instead of one of
    /// its own: a client that takes connections to one node one after the
    /// other then finds the address it last showed and keeps it (see
    /// `ClientInfo::activate`), with no atomic count per transaction.
    pub fn share_addr(&mut self, addr: &Arc<str>) {
        if *self.addr == **addr {
            self.addr = addr.clone();
        }
    }

    /// BackendKeyData (pid, secret), for a CancelRequest.
    #[inline]
    pub fn key(&self) -> (i32, i32) {
        self.key
    }

    /// ParameterStatus values as the server last reported them.
    #[inline]
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// ParameterStatus values, for the relay to record what the server reports.
    #[inline]
    pub fn params_mut(&mut self) -> &mut Vec<(String, String)> {
        &mut self.params
    }

    /// When the connection was opened.
    #[inline]
    pub fn created(&self) -> Tick {
        self.created
    }

    /// Wall-clock time it was opened (`SHOW SERVERS`).
    #[inline]
    pub fn connected_at(&self) -> SystemTime {
        self.connected_at
    }

    /// Its local socket address (`SHOW SERVERS`).
    #[inline]
    pub fn local(&self) -> Option<SocketAddr> {
        self.local
    }

    /// The proxy-named prepared statements this connection holds.
    #[inline]
    pub fn statements(&self) -> &ServerStatements {
        &self.statements
    }

    /// The proxy-named prepared statements this connection holds.
    #[inline]
    pub fn statements_mut(&mut self) -> &mut ServerStatements {
        &mut self.statements
    }

    /// The value of a parameter PostgreSQL reported at login.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Runs a simple query and returns the first row's text values (`None`
    /// for NULL; empty without a row); an ErrorResponse becomes `Err`.
    pub async fn query_row(&mut self, sql: &str) -> Result<Vec<Option<String>>, ConnectError> {
        let rows = self.query_rows(sql, 1).await?;
        Ok(rows.into_iter().next().unwrap_or_default())
    }

    /// Runs `sql` with text parameters (`$1`...) through the extended
    /// protocol, so a parameter is never SQL, and returns the first row's
    /// text values (`None` for NULL; empty without a row).
    pub async fn query_row_with(
        &mut self,
        sql: &str,
        params: &[&str],
    ) -> Result<Vec<Option<String>>, ConnectError> {
        let mut out = BytesMut::new();
        let encode = |_| ConnectError::Protocol(self.addr.to_string(), "cannot encode query");
        frontend::parse("", sql, std::iter::empty(), &mut out).map_err(encode)?;
        frontend::bind(
            "",
            "",
            std::iter::empty(),
            params.iter(),
            |p, buf| {
                buf.extend_from_slice(p.as_bytes());
                Ok(postgres_protocol::IsNull::No)
            },
            std::iter::empty(),
            &mut out,
        )
        .map_err(|_| ConnectError::Protocol(self.addr.to_string(), "cannot encode parameters"))?;
        frontend::execute("", 1, &mut out).map_err(encode)?;
        frontend::sync(&mut out);
        self.write(&out).await?;
        let rows = self.read_rows(1).await?;
        Ok(rows.into_iter().next().unwrap_or_default())
    }

    /// Runs a simple query and returns up to `max_rows` rows as text, or
    /// the server's error. Reported parameters it changes are recorded.
    async fn query_rows(
        &mut self,
        sql: &str,
        max_rows: usize,
    ) -> Result<Vec<Vec<Option<String>>>, ConnectError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|source| ConnectError::Io {
            addr: self.addr.to_string(),
            source,
        })?;
        self.write(&out).await?;
        self.read_rows(max_rows).await
    }

    /// Reads up to ReadyForQuery: up to `max_rows` rows, or the server's error.
    async fn read_rows(
        &mut self,
        max_rows: usize,
    ) -> Result<Vec<Vec<Option<String>>>, ConnectError> {
        let (mut rows, mut error) = (Vec::new(), None);
        loop {
            match self.read_message().await? {
                (b'D', body) if rows.len() < max_rows => rows.extend(decode_data_row(&body)),
                (b'E', body) => error = error_response::decode(&body),
                (b'S', body) => {
                    if let Some((k, v)) = decode_parameter_status(&body) {
                        set_param(&mut self.params, k, v);
                    }
                }
                (b'Z', _) => break,
                _ => {}
            }
        }
        match error {
            Some(error) => Err(ConnectError::Refused {
                addr: self.addr.to_string(),
                error,
            }),
            None => Ok(rows),
        }
    }

    /// The session-level settings in force beyond the login's.
    pub fn settings(&self) -> &SettingSet {
        &self.settings
    }

    /// Gives the session exactly `want`'s settings, in one round trip when
    /// they differ. On the server's refusal nothing changed (the statements
    /// run as one implicit transaction) and its error comes back.
    /// Whether `want` differs from what this session holds (cheap when it
    /// does not: the fingerprints and items compare equal).
    pub fn settings_differ(&self, want: &SettingSet) -> bool {
        !settings::changes(want, &self.settings).is_empty()
    }

    pub async fn apply_settings(&mut self, want: &SettingSet) -> Result<(), ConnectError> {
        let changes = settings::changes(want, &self.settings);
        if changes.is_empty() {
            return Ok(());
        }
        let sql = settings::apply_sql(&changes);
        tracing::debug!(
            changes = changes.len(),
            "giving a client's settings to a server"
        );
        self.query_rows(&sql, 0).await?;
        self.settings = want.clone();
        Ok(())
    }

    /// Reads back the session's settings as PostgreSQL holds them now (with
    /// the placeholders named in `custom`), and remembers them.
    pub async fn read_settings(&mut self, custom: &[&str]) -> Result<SettingSet, ConnectError> {
        let rows = self
            .query_rows(&settings::readback_sql(custom), MAX_SETTINGS_READ)
            .await?;
        let pairs = rows.into_iter().filter_map(|row| {
            let mut it = row.into_iter();
            Some((it.next()??, it.next()??))
        });
        self.settings = SettingSet::new(pairs);
        Ok(self.settings.clone())
    }

    /// True when the peer has closed or sent something unasked while idle:
    /// such a connection must not be handed to a client. The reactor records
    /// readiness even with nobody waiting, so the usual answer (not readable)
    /// costs no system call; only a readable socket is read to confirm.
    pub fn is_broken(&self) -> bool {
        self.stream.is_broken()
    }

    /// Returns the session to its state at login: `DISCARD ALL` (prepared
    /// statements and settings gone too). Returns the final transaction status.
    pub async fn discard_all(&mut self) -> Result<u8, ConnectError> {
        self.statements.clear();
        self.settings = SettingSet::default();
        self.run_reset("DISCARD ALL").await
    }

    /// Runs a simple query whose result is not needed (e.g. ROLLBACK)
    /// and returns the final transaction status.
    pub async fn run_reset(&mut self, sql: &str) -> Result<u8, ConnectError> {
        let mut out = BytesMut::new();
        let io = |addr: &str, source| ConnectError::Io {
            addr: addr.to_string(),
            source,
        };
        frontend::query(sql, &mut out).map_err(|e| io(&self.addr, e))?;
        self.write(&out).await?;
        let mut failed = false;
        loop {
            match self.read_message().await? {
                (b'E', _) => failed = true,
                (b'Z', body) if !failed => return Ok(body.first().copied().unwrap_or(b'E')),
                (b'Z', _) => return Ok(b'E'),
                _ => {}
            }
        }
    }
}

impl ServerConn {
    /// Sends Terminate and waits (at most `within`) for the server to close
    /// its end: once it has, its backend is gone, so a caller bounding its
    /// connections is bounding PostgreSQL's backends, not only its sockets.
    pub async fn close(mut self, within: Duration) {
        let closed = async {
            self.write(b"X\0\0\0\x04").await?;
            let mut sink = BytesMut::with_capacity(1024);
            while self
                .stream
                .read_buf(&mut sink)
                .await
                .map_err(|source| ConnectError::Io {
                    addr: self.addr.to_string(),
                    source,
                })?
                > 0
            {
                sink.clear();
            }
            Ok::<(), ConnectError>(())
        };
        let _ = tokio::time::timeout(within, closed).await;
    }
}

impl Drop for ServerConn {
    fn drop(&mut self) {
        // Best effort Terminate so PostgreSQL logs a clean disconnect; a full
        // socket buffer just means the close alone has to do.
        self.stream.try_write_now(b"X\0\0\0\x04");
        tracing::debug!(addr = %self.addr, pid = self.key.0, "server connection closed");
    }
}

/// DataRow (B): column count, then per column a length (-1: NULL) and bytes.
fn decode_data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let count = u16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut rest = &body[2..];
    let mut values = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len < 0 {
            values.push(None);
            continue;
        }
        let value = rest.get(..len as usize)?;
        values.push(Some(String::from_utf8_lossy(value).into_owned()));
        rest = &rest[len as usize..];
    }
    Some(values)
}

/// A TCP connection to `addr` with the socket options every server connection gets.
async fn open_tcp(addr: &str) -> Result<TcpStream, ConnectError> {
    let io = |source| ConnectError::Io {
        addr: addr.to_string(),
        source,
    };
    let stream = TcpStream::connect(addr).await.map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    set_dead_peer_timeouts(&stream);
    Ok(stream)
}

/// A hung host (power loss, blackholed network) never refuses anything: only
/// timeouts tell. Keepalives and TCP_USER_TIMEOUT bound how long a socket can
/// sit on unacknowledged data, so a connection to such a host fails in seconds,
/// not after TCP's ~15-minute retransmission limit. (The health monitor closes
/// connections to a node it declares down even sooner.)
fn set_dead_peer_timeouts(stream: &TcpStream) {
    let sock = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(2))
        .with_retries(3);
    let _ = sock.set_tcp_keepalive(&keepalive);
    let _ = sock.set_tcp_user_timeout(Some(Duration::from_secs(15)));
}

/// Sets `name = value` in a ParameterStatus list (names ignore case).
fn set_param(params: &mut Vec<(String, String)>, name: String, value: String) {
    match params
        .iter_mut()
        .find(|(k, _)| k.eq_ignore_ascii_case(&name))
    {
        Some(slot) => slot.1 = value,
        None => params.push((name, value)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_login_shows_no_password() {
        let login = super::Login {
            user: "app".into(),
            database: "app".into(),
            secret: Some(crate::auth::server_side::ServerSecret::Password(
                "server-s3cret".into(),
            )),
        };
        let shown = format!("{login:?}");
        assert!(
            !shown.contains("server-s3cret") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
