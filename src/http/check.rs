//! `switchyard healthcheck`: one HTTP GET against a proxy's own endpoints
//! (`/healthz`, `/readyz`), so a container image needs no curl for its
//! HEALTHCHECK. Blocking: it runs in a short-lived process of its own, never
//! inside the proxy, so it drives the shared [`crate::http_client`] on a
//! runtime of its own. Plain `http://` only; the endpoints have no TLS.

use std::time::Duration;

use crate::config::{HttpUrl, Scheme};
use crate::http_client::{self, FetchError};

/// Why no status code came back.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The URL is not `http://host[:port][/path]`.
    #[error("not an http://host:port/path URL: {0}")]
    BadUrl(String),
    /// The runtime the request runs on could not start.
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
    /// Connecting, writing or reading failed (refused, closed, not HTTP, ...).
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// No complete response head within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// GETs `url` and returns the status code, waiting at most `timeout` for
/// all of it (connect, request and the response head; the body is not read).
pub fn get_status(url: &str, timeout: Duration) -> Result<u16, CheckError> {
    // The proxy's own endpoints have no TLS.
    let target = HttpUrl::parse(url)
        .ok()
        .filter(|t| t.scheme == Scheme::Http)
        .ok_or_else(|| CheckError::BadUrl(url.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(CheckError::Runtime)?;
    rt.block_on(async {
        match tokio::time::timeout(timeout, http_client::status(&target)).await {
            Ok(answer) => Ok(answer?),
            Err(_) => Err(CheckError::Timeout(timeout)),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// Answers one connection with `response` after reading the request head.
    fn serve_once(response: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut chunk = [0u8; 512];
            while !req.ends_with(b"\r\n\r\n") {
                match sock.read(&mut chunk) {
                    Ok(n @ 1..) => req.extend_from_slice(&chunk[..n]),
                    _ => break,
                }
            }
            assert!(req.starts_with(b"GET /healthz HTTP/1.1\r\n"));
            let _ = sock.write_all(response);
        });
        format!("http://{addr}/healthz")
    }

    #[test]
    fn urls_split_into_host_port_and_path() {
        for (url, host, port, path) in [
            (
                "http://127.0.0.1:9930/healthz",
                "127.0.0.1",
                9930,
                "/healthz",
            ),
            ("http://localhost:9930", "localhost", 9930, "/"),
            (
                "http://switchyard/readyz?x=1",
                "switchyard",
                80,
                "/readyz?x=1",
            ),
            ("http://[::1]:9930/healthz", "::1", 9930, "/healthz"),
            ("http://[::1]/healthz", "::1", 80, "/healthz"),
        ] {
            let got = HttpUrl::parse(url).unwrap();
            assert_eq!(
                (got.host.as_str(), got.port, got.path.as_str()),
                (host, port, path),
                "{url}"
            );
        }
    }

    #[test]
    fn bad_urls_are_refused_before_connecting() {
        for url in [
            "https://127.0.0.1:9930/healthz",
            "127.0.0.1:9930/healthz",
            "http:///healthz",
            "http://a b:1/",
            "http://u@host:1/",
            "http://host:1/a b",
        ] {
            let got = get_status(url, Duration::from_secs(1));
            assert!(matches!(got, Err(CheckError::BadUrl(_))), "{url}: {got:?}");
        }
    }

    #[test]
    fn any_status_is_returned_and_non_http_is_an_error() {
        let second = Duration::from_secs(2);
        for (response, code) in [
            (&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..], 200),
            (b"HTTP/1.0 503 Service Unavailable\r\n\r\n", 503),
            (b"HTTP/1.1 204\r\n\r\n", 204),
        ] {
            assert_eq!(get_status(&serve_once(response), second).unwrap(), code);
        }
        for response in [&b"SSH-2.0-OpenSSH\r\n\r\n"[..], b"HTTP/1.1 2000 OK\r\n\r\n"] {
            let got = get_status(&serve_once(response), second);
            assert!(matches!(got, Err(CheckError::Fetch(_))), "{got:?}");
        }
    }

    #[test]
    fn a_silent_endpoint_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/healthz", listener.local_addr().unwrap());
        // Accepted by the kernel's backlog, never answered.
        let started = std::time::Instant::now();
        let got = get_status(&url, Duration::from_millis(300));
        assert!(matches!(got, Err(CheckError::Timeout(_))), "{got:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
    }
}
