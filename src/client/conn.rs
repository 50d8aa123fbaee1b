//! The client's socket (plain or TLS) plus its read buffer, and the few
//! whole-message reads the login phase and the proxy's own answers need.
//! While a server is attached the link uses `stream` and `buf` directly.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::ClientError;
use crate::protocol::frame::MAX_FRAME;
use crate::protocol::messages::startup::{packet_len, StartupError};
use crate::protocol::{buffer, frame_len, Hold, Scanner, Visit};
use crate::sessions::budget::{large_incomplete, FREE_UP_TO};
use crate::tls::Stream;

/// Largest message accepted during authentication.
const MAX_AUTH_MESSAGE: usize = 64 * 1024;

/// A client connection.
pub struct ClientConn {
    /// The socket.
    pub stream: Stream,
    /// Our certificate's tls-server-end-point data once the client is on TLS
    /// (offered for SCRAM-SHA-256-PLUS).
    pub end_point: Option<std::sync::Arc<[u8]>>,
    /// Bytes read but not yet consumed. No allocation while the client
    /// waits idle (see [`ClientConn::fill_when_readable`]).
    pub buf: BytesMut,
    /// Where errors sent to the client are counted.
    pub errors: std::sync::Arc<crate::measure::ErrorCounts>,
    /// Room in `proxy.max_memory` for the large message being read whole
    /// (boxed: rare, and every idle client carries the field).
    pub grant: Option<Box<crate::sessions::budget::Grant>>,
}

/// Why a read during login ended.
#[derive(Debug)]
pub enum ReadError {
    /// The client went away (or sent nothing at all): close quietly.
    Closed,
    /// The client sent something it must be told about before we close.
    Client(ClientError),
}

/// The client closed its socket, a write to it failed, or it broke message
/// framing while the proxy was answering it itself: the session ends with no
/// further word to the client.
#[derive(Debug, thiserror::Error)]
#[error("client connection gone")]
pub struct ClientGone;

impl From<std::io::Error> for ClientGone {
    fn from(_: std::io::Error) -> Self {
        ClientGone
    }
}

impl From<std::io::Error> for ReadError {
    fn from(_: std::io::Error) -> Self {
        ReadError::Closed
    }
}

impl ClientConn {
    /// Wraps an accepted socket.
    pub fn new(
        stream: TcpStream,
        errors: std::sync::Arc<crate::measure::ErrorCounts>,
    ) -> ClientConn {
        let _ = stream.set_nodelay(true);
        ClientConn {
            stream: Stream::Plain(stream),
            end_point: None,
            buf: BytesMut::new(),
            errors,
            grant: None,
        }
    }

    /// The length of the large message to hold whole that starts at
    /// `buf[front..]` (`held` says which are held), if it still needs room
    /// in `proxy.max_memory` before more of it is read. `None` for `front`:
    /// no message starts at a known place. Room taken before goes back
    /// once the buffer is small again, or before another message waits.
    pub fn room_needed(
        &mut self,
        front: Option<usize>,
        held: impl Fn(u8, usize) -> bool,
    ) -> Option<usize> {
        let need = front
            .and_then(|at| self.buf.get(at..))
            .and_then(|b| large_incomplete(b, held));
        match need {
            None if self.buf.len() <= FREE_UP_TO => self.grant = None,
            Some(len) if self.grant.as_ref().is_some_and(|g| g.covers(len)) => return None,
            Some(_) => self.grant = None,
            None => {}
        }
        need
    }

    /// Reads more bytes into `buf`; 0 means the peer closed. Cancel safe.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        make_room(&mut self.buf);
        self.stream.read_buf(&mut self.buf).await
    }

    /// [`ClientConn::fill`] for a client holding no server, which holds no
    /// buffer while it waits: an empty one goes back to the thread's stock
    /// first and is taken again once the socket is readable, so an idle
    /// client costs no buffer memory. Cancel safe. Under TLS the session
    /// may hold decrypted bytes already: a plain `fill`, buffer kept.
    pub async fn fill_when_readable(&mut self) -> std::io::Result<usize> {
        loop {
            if self.buf.is_empty() && self.buf.capacity() > 0 {
                buffer::give(std::mem::take(&mut self.buf));
            }
            let Stream::Plain(s) = &self.stream else {
                return self.fill().await;
            };
            // Not `readable()`: its future holds a waiter entry, and this
            // wait is part of every idle client's task.
            std::future::poll_fn(|cx| s.poll_read_ready(cx)).await?;
            make_room(&mut self.buf);
            // Readiness may be stale (a read that came back full did not
            // show the socket drained): that read clears it, and the buffer
            // goes back before the next wait.
            match crate::tls::sys::try_read_buf(s, &mut self.buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    /// Reads one untagged startup packet, length prefix included.
    pub async fn read_startup(&mut self) -> Result<BytesMut, ReadError> {
        loop {
            match packet_len(&self.buf) {
                Ok(Some(len)) if self.buf.len() >= len => return Ok(self.buf.split_to(len)),
                Ok(_) => {}
                Err(StartupError::BadLength) => {
                    return Err(ReadError::Client(ClientError::Protocol(
                        "invalid length of startup packet".into(),
                    )))
                }
                Err(e) => return Err(ReadError::Client(ClientError::Protocol(e.to_string()))),
            }
            if self.fill().await? == 0 {
                return Err(ReadError::Closed);
            }
        }
    }

    /// Reads one tagged message during authentication and returns its body;
    /// anything but `p` is a protocol violation.
    pub async fn read_password_message(&mut self) -> Result<Vec<u8>, ReadError> {
        loop {
            let len = frame_len(&self.buf, MAX_AUTH_MESSAGE)
                .map_err(|e| ReadError::Client(ClientError::Protocol(e.to_string())))?;
            if let Some(len) = len {
                let mut frame = self.buf.split_to(len);
                if frame[0] != b'p' {
                    return Err(ReadError::Client(ClientError::Protocol(format!(
                        "expected password response, got message type {:?}",
                        frame[0] as char
                    ))));
                }
                frame.advance(5);
                return Ok(frame.to_vec());
            }
            if self.fill().await? == 0 {
                return Err(ReadError::Closed);
            }
        }
    }

    /// Reads and removes one whole message (up to `max` bytes).
    pub async fn read_message(&mut self, max: usize) -> Result<BytesMut, ClientGone> {
        loop {
            if let Some(len) = frame_len(&self.buf, max).map_err(|_| ClientGone)? {
                return Ok(self.buf.split_to(len));
            }
            if !matches!(self.fill().await, Ok(n) if n > 0) {
                return Err(ClientGone);
            }
        }
    }

    /// Drops messages: the first one, or everything up to and including
    /// Sync. Streamed: nothing is held, so any message PostgreSQL would
    /// take is dropped in pieces.
    pub async fn discard(&mut self, through_sync: bool) -> Result<(), ClientGone> {
        let mut scanner = Scanner::default();
        let mut first = true;
        let mut done = false;
        loop {
            let n = scanner
                .scan(
                    &self.buf,
                    MAX_FRAME,
                    |_, _| Hold::Stream,
                    |tag, _| {
                        if done {
                            return Visit::Stop;
                        }
                        done = if through_sync { tag == b'S' } else { first };
                        first = false;
                        Visit::Forward
                    },
                )
                .map_err(|_| ClientGone)?;
            self.buf.advance(n);
            if done && scanner.at_boundary() {
                return Ok(());
            }
            if !matches!(self.fill().await, Ok(n) if n > 0) {
                return Err(ClientGone);
            }
        }
    }

    /// Writes all of `out` and flushes it. Not cancel safe: used outside `select!`.
    pub async fn send(&mut self, out: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(out).await?;
        self.stream.flush().await
    }

    /// Sends an error (FATAL or ERROR as the error says) and, for FATAL, shuts the socket.
    pub async fn send_error(&mut self, err: &ClientError) {
        let mut out = BytesMut::new();
        err.encode(&mut out);
        self.errors.record(err.origin(), err.sqlstate());
        let _ = self.send(&out).await;
        if err.is_fatal() {
            let _ = self.stream.shutdown().await;
        }
    }
}

/// Gives `buf` an allocation (from the thread's stock) or room to read into.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        *buf = buffer::take();
    } else if buf.capacity() - buf.len() < 4096 {
        buf.reserve(buffer::SIZE);
    }
}
