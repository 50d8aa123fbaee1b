//! What a failing host looks like from outside, for the hardware and
//! failover tests: a real HTTP or HTTPS exporter serving Prometheus text
//! that the test rewrites (an ipmi_exporter stand-in), and a node frozen with SIGSTOP
//! (a host that lost power: nothing answers, nothing is refused).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use switchyard::local_cluster::PgNode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A Prometheus-text endpoint the test rewrites: plain HTTP, or HTTPS
/// answering only requests that carry one `Authorization` header value.
pub struct Exporter {
    pub addr: SocketAddr,
    texts: Arc<Mutex<Texts>>,
    scheme: &'static str,
}

/// What the exporter serves: `next` once each, in order, then `steady`.
#[derive(Default)]
struct Texts {
    steady: String,
    next: VecDeque<String>,
}

impl Texts {
    fn take(&mut self) -> String {
        self.next.pop_front().unwrap_or_else(|| self.steady.clone())
    }
}

impl Exporter {
    pub async fn start(text: &str) -> Exporter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let texts = Arc::new(Mutex::new(Texts {
            steady: text.to_string(),
            next: VecDeque::new(),
        }));
        let served = texts.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let body = served.lock().unwrap().take();
                tokio::spawn(answer(s, Ok(body)));
            }
        });
        Exporter {
            addr,
            texts,
            scheme: "http",
        }
    }

    /// An HTTPS exporter with the certificate `cert_pem` (key `key_pem`),
    /// answering 401 to a request whose `Authorization` is not `authorization`.
    pub async fn start_tls(
        text: &str,
        cert_pem: &str,
        key_pem: &str,
        authorization: &str,
    ) -> Exporter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let texts = Arc::new(Mutex::new(Texts {
            steady: text.to_string(),
            next: VecDeque::new(),
        }));
        let acceptor = tls_acceptor(cert_pem, key_pem);
        let served = texts.clone();
        let wanted = authorization.to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, served, wanted) = (acceptor.clone(), served.clone(), wanted.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let head = read_head(&mut tls).await;
                    let body = if header(&head, "authorization") == Some(wanted.as_str()) {
                        Ok(served.lock().unwrap().take())
                    } else {
                        Err("HTTP/1.1 401 Unauthorized")
                    };
                    respond(&mut tls, body).await;
                });
            }
        });
        Exporter {
            addr,
            texts,
            scheme: "https",
        }
    }

    /// Serves `text` from now on.
    pub fn set(&self, text: &str) {
        let mut texts = self.texts.lock().unwrap();
        texts.steady = text.to_string();
        texts.next.clear();
    }

    /// Serves `text` to the next `times` scrapes, then what it served before.
    pub fn serve_times(&self, text: &str, times: usize) {
        let mut texts = self.texts.lock().unwrap();
        texts
            .next
            .extend(std::iter::repeat_n(text.to_string(), times));
    }

    /// Whether every scrape given by [`Exporter::serve_times`] was served.
    pub fn served_all(&self) -> bool {
        self.texts.lock().unwrap().next.is_empty()
    }

    /// The exporter's URL.
    pub fn url(&self) -> String {
        format!("{}://{}/metrics", self.scheme, self.addr)
    }

    /// The `hardware = { ... }` body probing this exporter with the usual
    /// rules: a power supply not nominal is degraded; a hot CPU or the
    /// chassis powered off is failing.
    pub fn spec(&self) -> String {
        format!(
            "url = \"{}\", interval = \"200ms\", timeout = \"1s\", rules = [ \
             {{ metric = \"ipmi_sensor_state\", labels = {{ type = \"Power Supply\" }}, op = \"!=\", value = 0, status = \"degraded\" }}, \
             {{ metric = \"node_hwmon_temp_celsius\", op = \">\", value = 90, status = \"failing\" }}, \
             {{ metric = \"ipmi_chassis_power_state\", op = \"==\", value = 0, status = \"failing\" }} ]",
            self.url()
        )
    }
}

/// Reads a request head (or what arrives of it before the peer stops).
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(n @ 1..) => head.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// The value of the header `name` (any case) in a request head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// Answers `body` as Prometheus text, or the error status line.
async fn respond<S: AsyncWrite + Unpin>(s: &mut S, body: Result<String, &str>) {
    let resp = match body {
        Ok(body) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        Err(status) => format!("{status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    };
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

async fn answer(mut s: TcpStream, body: Result<String, &'static str>) {
    read_head(&mut s).await;
    respond(&mut s, body).await;
}

/// A TLS acceptor serving the certificate chain and key given as PEM.
pub fn tls_acceptor(cert_pem: &str, key_pem: &str) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// What the exporter says: PS1's sensor state (0 nominal, 1 warning, 2
/// critical), the CPU temperature, and the chassis powered on.
pub fn exposition(psu_state: u32, temp: u32) -> String {
    format!("{}ipmi_chassis_power_state 1\n", sensors(psu_state, temp))
}

/// What a BMC on standby power says once the host lost power.
pub fn powered_off() -> String {
    format!("{}ipmi_chassis_power_state 0\n", sensors(0, 20))
}

fn sensors(psu_state: u32, temp: u32) -> String {
    format!(
        "# HELP ipmi_sensor_state Indicates the severity of the state reported by an IPMI sensor (0=nominal, 1=warning, 2=critical).\n\
         # TYPE ipmi_sensor_state gauge\n\
         ipmi_sensor_state{{id=\"52\",name=\"PS1 Status\",type=\"Power Supply\"}} {psu_state}\n\
         ipmi_sensor_state{{id=\"53\",name=\"PS2 Status\",type=\"Power Supply\"}} 0\n\
         ipmi_sensor_state{{id=\"12\",name=\"Fan1\",type=\"Fan\"}} 0\n\
         # TYPE node_hwmon_temp_celsius gauge\n\
         node_hwmon_temp_celsius{{chip=\"platform_coretemp_0\",sensor=\"temp1\"}} {temp}\n\
         # TYPE ipmi_chassis_power_state gauge\n"
    )
}

/// A node frozen with SIGSTOP (postmaster and every child): connections hang
/// instead of being refused, like a host that lost power. Thawed on drop, so
/// teardown works even when the test fails.
pub struct Frozen {
    pids: Vec<u32>,
}

impl Frozen {
    pub fn freeze(node: &PgNode) -> Frozen {
        let postmaster = postmaster_pid(node);
        // The postmaster first, so it forks no new children meanwhile.
        let mut frozen = Frozen {
            pids: vec![postmaster],
        };
        signal("STOP", postmaster);
        for child in children_of(postmaster) {
            signal("STOP", child);
            frozen.pids.push(child);
        }
        frozen
    }
}

impl Frozen {
    /// Freezes only the node's child process whose title contains `role`
    /// (`startup` is the one replaying WAL on a replica): its signals wait
    /// until it is thawed.
    pub fn freeze_child(node: &PgNode, role: &str) -> Frozen {
        let postmaster = postmaster_pid(node);
        let child = children_of(postmaster)
            .into_iter()
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(role))
            })
            .unwrap_or_else(|| panic!("no `{role}` process under {}", node.name()));
        signal("STOP", child);
        Frozen { pids: vec![child] }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &pid in self.pids.iter().rev() {
            signal("CONT", pid);
        }
    }
}

/// The node's postmaster, from its `postmaster.pid`.
fn postmaster_pid(node: &PgNode) -> u32 {
    let pidfile = node.data_dir().join("postmaster.pid");
    let text = std::fs::read_to_string(&pidfile)
        .unwrap_or_else(|e| panic!("reading {}: {e}", pidfile.display()));
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("postmaster pid")
}

fn signal(sig: &str, pid: u32) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Pids whose parent is `parent`, from `/proc/*/stat`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = vec![];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let ppid = after
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}
