//! Sending a CancelRequest to PostgreSQL, and knowing whether it got there:
//! a cancel that may still arrive would hit whatever query the connection
//! runs next, so callers must tell "acted on" from "maybe later".

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long connecting, and then waiting for the server to close, may each take.
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

/// Sends a CancelRequest for `key` to `addr` (a fresh connection, as the
/// protocol requires). `Ok` once the server has closed that connection:
/// PostgreSQL closes it only after signalling the backend, so nothing of
/// this cancel is left to arrive.
pub async fn send_cancel(addr: &str, key: (i32, i32)) -> Result<(), CancelError> {
    let mut out = BytesMut::new();
    frontend::cancel_request(key.0, key.1, &mut out);
    let mut stream = match timeout(CANCEL_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(CancelError::NotSent(e)),
        Err(_) => return Err(CancelError::NotSent(timed_out("connect"))),
    };
    stream
        .write_all(&out)
        .await
        .map_err(CancelError::Unconfirmed)?;
    let mut sink = [0u8; 16];
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

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("cancel {what} timed out"))
}
