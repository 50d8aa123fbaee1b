//! The query loop of one logged-in client. Between transactions the client
//! holds no server connection (transaction mode); its first message takes one
//! from the pool, bytes then flow both ways unchanged — only headers are read —
//! and the connection goes back when ReadyForQuery says idle with nothing in
//! flight. Session mode keeps the connection until the client leaves.

use std::sync::Arc;

use bytes::{Buf, BytesMut};

use super::cancelled::RetireWatch;
use super::conn::{ClientConn, ClientGone};
use super::limits::Limits;
use super::link::{held_whole, End, Link, LinkCtx, Pumped, Spare};
use super::lost::LostTxn;
use super::meter::{Checkout, Meter};
use super::prepared::ClientStatements;
use super::recycled::Recycled;
use super::rewrite::known_parse;
use super::settings::{check, Untracked};
use super::txn::Txn;
use crate::config::PoolMode;
use crate::context::Context;
use crate::error::ClientError;
use crate::measure::latency::Kind;
use crate::measure::tick::Tick;
use crate::pool::stats::Tally;
use crate::pool::{Pool, PoolError, PooledConn};
use crate::protocol::frame::{header, HEADER_LEN, MAX_FRAME};
use crate::protocol::messages::backend;
use crate::protocol::FrameError;
use crate::server::settings::{Setting, SettingSet};
use crate::server::{channel, send_cancel, ConnectError, ServerConn};
use crate::sessions::cancel::CancelGuard;
use crate::sessions::registry::{ClientState, Interrupt, Linked, Registration};

/// A logged-in client.
pub struct Session {
    /// The client socket and buffer.
    client: ClientConn,
    /// Shared proxy state.
    ctx: Arc<Context>,
    /// The client's pool.
    pool: Pool,
    /// The client's cancel key registration.
    cancel: CancelGuard,
    /// Protocol state at the end of the last attachment, for cleanup.
    last_txn: Txn,
    /// Set when the client's open transaction died with its server (a failover).
    lost: Option<LostTxn>,
    /// The client's named prepared statements (transaction mode).
    stmts: ClientStatements,
    /// The client did something tied to one server session: it keeps its server.
    pinned: bool,
    /// Whether the last attachment ended with nothing half-sent or owed.
    last_at_rest: bool,
    /// The wait for the retirement of the last server's node incarnation.
    retire: RetireWatch,
    /// What the last link kept for the next: its expectation queue's room,
    /// and the effects of its last unnamed Parse.
    spare: Spare,
    /// When the last attachment's last query was answered: the time its
    /// server goes back to the pool with.
    answered_at: Option<Tick>,
    /// The client's session settings as PostgreSQL last accepted them
    /// (startup packet, then what it SET): given to every server it gets.
    settings: SettingSet,
    /// What the startup packet asked for: what a RESET goes back to.
    /// `None` until the first read-back: until then `settings` holds just
    /// that, and one copy per idle client is enough.
    startup: Option<Vec<Setting>>,
    /// Settings changed and then the server died before they were read
    /// back: the client is told, and disconnected.
    settings_unknown: bool,
    /// The client's entry in the registry (state, link, KILL).
    reg: Registration,
    /// Settings fixed for the session's life (a reload applies to new clients).
    limits: Arc<Limits>,
}

/// What the client asked for while holding no server.
enum Idle {
    /// A message that needs a server (its tag).
    Work(u8),
    /// Terminate, EOF, or a read error.
    Gone,
    /// The proxy is shutting down.
    Shutdown,
    /// An operator ran `KILL` on the client's database.
    Killed,
}

/// Why a checkout gave no server.
enum Waited {
    /// The pool's answer (a timeout, a pool that cannot open one).
    Pool(PoolError),
    /// `KILL` reached the client while it waited.
    Killed,
}

impl Session {
    /// A client that has just logged in to `pool`, holding no server, with
    /// the settings `startup` from its startup packet. The settings it reads
    /// on its hot path are copied from `ctx` now.
    pub fn new(
        client: ClientConn,
        ctx: Arc<Context>,
        pool: Pool,
        cancel: CancelGuard,
        startup: Result<Vec<Setting>, Untracked>,
        reg: Registration,
    ) -> Session {
        let limits = Limits::shared(&ctx.config());
        let (startup, untracked) = match startup {
            Ok(s) => (s, None),
            Err(why) => (Vec::new(), Some(why)),
        };
        let settings = SettingSet::new(startup);
        let tracked = limits.tracked;
        let mut session = Session {
            client,
            ctx,
            pool,
            cancel,
            last_txn: Txn::default(),
            lost: None,
            stmts: ClientStatements::new(limits.statements),
            pinned: false,
            last_at_rest: true,
            retire: RetireWatch::default(),
            spare: Spare::default(),
            answered_at: None,
            settings,
            startup: None,
            settings_unknown: false,
            reg,
            limits,
        };
        if let Some(why) = untracked.or(check(&session.settings, tracked).err()) {
            session.pin(why.reason());
        }
        session
    }

    /// Serves the client until it leaves. The session is boxed and the
    /// body is an `async` block, not an `async fn` (which keeps a second
    /// copy of its arguments): the future, which an idle client's task
    /// keeps, is little more than the idle wait.
    pub fn run(self: Box<Self>) -> impl std::future::Future<Output = ()> + Send {
        let mut session = self;
        async move {
            // Boxed: a server is held between requests only in rare cases
            // (pinned clients), and inline it would take room in every task.
            let mut held: Option<Box<PooledConn>> = None;
            loop {
                let idle = match held {
                    // A server the client keeps serves whatever comes.
                    Some(_) => None,
                    None => Some(session.wait_idle().await),
                };
                // The work runs in a recycled block, not in the task: an idle
                // client's task then holds only the idle wait (see `recycled`).
                if !Recycled::new(|| session.work(idle, &mut held)).await {
                    return;
                }
            }
        }
    }

    /// Acts on what the idle wait saw (`None`: the client holds a server,
    /// `held`, which serves whatever comes); leaves a server the client
    /// keeps in `held`. Returns whether the session goes on.
    async fn work(&mut self, idle: Option<Idle>, held: &mut Option<Box<PooledConn>>) -> bool {
        let (server, taken) = match (held.take(), idle) {
            (Some(s), _) => (*s, None),
            (None, None | Some(Idle::Gone)) => return false,
            (None, Some(Idle::Shutdown)) => {
                self.client.send_error(&ClientError::Shutdown).await;
                return false;
            }
            (None, Some(Idle::Killed)) => {
                self.client.send_error(&ClientError::Killed).await;
                return false;
            }
            (None, Some(Idle::Work(tag))) => match self.lost {
                Some(lost) => {
                    let max = self.limits.max_message_size;
                    return match super::lost::answer_in_lost_txn(&mut self.client, lost, tag, max)
                        .await
                    {
                        Ok(lost) => {
                            self.lost = lost;
                            true
                        }
                        Err(ClientGone) => false,
                    };
                }
                None => match self.ready_server(tag).await {
                    Ok(Some((s, taken))) => (s, Some(taken)),
                    Ok(None) => return true,
                    Err(ClientGone) => return false,
                },
            },
        };
        let attached = self.attach(server, taken).await;
        if !matches!(attached, (End::Released, Some(_))) || self.mode() == PoolMode::Transaction {
            self.reg.info.set(ClientState::Idle, None);
        }
        self.after(attached, held).await
    }

    /// What follows an attachment's end: the server back to the pool (or
    /// kept in `held`), or the session's end. Returns whether it goes on.
    async fn after(
        &mut self,
        attached: (End, Option<PooledConn>),
        held: &mut Option<Box<PooledConn>>,
    ) -> bool {
        let farewell = match attached {
            (End::Released, Some(s)) if self.mode() == PoolMode::Transaction && !self.pinned => {
                match self.answered_at.take() {
                    Some(at) => self.pool.checkin_at(s, at),
                    None => self.pool.checkin(s),
                }
                return true;
            }
            (End::Released, Some(s)) => {
                *held = Some(Box::new(s));
                return true;
            }
            (End::ClientGone, s) => (None, s),
            (End::Shutdown, s) => (Some(ClientError::Shutdown), s),
            (End::Killed, s) => (Some(ClientError::Killed), s),
            (End::IdleInTransaction, s) => (Some(ClientError::IdleInTransactionTimeout), s),
            (End::SettingsLost, _) => {
                self.ctx.cluster().nudge();
                (Some(ClientError::SettingsLost), None)
            }
            (End::ClientError(e), s) => {
                tracing::debug!(error = %e, "client protocol error");
                (Some(*e), s)
            }
            (End::ServerLost(why), _) => return self.after_lost_server(why).await,
            (End::Released, None) => return false,
        };
        if let Some(e) = farewell.0 {
            self.client.send_error(&e).await;
        }
        self.cleanup(farewell.1).await;
        false
    }

    /// The server died mid-request: the client is told what it must know.
    /// Returns whether the session goes on.
    async fn after_lost_server(&mut self, why: String) -> bool {
        tracing::warn!(error = %why, "server connection lost mid-session");
        self.ctx.cluster().nudge();
        match super::lost::answer_lost_server(&mut self.client, self.last_txn).await {
            Ok(_) if self.settings_unknown => {
                self.client.send_error(&ClientError::SettingsLost).await;
                false
            }
            Ok(lost) => {
                self.lost = lost;
                true
            }
            Err(ClientGone) => false,
        }
    }

    fn mode(&self) -> PoolMode {
        self.limits.mode
    }

    /// Waits for the next message while holding no server, answering the ones
    /// that need none (Sync, Flush, stray COPY messages). Cancel safe between
    /// messages. Every turn of the loop either consumes a whole message or
    /// reads the socket: a partial message waits for its bytes, never for a
    /// server, so a client that stops (or closes) mid-message is seen here.
    async fn wait_idle(&mut self) -> Idle {
        loop {
            if self.reg.stopping() {
                return Idle::Shutdown;
            }
            let rewrite = self.mode() == PoolMode::Transaction;
            match idle_front(&self.client.buf, self.limits.max_message_size, rewrite) {
                Err(e) => {
                    self.client
                        .send_error(&ClientError::Protocol(e.to_string()))
                        .await;
                    return Idle::Gone;
                }
                Ok(Front::Terminate) => return Idle::Gone,
                Ok(Front::Skip { len, sync }) => {
                    self.client.buf.advance(len);
                    if sync
                        && self
                            .answer(|out| backend::ready_for_query(out, backend::IDLE))
                            .await
                            .is_err()
                    {
                        return Idle::Gone;
                    }
                    continue;
                }
                Ok(Front::Parse(len)) if rewrite && self.answer_known_parse(len) => {
                    if self
                        .answer(|out| crate::protocol::frame::put_frame(out, b'1', b""))
                        .await
                        .is_err()
                    {
                        return Idle::Gone;
                    }
                    continue;
                }
                Ok(Front::Parse(_)) => return Idle::Work(b'P'),
                Ok(Front::Work(tag)) => return Idle::Work(tag),
                Ok(Front::Invalid(tag)) => {
                    let msg = format!("invalid frontend message type {tag}");
                    self.client.send_error(&ClientError::Protocol(msg)).await;
                    return Idle::Gone;
                }
                Ok(Front::More) => {
                    let rewrite = self.mode() == PoolMode::Transaction;
                    let held = |t, len| held_whole(t, len, rewrite);
                    if let Some(len) = self.client.room_needed(Some(0), held) {
                        // Rare (a large message): boxed, so that the idle
                        // wait every client's task holds does not carry it.
                        match Box::pin(self.take_room(len)).await {
                            Ok(true) => {}
                            Ok(false) => continue,
                            Err(ClientGone) => return Idle::Gone,
                        }
                    }
                }
            }
            // The buffer is taken only once there is something to read: an
            // idle client holds none.
            tokio::select! {
                biased;
                r = self.client.fill_when_readable() => if !matches!(r, Ok(n) if n > 0) { return Idle::Gone },
                why = self.reg.interrupted() => return match why {
                    Interrupt::Shutdown => Idle::Shutdown,
                    Interrupt::Killed => Idle::Killed,
                },
            }
        }
    }

    /// Takes room for a message of `len` bytes, waiting up to
    /// `checkout_timeout`. True: taken. False: there was none, and the
    /// message was dropped with 53200, the connection kept.
    async fn take_room(&mut self, len: usize) -> Result<bool, ClientGone> {
        match self.ctx.budget().reserve(len, self.limits.room_wait).await {
            Ok(grant) => {
                self.client.grant = Some(Box::new(grant));
                Ok(true)
            }
            Err(_) => {
                let tag = self.client.buf[0];
                let max = self.limits.max_memory;
                let err = ClientError::OutOfMemory { max, fatal: false };
                self.refuse(tag, err).await?;
                Ok(false)
            }
        }
    }

    /// Sends a reply the proxy writes itself while the client holds no server.
    async fn answer(&mut self, write: impl FnOnce(&mut BytesMut)) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        write(&mut out);
        self.client.send(&out).await
    }

    /// Takes a server from the pool, showing the client as waiting meanwhile
    /// and timing the wait. With the server comes its [`Checkout`]: the
    /// time read as it was taken (the start of the request that asked for
    /// it) and the wait, which the meter of the attachment it serves counts,
    /// or `count_checkout` when it serves none.
    /// `KILL` ends the wait: a client waiting for a server (behind `PAUSE`,
    /// or a full pool) is dropped with the rest of its database.
    async fn checkout(&mut self) -> Result<(PooledConn, Checkout), Waited> {
        let info = &self.reg.info;
        // The usual case: an idle server at once, no wait to time or show.
        if let Some((s, at)) = self.pool.checkout_now() {
            self.reg.info.activate(s.addr(), |addr| linked(addr, &s));
            let taken = Checkout {
                at: Some(at),
                wait_us: 0,
            };
            return Ok((s, taken));
        }
        info.set(ClientState::Waiting, None);
        let started = Tick::now();
        let server = tokio::select! {
            s = self.pool.checkout(started) => s.map_err(Waited::Pool),
            () = info.killed() => Err(Waited::Killed),
        };
        let (s, at) = match server {
            Ok(taken) => taken,
            Err(e) => {
                info.set(ClientState::Idle, None);
                return Err(e);
            }
        };
        info.activate(s.addr(), |addr| linked(addr, &s));
        // The pool's last clock read: the wait's end and the first
        // request's start.
        let taken = Checkout {
            at: Some(at),
            wait_us: at.micros_since(started),
        };
        Ok((s, taken))
    }

    /// Counts a checkout that serves no attachment.
    fn count_checkout(&self, waited: u64) {
        if self.ctx.record_metrics() {
            self.ctx.latencies().record(Kind::Wait, waited);
        }
        let mut tally = Tally {
            server_assignments: 1,
            wait_us: waited,
            ..Default::default()
        };
        self.pool.stats().add(&mut tally);
    }

    /// A named Parse of a text some server already accepted needs no server:
    /// it is registered and answered here. This also keeps clients that
    /// prepare synchronously while others hold every server (pgbench -M
    /// prepared) from waiting on a server for nothing.
    fn answer_known_parse(&mut self, len: usize) -> bool {
        let pool = &self.pool;
        let Some((name, stmt)) = known_parse(&self.client.buf[..len], |n| pool.knows_statement(n))
        else {
            return false;
        };
        // Past the client's bounds the link refuses it, in order.
        if self.stmts.insert(name, stmt).is_err() {
            return false;
        }
        self.client.buf.advance(len);
        true
    }

    /// No server for this request: tell the client, skip the request (up to its
    /// Sync for an extended batch), and keep the connection.
    async fn refuse(&mut self, tag: u8, client_err: ClientError) -> Result<(), ClientGone> {
        let mut out = BytesMut::new();
        client_err.encode_as(&mut out, false);
        self.ctx
            .errors()
            .record(client_err.origin(), client_err.sqlstate());
        self.client.send(&out).await?;
        let through_sync = !matches!(tag, b'Q' | b'F');
        self.client.discard(through_sync).await?;
        out.clear();
        backend::ready_for_query(&mut out, backend::IDLE);
        Ok(self.client.send(&out).await?)
    }

    /// A server for the client's next request, with the client's settings
    /// in force on it. `None`: the request was answered with an error (no
    /// server, or PostgreSQL refused the settings), or the server failed
    /// while taking them (the request is still buffered: the idle loop tries again).
    /// With it comes its checkout, still to count, with the time the
    /// checkout read unless the settings took a round trip since.
    async fn ready_server(
        &mut self,
        tag: u8,
    ) -> Result<Option<(PooledConn, Checkout)>, ClientGone> {
        let (mut server, mut taken) = match self.checkout().await {
            Ok(s) => s,
            Err(Waited::Pool(e)) => {
                self.refuse(tag, super::pool_error(e, false)).await?;
                return Ok(None);
            }
            Err(Waited::Killed) => {
                self.client.send_error(&ClientError::Killed).await;
                return Err(ClientGone);
            }
        };
        let given = self.give_settings(&mut server).await;
        // The checkout is counted with the transaction it serves; it serves
        // none when the settings failed, and its query starts after them
        // when they took a round trip.
        match given {
            Ok(true) => taken.at = None,
            Ok(false) => {}
            Err(_) => self.count_checkout(taken.wait_us),
        }
        match given {
            Ok(_) => Ok(Some((server, taken))),
            Err(ConnectError::Refused { error, .. }) => {
                // Nothing changed on that server (one implicit transaction),
                // but it is not kept: PostgreSQL's error goes to the client.
                self.refuse(tag, ClientError::Server(error)).await?;
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(error = %e, "a server failed while taking a client's settings");
                Ok(None)
            }
        }
    }

    /// Applies the client's settings to `server` where they differ, within
    /// `settings_timeout`, and not past the node's retirement. True when it
    /// had to (a round trip to the server).
    async fn give_settings(&mut self, server: &mut PooledConn) -> Result<bool, ConnectError> {
        // The usual case, checked first: no timer, no allocation per transaction.
        if !server.settings_differ(&self.settings) {
            return Ok(false);
        }
        let retired = server.retired().clone();
        let limit = self.limits.settings_timeout;
        let addr = server.addr().to_string();
        tokio::select! {
            r = tokio::time::timeout(limit, server.apply_settings(&self.settings)) => {
                r.unwrap_or(Err(ConnectError::Timeout(addr))).map(|()| true)
            }
            _ = retired.cancelled() => Err(ConnectError::Protocol(addr, "node retired")),
        }
    }

    /// After a transaction that may have changed settings: the client's
    /// settings become what the server's session now holds, plus what its
    /// startup packet asked for and a RESET took away (given back next time).
    async fn read_back(
        &mut self,
        server: &mut PooledConn,
        custom: &[String],
    ) -> Result<(), ConnectError> {
        let mut names: Vec<&str> = custom.iter().map(String::as_str).collect();
        for (n, _) in self.settings.items() {
            if n.contains('.') && !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
        let retired = server.retired().clone();
        let addr = server.addr().to_string();
        let read = tokio::select! {
            r = tokio::time::timeout(self.limits.settings_timeout, server.read_settings(&names)) => {
                r.unwrap_or(Err(ConnectError::Timeout(addr)))?
            }
            _ = retired.cancelled() => return Err(ConnectError::Protocol(addr, "node retired")),
        };
        // The set holds the startup packet's settings (names lowercased, a
        // later duplicate winning) until this first replaces it.
        let settings = &self.settings;
        let startup = self
            .startup
            .get_or_insert_with(|| settings.items().to_vec());
        let missing = startup
            .iter()
            .filter(|(n, _)| read.get(n).is_none())
            .cloned();
        self.settings = SettingSet::new(read.items().iter().cloned().chain(missing));
        if let Err(why) = check(&self.settings, self.limits.tracked) {
            self.pin(why.reason());
        }
        Ok(())
    }

    /// Relays between the client and `server` until the transaction (or, in
    /// session mode, the session) ends. Returns the server when it is reusable.
    /// `taken`: the checkout that gave the server, which the attachment
    /// counts (`None`: a server the client kept).
    async fn attach(
        &mut self,
        mut server: PooledConn,
        taken: Option<Checkout>,
    ) -> (End, Option<PooledConn>) {
        self.cancel
            .attach(server.addr(), server.key(), server.stream().is_tls());
        let mut meter = Meter::new(self.ctx.record_metrics());
        if let Some(c) = taken {
            meter.checked_out(c);
        }
        let mut link = Link::new(&self.limits, meter, &mut self.spare);
        let mut end = self.pump(&mut link, &mut server).await;
        self.detach_cancels(&end, &mut server).await;
        if let Some(custom) = link.take_settings_changed().filter(|_| !self.pinned) {
            match end {
                End::Released => {
                    if let Err(e) = self.read_back(&mut server, &custom).await {
                        tracing::warn!(error = %e, "reading back a client's session settings failed");
                        end = End::SettingsLost;
                    }
                }
                // Acknowledged SETs died with the server: after telling the
                // client about its request, the session cannot go on as if.
                End::ServerLost(_) => self.settings_unknown = true,
                _ => {}
            }
        }
        link.meter.finish(self.ctx.latencies());
        self.pool.stats().add(&mut link.meter.tally);
        self.answered_at = link.meter.answered_at();
        link.give_back(&mut self.spare);
        self.last_txn = link.txn;
        self.last_at_rest = link.at_rest();
        // A lost server is gone; any other ending hands it to cleanup, which
        // decides between reuse (quiet), cancel-and-close or close.
        let keep = !matches!(end, End::ServerLost(_) | End::SettingsLost);
        (end, keep.then_some(server))
    }

    /// Points the client's cancels away from `server` once its part is over,
    /// and waits for those already on their way: one arriving later would
    /// cancel what runs there next (the settings read-back, or another
    /// client's query). One that may still arrive has the server closed when
    /// it comes back. No wait when none was sent: the usual case costs
    /// nothing but the lock taken anyway.
    async fn detach_cancels(&mut self, end: &End, server: &mut PooledConn) {
        let Some(unsettled) = self.cancel.detach() else {
            return;
        };
        // A lost server serves nobody again.
        if !matches!(end, End::ServerLost(_)) && !unsettled.wait().await {
            server.close_on_return();
        }
    }

    /// Runs `link` over a view of this session until the attachment ends,
    /// pinning the client when the link says so.
    async fn pump(&mut self, link: &mut Link, server: &mut PooledConn) -> End {
        let (node, epoch) = (server.node(), server.epoch());
        let (server, token) = server.conn_and_retired();
        loop {
            let retired = self.retire.of(node, epoch, token);
            let mut cx = LinkCtx {
                client: &mut self.client,
                stmts: &mut self.stmts,
                pool: &self.pool,
                shutdown: self.ctx.shutdown(),
                info: &self.reg.info,
                latencies: self.ctx.latencies(),
                errors: self.ctx.errors(),
                pinned: self.pinned,
                budget: self.ctx.budget(),
            };
            match link.pump(&mut cx, server, retired).await {
                Pumped::Pin(why) => self.pin(why),
                Pumped::Cancel => self.cancel_running(),
                Pumped::End(end) => return end,
            }
        }
    }

    /// Cancels the client's running request (`query_timeout`) as its own
    /// CancelRequest would be: counted, so its server serves nobody else
    /// before the cancel has landed.
    fn cancel_running(&self) {
        let (ctx, pid, secret) = (self.ctx.clone(), self.cancel.pid, self.cancel.secret);
        tokio::spawn(async move { ctx.cancel_local(pid, secret).await });
    }

    /// Keeps the client on its server until it disconnects.
    fn pin(&mut self, why: &'static str) {
        self.pinned = true;
        self.reg.info.pin(why);
        self.pool.stats().pinned(why);
        tracing::info!(
            reason = why,
            "client pinned to its server connection until it disconnects"
        );
    }

    /// Gives back (or closes) a server whose client has gone: a quiet open
    /// transaction is rolled back; anything still running is cancelled and closed.
    async fn cleanup(&mut self, server: Option<PooledConn>) {
        let Some(mut server) = server else { return };
        let txn = self.last_txn;
        if !txn.quiet() || !self.last_at_rest {
            if txn.pending > 0 {
                let tls = self.ctx.cluster().tls().current();
                let via = channel(tls.mode, server.stream().is_tls());
                let _ = send_cancel(server.addr(), server.key(), via, &tls).await;
            }
            return;
        }
        let reset = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            if txn.status != b'I' && server.run_reset("ROLLBACK").await.ok() != Some(b'I') {
                return false;
            }
            if self.mode() == PoolMode::Transaction && !self.pinned {
                return true;
            }
            server.discard_all().await.ok() == Some(b'I')
        });
        if reset.await.unwrap_or(false) {
            self.pool.checkin(server);
        }
    }
}

/// A message larger than this may go upstream before it has all arrived
/// (a large Bind or function call is streamed, never buffered whole).
const STREAM_AFTER: usize = 8 * 1024;

/// What the front of an idle client's buffer calls for.
#[derive(Debug, PartialEq, Eq)]
enum Front {
    /// Not enough bytes to act on: read more.
    More,
    /// Terminate.
    Terminate,
    /// A whole message that needs no server, dropped; a Sync is answered.
    Skip { len: usize, sync: bool },
    /// A whole Parse: the proxy may answer it (transaction mode).
    Parse(usize),
    /// A message that needs a server: whole, or already too large to wait for.
    Work(u8),
    /// Not a frontend message.
    Invalid(u8),
}

/// Decides what an idle client's buffered bytes call for. Pure. Messages
/// the link holds whole (a Query, and statement-naming messages when
/// `rewrite`) need all their bytes before a server is taken, so a client
/// that stops mid-message holds no server and is heard when it closes.
fn idle_front(buf: &[u8], max: usize, rewrite: bool) -> Result<Front, FrameError> {
    let Some(&tag) = buf.first() else {
        return Ok(Front::More);
    };
    // Only what is held whole is bounded by `max`; the rest streams.
    let (len, held_whole) = match header(buf, MAX_FRAME)? {
        Some((_, len)) if held_whole(tag, len, rewrite) && len > max => {
            return Err(FrameError::BadLength {
                tag,
                len: len as u32,
            })
        }
        Some((_, len)) => (
            (buf.len() > len).then_some(len + 1),
            held_whole(tag, len, rewrite),
        ),
        None => (None, tag == b'Q' || rewrite),
    };
    Ok(match (tag, len) {
        (b'X', _) if buf.len() >= HEADER_LEN => Front::Terminate,
        (b'S' | b'H' | b'd' | b'c' | b'f', Some(len)) => Front::Skip {
            len,
            sync: tag == b'S',
        },
        (b'P', Some(len)) => Front::Parse(len),
        (b'Q' | b'B' | b'D' | b'E' | b'C' | b'F', Some(_)) => Front::Work(tag),
        (b'B' | b'D' | b'E' | b'C' | b'F' | b'P', None)
            if !held_whole && buf.len() >= STREAM_AFTER =>
        {
            Front::Work(tag)
        }
        (
            b'X' | b'S' | b'H' | b'd' | b'c' | b'f' | b'Q' | b'P' | b'B' | b'D' | b'E' | b'C'
            | b'F',
            _,
        ) => Front::More,
        (other, _) => Front::Invalid(other),
    })
}

/// How `SHOW SERVERS` shows a server connection held by a client.
fn linked(addr: Arc<str>, s: &ServerConn) -> Linked {
    Linked {
        addr,
        local: s.local(),
        pid: s.key().0,
        connected_at: s.connected_at(),
        prepared: s.statements().len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body_len: usize) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend(((body_len + 4) as u32).to_be_bytes());
        v.extend(std::iter::repeat_n(b'x', body_len));
        v
    }

    #[test]
    fn idle_front_waits_for_what_the_link_holds_whole() {
        let big = 100_000;
        let q = msg(b'Q', big);
        let b = msg(b'B', big);
        let mid = msg(b'B', 20_000);
        let cases: &[(&[u8], bool, Front)] = &[
            (b"", true, Front::More),
            (b"Q", true, Front::More),
            // A Query header alone, or part of its body, takes no server.
            (&q[..5], true, Front::More),
            (&q[..15], true, Front::More),
            (&q[..STREAM_AFTER + 10], true, Front::More),
            (&q, true, Front::Work(b'Q')),
            // Statement-naming messages are held whole when rewriting...
            (&mid[..STREAM_AFTER + 10], true, Front::More),
            // ...except a large Bind, whose head alone is rewritten...
            (&b[..STREAM_AFTER + 10], true, Front::Work(b'B')),
            // ...and streamed once large when not.
            (&b[..STREAM_AFTER + 10], false, Front::Work(b'B')),
            (&b[..15], false, Front::More),
            (&msg(b'E', 5), true, Front::Work(b'E')),
            (&msg(b'E', 5)[..6], true, Front::More),
            (&msg(b'P', 3), true, Front::Parse(8)),
            (&msg(b'P', 3)[..7], true, Front::More),
            (&msg(b'S', 0), true, Front::Skip { len: 5, sync: true }),
            (
                &msg(b'H', 0),
                true,
                Front::Skip {
                    len: 5,
                    sync: false,
                },
            ),
            (&msg(b'd', 2)[..6], true, Front::More),
            (&msg(b'X', 0), true, Front::Terminate),
            (b"X\0\0", true, Front::More),
            (b"Z", true, Front::Invalid(b'Z')),
        ];
        for (buf, rewrite, want) in cases {
            let got = idle_front(buf, 1 << 20, *rewrite).unwrap();
            assert_eq!(
                &got,
                want,
                "{} bytes of {:?}",
                buf.len(),
                buf.first().map(|b| *b as char)
            );
        }
        assert!(idle_front(&msg(b'Q', 10), 8, true).is_err());
        // Only what is held whole is bounded: a large Execute streams.
        assert_eq!(idle_front(&msg(b'E', 10), 8, true), Ok(Front::Work(b'E')));
        assert!(idle_front(&msg(b'B', 10)[..6], 8, true).is_err());
        assert_eq!(idle_front(&msg(b'B', 10)[..6], 8, false), Ok(Front::More));
    }
}
