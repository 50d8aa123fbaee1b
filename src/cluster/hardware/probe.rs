//! Running one hardware probe: [`probe`] takes the `[cluster.nodes.hardware]`
//! section of a node ([`HardwareSpec`]), scrapes the exporter (over TLS for
//! `https://`, with its credentials), runs the command, or reads the BMC's
//! Redfish service ([`super::redfish_probe`]) and returns a [`Verdict`].
//! This is the I/O half; deciding is left to [`super::rules::evaluate`] and
//! [`super::redfish`]. Every failure of the probe itself is an
//! `unknown` verdict with the reason, never an error or a panic: the caller
//! only ever needs a status. No reason ever holds a credential.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{ChildStdout, Command};

use super::exposition;
use super::rules::{evaluate, HardwareStatus, Verdict};
use crate::config::hardware::{HardwareSpec, Source};
use crate::config::{HttpUrl, Scheme};
use crate::http_client::{self, Authorization, Options};

/// Largest scrape accepted. node_exporter on a big host serves well under
/// 1 MiB; anything near this is a wrong URL, not an exporter.
pub const MAX_SCRAPE_BYTES: usize = 8 * 1024 * 1024;
/// Bytes of a command's stdout kept (the rest is read and dropped, so a
/// chatty command does not block on a full pipe).
const MAX_COMMAND_OUTPUT: usize = 4 * 1024;
/// Longest reason taken from a command's stdout, in characters.
const MAX_REASON_CHARS: usize = 200;

/// Runs one probe, bounded by `spec.timeout`. Never fails: a probe that
/// cannot tell gives [`HardwareStatus::Unknown`] with the reason.
///
/// Cancel safe: dropping it closes the connection or kills the command.
pub async fn probe(spec: &HardwareSpec) -> Verdict {
    match spec.source() {
        Ok(Source::Url(url)) => scrape(url, spec).await,
        Ok(Source::Command(command)) => run_command(command, spec.timeout).await,
        Ok(Source::Redfish(root)) => super::redfish_probe::probe(root, spec).await,
        Err(e) => Verdict::unknown(e),
    }
}

async fn scrape(url: &str, spec: &HardwareSpec) -> Verdict {
    let target = match HttpUrl::parse(url) {
        Ok(t) => t,
        Err(e) => return Verdict::unknown(format!("{url}: {e}")),
    };
    let timeout = spec.timeout;
    let fetch = async {
        let options = options(&target, spec).await?;
        http_client::get_with(&target, &options, MAX_SCRAPE_BYTES)
            .await
            .map_err(|e| e.to_string())
    };
    let body = match tokio::time::timeout(timeout, fetch).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return Verdict::unknown(format!("{url}: {e}")),
        Err(_) => return Verdict::unknown(format!("{url}: no complete answer within {timeout:?}")),
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return Verdict::unknown(format!("{url}: the body is not UTF-8 text"));
    };
    // Parsing runs inline: a few milliseconds for a typical exporter, and the
    // size cap bounds the worst case.
    match exposition::parse(text) {
        Ok(samples) => evaluate(&spec.rules, &samples),
        Err(e) => Verdict::unknown(format!("{url}: {e}")),
    }
}

/// TLS and credentials for a scrape of `target` (or a Redfish probe of
/// it). The CA file is read at every probe (on the blocking pool: a file
/// read has no place on the event loop), so a certificate renewed in place
/// is trusted from the next probe on.
pub(super) async fn options(target: &HttpUrl, spec: &HardwareSpec) -> Result<Options, String> {
    let tls = match (target.scheme, &spec.ca_file) {
        (Scheme::Https, Some(ca_file)) => {
            let ca_file = ca_file.clone();
            let built = tokio::task::spawn_blocking(move || {
                crate::tls::https_client("hardware.ca_file", &ca_file)
            })
            .await
            .map_err(|e| format!("reading hardware.ca_file stopped short: {e}"))?;
            Some(built.map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    Ok(Options {
        tls,
        authorization: authorization(spec),
    })
}

/// The `Authorization` the spec asks for, if any.
fn authorization(spec: &HardwareSpec) -> Option<Authorization> {
    match (&spec.token, &spec.username, &spec.password) {
        (Some(token), _, _) => Some(Authorization::Bearer(token.expose().to_owned())),
        (None, Some(user), Some(password)) => Some(Authorization::Basic {
            user: user.clone(),
            password: password.expose().to_owned(),
        }),
        _ => None,
    }
}

/// Runs `sh -c command` and maps its exit status. Stdout is read to its end,
/// so a command leaving a background process that holds stdout open counts
/// as unfinished until that process exits (or the timeout).
async fn run_command(command: &str, timeout: Duration) -> Verdict {
    let spawned = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return Verdict::unknown(format!("cannot run {command:?}: {e}")),
    };
    let stdout = child.stdout.take();
    let outcome = tokio::time::timeout(timeout, async {
        tokio::join!(read_bounded(stdout), child.wait())
    })
    .await;
    match outcome {
        Ok((out, Ok(status))) => command_verdict(command, status, &first_line(&out)),
        Ok((_, Err(e))) => Verdict::unknown(format!("{command:?}: {e}")),
        Err(_) => {
            // `sh -c` execs a simple command, so this is the command itself; a
            // pipeline's other processes are left to finish on their own.
            let _ = child.kill().await;
            Verdict::unknown(format!(
                "{command:?} did not finish within {timeout:?}; killed"
            ))
        }
    }
}

/// Reads stdout to its end, keeping the first [`MAX_COMMAND_OUTPUT`] bytes.
async fn read_bounded(stdout: Option<ChildStdout>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut stdout) = stdout else {
        return kept;
    };
    let mut chunk = [0u8; 1024];
    while let Ok(n @ 1..) = stdout.read(&mut chunk).await {
        let room = MAX_COMMAND_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(chunk.get(..n.min(room)).unwrap_or_default());
    }
    kept
}

/// The first line of `out`, trimmed, at most [`MAX_REASON_CHARS`] characters.
fn first_line(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    let line = text.lines().next().unwrap_or("").trim();
    line.chars().take(MAX_REASON_CHARS).collect()
}

/// The exit-status contract: 0 ok, 1 degraded, 2 failing, else unknown.
fn command_verdict(command: &str, status: ExitStatus, line: &str) -> Verdict {
    let Some(code) = status.code() else {
        let what = format!("{command:?} was killed by a signal");
        return Verdict::unknown(with_output(what, line));
    };
    let what = format!("{command:?} exited with {code}");
    let found = match code {
        0 => HardwareStatus::Ok,
        1 => HardwareStatus::Degraded,
        2 => HardwareStatus::Failing,
        _ => return Verdict::unknown(with_output(what, line)),
    };
    // A finding always says why, even when the command printed nothing.
    let reasons = if !line.is_empty() {
        vec![line.to_owned()]
    } else if found == HardwareStatus::Ok {
        vec![]
    } else {
        vec![what]
    };
    Verdict {
        status: found,
        reasons,
    }
}

fn with_output(what: String, line: &str) -> String {
    if line.is_empty() {
        what
    } else {
        format!("{what}: {line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    const SCRAPE: &str = "# TYPE ipmi_sensor_state gauge\n\
ipmi_sensor_state{name=\"PSU1\",type=\"Power Supply\"} 1\n\
ipmi_sensor_state{name=\"PSU2\",type=\"Power Supply\"} 0\n";

    /// A spec as the config loader reads it: TOML through the `config` crate.
    fn spec(toml: &str) -> HardwareSpec {
        let spec: HardwareSpec = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .unwrap();
        spec.validate().unwrap();
        spec
    }

    fn url_spec(url: &str, timeout_ms: u64) -> HardwareSpec {
        spec(&format!(
            r#"url = "{url}"
            timeout = "{timeout_ms}ms"
            rules = [{{ metric = "ipmi_sensor_state", labels = {{ type = "Power Supply" }}, op = "!=", value = 0, status = "degraded" }}]"#
        ))
    }

    fn command_spec(command: &str, timeout_ms: u64) -> HardwareSpec {
        spec(&format!(
            "command = {command:?}\ntimeout = \"{timeout_ms}ms\""
        ))
    }

    /// Serves `response` to each connection after reading the request head.
    async fn serve(response: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut req = Vec::new();
                let mut chunk = [0u8; 512];
                while !req.ends_with(b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(n @ 1..) => req.extend_from_slice(&chunk[..n]),
                        _ => break,
                    }
                }
                assert!(req.starts_with(b"GET /metrics HTTP/1.1\r\n"));
                let _ = sock.write_all(&response).await;
            }
        });
        format!("http://{addr}/metrics")
    }

    #[tokio::test]
    async fn scrape_with_content_length() {
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{SCRAPE}",
            SCRAPE.len()
        );
        let url = serve(response.into_bytes()).await;
        let v = probe(&url_spec(&url, 2000)).await;
        assert_eq!(v.status, HardwareStatus::Degraded, "{v:?}");
        assert_eq!(
            v.reasons,
            [r#"ipmi_sensor_state{name="PSU1",type="Power Supply"} = 1 (!= 0) -> degraded"#]
        );
    }

    #[tokio::test]
    async fn scrape_with_chunked_encoding() {
        let mut response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for piece in SCRAPE.as_bytes().chunks(17) {
            response.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            response.extend_from_slice(piece);
            response.extend_from_slice(b"\r\n");
        }
        response.extend_from_slice(b"0\r\n\r\n");
        let url = serve(response).await;
        let v = probe(&url_spec(&url, 2000)).await;
        assert_eq!(v.status, HardwareStatus::Degraded, "{v:?}");
    }

    #[tokio::test]
    async fn failed_scrapes_are_unknown_with_the_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec(),
                "HTTP status 503 Service Unavailable",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort".to_vec(),
                "closed before the response was complete",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n".to_vec(),
                "larger than 8388608",
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\nipmi_sensor_state{type=\"Power Supply\" 1\n".to_vec(),
                "line 1: expected ',' or '}'",
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n\xff\xfe".to_vec(), "not UTF-8"),
            (
                b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(),
                "not an HTTP/1.x status line",
            ),
        ];
        for (response, needle) in cases {
            let url = serve(response).await;
            let v = probe(&url_spec(&url, 2000)).await;
            assert_eq!(v.status, HardwareStatus::Unknown, "{needle}: {v:?}");
            assert!(v.reasons[0].contains(needle), "{needle}: {v:?}");
            assert!(v.reasons[0].starts_with(&url), "{v:?}");
        }
    }

    #[tokio::test]
    async fn unreachable_exporter_is_unknown() {
        // Bind, then close: the port is very likely free and refuses.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let v = probe(&url_spec(&format!("http://{addr}/metrics"), 2000)).await;
        assert_eq!(v.status, HardwareStatus::Unknown);
        assert!(v.reasons[0].contains("cannot connect"), "{v:?}");
    }

    #[tokio::test]
    async fn silent_exporter_is_unknown_after_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        // Accepts and holds the connection without a word.
        let holder = tokio::spawn(async move {
            let (_sock, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
        });
        let started = std::time::Instant::now();
        let v = probe(&url_spec(&url, 300)).await;
        assert_eq!(v.status, HardwareStatus::Unknown);
        assert!(
            v.reasons[0].contains("no complete answer within 300ms"),
            "{v:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        holder.abort();
    }

    #[tokio::test]
    async fn commands_report_through_their_exit_status() {
        let cases = [
            (
                "echo '  all good  '; exit 0",
                HardwareStatus::Ok,
                vec!["all good"],
            ),
            ("exit 0", HardwareStatus::Ok, vec![]),
            (
                "echo 'PSU2 lost input'; echo more; exit 1",
                HardwareStatus::Degraded,
                vec!["PSU2 lost input"],
            ),
            (
                "echo 'inlet 95C'; exit 2",
                HardwareStatus::Failing,
                vec!["inlet 95C"],
            ),
            (
                "exit 2",
                HardwareStatus::Failing,
                vec!["\"exit 2\" exited with 2"],
            ),
            (
                "echo huh; exit 3",
                HardwareStatus::Unknown,
                vec!["\"echo huh; exit 3\" exited with 3: huh"],
            ),
            (
                "kill -9 $$",
                HardwareStatus::Unknown,
                vec!["\"kill -9 $$\" was killed by a signal"],
            ),
            (
                "/nonexistent/check-psu",
                HardwareStatus::Unknown,
                vec!["\"/nonexistent/check-psu\" exited with 127"],
            ),
        ];
        for (command, status, reasons) in cases {
            let v = probe(&command_spec(command, 5000)).await;
            assert_eq!(v.status, status, "{command}: {v:?}");
            assert_eq!(v.reasons, reasons, "{command}");
        }
    }

    #[tokio::test]
    async fn command_output_is_bounded() {
        // 1 MiB on stdout must neither block the command nor end up in the reason.
        let v = probe(&command_spec(
            "head -c 1048576 /dev/zero | tr '\\0' x; exit 1",
            5000,
        ))
        .await;
        assert_eq!(v.status, HardwareStatus::Degraded);
        assert_eq!(v.reasons[0], "x".repeat(MAX_REASON_CHARS));
    }

    #[tokio::test]
    async fn slow_command_is_killed_and_unknown() {
        let started = std::time::Instant::now();
        let v = probe(&command_spec("exec sleep 30", 200)).await;
        assert_eq!(v.status, HardwareStatus::Unknown);
        assert!(
            v.reasons[0].contains("did not finish within 200ms; killed"),
            "{v:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
