//! The query loop of one logged-in client. Between transactions the client
//! holds no server connection (transaction mode); its first message takes one
//! from the pool, bytes then flow both ways unchanged — only headers are read —
//! and the connection goes back when ReadyForQuery says idle with nothing in
//! flight. Session mode keeps the connection until the client leaves.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cancel::{CancelGuard, CancelTarget};
use super::conn::ClientConn;
use super::txn::Txn;
use crate::config::PoolMode;
use crate::error::ClientError;
use crate::listener::Context;
use crate::pool::server_conn::{send_cancel, ServerConn};
use crate::pool::{Pool, PoolError};
use crate::protocol::messages::backend;
use crate::protocol::{frame_len, FrameError, Scanner, Visit};

/// Server messages are PostgreSQL's; only bodies we hold whole are bounded.
const MAX_SERVER_MESSAGE: usize = 1 << 30;

/// A logged-in client.
pub struct Session {
    /// The client socket and buffer.
    pub client: ClientConn,
    /// Shared proxy state.
    pub ctx: Arc<Context>,
    /// The client's pool.
    pub pool: Pool,
    /// The client's cancel key registration.
    pub cancel: CancelGuard,
    /// Protocol state at the end of the last attachment, for cleanup.
    pub last_txn: Txn,
    /// Set when the client's open transaction died with its server (a failover).
    pub lost: Option<super::lost::LostTxn>,
}

/// How an attachment to a server ended.
enum End {
    /// Transaction finished; the server can go back to the pool.
    Released,
    /// The client sent Terminate or closed its socket.
    ClientGone,
    /// Shutdown reached the client between transactions.
    Shutdown,
    /// The client broke the protocol.
    ClientError(ClientError),
    /// The server connection failed.
    ServerLost(String),
}

/// What the client asked for while holding no server.
enum Idle {
    /// A message that needs a server (its tag).
    Work(u8),
    /// Terminate, EOF, or a read error.
    Gone,
    /// The proxy is shutting down.
    Shutdown,
}

impl Session {
    /// Serves the client until it leaves.
    pub async fn run(mut self) {
        let mut held: Option<ServerConn> = None;
        loop {
            let server = match held.take() {
                Some(s) => s,
                None => match self.wait_idle().await {
                    Idle::Gone => return,
                    Idle::Shutdown => return self.client.send_error(&ClientError::Shutdown).await,
                    Idle::Work(tag) if self.lost.is_some() => {
                        match self.answer_in_lost_txn(tag).await {
                            Ok(()) => continue,
                            Err(()) => return,
                        }
                    }
                    Idle::Work(tag) => match self.pool.checkout().await {
                        Ok(s) => s,
                        Err(e) => match self.refuse(tag, e).await {
                            Ok(()) => continue,
                            Err(()) => return,
                        },
                    },
                },
            };
            match self.attach(server).await {
                (End::Released, Some(s)) if self.mode() == PoolMode::Transaction => {
                    self.pool.checkin(s)
                }
                (End::Released, Some(s)) => held = Some(s),
                (End::ClientGone, s) => return self.cleanup(s).await,
                (End::Shutdown, s) => {
                    self.client.send_error(&ClientError::Shutdown).await;
                    return self.cleanup(s).await;
                }
                (End::ClientError(e), s) => {
                    self.client.send_error(&e).await;
                    return self.cleanup(s).await;
                }
                (End::ServerLost(why), _) => {
                    tracing::warn!(error = %why, "server connection lost mid-session");
                    self.ctx.cluster.nudge();
                    if self.answer_lost_server().await.is_err() {
                        return;
                    }
                }
                (End::Released, None) => return,
            }
        }
    }

    fn mode(&self) -> PoolMode {
        self.ctx.config.proxy.pool_mode
    }

    /// Waits for the next message while holding no server, answering the ones
    /// that need none (Sync, Flush, stray COPY messages). Cancel safe between messages.
    async fn wait_idle(&mut self) -> Idle {
        loop {
            if self.ctx.shutdown.is_cancelled() {
                return Idle::Shutdown;
            }
            let max = self.ctx.config.proxy.max_message_size;
            match frame_len(&self.client.buf, max) {
                Err(e) => {
                    self.client
                        .send_error(&ClientError::Protocol(e.to_string()))
                        .await;
                    return Idle::Gone;
                }
                Ok(_) if self.client.buf.len() >= 5 => match self.client.buf[0] {
                    b'X' => return Idle::Gone,
                    b'S' | b'H' | b'd' | b'c' | b'f' => {
                        if let Some(len) = frame_len(&self.client.buf, max).ok().flatten() {
                            let tag = self.client.buf[0];
                            self.client.buf.advance(len);
                            if tag == b'S' {
                                let mut out = BytesMut::new();
                                backend::ready_for_query(&mut out, backend::IDLE);
                                if self.client.send(&out).await.is_err() {
                                    return Idle::Gone;
                                }
                            }
                            continue;
                        }
                    }
                    b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'F' => {
                        return Idle::Work(self.client.buf[0])
                    }
                    other => {
                        let msg = format!("invalid frontend message type {other}");
                        self.client.send_error(&ClientError::Protocol(msg)).await;
                        return Idle::Gone;
                    }
                },
                Ok(_) => {}
            }
            tokio::select! {
                r = self.client.fill() => if !matches!(r, Ok(n) if n > 0) { return Idle::Gone },
                _ = self.ctx.shutdown.cancelled() => return Idle::Shutdown,
            }
        }
    }

    /// No server for this request: tell the client, skip the request (up to its
    /// Sync for an extended batch), and keep the connection.
    async fn refuse(&mut self, tag: u8, err: PoolError) -> Result<(), ()> {
        let client_err = super::pool_error(err, false);
        let mut out = BytesMut::new();
        client_err.encode_as(&mut out, false);
        self.client.send(&out).await.map_err(|_| ())?;
        let through_sync = !matches!(tag, b'Q' | b'F');
        self.discard(through_sync).await?;
        out.clear();
        backend::ready_for_query(&mut out, backend::IDLE);
        self.client.send(&out).await.map_err(|_| ())
    }

    /// Drops client messages: the first one, or everything up to and including Sync.
    pub(super) async fn discard(&mut self, through_sync: bool) -> Result<(), ()> {
        let max = self.ctx.config.proxy.max_message_size;
        let mut scanner = Scanner::default();
        let mut first = true;
        let mut done = false;
        loop {
            let n = scanner
                .scan(
                    &self.client.buf,
                    max,
                    |_| false,
                    |tag, _| {
                        if done {
                            return Visit::Stop;
                        }
                        done = if through_sync { tag == b'S' } else { first };
                        first = false;
                        Visit::Forward
                    },
                )
                .map_err(|_| ())?;
            self.client.buf.advance(n);
            if done && scanner.at_boundary() {
                return Ok(());
            }
            if !matches!(self.client.fill().await, Ok(n) if n > 0) {
                return Err(());
            }
        }
    }

    /// Relays between the client and `server` until the transaction (or, in
    /// session mode, the session) ends. Returns the server when it is reusable.
    async fn attach(&mut self, mut server: ServerConn) -> (End, Option<ServerConn>) {
        self.cancel.set(Some(CancelTarget {
            addr: server.addr.clone(),
            key: server.key,
        }));
        let mut link = Link::default();
        let end = link.pump(self, &mut server).await;
        self.cancel.set(None);
        let reusable =
            matches!(end, End::Released) || (link.at_rest() && !matches!(end, End::ServerLost(_)));
        self.last_txn = link.txn;
        (end, reusable.then_some(server))
    }

    /// Gives back (or closes) a server whose client has gone: a quiet open
    /// transaction is rolled back; anything still running is cancelled and closed.
    async fn cleanup(&mut self, server: Option<ServerConn>) {
        let Some(mut server) = server else { return };
        let txn = self.last_txn;
        if !txn.quiet() {
            if txn.pending > 0 {
                let _ = send_cancel(&server.addr, server.key).await;
            }
            return;
        }
        let reset = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            if txn.status != b'I' && server.run_reset("ROLLBACK").await.ok() != Some(b'I') {
                return false;
            }
            self.mode() == PoolMode::Transaction
                || server.run_reset("DISCARD ALL").await.ok() == Some(b'I')
        });
        if reset.await.unwrap_or(false) {
            self.pool.checkin(server);
        }
    }
}

/// Bytes in flight between one client and one server.
#[derive(Default)]
struct Link {
    txn: Txn,
    client_scan: Scanner,
    server_scan: Scanner,
    /// Scanned client bytes at the front of the client buffer, ready to forward.
    c_ready: usize,
    /// Scanned server bytes at the front of the server buffer, ready to forward.
    s_ready: usize,
    /// The client sent Terminate (left unforwarded at the buffer front).
    terminated: bool,
}

/// One step of either direction.
enum Dir {
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
}

impl Link {
    /// Everything forwarded, no message half-sent either way.
    fn at_rest(&self) -> bool {
        self.c_ready == 0
            && self.s_ready == 0
            && self.client_scan.at_boundary()
            && self.server_scan.at_boundary()
    }

    async fn pump(&mut self, s: &mut Session, server: &mut ServerConn) -> End {
        let max = s.ctx.config.proxy.max_message_size;
        let session_mode = s.ctx.config.proxy.pool_mode == PoolMode::Session;
        if let Err(e) = self.scan_client(&s.client.buf, max) {
            return End::ClientError(ClientError::Protocol(e.to_string()));
        }
        loop {
            if self.terminated && self.c_ready == 0 {
                return End::ClientGone;
            }
            if self.at_rest() && self.txn.idle() && server.buf.is_empty() {
                if !session_mode {
                    return End::Released;
                }
                if s.ctx.shutdown.is_cancelled() {
                    return End::Shutdown;
                }
            }
            let (c_ready, s_ready) = (self.c_ready, self.s_ready);
            let client = &mut s.client;
            let (mut c_rd, mut c_wr) = client.stream.split();
            let (mut s_rd, mut s_wr) = server.stream.split();
            let (c_buf, s_buf) = (&mut client.buf, &mut server.buf);
            // Each direction either reads (nothing pending) or writes what is
            // pending, so neither side can stall the other: no proxy deadlock
            // when both peers write at once. read_buf and write are cancel safe.
            let up = async {
                if c_ready == 0 {
                    reserve(c_buf);
                    Dir::Read(c_rd.read_buf(c_buf).await)
                } else {
                    Dir::Wrote(s_wr.write(&c_buf[..c_ready]).await)
                }
            };
            let down = async {
                if s_ready == 0 {
                    reserve(s_buf);
                    Dir::Read(s_rd.read_buf(s_buf).await)
                } else {
                    Dir::Wrote(c_wr.write(&s_buf[..s_ready]).await)
                }
            };
            let shutdown = s.ctx.shutdown.cancelled();
            let retired = server.retired.cancelled();
            let wait_shutdown = session_mode && !s.ctx.shutdown.is_cancelled();
            tokio::select! {
                d = up => match d {
                    Dir::Read(Ok(0)) | Dir::Read(Err(_)) => return End::ClientGone,
                    Dir::Read(Ok(_)) => if let Err(e) = self.scan_client(&client.buf, max) {
                        return End::ClientError(ClientError::Protocol(e.to_string()));
                    },
                    Dir::Wrote(Ok(n)) => { client.buf.advance(n); self.c_ready -= n; }
                    Dir::Wrote(Err(e)) => return End::ServerLost(e.to_string()),
                },
                d = down => match d {
                    Dir::Read(Ok(0)) => return End::ServerLost("server closed the connection".into()),
                    Dir::Read(Err(e)) => return End::ServerLost(e.to_string()),
                    Dir::Read(Ok(_)) => if let Err(e) = self.scan_server(&server.buf) {
                        return End::ServerLost(e.to_string());
                    },
                    Dir::Wrote(Ok(n)) => { server.buf.advance(n); self.s_ready -= n; }
                    Dir::Wrote(Err(_)) => return End::ClientGone,
                },
                _ = shutdown, if wait_shutdown => {}
                _ = retired => return End::ServerLost("the node's connections were closed by the health monitor".into()),
            }
        }
    }

    fn scan_client(&mut self, buf: &[u8], max: usize) -> Result<(), FrameError> {
        let (txn, terminated) = (&mut self.txn, &mut self.terminated);
        // Queries are held whole (bounded by max_message_size) to spot a COMMIT
        // in flight: losing its server then makes the outcome unknown (08007).
        let n = self.client_scan.scan(
            &buf[self.c_ready..],
            max,
            |t| t == b'Q',
            |tag, frame| {
                if tag == b'X' {
                    *terminated = true;
                    return Visit::Stop;
                }
                txn.on_client(tag);
                if let Some(body) = frame.and_then(|f| f.get(5..)) {
                    txn.commit_in_flight |= super::lost::ends_transaction(body) == Some(true);
                }
                Visit::Forward
            },
        )?;
        self.c_ready += n;
        Ok(())
    }

    fn scan_server(&mut self, buf: &[u8]) -> Result<(), FrameError> {
        let txn = &mut self.txn;
        let n = self.server_scan.scan(
            &buf[self.s_ready..],
            MAX_SERVER_MESSAGE,
            |t| t == b'Z',
            |tag, frame| {
                if let (b'Z', Some(&status)) = (tag, frame.and_then(|f| f.get(5))) {
                    txn.on_ready(status);
                }
                Visit::Forward
            },
        )?;
        self.s_ready += n;
        Ok(())
    }
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(32 * 1024);
    }
}
