//! Sending a CancelRequest to PostgreSQL, and knowing whether it got there:
//! a cancel that may still arrive would hit whatever query the connection
//! runs next, so callers must tell "acted on" from "maybe later".
//!
//! A cancel to a server goes inside TLS when `[cluster.tls]` puts the
//! server's connections in TLS ([`channel`]): SSLRequest, the handshake with
//! the connector's verification, then the CancelRequest. PostgreSQL has
//! always read a CancelRequest after a TLS handshake (its startup code reads
//! "a regular startup packet, cancel, etc." once TLS is up); what PostgreSQL
//! 17 added is libpq sending it that way.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::ClusterTlsMode;
use crate::tls::upstream::{self, Outcome};
use crate::tls::{Connector, Stream};

/// How long connecting (TLS included), and then waiting for the server to
/// close, may each take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a cancel was not seen to be acted on.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// Nothing was sent: the cancel can never arrive.
    #[error("could not connect to send a cancel: {0}")]
    NotSent(io::Error),
    /// Sent, but the server was not seen to close the connection: it may
    /// still act on the cancel.
    #[error("cancel sent but not seen to be acted on: {0}")]
    Unconfirmed(io::Error),
}

impl CancelError {
    /// Whether the cancel may still reach the server's backend.
    pub fn may_arrive(&self) -> bool {
        matches!(self, CancelError::Unconfirmed(_))
    }
}

/// How a cancel travels to its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// In plaintext.
    Plain,
    /// Inside TLS, verified as `[cluster.tls]` says; never in plaintext.
    Tls,
    /// Inside TLS; in plaintext when the server says `N` or the handshake
    /// fails, as the connection itself would (`prefer`).
    TlsElsePlain,
}

/// How a cancel for a server connection travels, from the TLS mode in force
/// and whether that connection is encrypted. A mode that requires TLS
/// requires it for the cancel too (a RELOAD may have made it so after the
/// connection opened); under `prefer` the cancel follows its connection: a
/// server that gave it plaintext carries its queries in plaintext anyway.
pub fn channel(mode: ClusterTlsMode, connection_tls: bool) -> Channel {
    match mode {
        ClusterTlsMode::Disable => Channel::Plain,
        ClusterTlsMode::Prefer if connection_tls => Channel::TlsElsePlain,
        ClusterTlsMode::Prefer => Channel::Plain,
        ClusterTlsMode::Require | ClusterTlsMode::VerifyCa | ClusterTlsMode::VerifyFull => {
            Channel::Tls
        }
    }
}

/// Sends a CancelRequest for `key` to `addr` (a fresh connection, as the
/// protocol requires) over `channel`, with TLS from `tls`. `Ok` once the
/// server has closed that connection: PostgreSQL closes it only after
/// signalling the backend, so nothing of this cancel is left to arrive.
pub async fn send_cancel(
    addr: &str,
    key: (i32, i32),
    channel: Channel,
    tls: &Connector,
) -> Result<(), CancelError> {
    let mut stream = match timeout(CANCEL_TIMEOUT, open(addr, channel, tls)).await {
        Ok(opened) => opened.map_err(CancelError::NotSent)?,
        Err(_) => return Err(CancelError::NotSent(timed_out("connect"))),
    };
    let mut out = BytesMut::new();
    frontend::cancel_request(key.0, key.1, &mut out);
    let sent = async {
        stream.write_all(&out).await?;
        stream.flush().await
    };
    sent.await.map_err(CancelError::Unconfirmed)?;
    let mut sink = [0u8; 16];
    // Under TLS, PostgreSQL's close comes with close_notify, so it reads as
    // 0 too; a bare TCP close does not count: it may be a cut path.
    match timeout(CANCEL_TIMEOUT, stream.read(&mut sink)).await {
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(_)) => Err(CancelError::Unconfirmed(io::Error::new(
            io::ErrorKind::InvalidData,
            "the server answered a cancel request",
        ))),
        Ok(Err(e)) => Err(CancelError::Unconfirmed(e)),
        Err(_) => Err(CancelError::Unconfirmed(timed_out("close"))),
    }
}

/// Sends a CancelRequest in plaintext: to a peer proxy, which takes it as a
/// client's (clients send theirs in plaintext, libpq before 17 always).
pub async fn send_cancel_plain(addr: &str, key: (i32, i32)) -> Result<(), CancelError> {
    send_cancel(addr, key, Channel::Plain, &Connector::disabled()).await
}

/// Connects and, per `channel`, negotiates TLS. Nothing of the cancel is
/// written yet, so any failure here means it was not sent.
async fn open(addr: &str, channel: Channel, tls: &Connector) -> io::Result<Stream> {
    let tcp = TcpStream::connect(addr).await?;
    if channel == Channel::Plain {
        return Ok(Stream::Plain(tcp));
    }
    match upstream::start(tcp, addr, tls).await {
        Ok(Outcome::Tls(stream, _)) | Ok(Outcome::Plain(stream)) => Ok(stream),
        Err(e) if channel == Channel::TlsElsePlain && e.prefer_may_retry() => {
            tracing::warn!(node = addr, error = %e, "TLS failed under cluster.tls.mode = prefer; sending the cancel without TLS");
            Ok(Stream::Plain(TcpStream::connect(addr).await?))
        }
        Err(e) => Err(io::Error::other(e)),
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("cancel {what} timed out"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cancel_is_as_encrypted_as_the_mode_asks() {
        use ClusterTlsMode::*;
        let cases = [
            (Disable, false, Channel::Plain),
            (Disable, true, Channel::Plain),
            (Prefer, false, Channel::Plain),
            (Prefer, true, Channel::TlsElsePlain),
            (Require, false, Channel::Tls),
            (Require, true, Channel::Tls),
            (VerifyCa, true, Channel::Tls),
            (VerifyFull, false, Channel::Tls),
            (VerifyFull, true, Channel::Tls),
        ];
        for (mode, connection_tls, want) in cases {
            assert_eq!(
                channel(mode, connection_tls),
                want,
                "{mode:?} connection_tls={connection_tls}"
            );
        }
    }
}
