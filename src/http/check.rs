//! `switchyard healthcheck`: one HTTP GET against a proxy's own endpoints
//! (`/healthz`, `/readyz`), so a container image needs no curl for its
//! HEALTHCHECK. Blocking std I/O: it runs in a short-lived process of its own,
//! never inside the proxy. Plain `http://` only; the endpoints have no TLS.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The status line is all we read; a longer first line is not HTTP.
const MAX_STATUS_LINE: usize = 1024;

/// Why no status code came back.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The URL is not `http://host[:port][/path]`.
    #[error("not an http://host:port/path URL: {0}")]
    BadUrl(String),
    /// Resolving, connecting, writing or reading failed (refused, timed out, ...).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The answer does not start with an HTTP status line.
    #[error("the answer is not HTTP")]
    NotHttp,
}

/// GETs `url` and returns the status code. Each of connect, write and read
/// waits at most `timeout`.
pub fn get_status(url: &str, timeout: Duration) -> Result<u16, CheckError> {
    let (authority, path) = split_url(url)?;
    let mut stream = connect(&authority, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let host = authority
        .rsplit_once(':')
        .map_or(authority.as_str(), |(h, _)| h);
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < MAX_STATUS_LINE {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    status_code(&head).ok_or(CheckError::NotHttp)
}

/// `http://host:port/path` → (`host:port`, `/path`); port 80 and path `/` when absent.
fn split_url(url: &str) -> Result<(String, String), CheckError> {
    let bad = || CheckError::BadUrl(url.to_string());
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains(|c: char| c.is_whitespace() || c == '@') {
        return Err(bad());
    }
    if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    // A port is whatever follows the last ':' outside IPv6 brackets.
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.contains(']'));
    let authority = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_string()))
}

/// Connects to the first address of `authority` that answers.
fn connect(authority: &str, timeout: Duration) -> Result<TcpStream, CheckError> {
    let mut last = None;
    for addr in authority.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| std::io::Error::other(format!("{authority}: no address")))
        .into())
}

/// The code of a status line `HTTP/1.x NNN reason`.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        for (url, authority, path) in [
            (
                "http://127.0.0.1:9930/healthz",
                "127.0.0.1:9930",
                "/healthz",
            ),
            ("http://localhost:9930", "localhost:9930", "/"),
            (
                "http://switchyard/readyz?x=1",
                "switchyard:80",
                "/readyz?x=1",
            ),
            ("http://[::1]:9930/healthz", "[::1]:9930", "/healthz"),
            ("http://[::1]/healthz", "[::1]:80", "/healthz"),
        ] {
            let got = split_url(url).unwrap();
            assert_eq!((got.0.as_str(), got.1.as_str()), (authority, path), "{url}");
        }
        for url in [
            "https://127.0.0.1:9930/healthz",
            "127.0.0.1:9930/healthz",
            "http:///healthz",
            "http://a b:1/",
            "http://u@host:1/",
            "http://host:1/a b",
        ] {
            assert!(
                matches!(split_url(url), Err(CheckError::BadUrl(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn status_lines_give_their_code() {
        for (head, code) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"[..],
                Some(200),
            ),
            (b"HTTP/1.0 503 Service Unavailable\r\n", Some(503)),
            (b"HTTP/1.1 204\r\n", Some(204)),
            (b"HTTP/1.1 20", None),
            (b"SSH-2.0-OpenSSH\r\n", None),
            (b"HTTP/1.1 2000 OK\r\n", None),
            (b"", None),
            (b"\xff\xfe", None),
        ] {
            assert_eq!(
                status_code(head),
                code,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }
}
