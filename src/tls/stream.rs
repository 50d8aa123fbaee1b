//! The socket of a client or server connection: plain TCP or TLS over TCP.
//!
//! The relay reads one direction while it writes the other on the same
//! socket, so it needs a split. A plain stream splits into tokio's borrowed
//! halves: no allocation, no lock, exactly the code path of a bare
//! `TcpStream`. A TLS session is one state machine for both directions, so it
//! lives in a `Mutex` (locked only inside a `poll_*` call, never across an
//! `.await`, and never contended: both halves are polled by one task) and
//! both halves borrow it. Unsplit reads and writes reach the session through
//! `Mutex::get_mut`, without locking.
//!
//! A TLS write may leave encrypted bytes in the session when the socket is
//! full; [`WriteHalf::wants_flush`] says so, and whoever stops writing must
//! flush (the relay does it before it waits on reads only).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{tcp, TcpStream};

/// A TLS session over TCP, either side.
pub type TlsStream = tokio_rustls::TlsStream<TcpStream>;

/// A connection's socket.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<Mutex<TlsStream>>),
    /// A TLS upgrade failed midway: the socket is gone and every operation fails.
    Closed,
}

fn lock(m: &Mutex<TlsStream>) -> MutexGuard<'_, TlsStream> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl Stream {
    /// Wraps an established TLS session.
    pub fn tls(s: impl Into<TlsStream>) -> Stream {
        Stream::Tls(Box::new(Mutex::new(s.into())))
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    fn with_tcp<T>(&self, f: impl FnOnce(&TcpStream) -> io::Result<T>) -> io::Result<T> {
        match self {
            Stream::Plain(s) => f(s),
            Stream::Tls(m) => f(lock(m).get_ref().0),
            Stream::Closed => Err(closed()),
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.with_tcp(TcpStream::peer_addr)
    }

    /// Our end's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.with_tcp(TcpStream::local_addr)
    }

    /// The ALPN protocol the TLS handshake agreed on (`None` in plaintext too).
    pub fn alpn_protocol(&self) -> Option<Vec<u8>> {
        match self {
            Stream::Tls(m) => lock(m).get_ref().1.alpn_protocol().map(<[u8]>::to_vec),
            _ => None,
        }
    }

    /// The peer's certificate (DER), leaf only, if it sent one.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        match self {
            Stream::Tls(m) => lock(m)
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec()),
            _ => None,
        }
    }

    /// Borrowed read and write halves that can be polled at once.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::Tls(m) => (ReadHalf::Tls(m), WriteHalf::Tls(m)),
            Stream::Closed => (ReadHalf::Closed, WriteHalf::Closed),
        }
    }

    /// TLS: encrypted bytes wait in the session for a flush.
    pub fn wants_flush(&self) -> bool {
        match self {
            Stream::Tls(m) => lock(m).get_ref().1.wants_write(),
            _ => false,
        }
    }

    /// Answers the TLS handshake a client starts after our `S` to its
    /// SSLRequest. On failure the stream is [`Stream::Closed`]. Not cancel safe.
    pub async fn accept(&mut self, config: Arc<rustls::ServerConfig>) -> io::Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(self, Stream::Closed) else {
            return Err(closed());
        };
        let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
        let tls = super::offload::run(accept).await?;
        *self = Stream::tls(tls);
        Ok(())
    }

    /// Answers a direct TLS handshake (PostgreSQL 17 `sslnegotiation=direct`):
    /// the ClientHello already started arriving in `buf`, which is consumed.
    /// On failure the stream is [`Stream::Closed`]. Not cancel safe.
    pub async fn accept_direct(
        &mut self,
        buf: &mut BytesMut,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<()> {
        let Stream::Plain(tcp) = self else {
            return Err(closed());
        };
        let mut hello = rustls::server::Acceptor::default();
        let accepted = loop {
            let mut pending: &[u8] = buf;
            while !pending.is_empty() {
                if hello.read_tls(&mut pending)? == 0 {
                    break;
                }
            }
            buf.clear();
            match hello.accept() {
                Ok(Some(accepted)) => break accepted,
                Ok(None) => {}
                Err((e, _alert)) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            if tcp.read_buf(buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        let Stream::Plain(tcp) = std::mem::replace(self, Stream::Closed) else {
            return Err(closed());
        };
        let accept = tokio_rustls::StartHandshake::from_parts(accepted, tcp).into_stream(config);
        let tls = super::offload::run(accept).await?;
        *self = Stream::tls(tls);
        Ok(())
    }

    /// True when an idle connection's peer closed or sent something unasked.
    /// The usual answer (socket not readable) costs no system call: the
    /// reactor already knows. Over TLS a readable socket may hold only
    /// handshake leftovers (session tickets): those are consumed, and only
    /// application data, EOF or an error count.
    pub fn is_broken(&self) -> bool {
        // Readiness as the reactor last saw it, read without registering a
        // waiter (a `ready()` future would lock the socket's waiter list
        // twice on every checkout).
        let readable = |tcp: &TcpStream| tcp.try_io(tokio::io::Interest::READABLE, || Ok(()));
        match self {
            // `try_read` makes the system call only when the socket is readable.
            Stream::Plain(tcp) => {
                let mut probe = [0u8; 1];
                !matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Stream::Tls(m) => {
                let mut tls = lock(m);
                match readable(tls.get_ref().0) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                    Err(_) => true,
                    Ok(()) => {
                        let mut cx = Context::from_waker(Waker::noop());
                        let mut probe = [0u8; 1];
                        let mut probe = ReadBuf::new(&mut probe);
                        Pin::new(&mut *tls)
                            .poll_read(&mut cx, &mut probe)
                            .is_ready()
                    }
                }
            }
            Stream::Closed => true,
        }
    }

    /// Writes what a plain socket takes of `bytes` at once (one system
    /// call, no waker registered). `None` when that would block, wrote
    /// nothing, or the stream is TLS: the caller waits as usual.
    pub fn write_now(&self, bytes: &[u8]) -> Option<io::Result<usize>> {
        let Stream::Plain(tcp) = self else {
            return None;
        };
        match super::sys::try_write(tcp, bytes) {
            Ok(0) => None,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            r => Some(r),
        }
    }

    /// Writes `bytes` if the socket takes them at once, without waiting
    /// (a goodbye such as Terminate from a `Drop`).
    pub fn try_write_now(&mut self, bytes: &[u8]) {
        match self {
            Stream::Plain(tcp) => {
                let _ = tcp.try_write(bytes);
            }
            Stream::Tls(m) => {
                let tls = m.get_mut().unwrap_or_else(PoisonError::into_inner);
                let mut cx = Context::from_waker(Waker::noop());
                let mut tls = Pin::new(tls);
                let _ = tls.as_mut().poll_write(&mut cx, bytes);
                let _ = tls.as_mut().poll_flush(&mut cx);
            }
            Stream::Closed => {}
        }
    }
}

macro_rules! each {
    ($self:expr, $s:ident => $e:expr, tls $t:ident => $te:expr) => {
        match $self {
            Stream::Plain($s) => $e,
            Stream::Tls(m) => {
                let $t = m.get_mut().unwrap_or_else(PoisonError::into_inner);
                $te
            }
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => super::sys::poll_read(s, cx, buf), tls t => Pin::new(t).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf), tls t => Pin::new(t).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx), tls t => Pin::new(t).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx), tls t => Pin::new(t).poll_shutdown(cx))
    }
}

/// The reading half of a [`Stream::split`].
pub enum ReadHalf<'a> {
    /// Plain TCP: tokio's borrowed half.
    Plain(tcp::ReadHalf<'a>),
    /// TLS: the shared session.
    Tls(&'a Mutex<TlsStream>),
    /// The stream is closed.
    Closed,
}

/// The writing half of a [`Stream::split`].
pub enum WriteHalf<'a> {
    /// Plain TCP: tokio's borrowed half.
    Plain(tcp::WriteHalf<'a>),
    /// TLS: the shared session.
    Tls(&'a Mutex<TlsStream>),
    /// The stream is closed.
    Closed,
}

impl WriteHalf<'_> {
    /// TLS: encrypted bytes wait in the session for a flush.
    pub fn wants_flush(&self) -> bool {
        match self {
            WriteHalf::Tls(m) => lock(m).get_ref().1.wants_write(),
            _ => false,
        }
    }
}

impl AsyncRead for ReadHalf<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(r) => super::sys::poll_read(r.as_ref(), cx, buf),
            ReadHalf::Tls(m) => Pin::new(&mut *lock(m)).poll_read(cx, buf),
            ReadHalf::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for WriteHalf<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Tls(m) => Pin::new(&mut *lock(m)).poll_write(cx, buf),
            WriteHalf::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Tls(m) => Pin::new(&mut *lock(m)).poll_flush(cx),
            WriteHalf::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Tls(m) => Pin::new(&mut *lock(m)).poll_shutdown(cx),
            WriteHalf::Closed => Poll::Ready(Err(closed())),
        }
    }
}
