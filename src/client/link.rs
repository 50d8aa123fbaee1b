//! Bytes in flight between one client and one server: the two-way pump and
//! what it must understand on the way. Most messages are forwarded in place,
//! header read only. In transaction mode, messages that name a prepared
//! statement (Parse/Bind/Describe/Close) are held whole and rewritten to the
//! proxy-wide server name, with a Parse injected where the server lacks the
//! statement; the `expect` queue then drops the replies to injected messages
//! and inserts the proxy's own answers in order.

use std::pin::Pin;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::cancelled::Cancelled;
use super::conn::ClientConn;
use super::expect::{Expect, Expectations, Forgotten, Sent, Verdict};
use super::limits::Limits;
use super::meter::Meter;
use super::prepared::ClientStatements;
use super::rewrite::{names_statement, Upstream};
use super::session_state::{custom_names, effects, Effects};
use super::txn::Txn;
use crate::config::PoolMode;
use crate::error::ClientError;
use crate::measure::latency::Latencies;
use crate::measure::ErrorCounts;
use crate::pool::Pool;
use crate::protocol::buffer;
use crate::protocol::frame::put_frame;
use crate::protocol::frame::{header, HEADER_LEN, MAX_FRAME};
use crate::protocol::messages::backend::decode_parameter_status;
use crate::protocol::messages::error_response;
use crate::protocol::messages::extended::{decode_bind_statement, decode_parse, decode_target};
use crate::protocol::{frame_len, whole_if, FrameError, Hold, Scanner, Visit};
use crate::server::ServerConn;
use crate::sessions::budget::{Budget, Denied, Grant};
use crate::sessions::registry::ClientInfo;

/// Server messages are PostgreSQL's: bounded by its own limit.
const MAX_SERVER_MESSAGE: usize = MAX_FRAME;

/// Server messages the link reads (ErrorResponse for its SQLSTATE,
/// ParameterStatus, ReadyForQuery) are held whole up to this size; a larger
/// one (an error carrying a huge query in its detail) streams through unread.
const MAX_SERVER_HELD: usize = 64 * 1024;

/// Bytes a link moves before it lets the other tasks on its event loop run.
/// A flood (a pipeline of a million queries, a huge COPY) keeps both sockets
/// ready, so without this the task would run until tokio's coarse budget
/// stops it; at ~128 KiB per turn every other client waits at most a few
/// hundred microseconds of scanning.
const YIELD_EVERY: usize = 128 * 1024;

/// How long a server has to answer after the proxy cancelled its request
/// (`query_timeout`) before its connection is given up as lost.
const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The clock of `proxy.query_timeout`: it runs while a request is
/// unanswered and restarts at each ReadyForQuery, so each request of a
/// pipeline gets the whole limit. Only links with the limit set read the
/// clock.
#[derive(Debug)]
struct QueryClock {
    limit: std::time::Duration,
    /// When the request now running must be answered by.
    deadline: Option<tokio::time::Instant>,
    /// The request was cancelled: the deadline is the grace after it.
    cancelled: bool,
}

impl QueryClock {
    fn new(limit: std::time::Duration) -> QueryClock {
        QueryClock {
            limit,
            deadline: None,
            cancelled: false,
        }
    }

    /// The deadline of the request running, `pending` requests being owed.
    fn deadline(&mut self, pending: u32) -> Option<tokio::time::Instant> {
        if pending == 0 {
            self.deadline = None;
            self.cancelled = false;
            return None;
        }
        Some(
            *self
                .deadline
                .get_or_insert_with(|| tokio::time::Instant::now() + self.limit),
        )
    }

    /// A ReadyForQuery: the next request's clock starts when it is next asked.
    fn answered(&mut self) {
        self.deadline = None;
        self.cancelled = false;
    }

    fn cancel(&mut self) {
        self.cancelled = true;
        self.deadline = Some(tokio::time::Instant::now() + CANCEL_GRACE);
    }
}

/// Most replies a client may be owed before it is read no more (about
/// 40 bytes each).
const MAX_OWED: usize = 16 * 1024;

/// Most bytes of the proxy's own answers waiting for the client before it
/// is read no more.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A named Bind larger than this is not held whole: its head is
/// rewritten and its parameters stream on to the server.
const MAX_HELD_BIND: usize = 64 * 1024;

/// Whether the link holds a client message of `tag` and `len` whole before
/// forwarding it: a Query, to spot a COMMIT in flight and what it does to
/// the session; when rewriting statement names, the messages that name
/// one, except a large Bind. Everything else streams.
pub(super) fn held_whole(tag: u8, len: usize, rewrite: bool) -> bool {
    match tag {
        b'Q' => true,
        b'P' | b'D' | b'C' => rewrite,
        b'B' => rewrite && len <= MAX_HELD_BIND,
        _ => false,
    }
}

/// What one pump borrows from its session, built by the relay for one call
/// of [`Link::pump`]: the client side, and where the link counts and learns.
/// Changes to the session itself come back as [`Pumped`] or are read from
/// the link afterwards.
pub(super) struct LinkCtx<'a> {
    /// The client socket and buffer.
    pub client: &'a mut ClientConn,
    /// The client's named statements (transaction mode).
    pub stmts: &'a mut ClientStatements,
    /// The client's pool: its counters, and the statements servers accepted.
    pub pool: &'a Pool,
    /// Cancelled when the proxy shuts down.
    pub shutdown: &'a CancellationToken,
    /// The client's registry entry, which `KILL` marks.
    pub info: &'a ClientInfo,
    /// Query and transaction latencies.
    pub latencies: &'a Latencies,
    /// Where server errors forwarded to the client are counted.
    pub errors: &'a ErrorCounts,
    /// The client keeps its server until it leaves.
    pub pinned: bool,
    /// `proxy.max_memory`, for large messages held whole.
    pub budget: &'a Budget,
}

/// How an attachment to a server ended.
pub(super) enum End {
    /// Transaction finished; the server can go back to the pool.
    Released,
    /// The client sent Terminate or closed its socket.
    ClientGone,
    /// Shutdown reached the client between transactions.
    Shutdown,
    /// The client broke the protocol. Boxed (rare): an `End` and the
    /// server handed back with it move several times per transaction,
    /// and at 152 bytes each move was a call to `memcpy`.
    ClientError(Box<ClientError>),
    /// The server connection failed.
    ServerLost(String),
    /// An operator ran `KILL` on the client's database.
    Killed,
    /// The server failed before the client's changed settings were read back.
    SettingsLost,
    /// The client left a transaction open and sent nothing for
    /// `proxy.idle_transaction_timeout`.
    IdleInTransaction,
}

// An attachment's ending and the server it hands back move a few times per
// transaction: kept within 128 bytes, each move is a few stores rather than
// a call to `memcpy`.
const _: () = assert!(std::mem::size_of::<(End, Option<crate::pool::PooledConn>)>() <= 128);

/// Why [`Link::pump`] returned.
pub(super) enum Pumped {
    /// The running request passed `query_timeout`: the relay cancels it,
    /// then pumps on with the same link.
    Cancel,
    /// The client did something tied to its server session (the reason):
    /// the relay pins it, then pumps on with the same link.
    Pin(&'static str),
    /// The attachment ended.
    End(End),
}

impl From<End> for Pumped {
    fn from(end: End) -> Pumped {
        Pumped::End(end)
    }
}

/// What a session keeps from one link to the next (`Link::new`,
/// `Link::give_back`): the expectation queue's room, the parse memo, and
/// the synthesized buffers while small and empty.
#[derive(Default)]
pub(super) struct Spare {
    queue: Expectations,
    parses: ParseMemo,
    c_synth: Synth,
    s_synth: Synth,
}

/// The effects of the last unnamed Parse's text, and that Parse's body
/// (up to `MEMO_MAX` bytes). A driver on the extended protocol that names
/// no statement sends the same Parse with every execution, and decoding and
/// scanning it was most of what such a Parse cost the proxy. [`effects`] is
/// a pure function of the text, which the body holds, so a body equal to
/// the last one has its effects: it is compared as it came, not decoded.
#[derive(Default)]
struct ParseMemo {
    /// Empty: nothing kept (no valid Parse body is empty).
    body: Vec<u8>,
    effects: Effects,
}

/// The longest body the memo keeps: it lives as long as the session, idle
/// or not.
const MEMO_MAX: usize = 1024;

impl ParseMemo {
    /// The effects of the text of the Parse `frame` (tag and length
    /// included); `None` if it does not decode.
    fn effects(&mut self, frame: &[u8]) -> Option<Effects> {
        let body = frame.get(5..)?;
        if !body.is_empty() && self.body.as_slice() == body {
            return Some(self.effects);
        }
        let found = effects(decode_parse(frame)?.query);
        self.body.clear();
        self.effects = Effects::default();
        // A body too long to keep leaves the memo empty.
        if body.len() <= MEMO_MAX {
            self.body.extend_from_slice(body);
            self.effects = found;
        }
        Some(found)
    }
}

/// Bytes in flight between one client and one server.
#[derive(Default)]
pub(super) struct Link {
    pub(super) txn: Txn,
    /// `proxy.idle_transaction_timeout`, when set.
    idle_transaction: Option<std::time::Duration>,
    /// `proxy.query_timeout`, when set, and the running request's clock.
    query_timeout: Option<QueryClock>,
    /// Rewrite statement names (transaction mode).
    rewrite: bool,
    /// Session mode: the server is kept even when idle.
    session_mode: bool,
    /// `proxy.max_message_size`.
    max_message_size: usize,
    /// How long a large message waits for room in `proxy.max_memory`.
    room_wait: std::time::Duration,
    /// `proxy.max_memory`.
    max_memory: usize,
    /// `proxy.max_prepared_statements`.
    max_prepared: usize,
    expect: Expectations,
    /// The effects of the last unnamed Parse's text.
    parses: ParseMemo,
    client_scan: Scanner,
    server_scan: Scanner,
    /// Scanned client bytes at the front of the client buffer, ready to forward.
    c_ready: usize,
    /// Scanned server bytes at the front of the server buffer, ready to forward.
    s_ready: usize,
    /// Rewritten or injected bytes for the server, sent before `c_ready`.
    c_synth: Synth,
    /// The proxy's own answers for the client, sent before `s_ready`.
    s_synth: Synth,
    /// The client message at the buffer front must be rewritten (once `c_ready` is sent).
    c_hold: bool,
    /// A Bind too large to hold is at the buffer front: its head is
    /// rewritten once it has arrived, and its body streams after it.
    c_head: bool,
    /// The server message at the buffer front must be dropped (once `s_ready` is sent).
    s_drop: bool,
    /// The server message at the buffer front is a FATAL (or PANIC) error:
    /// the server is ending the session. It is not forwarded: a pooled
    /// client's session outlives its server, so the link ends as if the
    /// connection had dropped (what it said, for the log), and the client
    /// is told about its requests in flight, not that its session ended.
    s_fatal: Option<String>,
    /// The client sent Terminate (left unforwarded at the buffer front).
    terminated: bool,
    /// Why the client must keep this server, once seen.
    pin_reason: Option<&'static str>,
    /// ParameterStatus values the server reported, to apply after the scan.
    reported: Vec<(String, String)>,
    /// A statement that may change session settings went through: they
    /// are read back from the server before it is released.
    settings_changed: bool,
    /// A statement that drops the session's prepared statements went
    /// through: the proxy's record of them goes too.
    forgot_statements: bool,
    /// Custom settings (`app.tenant`) those statements named, which the
    /// read-back must ask for by name (at most `MAX_CUSTOM`).
    custom: Vec<String>,
    /// Timings and counts for the metrics and `SHOW STATS`.
    pub(super) meter: Meter,
    /// Some byte went either way or a client message was consumed. An
    /// attachment that did neither is never released: releasing it would
    /// hand the same unread bytes back to the idle loop, which would take a
    /// server again without ever reading the socket.
    moved: bool,
    /// Bytes moved since this task last yielded (see `YIELD_EVERY`).
    since_yield: usize,
}

/// Which limit a link's timer runs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// The running request's `query_timeout`.
    Query,
    /// `idle_transaction_timeout` of a client idle in a transaction.
    Idle,
}

/// The deadline the link waits for, and what it is, given the running
/// request's deadline and the idle-in-transaction one: the earlier, the
/// request's on a tie. Pure.
fn first_timer(
    query_at: Option<tokio::time::Instant>,
    idle_at: Option<tokio::time::Instant>,
) -> Option<(tokio::time::Instant, Timer)> {
    match (query_at, idle_at) {
        (Some(q), Some(i)) if i < q => Some((i, Timer::Idle)),
        (Some(q), _) => Some((q, Timer::Query)),
        (None, Some(i)) => Some((i, Timer::Idle)),
        (None, None) => None,
    }
}

/// One step of either direction.
enum Dir {
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
    /// TLS bytes held in the session went out (or failed to).
    Flushed(std::io::Result<()>),
    /// Room in the memory budget for a large message, or why there is none.
    Room(Result<Grant, Denied>),
}

impl Link {
    /// `spare`: what an earlier link kept, its queue (emptied here and
    /// taken for its allocation) and its parse memo; [`Link::give_back`]
    /// gives them back. Swapped, not moved: `spare` holds the link's
    /// defaults meanwhile, so nothing is dropped per attachment but what
    /// the link drops.
    pub(super) fn new(limits: &Limits, meter: Meter, spare: &mut Spare) -> Link {
        spare.queue.empty();
        let mut link = Link {
            rewrite: limits.mode == PoolMode::Transaction,
            session_mode: limits.mode == PoolMode::Session,
            max_message_size: limits.max_message_size,
            room_wait: limits.room_wait,
            max_memory: limits.max_memory,
            max_prepared: limits.max_prepared,
            idle_transaction: limits.idle_transaction,
            query_timeout: limits.query_timeout.map(QueryClock::new),
            meter,
            ..Default::default()
        };
        std::mem::swap(&mut link.expect, &mut spare.queue);
        std::mem::swap(&mut link.parses, &mut spare.parses);
        // Only a session that rewrites has any: the others skip the moves.
        if spare.c_synth.capacity() != 0 {
            std::mem::swap(&mut link.c_synth, &mut spare.c_synth);
        }
        if spare.s_synth.capacity() != 0 {
            std::mem::swap(&mut link.s_synth, &mut spare.s_synth);
        }
        link
    }

    /// Puts what the session keeps between links back in `spare`.
    pub(super) fn give_back(&mut self, spare: &mut Spare) {
        std::mem::swap(&mut self.expect, &mut spare.queue);
        std::mem::swap(&mut self.parses, &mut spare.parses);
        if self.c_synth.capacity() != 0 {
            spare.c_synth = std::mem::take(&mut self.c_synth).kept();
        }
        if self.s_synth.capacity() != 0 {
            spare.s_synth = std::mem::take(&mut self.s_synth).kept();
        }
    }

    /// Whether a statement that may change session settings went through,
    /// and the custom settings such statements named.
    pub(super) fn take_settings_changed(&mut self) -> Option<Vec<String>> {
        std::mem::take(&mut self.settings_changed).then(|| std::mem::take(&mut self.custom))
    }

    /// Notes what a statement does to the session.
    fn note(&mut self, effects: Effects, text: &[u8]) {
        note(
            &mut self.pin_reason,
            &mut self.settings_changed,
            &mut self.custom,
            effects,
            text,
        )
    }

    /// A transaction is open, everything was answered, and the client has
    /// sent nothing since (`client_empty`, `server_empty`: no bytes
    /// buffered either way).
    fn idle_in_transaction(&self, client_empty: bool, server_empty: bool) -> bool {
        client_empty && server_empty && self.at_rest() && self.txn.quiet() && !self.txn.idle()
    }

    /// The running request passed its deadline: first it is cancelled
    /// (the relay sends the cancel); if the server then answers nothing
    /// in time, it is lost.
    fn query_expired(&mut self) -> Option<Pumped> {
        let clock = self.query_timeout.as_mut()?;
        if clock.cancelled {
            tracing::warn!("query_timeout: the server answered neither the request nor its cancel");
            return Some(
                End::ServerLost("query_timeout: no answer to the request or its cancel".into())
                    .into(),
            );
        }
        tracing::info!(timeout = ?clock.limit, "query_timeout: cancelling the request");
        clock.cancel();
        Some(Pumped::Cancel)
    }

    /// Where the next client message to scan starts in the client's
    /// buffer, when the link is at a message start (none is half-scanned
    /// or waiting for its rewrite).
    fn message_start(&self) -> Option<usize> {
        (self.client_scan.at_boundary() && !self.c_hold && !self.c_head).then_some(self.c_ready)
    }

    /// Replies and the proxy's own answers still owed to the client are at
    /// their bound: the client is not read until it reads. Forwarded
    /// messages meet the server's backpressure, but answers the proxy gives
    /// itself (CloseComplete, ParseComplete) and the queue of replies owed
    /// would otherwise grow with every message of a client that never reads.
    fn owes_too_much(&self) -> bool {
        self.expect.len() >= MAX_OWED || self.s_synth.len() >= MAX_ANSWER_BYTES
    }

    /// Everything forwarded, nothing owed, no message half-sent either way.
    pub(super) fn at_rest(&self) -> bool {
        self.c_ready == 0
            && self.s_ready == 0
            && self.c_synth.is_empty()
            && self.s_synth.is_empty()
            && !self.c_hold
            && !self.c_head
            && !self.s_drop
            && self.expect.is_empty()
            && self.client_scan.at_boundary()
            && self.server_scan.at_boundary()
    }

    /// Moves bytes both ways until the attachment ends or the client must be
    /// pinned (then the relay pins it and calls again with the same link).
    /// `retired`: the wait for the retirement of the server's node
    /// incarnation, which the session keeps from one transaction to the next.
    pub(super) async fn pump(
        &mut self,
        cx: &mut LinkCtx<'_>,
        server: &mut ServerConn,
        mut retired: Pin<&mut Cancelled>,
    ) -> Pumped {
        let session_mode = self.session_mode;
        if let Err(p) = self.settle(cx, server) {
            return p;
        }
        // Made once per call, not per turn of the loop: polling it registers
        // the task (two atomics when its waker is unchanged).
        let kill = cx.info.killed();
        tokio::pin!(kill);
        loop {
            if self.since_yield >= YIELD_EVERY {
                self.since_yield = 0;
                tokio::task::yield_now().await;
            }
            if self.terminated && self.c_ready == 0 && self.c_synth.is_empty() {
                return End::ClientGone.into();
            }
            // Under TLS the last reply may still sit in the client's session:
            // it must be on the wire before the client is left waiting idle.
            if self.moved
                && self.at_rest()
                && self.txn.idle()
                && server.buf().is_empty()
                && !cx.client.stream.wants_flush()
            {
                cx.pool.stats().add(&mut self.meter.tally);
                // Both buffers are empty or nearly: one that a large
                // message grew is given up now, not kept for the
                // connection's life (a session-mode link may run for hours).
                server.shrink_buf();
                buffer::forget_if_grown(&mut cx.client.buf);
                if !session_mode && !cx.pinned {
                    return End::Released.into();
                }
                if cx.shutdown.is_cancelled() {
                    return End::Shutdown.into();
                }
            }
            match self.write_now(cx, server) {
                Some(Ok(())) => {
                    if let Err(p) = self.settle(cx, server) {
                        return p;
                    }
                    continue;
                }
                Some(Err(end)) => return end.into(),
                None => {}
            }
            let rewrite = self.rewrite;
            let room = cx
                .client
                .room_needed(self.message_start(), |t, len| held_whole(t, len, rewrite));
            let (c_ready, s_ready) = (self.c_ready, self.s_ready);
            // Only a client sitting in an open transaction is timed: the
            // timer (and its clock read) costs nothing elsewhere.
            let idle_limit = self.idle_transaction.filter(|_| {
                self.idle_in_transaction(cx.client.buf.is_empty(), server.buf().is_empty())
            });
            let client = &mut *cx.client;
            let (mut c_rd, mut c_wr) = client.stream.split();
            let (s_stream, s_buf) = server.stream_and_buf_mut();
            let (mut s_rd, mut s_wr) = s_stream.split();
            let c_buf = &mut client.buf;
            let (c_synth, s_synth) = (&self.c_synth, &self.s_synth);
            let owing = self.owes_too_much();
            let (budget, room_wait) = (cx.budget, self.room_wait);
            // Each direction either reads (nothing pending) or writes what is
            // pending, so neither side can stall the other: no proxy deadlock
            // when both peers write at once. Before it reads, a direction
            // flushes what a TLS session still holds (never so in plaintext).
            // read_buf, write and flush are cancel safe.
            let up = async {
                if !c_synth.is_empty() {
                    Dir::Wrote(s_wr.write(c_synth).await)
                } else if c_ready > 0 {
                    Dir::Wrote(s_wr.write(&c_buf[..c_ready]).await)
                } else if s_wr.wants_flush() {
                    Dir::Flushed(s_wr.flush().await)
                } else if owing {
                    // Read on once the client has taken some of what it is owed.
                    std::future::pending().await
                } else if let Some(len) = room {
                    // Rare (a large message), and its future, with a timer
                    // inside, is large: boxed, so the futures this select
                    // moves into place at every turn stay small.
                    Dir::Room(Box::pin(budget.reserve(len, room_wait)).await)
                } else {
                    reserve(c_buf);
                    Dir::Read(c_rd.read_buf(c_buf).await)
                }
            };
            let down = async {
                if !s_synth.is_empty() {
                    Dir::Wrote(c_wr.write(s_synth).await)
                } else if s_ready > 0 {
                    Dir::Wrote(c_wr.write(&s_buf[..s_ready]).await)
                } else if c_wr.wants_flush() {
                    Dir::Flushed(c_wr.flush().await)
                } else {
                    reserve(s_buf);
                    Dir::Read(s_rd.read_buf(s_buf).await)
                }
            };
            let shutdown = cx.shutdown.cancelled();
            let wait_shutdown = (session_mode || cx.pinned) && !cx.shutdown.is_cancelled();
            let query_deadline = match &mut self.query_timeout {
                Some(clock) => clock.deadline(self.txn.pending),
                None => None,
            };
            // One timer for both limits (a timer is the largest of the
            // futures below, which the select moves into place every turn).
            let idle_at = idle_limit.map(|limit| tokio::time::Instant::now() + limit);
            let expired = async move {
                match first_timer(query_deadline, idle_at) {
                    Some((at, timer)) => {
                        tokio::time::sleep_until(at).await;
                        timer
                    }
                    None => std::future::pending().await,
                }
            };
            // Biased: polled in this order, with no random start (a
            // thread-local generator and a modulo per branch at every
            // turn). The control branches are atomic loads and go first, so
            // a kill or a deadline is seen even while a peer keeps a
            // direction busy; then the server's replies, then the client's
            // requests, which PostgreSQL would queue behind those replies.
            tokio::select! {
                biased;
                _ = &mut kill => return End::Killed.into(),
                _ = retired.as_mut() => return End::ServerLost("the node's connections were closed by the health monitor".into()).into(),
                timer = expired => match timer {
                    Timer::Idle => return End::IdleInTransaction.into(),
                    Timer::Query => if let Some(p) = self.query_expired() { return p },
                },
                _ = shutdown, if wait_shutdown => {}
                d = down => match d {
                    Dir::Read(Ok(0)) => return End::ServerLost("server closed the connection".into()).into(),
                    Dir::Read(Err(e)) => return End::ServerLost(e.to_string()).into(),
                    Dir::Read(Ok(n)) => self.since_yield += n,
                    Dir::Wrote(Ok(n)) => self.sent_down(server.buf_mut(), n),
                    Dir::Wrote(Err(_)) | Dir::Flushed(Err(_)) => return End::ClientGone.into(),
                    Dir::Flushed(Ok(())) | Dir::Room(_) => {}
                },
                d = up => match d {
                    Dir::Read(Ok(0)) | Dir::Read(Err(_)) => return End::ClientGone.into(),
                    Dir::Read(Ok(n)) => self.since_yield += n,
                    Dir::Wrote(Ok(n)) => self.sent_up(&mut cx.client.buf, n),
                    Dir::Wrote(Err(e)) | Dir::Flushed(Err(e)) => return End::ServerLost(e.to_string()).into(),
                    Dir::Flushed(Ok(())) => {}
                    Dir::Room(Ok(grant)) => cx.client.grant = Some(Box::new(grant)),
                    Dir::Room(Err(_)) => {
                        let max = self.max_memory;
                        return End::ClientError(Box::new(ClientError::OutOfMemory { max, fatal: true })).into();
                    }
                },
            }
            if let Err(p) = self.settle(cx, server) {
                return p;
            }
        }
    }

    /// Writes what is ready for the server, else for the client, if its
    /// socket takes it at once: the request a client just sent, and the
    /// reply to it, go out without a `select!` built and polled for a write
    /// that does not wait (PgBouncer too sends as soon as it has read).
    /// `None`: nothing went, and the select below writes or waits as usual.
    fn write_now(
        &mut self,
        cx: &mut LinkCtx<'_>,
        server: &mut ServerConn,
    ) -> Option<Result<(), End>> {
        let up: &[u8] = match self.c_synth.is_empty() {
            false => &self.c_synth,
            true => &cx.client.buf[..self.c_ready],
        };
        if !up.is_empty() {
            match server.stream().write_now(up)? {
                Ok(n) => self.sent_up(&mut cx.client.buf, n),
                Err(e) => return Some(Err(End::ServerLost(e.to_string()))),
            }
            return Some(Ok(()));
        }
        let down: &[u8] = match self.s_synth.is_empty() {
            false => &self.s_synth,
            true => &server.buf()[..self.s_ready],
        };
        if down.is_empty() {
            return None;
        }
        match cx.client.stream.write_now(down)? {
            Ok(n) => self.sent_down(server.buf_mut(), n),
            Err(_) => return Some(Err(End::ClientGone)),
        }
        Some(Ok(()))
    }

    /// Copies the scanned client bytes behind the pending synthesized ones
    /// (small messages: a copy is cheaper than a second write).
    fn move_ready_to_synth(&mut self, client_buf: &mut BytesMut) {
        if self.c_ready > 0 {
            synth(&mut self.c_synth).extend_from_slice(&client_buf[..self.c_ready]);
            consume(client_buf, self.c_ready);
            self.c_ready = 0;
        }
    }

    fn sent_up(&mut self, client_buf: &mut BytesMut, n: usize) {
        self.moved = true;
        self.meter.bytes(true, n);
        if self.c_synth.is_empty() {
            consume(client_buf, n);
            self.c_ready -= n;
        } else {
            consume(&mut self.c_synth, n);
        }
    }

    fn sent_down(&mut self, server_buf: &mut BytesMut, n: usize) {
        self.moved = true;
        if self.s_synth.is_empty() {
            consume(server_buf, n);
            self.s_ready -= n;
        } else {
            consume(&mut self.s_synth, n);
        }
    }

    /// Scans what arrived and does every rewrite, drop and answer that is due.
    /// Returns early when the client must be pinned; calling again resumes.
    /// Half the calls (those after a write that emptied a buffer) find
    /// nothing to do: they return here, without the frame of the whole
    /// settle (its set-up was 56 instructions a call).
    #[inline]
    fn settle(&mut self, cx: &mut LinkCtx<'_>, server: &mut ServerConn) -> Result<(), Pumped> {
        if self.settled(cx.client.buf.len(), server.buf().len()) {
            return Ok(());
        }
        self.settle_all(cx, server)
    }

    /// Whether [`Link::settle_all`] would find nothing to do, given the
    /// lengths of the client's and the server's buffers: no unscanned byte
    /// either way, nothing held, moved, answered, dropped or reported.
    fn settled(&self, client_len: usize, server_len: usize) -> bool {
        client_len == self.c_ready
            && server_len == self.s_ready
            && !(self.c_hold || self.c_head || self.s_drop || self.forgot_statements)
            && (self.c_ready == 0 || self.c_synth.is_empty())
            && (self.s_ready != 0 || !self.expect.answer_due())
            && self.s_fatal.is_none()
            && self.pin_reason.is_none()
    }

    #[inline(never)]
    fn settle_all(&mut self, cx: &mut LinkCtx<'_>, server: &mut ServerConn) -> Result<(), Pumped> {
        let max = self.max_message_size;
        loop {
            // A side with no unscanned byte has nothing to scan: settle runs
            // after every read and write, and most of them bring bytes from
            // one side only.
            if !self.c_hold && !self.c_head && cx.client.buf.len() > self.c_ready {
                self.scan_client(&cx.client.buf, max).map_err(|e| {
                    End::ClientError(Box::new(ClientError::Protocol(e.to_string())))
                })?;
            }
            if self.c_hold {
                // Scanned bytes before the rewritten message join the
                // rewritten bytes, so the batch still goes out in one write.
                self.move_ready_to_synth(&mut cx.client.buf);
                self.rewrite_front(cx, server);
                continue;
            }
            if self.c_head {
                self.move_ready_to_synth(&mut cx.client.buf);
                if self.rewrite_bind_head(cx, server) {
                    continue;
                }
            }
            if !self.c_synth.is_empty() {
                self.move_ready_to_synth(&mut cx.client.buf);
            }
            if self.s_ready == 0 {
                while let Some(tag) = self.expect.take_answer() {
                    put_frame(&mut self.s_synth, tag, b"");
                    self.meter.bytes(false, HEADER_LEN);
                }
            }
            if !self.s_drop && self.s_fatal.is_none() && server.buf().len() > self.s_ready {
                let forgotten = self
                    .scan_server(server.buf(), cx.latencies, cx.errors)
                    .map_err(|e| End::ServerLost(e.to_string()))?;
                forget(cx, server, forgotten);
                if self.meter.take_ended() {
                    // Before the answer goes: see `Meter::take_ended`.
                    cx.pool.stats().add(&mut self.meter.tally);
                }
                if !self.reported.is_empty() {
                    for (k, v) in self.reported.drain(..) {
                        set_param(server.params_mut(), k, v);
                    }
                }
            }
            if std::mem::take(&mut self.forgot_statements) {
                // The server dropped them as it ran the statement; on
                // PostgreSQL the client's names would be gone as well.
                server.statements_mut().clear();
                cx.stmts.clear();
            }
            if let Some(why) = self.pin_reason.take() {
                if !cx.pinned {
                    return Err(Pumped::Pin(why));
                }
            }
            if self.s_ready == 0 && self.s_synth.is_empty() {
                // Everything before the FATAL is with the client now.
                if let Some(why) = self.s_fatal.take() {
                    return Err(End::ServerLost(why).into());
                }
            }
            if self.s_drop && self.s_ready == 0 {
                if let Ok(Some(len)) = frame_len(server.buf(), MAX_SERVER_MESSAGE) {
                    let tag = server.buf()[0];
                    server.buf_mut().advance(len);
                    self.s_drop = false;
                    if let Some(err) = self.expect.refusal().filter(|_| tag == b'E') {
                        self.s_synth.extend_from_slice(err);
                        self.meter.bytes(false, err.len());
                        cx.errors.add("53400");
                    }
                    let forgotten = self.expect.on_server(tag);
                    forget(cx, server, forgotten);
                    continue;
                }
            }
            return Ok(());
        }
    }

    fn scan_client(&mut self, buf: &[u8], max: usize) -> Result<(), FrameError> {
        let rewrite = self.rewrite;
        let (txn, expect, terminated, hold, pin, meter) = (
            &mut self.txn,
            &mut self.expect,
            &mut self.terminated,
            &mut self.c_hold,
            &mut self.pin_reason,
            &mut self.meter,
        );
        let (changed, custom, forgot) = (
            &mut self.settings_changed,
            &mut self.custom,
            &mut self.forgot_statements,
        );
        let head = &mut self.c_head;
        let parses = &mut self.parses;
        let policy = |t: u8, len: usize| match held_whole(t, len, rewrite) {
            false => Hold::Stream,
            true if len > max => Hold::TooLarge,
            true => Hold::Whole,
        };
        let n = self
            .client_scan
            .scan(&buf[self.c_ready..], MAX_FRAME, policy, |tag, frame| {
                if tag == b'X' {
                    *terminated = true;
                    return Visit::Stop;
                }
                if rewrite && tag == b'B' && frame.is_none() {
                    *head = true;
                    return Visit::Stop;
                }
                if rewrite {
                    if let Some(f) = frame.filter(|_| tag != b'Q') {
                        if names_statement(tag, f) {
                            *hold = true;
                            return Visit::Stop;
                        }
                    }
                }
                match (tag, plain_sent(tag, frame)) {
                    (_, Some(sent)) => expect.push(Expect::Forward(sent)),
                    (b'c' | b'f', None) => expect.push(Expect::CopyEnd),
                    _ => {}
                }
                meter.client_message(tag);
                if tag == b'P' {
                    meter.server_parse();
                }
                if matches!(tag, b'Q' | b'S' | b'F') {
                    meter.request(txn.pending);
                }
                txn.on_client(tag);
                if let (b'Q', Some(body)) = (tag, frame.and_then(|f| f.get(5..))) {
                    if rewrite {
                        let e = effects(body);
                        txn.commit_in_flight |= e.commits;
                        *forgot |= e.forgets_statements;
                        note(pin, changed, custom, e, body);
                    } else {
                        txn.commit_in_flight |= super::lost::commits(body);
                    }
                }
                // Decoded only for a Parse: a tuple of the three would
                // decode every message.
                if let (b'P', true, Some(f)) = (tag, rewrite, frame) {
                    if let Some(e) = parses.effects(f) {
                        // The text again only for the names a SET gives
                        // (rare): `note` reads it for nothing else.
                        let text = match e.settings {
                            true => decode_parse(f).map_or(&b""[..], |p| p.query),
                            false => b"",
                        };
                        note(pin, changed, custom, e, text);
                    }
                }
                Visit::Forward
            })?;
        self.c_ready += n;
        Ok(())
    }

    fn scan_server(
        &mut self,
        buf: &[u8],
        latencies: &Latencies,
        errors: &ErrorCounts,
    ) -> Result<Forgotten, FrameError> {
        let (txn, expect, drop) = (&mut self.txn, &mut self.expect, &mut self.s_drop);
        let fatal = &mut self.s_fatal;
        let clock = &mut self.query_timeout;
        let meter = &mut self.meter;
        let reported = &mut self.reported;
        let mut forgotten = Forgotten::default();
        let n = self.server_scan.scan(
            &buf[self.s_ready..],
            MAX_SERVER_MESSAGE,
            // ErrorResponses are held whole for their SQLSTATE (the error metrics).
            |t, len| whole_if(matches!(t, b'Z' | b'S' | b'E') && len <= MAX_SERVER_HELD),
            |tag, frame| {
                if expect.answer_due() {
                    return Visit::Stop;
                }
                // A row completes nothing, is never dropped and reports
                // nothing: the checks below are for the other messages
                // (and a large result is mostly rows).
                if tag == b'D' {
                    return Visit::Forward;
                }
                let error = frame
                    .filter(|_| tag == b'E')
                    .and_then(|f| error_response::decode(f.get(5..)?));
                if let Some(e) = error.as_ref().filter(|e| e.ends_session()) {
                    *fatal = Some(format!(
                        "the server ended the session: {} {}",
                        e.code, e.message
                    ));
                    return Visit::Stop;
                }
                if expect.verdict(tag) == Verdict::Drop {
                    *drop = true;
                    return Visit::Stop;
                }
                let ignored = expect.learn(tag, &mut forgotten);
                txn.pending = txn.pending.saturating_sub(ignored);
                if let (b'Z', Some(&status)) = (tag, frame.and_then(|f| f.get(5))) {
                    if let Some(clock) = clock.as_mut() {
                        clock.answered();
                    }
                    txn.on_ready(status);
                    meter.ready(txn.pending, status, latencies);
                }
                if let Some(e) = &error {
                    errors.add_server(&e.code);
                }
                if tag == b'S' {
                    if let Some(kv) = frame.and_then(|f| decode_parameter_status(f.get(5..)?)) {
                        reported.push(kv);
                    }
                }
                Visit::Forward
            },
        )?;
        self.s_ready += n;
        self.meter.bytes(false, n);
        Ok(forgotten)
    }

    /// Rewrites the head of the large Bind at the front of the client
    /// buffer once its portal and statement names have arrived, and lets
    /// its body stream. False: more bytes are needed first.
    fn rewrite_bind_head(&mut self, cx: &mut LinkCtx<'_>, server: &mut ServerConn) -> bool {
        let buf = &cx.client.buf;
        let Ok(Some((_, len))) = header(buf, MAX_FRAME) else {
            return false;
        };
        let seen = &buf[..buf.len().min(len + 1)];
        let names = decode_bind_statement(seen).map(|(p, n, _)| (p.to_vec(), n.to_vec()));
        if names.is_none() && seen.len() < (len + 1).min(MAX_HELD_BIND) {
            return false;
        }
        self.c_head = false;
        self.moved = true;
        self.txn.on_client(b'B');
        self.meter.client_message(b'B');
        let mut up = self.upstream(server);
        let rewritten = names.as_ref().and_then(|(portal, name)| {
            let effects = up.bind_head(portal, name, len, cx.stmts)?;
            Some((effects, HEADER_LEN + portal.len() + name.len() + 2))
        });
        let parses = up.parses;
        for _ in 0..parses {
            self.meter.server_parse();
        }
        match rewritten {
            Some((effects, head)) => {
                cx.client.buf.advance(head);
                self.client_scan.continue_body(len + 1 - head);
                self.note(effects, b"");
            }
            // Not a statement the proxy knows (or no names within reach):
            // it goes as sent, and PostgreSQL answers it.
            None => {
                self.expect.push(Expect::Forward(Sent::Bind));
                self.client_scan.continue_body(len + 1);
            }
        }
        true
    }

    /// Rewrites the statement-naming message at the front of the client buffer.
    fn rewrite_front(&mut self, cx: &mut LinkCtx<'_>, server: &mut ServerConn) {
        self.c_hold = false;
        let Ok(Some(len)) = frame_len(&cx.client.buf, self.max_message_size) else {
            return;
        };
        // Read in place, then consumed: splitting it off would make the
        // client's buffer shared (an allocation) on every rewritten message.
        let frame = &cx.client.buf[..len];
        self.moved = true;
        let tag = frame[0];
        self.txn.on_client(tag);
        self.meter.client_message(tag);
        let mut up = self.upstream(server);
        let effects = up.rewrite(frame, cx.stmts);
        for _ in 0..up.parses {
            self.meter.server_parse();
        }
        // Only a Parse carries SQL text (a Bind would decode as nonsense).
        let text = match tag {
            b'P' => decode_parse(frame).map_or(&b""[..], |p| p.query),
            _ => &b""[..],
        };
        self.note(effects, text);
        cx.client.buf.advance(len);
    }
}

impl Link {
    /// Where a rewrite of a client message to `server` writes its bytes
    /// and the replies it owes.
    fn upstream<'a>(&'a mut self, server: &'a mut ServerConn) -> Upstream<'a> {
        Upstream {
            held: server.statements_mut(),
            max_prepared: self.max_prepared,
            out: synth(&mut self.c_synth),
            expect: &mut self.expect,
            parses: 0,
        }
    }
}

/// What a message forwarded unchanged will be answered with.
fn plain_sent(tag: u8, frame: Option<&[u8]>) -> Option<Sent> {
    Some(match tag {
        b'P' => Sent::Parse {
            server: None,
            client: None,
        },
        b'B' => Sent::Bind,
        b'D' if frame
            .and_then(decode_target)
            .is_some_and(|(k, _)| k == b'S') =>
        {
            Sent::DescribeStatement
        }
        b'D' => Sent::DescribePortal,
        b'E' => Sent::Execute,
        b'C' => Sent::Close,
        b'S' => Sent::Sync,
        b'Q' | b'F' => Sent::Query,
        _ => return None,
    })
}

/// Applies statements that turned out not to exist, and those a server accepted.
fn forget(cx: &mut LinkCtx<'_>, server: &mut ServerConn, f: Forgotten) {
    if f.is_empty() {
        return;
    }
    for name in f.server {
        server.statements_mut().remove(&name);
    }
    for name in f.client {
        cx.stmts.remove(&name);
    }
    for name in f.confirmed {
        cx.pool.learn_statement(name);
    }
}

/// Records `name = value`, replacing an earlier value (so a long pinned
/// Sets `name = value` in the server's ParameterStatus list (names ignore case).
fn set_param(params: &mut Vec<(String, String)>, name: String, value: String) {
    match params
        .iter_mut()
        .find(|(k, _)| k.eq_ignore_ascii_case(&name))
    {
        Some(slot) => slot.1 = value,
        None => params.push((name, value)),
    }
}

/// Most custom setting names one attachment remembers for the read-back.
const MAX_CUSTOM: usize = 64;

/// Records `effects` of a statement whose text is `text`: the first pin
/// reason, and whether (and which custom) settings may have changed.
fn note(
    pin: &mut Option<&'static str>,
    changed: &mut bool,
    custom: &mut Vec<String>,
    effects: Effects,
    text: &[u8],
) {
    if pin.is_none() {
        *pin = effects.pin;
    }
    if effects.settings {
        *changed = true;
        for name in custom_names(text) {
            if custom.len() < MAX_CUSTOM && !custom.contains(&name) {
                custom.push(name);
            }
        }
    }
}

/// Bytes the proxy writes itself (rewritten, injected or answered). The
/// session keeps the buffer from one link to the next while it is small
/// and empty ([`Spare`]): a link rewriting a Bind per transaction allocates
/// nothing and takes nothing from a stock.
#[derive(Default)]
struct Synth(BytesMut);

impl std::ops::Deref for Synth {
    type Target = BytesMut;
    fn deref(&self) -> &BytesMut {
        &self.0
    }
}

impl std::ops::DerefMut for Synth {
    fn deref_mut(&mut self) -> &mut BytesMut {
        &mut self.0
    }
}

/// A new synthesized buffer's room: a rewritten Bind with the Execute and
/// Sync behind it, a few answers.
const SYNTH_SIZE: usize = 256;

/// The largest synthesized buffer a session keeps between links: an idle
/// session holds it, so one a large rewrite grew is freed instead.
const SYNTH_KEEP: usize = 1024;

impl Synth {
    /// What the session keeps of it after a link: the buffer if it is empty
    /// and small, else nothing (a link that ended mid-message drops what it
    /// held).
    fn kept(self) -> Synth {
        match self.0.is_empty() && self.0.capacity() <= SYNTH_KEEP {
            true => self,
            false => Synth::default(),
        }
    }
}

/// `buf`, with room if it has none yet.
fn synth(buf: &mut Synth) -> &mut BytesMut {
    if buf.0.capacity() == 0 {
        buf.0 = BytesMut::with_capacity(SYNTH_SIZE);
    }
    &mut buf.0
}

/// Drops the first `n` bytes of `buf`. All of them (the usual case, a
/// whole request or reply written at once) leaves the buffer's start where
/// it was, so its whole capacity is there for the next read with no
/// reclaim, and giving it back to the stock finds nothing to move.
fn consume(buf: &mut BytesMut, n: usize) {
    if n == buf.len() {
        buf.clear();
    } else {
        buf.advance(n);
    }
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(32 * 1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parse_memo_gives_what_a_scan_gives() {
        let long_set = format!("SET search_path = {}", "a".repeat(MEMO_MAX));
        let parse = |text: &[u8], types: &[u8]| {
            let mut f = BytesMut::new();
            let body = [b"\0", text, b"\0", types].concat();
            crate::protocol::frame::put_frame(&mut f, b'P', &body);
            f.to_vec()
        };
        let one_int4 = b"\0\x01\0\0\0\x17";
        let frames = [
            parse(b"SELECT 1", b"\0\0"),
            parse(b"SELECT 1", b"\0\0"),
            parse(b"SELECT $1", one_int4),
            parse(b"SET statement_timeout = 5", b"\0\0"),
            parse(b"SET statement_timeout = 5", b"\0\0"),
            parse(long_set.as_bytes(), b"\0\0"),
            parse(b"", b"\0\0"),
            parse(long_set.as_bytes(), b"\0\0"),
            parse(b"SELECT pg_advisory_lock($1)", one_int4),
            parse(b"SELECT pg_advisory_lock($1)", one_int4),
        ];
        let mut memo = ParseMemo::default();
        for f in &frames {
            let text = decode_parse(f).unwrap().query;
            let shown = String::from_utf8_lossy(&text[..text.len().min(40)]).into_owned();
            assert_eq!(memo.effects(f), Some(effects(text)), "{shown}");
            assert!(memo.body.len() <= MEMO_MAX, "{shown}");
        }
        // What does not decode has no effects, and leaves the memo as it was.
        for bad in [&b"P\0\0\0\x04"[..], b"P\0\0\0\x06\0S", b"P"] {
            assert_eq!(memo.effects(bad), None, "{bad:?}");
        }
        let last = &frames[frames.len() - 1];
        assert_eq!(memo.body.as_slice(), &last[5..]);
    }

    #[test]
    fn the_earlier_deadline_is_waited_for_the_request_first_on_a_tie() {
        let t0 = tokio::time::Instant::now();
        let (early, late) = (t0, t0 + std::time::Duration::from_secs(1));
        let cases = [
            (None, None, None),
            (Some(early), None, Some((early, Timer::Query))),
            (None, Some(early), Some((early, Timer::Idle))),
            (Some(early), Some(late), Some((early, Timer::Query))),
            (Some(late), Some(early), Some((early, Timer::Idle))),
            (Some(early), Some(early), Some((early, Timer::Query))),
        ];
        for (query, idle, want) in cases {
            assert_eq!(first_timer(query, idle), want, "{query:?} {idle:?}");
        }
    }

    /// `settled` is what lets `settle` skip its work: any state that gives
    /// settle something to do must make it false.
    #[test]
    fn a_link_with_anything_to_settle_is_not_settled() {
        type Change = fn(&mut Link);
        let cases: [(&str, usize, usize, Change); 11] = [
            ("unscanned client bytes", 5, 0, |_| {}),
            ("unscanned server bytes", 0, 5, |_| {}),
            ("a client message held for a rewrite", 0, 0, |l| {
                l.c_hold = true
            }),
            ("a Bind head to rewrite", 0, 0, |l| l.c_head = true),
            ("a server message to drop", 0, 0, |l| l.s_drop = true),
            ("statements forgotten", 0, 0, |l| l.forgot_statements = true),
            ("scanned bytes behind rewritten ones", 3, 0, |l| {
                l.c_ready = 3;
                l.c_synth.extend_from_slice(b"x");
            }),
            ("the proxy's answer due", 0, 0, |l| {
                l.expect.push(Expect::Answer(b'1'))
            }),
            ("a FATAL to pass on", 0, 0, |l| {
                l.s_fatal = Some("gone".into())
            }),
            ("a pin", 0, 0, |l| l.pin_reason = Some("why")),
            ("more client bytes than scanned", 4, 0, |l| l.c_ready = 3),
        ];
        assert!(Link::default().settled(0, 0));
        for (what, client_len, server_len, change) in cases {
            let mut link = Link::default();
            change(&mut link);
            assert!(!link.settled(client_len, server_len), "{what}");
        }
        // Scanned bytes waiting to go, and an answer behind server bytes
        // still to forward, are nothing to settle.
        let mut link = Link {
            c_ready: 3,
            s_ready: 2,
            ..Default::default()
        };
        link.expect.push(Expect::Answer(b'1'));
        assert!(link.settled(3, 2));
    }

    #[test]
    fn a_session_keeps_its_synthesized_buffers_only_small_and_empty() {
        let mut spare = Spare::default();
        let mut link = Link::default();
        link.give_back(&mut spare);
        assert_eq!(spare.c_synth.capacity(), 0, "none made, none kept");
        // A rewrite written out whole: the same allocation serves the next.
        synth(&mut link.c_synth).extend_from_slice(b"Bind");
        link.c_synth.clear();
        let at = link.c_synth.as_ptr();
        link.give_back(&mut spare);
        assert_eq!(spare.c_synth.as_ptr(), at);
        std::mem::swap(&mut link.c_synth, &mut spare.c_synth);
        assert_eq!(link.c_synth.as_ptr(), at);
        // Ended mid-message: its bytes are not sent with the next link.
        link.s_synth.extend_from_slice(b"half");
        link.give_back(&mut spare);
        assert!(spare.s_synth.is_empty() && spare.s_synth.capacity() == 0);
        // Grown past what an idle session should hold.
        link.c_synth.reserve(4 * SYNTH_KEEP);
        link.give_back(&mut spare);
        assert_eq!(spare.c_synth.capacity(), 0);
    }
}
