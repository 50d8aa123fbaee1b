//! What a benchmark needs to run Switchyard as users do, several of them
//! coordinating: a throw-away single-member etcd and the release binary as
//! its own process with a configuration file, plus a few lines of HTTP to
//! read its `/status` and ask for a switchover.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use super::os::{free_port, own_session, TempDir};

/// The etcd server Debian's `etcd-server` package installs.
const ETCD: &str = "/usr/bin/etcd";
/// Longest wait for etcd or a proxy to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for a stopped proxy to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A child process stopped with SIGTERM (then SIGKILL) on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A single-member etcd on free ports of 127.0.0.1 with its data in a
/// private directory; stopped and removed on drop.
pub struct Etcd {
    pub endpoint: String,
    _process: Process,
    _dir: TempDir,
}

impl Etcd {
    pub fn start(tag: &str) -> anyhow::Result<Etcd> {
        let dir = TempDir::create(&format!("switchyard-bench-etcd-{tag}"))?;
        let (client, peer) = (free_port()?, free_port()?);
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = File::create(dir.path.join("etcd.log"))?;
        let child = Command::new(ETCD)
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.path.join("data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {ETCD} (Debian package etcd-server)"))?;
        let etcd = Etcd {
            endpoint,
            _process: Process(child),
            _dir: dir,
        };
        let addr = format!("127.0.0.1:{client}");
        wait_for(&format!("etcd on {addr}"), || {
            http(&addr, "GET", "/health", None).is_ok_and(|(code, _)| code == 200)
        })?;
        Ok(etcd)
    }
}

/// The release binary, `switchyard --config FILE`, as its own process;
/// its log goes to a file in its directory. Stopped with SIGTERM on drop.
pub struct ProxyProcess {
    /// The client port.
    pub port: u16,
    /// `host:port` of its HTTP endpoints.
    pub http: String,
    process: Process,
    dir: TempDir,
}

impl ProxyProcess {
    /// Starts the binary with the configuration `config` returns for its
    /// client and HTTP listen addresses, and waits until `/healthz`
    /// answers.
    pub fn start(
        tag: &str,
        config: impl FnOnce(&str, &str) -> String,
    ) -> anyhow::Result<ProxyProcess> {
        Self::start_binary(env!("CARGO_BIN_EXE_switchyard"), tag, config)
    }

    /// [`ProxyProcess::start`] with another build of the binary.
    pub fn start_binary(
        binary: &str,
        tag: &str,
        config: impl FnOnce(&str, &str) -> String,
    ) -> anyhow::Result<ProxyProcess> {
        let dir = TempDir::create(&format!("switchyard-bench-proxy-{tag}"))?;
        let (port, http_port) = (free_port()?, free_port()?);
        let listen = format!("127.0.0.1:{port}");
        let http_addr = format!("127.0.0.1:{http_port}");
        let file = dir.write("switchyard.toml", &config(&listen, &http_addr))?;
        let log = File::create(dir.path.join("switchyard.log"))?;
        let child = own_session(&mut Command::new(binary))
            .args(["--config", &file])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "switchyard=info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let proxy = ProxyProcess {
            port,
            http: http_addr,
            process: Process(child),
            dir,
        };
        wait_for(&format!("switchyard on {}", proxy.http), || {
            http(&proxy.http, "GET", "/healthz", None).is_ok()
        })
        .map_err(|e| anyhow!("{e:#}\n{}", proxy.log_tail(20)))?;
        Ok(proxy)
    }

    /// The process id, for /proc.
    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir.path.join("switchyard.log")).unwrap_or_default();
        super::tail(&text, lines)
    }

    /// `/status` as JSON.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let (_, body) = http(&self.http, "GET", "/status", None)?;
        serde_json::from_str(&body).context("parsing /status")
    }
}

/// Polls `ready` every 50 ms until it holds, for at most [`START_TIMEOUT`].
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while !ready() {
        if Instant::now() >= deadline {
            bail!("{what} not ready within {}s", START_TIMEOUT.as_secs());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One HTTP/1.0 request (so the answer is neither chunked nor kept
/// alive); returns the status code and the body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status from {addr}: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((code, body.to_string()))
}
