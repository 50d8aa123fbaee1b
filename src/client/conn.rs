//! The client's socket (plain or TLS) plus its read buffer, and the few
//! whole-message reads the login phase needs. After login the relay uses
//! `stream` and `buf` directly.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::ClientError;
use crate::protocol::frame_len;
use crate::protocol::messages::startup::{packet_len, StartupError};
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
    /// Bytes read but not yet consumed.
    pub buf: BytesMut,
    /// Where errors sent to the client are counted.
    pub errors: std::sync::Arc<crate::measure::ErrorCounts>,
}

/// Why a read during login ended.
#[derive(Debug)]
pub enum ReadError {
    /// The client went away (or sent nothing at all): close quietly.
    Closed,
    /// The client sent something it must be told about before we close.
    Client(ClientError),
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
            buf: BytesMut::with_capacity(16 * 1024),
            errors,
        }
    }

    /// Reads more bytes into `buf`; 0 means the peer closed. Cancel safe.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        self.stream.read_buf(&mut self.buf).await
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

    /// Writes all of `out` and flushes it. Not cancel safe: used outside `select!`.
    pub async fn send(&mut self, out: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(out).await?;
        self.stream.flush().await
    }

    /// Sends an error (FATAL or ERROR as the error says) and, for FATAL, shuts the socket.
    pub async fn send_error(&mut self, err: &ClientError) {
        let mut out = BytesMut::new();
        err.encode(&mut out);
        self.errors.add(err.sqlstate());
        let _ = self.send(&out).await;
        if err.is_fatal() {
            let _ = self.stream.shutdown().await;
        }
    }
}
