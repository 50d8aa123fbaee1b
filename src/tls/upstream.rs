//! Starting TLS on a new connection to PostgreSQL: SSLRequest, then `S`
//! (handshake) or `N` (plaintext, if the mode allows it), as libpq does.
//! Which certificate is acceptable is the connector's verifier's business
//! (`verify`); what to do when this fails is the caller's (`server::conn`).

use bytes::{BufMut, BytesMut};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Connector, Stream};
use crate::config::ClusterTlsMode;

/// SSLRequest: length 8, code 1234.5679.
const SSL_REQUEST: u32 = 80_877_103;

/// How TLS negotiation with a server ended.
#[derive(Debug)]
pub enum Outcome {
    /// Encrypted, with the tls-server-end-point hash of the server's
    /// certificate for SCRAM-SHA-256-PLUS (`None`: no binding possible).
    Tls(Stream, Option<Vec<u8>>),
    /// Plaintext: the mode is `disable`, or the server said `N` under `prefer`.
    Plain(Stream),
}

/// Why TLS toward a server failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The server does not do TLS and the mode requires it.
    #[error("server does not support TLS (cluster.tls.mode = {0})")]
    Refused(&'static str),
    /// The handshake failed: certificate not trusted, wrong host name, ...
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    /// The node address is not usable as a TLS server name.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    /// Reading or writing the SSLRequest failed, or the answer was neither S nor N.
    #[error("TLS negotiation: {0}")]
    Io(std::io::Error),
}

impl UpstreamError {
    /// Whether `prefer` may retry in plaintext on a new connection (as libpq does).
    pub fn prefer_may_retry(&self) -> bool {
        matches!(self, UpstreamError::Handshake(_))
    }
}

/// Negotiates TLS on `tcp`, freshly connected to `addr` (`host:port`).
/// Not cancel safe (a whole connect is).
pub async fn start(
    mut tcp: TcpStream,
    addr: &str,
    connector: &Connector,
) -> Result<Outcome, UpstreamError> {
    let Some(config) = connector.config() else {
        return Ok(Outcome::Plain(Stream::Plain(tcp)));
    };
    let name = server_name(addr)?;
    let mut req = BytesMut::with_capacity(8);
    req.put_u32(8);
    req.put_u32(SSL_REQUEST);
    tcp.write_all(&req).await.map_err(UpstreamError::Io)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(UpstreamError::Io)?;
    match answer[0] {
        b'S' => {}
        b'N' if connector.mode == ClusterTlsMode::Prefer => {
            return Ok(Outcome::Plain(Stream::Plain(tcp)))
        }
        b'N' => return Err(UpstreamError::Refused(mode_name(connector.mode))),
        other => {
            return Err(UpstreamError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected answer to SSLRequest: {other:#04x}"),
            )))
        }
    }
    let tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(UpstreamError::Handshake)?;
    let stream = Stream::tls(tls);
    let end_point = stream
        .peer_certificate()
        .and_then(|c| super::end_point::hash(&c));
    Ok(Outcome::Tls(stream, end_point))
}

/// The host of `host:port` (IPv6 in brackets) as a TLS server name.
fn server_name(addr: &str) -> Result<ServerName<'static>, UpstreamError> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_string()).map_err(|_| UpstreamError::ServerName(host.into()))
}

fn mode_name(mode: ClusterTlsMode) -> &'static str {
    match mode {
        ClusterTlsMode::Disable => "disable",
        ClusterTlsMode::Prefer => "prefer",
        ClusterTlsMode::Require => "require",
        ClusterTlsMode::VerifyCa => "verify-ca",
        ClusterTlsMode::VerifyFull => "verify-full",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_addresses() {
        assert!(matches!(
            server_name("127.0.0.1:5432"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]:5432"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("db.example.com:5432"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name("bad name:5432").is_err());
    }
}
