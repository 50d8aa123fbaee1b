//! The proxy's one HTTP client: just enough HTTP/1.1 for a `GET` per
//! connection (`Connection: close`), bodies framed by `Content-Length`,
//! `chunked` or the close. It serves the hardware probes (plain `http://`, or
//! `https://` with the caller's rustls configuration, optionally with an
//! `Authorization` header) and `switchyard healthcheck` (the proxy's own
//! endpoints: plain HTTP). It builds on nothing above the configuration.
//!
//! An [`Authorization`] never appears in `Debug` output or in a
//! [`FetchError`]: it is written into the request and nowhere else.
//!
//! The peer is untrusted: lengths are checked before anything is allocated
//! for them, the head and the body are capped, and nothing indexes or unwraps
//! its bytes. Parsing (the head, chunk framing; the URL is [`HttpUrl`]) is
//! pure and tested apart from the socket; [`get`] and [`status`] only move
//! bytes.

use std::fmt;
use std::io;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::{Buf, BytesMut};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{HttpUrl, Scheme};

/// Largest response head (status line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line accepted (chunk extensions included).
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// TCP connect (or name resolution) failed.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// Reading or writing the connection failed.
    #[error("i/o error: {0}")]
    Io(io::Error),
    /// The server answered, but not with 2xx.
    #[error("HTTP status {status} {reason}")]
    Status {
        /// Status code.
        status: u16,
        /// Reason phrase (cut to a few dozen characters).
        reason: String,
    },
    /// The response does not follow HTTP/1.1.
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
    /// A framing or coding this client does not speak (gzip, ...).
    #[error("unsupported {0}")]
    Unsupported(String),
    /// The head or the body is over its cap.
    #[error("response {what} larger than {max} bytes")]
    TooLarge {
        /// `head` or `body`.
        what: &'static str,
        /// The cap.
        max: usize,
    },
    /// The server closed the connection mid-response.
    #[error("connection closed before the response was complete")]
    Truncated,
    /// An `https://` URL without a TLS configuration to reach it with.
    #[error("https needs the CA that signs the server's certificate")]
    NoTls,
    /// The host is not usable as a TLS server name.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    /// The TLS handshake failed (a certificate not signed by the CA, or not
    /// naming the host, ...).
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
}

/// The `Authorization` a request carries.
#[derive(Clone, PartialEq, Eq)]
pub enum Authorization {
    /// `Bearer <token>`.
    Bearer(String),
    /// `Basic base64(user:password)`.
    Basic {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
}

impl Authorization {
    /// The header's value.
    fn value(&self) -> String {
        match self {
            Authorization::Bearer(token) => format!("Bearer {token}"),
            Authorization::Basic { user, password } => {
                format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
            }
        }
    }
}

// By hand: the credentials must never reach a log line or an error.
impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Authorization::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Authorization::Basic { user, .. } => write!(f, "Basic({user}:<redacted>)"),
        }
    }
}

/// What a request asks for in its `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Prometheus text format 0.0.4: exporters and the proxy's own endpoints.
    PrometheusText,
    /// JSON: a Redfish service, which may refuse (406) a request that
    /// accepts only text.
    Json,
}

impl Accept {
    /// The header's value.
    fn value(self) -> &'static str {
        match self {
            // Asking for the 0.0.4 text format keeps exporters that negotiate
            // (client_golang) off OpenMetrics and protobuf.
            Accept::PrometheusText => "text/plain;version=0.0.4",
            Accept::Json => "application/json",
        }
    }
}

/// How a request reaches its server and says who sends it.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// For `https://` URLs: the rustls configuration (which CAs to trust).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Sent as the `Authorization` header.
    pub authorization: Option<Authorization>,
}

/// `GET`s `url` and returns the body of a 2xx answer, at most `max_body` bytes.
/// No timeout of its own: the caller bounds it. Cancel safe in the sense that
/// dropping it only drops the connection.
pub async fn get(url: &HttpUrl, max_body: usize) -> Result<Vec<u8>, FetchError> {
    get_with(url, &Options::default(), max_body).await
}

/// As [`get`], over TLS for an `https://` URL and with the credentials of `options`.
pub async fn get_with(
    url: &HttpUrl,
    options: &Options,
    max_body: usize,
) -> Result<Vec<u8>, FetchError> {
    get_accepting(url, options, Accept::PrometheusText, max_body).await
}

/// As [`get_with`], asking for `accept` rather than Prometheus text.
pub async fn get_accepting(
    url: &HttpUrl,
    options: &Options,
    accept: Accept,
    max_body: usize,
) -> Result<Vec<u8>, FetchError> {
    let tcp = connect(url).await?;
    let request = request(url, options, accept);
    match url.scheme {
        Scheme::Http => fetch_body(tcp, &request, max_body).await,
        Scheme::Https => {
            let tls = handshake(tcp, url, options).await?;
            fetch_body(tls, &request, max_body).await
        }
    }
}

/// `GET`s `url` and returns the status code of the answer, whatever it is;
/// the body is left unread. Plain HTTP only; no timeout of its own, as [`get`].
pub async fn status(url: &HttpUrl) -> Result<u16, FetchError> {
    if url.scheme == Scheme::Https {
        return Err(FetchError::NoTls);
    }
    let mut tcp = connect(url).await?;
    // No byte of the body is read, so no length is too large for it.
    let (_, head) = send(&mut tcp, url, &Options::default(), usize::MAX).await?;
    Ok(head.status)
}

/// `POST`s `body` to `url` with the credentials of `options` and the extra
/// `headers`, and returns the answer's status code, whatever it is (the
/// body is left unread). No timeout of its own, as [`get`].
pub async fn post(
    url: &HttpUrl,
    options: &Options,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<u16, FetchError> {
    let mut request = post_head(url, options, headers, body.len()).into_bytes();
    request.extend_from_slice(body);
    let tcp = connect(url).await?;
    // Nothing of the answer's body is read: no length is too large for it.
    let head = match url.scheme {
        Scheme::Http => send_request(&mut { tcp }, &request, usize::MAX).await?.1,
        Scheme::Https => {
            let mut tls = handshake(tcp, url, options).await?;
            send_request(&mut tls, &request, usize::MAX).await?.1
        }
    };
    Ok(head.status)
}

/// A `POST` request head for a body of `len` bytes.
fn post_head(url: &HttpUrl, options: &Options, headers: &[(&str, String)], len: usize) -> String {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: switchyard\r\n\
         Content-Length: {len}\r\nConnection: close\r\n",
        url.path, url.authority
    );
    if let Some(a) = &options.authorization {
        head.push_str(&format!("Authorization: {}\r\n", a.value()));
    }
    for (name, value) in headers {
        // Header values come from the configuration; a line break in one
        // would start a header of its own.
        let value: String = value
            .chars()
            .filter(|c| !matches!(c, '\r' | '\n'))
            .collect();
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

async fn connect(url: &HttpUrl) -> Result<TcpStream, FetchError> {
    TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(FetchError::Connect)
}

/// TLS over `tcp`, checking the certificate against `options.tls` and the URL's host.
async fn handshake(
    tcp: TcpStream,
    url: &HttpUrl,
    options: &Options,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, FetchError> {
    let config = options.tls.clone().ok_or(FetchError::NoTls)?;
    let name = ServerName::try_from(url.host.clone())
        .map_err(|_| FetchError::ServerName(url.host.clone()))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(FetchError::Handshake)
}

/// Sends `request` on `stream` and reads the body of a 2xx answer.
async fn fetch_body<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &str,
    max_body: usize,
) -> Result<Vec<u8>, FetchError> {
    let (buf, head) = send_request(&mut stream, request.as_bytes(), max_body).await?;
    if !(200..300).contains(&head.status) {
        return Err(FetchError::Status {
            status: head.status,
            reason: head.reason,
        });
    }
    match head.framing {
        Framing::Length(n) => read_length(&mut stream, buf, n).await,
        Framing::Close => read_to_close(&mut stream, buf, max_body).await,
        Framing::Chunked => read_chunked(&mut stream, buf, max_body).await,
    }
}

/// The request head: a `GET` of the URL's path, with the credentials.
fn request(url: &HttpUrl, options: &Options, accept: Accept) -> String {
    let authorization = options
        .authorization
        .as_ref()
        .map(|a| format!("Authorization: {}\r\n", a.value()))
        .unwrap_or_default();
    // No compression: this client decodes none (gzip is refused).
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: switchyard\r\n\
         Accept: {}\r\nAccept-Encoding: identity\r\n\
         {authorization}Connection: close\r\n\r\n",
        url.path,
        url.authority,
        accept.value()
    )
}

/// Sends the request and reads the response head; what is left in the
/// buffer is the start of the body. A `Content-Length` over `max_body` is
/// refused here.
async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    url: &HttpUrl,
    options: &Options,
    max_body: usize,
) -> Result<(BytesMut, Head), FetchError> {
    let request = request(url, options, Accept::PrometheusText);
    send_request(stream, request.as_bytes(), max_body).await
}

/// Sends `request` (head and body, complete) and reads the response head,
/// as [`send`].
async fn send_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    max_body: usize,
) -> Result<(BytesMut, Head), FetchError> {
    stream.write_all(request).await.map_err(FetchError::Io)?;
    stream.flush().await.map_err(FetchError::Io)?;

    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        if let Some(end) = head_end(&buf) {
            let head = parse_head(&buf.split_to(end), max_body)?;
            return Ok((buf, head));
        }
        if buf.len() > MAX_HEAD {
            return Err(FetchError::TooLarge {
                what: "head",
                max: MAX_HEAD,
            });
        }
        if read_more(stream, &mut buf).await? == 0 {
            return Err(FetchError::Truncated);
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<usize, FetchError> {
    // Over TLS, a close without close_notify is an error here, not the end
    // of a body framed by the close: whoever cut the connection could
    // otherwise cut the series that say "failing" off a scrape.
    stream.read_buf(buf).await.map_err(FetchError::Io)
}

async fn read_length<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buf: BytesMut,
    len: usize,
) -> Result<Vec<u8>, FetchError> {
    // `len` was checked against the cap in `parse_head`.
    buf.reserve(len.saturating_sub(buf.len()));
    while buf.len() < len {
        if read_more(stream, &mut buf).await? == 0 {
            return Err(FetchError::Truncated);
        }
    }
    buf.truncate(len);
    Ok(buf.to_vec())
}

async fn read_to_close<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buf: BytesMut,
    max: usize,
) -> Result<Vec<u8>, FetchError> {
    loop {
        if buf.len() > max {
            return Err(FetchError::TooLarge { what: "body", max });
        }
        if read_more(stream, &mut buf).await? == 0 {
            return Ok(buf.to_vec());
        }
    }
}

async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buf: BytesMut,
    max: usize,
) -> Result<Vec<u8>, FetchError> {
    let mut decoder = Chunked::default();
    loop {
        if decoder.feed(&mut buf, max)? {
            return Ok(decoder.body);
        }
        if read_more(stream, &mut buf).await? == 0 {
            return Err(FetchError::Truncated);
        }
    }
}

/// How the body's end is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

/// The parts of a response head this client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    status: u16,
    reason: String,
    framing: Framing,
}

/// Length of the head (through the empty line) if `buf` holds all of it.
/// Lines may end in CRLF or, leniently, LF.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(nl) = buf.get(start..)?.iter().position(|&b| b == b'\n') {
        let line = buf.get(start..start + nl)?;
        start += nl + 1;
        if line.is_empty() || line == b"\r" {
            return Some(start);
        }
    }
    None
}

/// Status line and the framing headers. A `Content-Length` over `max_body`
/// is refused here, before any byte of the body is read.
fn parse_head(head: &[u8], max_body: usize) -> Result<Head, FetchError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.lines();
    let status_line = lines.next().unwrap_or("");
    let malformed = |what: &str| FetchError::Malformed(format!("{what}: {:?}", cut(status_line)));
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(malformed("not an HTTP/1.x status line"));
    }
    let status = parts
        .next()
        .filter(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| malformed("invalid status code"))?;
    let reason = cut(parts.next().unwrap_or("").trim());

    let mut length: Option<usize> = None;
    let mut chunked = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| FetchError::Malformed(format!("header line {:?}", cut(line))))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<usize>()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| FetchError::Malformed(format!("Content-Length {:?}", cut(value))))?;
            if length.is_some_and(|old| old != n) {
                return Err(FetchError::Malformed("conflicting Content-Length".into()));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = transfer_encoding(value)?;
        } else if name.eq_ignore_ascii_case("content-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(FetchError::Unsupported(format!(
                "Content-Encoding {:?}",
                cut(value)
            )));
        }
    }
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length.
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) if n > max_body => {
            return Err(FetchError::TooLarge {
                what: "body",
                max: max_body,
            })
        }
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Close,
    };
    Ok(Head {
        status,
        reason,
        framing,
    })
}

/// Whether the body is chunked; any coding besides `chunked` is refused.
fn transfer_encoding(value: &str) -> Result<bool, FetchError> {
    let codings: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    match codings.as_slice() {
        [] => Ok(false),
        [only] if only.eq_ignore_ascii_case("chunked") => Ok(true),
        _ => Err(FetchError::Unsupported(format!(
            "Transfer-Encoding {:?}",
            cut(value)
        ))),
    }
}

/// Decodes `Transfer-Encoding: chunked` as bytes arrive.
#[derive(Debug, Default)]
struct Chunked {
    state: ChunkState,
    body: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a `hex-size[;ext]` line.
    #[default]
    Size,
    /// This many bytes of chunk data still to come.
    Data(usize),
    /// Expecting the CRLF that ends a chunk's data.
    DataEnd,
    /// After the last (empty) chunk: trailer lines until an empty one.
    Trailer,
    Done,
}

impl Chunked {
    /// Consumes what it can of `buf`, leaving an incomplete line in it.
    /// Returns true once the whole body (and trailers) is in.
    fn feed(&mut self, buf: &mut BytesMut, max: usize) -> Result<bool, FetchError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(false);
                    };
                    let size = chunk_size(&line)?;
                    if size > max.saturating_sub(self.body.len()) {
                        return Err(FetchError::TooLarge { what: "body", max });
                    }
                    self.state = match size {
                        0 => ChunkState::Trailer,
                        n => ChunkState::Data(n),
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(false);
                    }
                    let n = left.min(buf.len());
                    self.body.extend_from_slice(&buf.split_to(n));
                    self.state = match left - n {
                        0 => ChunkState::DataEnd,
                        rest => ChunkState::Data(rest),
                    };
                }
                ChunkState::DataEnd => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(false);
                    };
                    if !line.is_empty() {
                        return Err(FetchError::Malformed(
                            "chunk data longer than its size".into(),
                        ));
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(false);
                    };
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(true),
            }
        }
    }
}

/// Splits one line (without its CRLF or LF) off the front of `buf`, if complete.
fn take_line(buf: &mut BytesMut) -> Result<Option<Vec<u8>>, FetchError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_CHUNK_LINE {
            return Err(FetchError::Malformed("chunk header line too long".into()));
        }
        return Ok(None);
    };
    if nl > MAX_CHUNK_LINE {
        return Err(FetchError::Malformed("chunk header line too long".into()));
    }
    let mut line = buf.split_to(nl).to_vec();
    buf.advance(1);
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

/// `1a3f` or `1a3f;name=value`: the size in hex, extensions ignored.
fn chunk_size(line: &[u8]) -> Result<usize, FetchError> {
    let text = String::from_utf8_lossy(line);
    let hex = text.split(';').next().unwrap_or("").trim();
    let bad = || FetchError::Malformed(format!("chunk size {:?}", cut(&text)));
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    usize::from_str_radix(hex, 16).map_err(|_| bad())
}

/// At most 60 characters of `s`, for messages.
fn cut(s: &str) -> String {
    s.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let max = 1000;
        let parse = |h: &str| parse_head(h.as_bytes(), max);
        let ok = [
            ("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", 200, Framing::Length(12)),
            ("HTTP/1.0 200 OK\n\n", 200, Framing::Close),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                200,
                Framing::Chunked,
            ),
            ("HTTP/1.1 503 Service Unavailable\r\n\r\n", 503, Framing::Close),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\nContent-Encoding: identity\r\n\r\n",
                200,
                Framing::Length(3),
            ),
        ];
        for (h, status, framing) in ok {
            let head = parse(h).unwrap_or_else(|e| panic!("{h:?}: {e}"));
            assert_eq!((head.status, head.framing), (status, framing), "{h:?}");
        }
        assert_eq!(
            parse("HTTP/1.1 503 Service Unavailable\r\n\r\n")
                .unwrap()
                .reason,
            "Service Unavailable"
        );
        let bad = [
            ("SSH-2.0-OpenSSH_9.6\r\n\r\n", "not an HTTP/1.x status line"),
            ("HTTP/1.1 20 OK\r\n\r\n", "invalid status code"),
            ("HTTP/1.1 OK\r\n\r\n", "invalid status code"),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "Content-Length",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                "Content-Length",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "conflicting",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n",
                "larger than 1000",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "unsupported Transfer-Encoding",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n",
                "unsupported Content-Encoding",
            ),
            ("HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "header line"),
        ];
        for (h, needle) in bad {
            let err = parse(h).expect_err(h).to_string();
            assert!(err.contains(needle), "{h:?}: {err}");
        }
    }

    #[test]
    fn requests_ask_for_their_media_type() {
        let url = HttpUrl::parse("http://bmc:8000/redfish/v1").unwrap();
        let options = Options::default();
        let text = request(&url, &options, Accept::PrometheusText);
        assert!(text.starts_with("GET /redfish/v1 HTTP/1.1\r\nHost: bmc:8000\r\n"));
        assert!(
            text.contains("\r\nAccept: text/plain;version=0.0.4\r\n"),
            "{text}"
        );
        let json = request(&url, &options, Accept::Json);
        assert!(json.contains("\r\nAccept: application/json\r\n"), "{json}");
    }

    #[test]
    fn head_end_finds_the_empty_line() {
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody"), Some(25));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\nA: b\n\nbody"), Some(22));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    fn decode(input: &[u8], step: usize, max: usize) -> Result<Option<Vec<u8>>, FetchError> {
        let mut d = Chunked::default();
        let mut buf = BytesMut::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            if d.feed(&mut buf, max)? {
                return Ok(Some(d.body));
            }
        }
        Ok(None)
    }

    #[test]
    fn chunked_bodies_in_any_fragmentation() {
        let wire =
            b"5\r\nhello\r\n7;ext=1\r\n, world\r\nA\r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\n";
        for step in [1, 2, 3, 7, 64, wire.len()] {
            assert_eq!(
                decode(wire, step, 1000).unwrap().as_deref(),
                Some(&b"hello, world0123456789"[..]),
                "step {step}"
            );
        }
        assert_eq!(decode(b"0\r\n\r\n", 1, 10).unwrap(), Some(vec![]));
        assert_eq!(decode(b"5\r\nhel", 1, 10).unwrap(), None);
    }

    #[test]
    fn chunked_errors() {
        let cases: [(&[u8], &str); 6] = [
            (b"zz\r\n", "chunk size"),
            (b"+5\r\nhello\r\n0\r\n\r\n", "chunk size"),
            (b"ffffffffffffffffffffffff\r\n", "chunk size"),
            (b"3\r\nhello\r\n", "longer than its size"),
            (b"800\r\n", "larger than 1000"),
            (&[b'1'; 5000], "too long"),
        ];
        for (wire, needle) in cases {
            let err = decode(wire, 5, 1000).expect_err("must fail").to_string();
            assert!(err.contains(needle), "{err}");
        }
        // The cap counts the whole body, not one chunk.
        let err = decode(b"200\r\n", 1, 1000);
        assert!(err.is_ok());
        let mut wire = b"200\r\n".to_vec();
        wire.extend_from_slice(&[b'x'; 0x200]);
        wire.extend_from_slice(b"\r\n200\r\n");
        let err = decode(&wire, 100, 1000).unwrap_err().to_string();
        assert!(err.contains("larger than 1000"), "{err}");
    }
}
