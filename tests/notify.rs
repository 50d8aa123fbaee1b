//! `[[notify]]` against real local HTTP receivers: each format's payload
//! (signed when a secret is set), a retry after a 500 and no retry after a
//! 400, and a receiver that hangs holds up neither a switchover nor the
//! admin console, while its queue stays bounded (the overflow is counted).

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{http_request, private_pair, wait_until, Proxy, USERS};
use hmac::{Hmac, KeyInit, Mac};
use switchyard::local_cluster::{StopMode, CLUSTER_PASSWORD, CLUSTER_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::SimpleQueryMessage;

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    headers: Vec<(String, String)>,
    body: serde_json::Value,
    /// The body as sent: what a signature covers.
    raw: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How a receiver answers the next request on a path.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    /// Reads the request, then never answers.
    Hang,
}

/// A path and the replies its next requests get.
type Script = (String, VecDeque<Reply>);

/// A local HTTP receiver: answers each path's requests as scripted (200
/// once the script is used up) and keeps what it got.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    script: Arc<Mutex<Vec<Script>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver {
            addr: listener.local_addr().unwrap(),
            got: Arc::default(),
            script: Arc::default(),
        };
        let me = r.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(me.clone().serve(s));
            }
        });
        r
    }

    fn script(&self, path: &str, replies: &[Reply]) {
        let mut s = self.script.lock().unwrap();
        s.push((path.to_string(), replies.iter().copied().collect()));
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn on(&self, path: &str) -> Vec<Got> {
        let got = self.got.lock().unwrap();
        got.iter().filter(|g| g.path == path).cloned().collect()
    }

    async fn serve(self, mut s: TcpStream) {
        let Some(got) = read_request(&mut s).await else {
            return;
        };
        let path = got.path.clone();
        self.got.lock().unwrap().push(got);
        let reply = {
            let mut script = self.script.lock().unwrap();
            script
                .iter_mut()
                .find(|(p, _)| *p == path)
                .and_then(|(_, q)| q.pop_front())
                .unwrap_or(Reply::Status(200))
        };
        match reply {
            Reply::Status(code) => {
                let head =
                    format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(head.as_bytes()).await;
            }
            Reply::Hang => tokio::time::sleep(Duration::from_secs(3600)).await,
        }
    }
}

async fn read_request(s: &mut TcpStream) -> Option<Got> {
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))?
        .1
        .parse()
        .ok()?;
    let mut body = buf[end..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    let parsed = serde_json::from_slice(&body).ok()?;
    Some(Got {
        path,
        headers,
        body: parsed,
        raw: body,
    })
}

/// `switchyard_notifications_total{outcome}` now.
async fn outcome(http: SocketAddr, which: &str) -> f64 {
    let (_, text) = http_request(http, "GET", "/metrics").await;
    let m = switchyard::cluster::hardware::exposition::parse(&text).unwrap();
    m.iter()
        .find(|s| {
            s.name == "switchyard_notifications_total"
                && s.labels.get("outcome").map(String::as_str) == Some(which)
        })
        .map_or(0.0, |s| s.value)
}

/// Primary `db1` and replica `db2`, checked fast, and `notify`.
fn config(primary: &str, replica: &str, notify: &str) -> String {
    format!(
        "{USERS}\n[health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\n\
         [cluster]\nnodes = [{{ name = \"db1\", addr = \"{primary}\" }}, {{ name = \"db2\", addr = \"{replica}\" }}]\n\
         user = \"{CLUSTER_USER}\"\npassword = \"{CLUSTER_PASSWORD}\"\n{notify}"
    )
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_format_reaches_its_receiver_and_failures_are_retried_or_not() {
    let (cluster, primary, replica) = private_pair().await;
    let rx = Receiver::start().await;
    rx.script("/retry", &[Reply::Status(500)]);
    rx.script("/refuse", &[Reply::Status(400)]);
    let entry = |path: &str, extra: &str| {
        format!(
            "[[notify]]\nurl = \"{}\"\nevents = [\"node_down\"]\nsource = \"proxy-a\"\n{extra}\n",
            rx.url(path)
        )
    };
    let notify = [
        entry(
            "/json",
            "secret = \"s3cret\"\nheaders = { \"X-Team\" = \"db\" }",
        ),
        entry("/slack", "format = \"slack\""),
        entry("/pd", "format = \"pagerduty\"\nrouting_key = \"RK\""),
        entry("/retry", ""),
        entry("/refuse", ""),
    ]
    .concat();
    let toml = config(&primary.addr(), &replica.addr(), &notify);
    let (_proxy, http) = Proxy::start_with_http(cluster.clone(), &toml).await;
    wait_until(15, "db2 up", || async {
        let (_, events) = http_request(http, "GET", "/events").await;
        events.contains("\"node\":\"db2\"")
    })
    .await;
    // The replica stops: its node_down is the event sent.
    let r = replica.clone();
    tokio::task::spawn_blocking(move || r.stop(StopMode::Immediate))
        .await
        .unwrap()
        .unwrap();
    wait_until(20, "db2's node_down at every receiver", || {
        let rx = rx.clone();
        async move {
            ["/json", "/slack", "/pd", "/refuse"]
                .iter()
                .all(|p| !rx.on(p).is_empty())
                && rx.on("/retry").len() >= 2
        }
    })
    .await;

    let json = &rx.on("/json")[0];
    assert_eq!(json.body["kind"], "node_down");
    assert_eq!(json.body["node"], "db2");
    assert_eq!(json.body["source"], "proxy-a");
    assert_eq!(json.body["severity"], "warning");
    // It says what failed, not only how often: a refused connection here.
    let message = json.body["message"].as_str().unwrap();
    assert!(
        message.contains("health checks failed (127.0.0.1:"),
        "{message}"
    );
    assert!(message.contains("Connection refused"), "{message}");
    assert_eq!(
        json.header("X-Switchyard-Signature"),
        Some(format!("sha256={}", hmac_hex("s3cret", &json.raw)).as_str()),
        "signed over the exact body"
    );
    assert_eq!(json.header("X-Team"), Some("db"));
    assert_eq!(json.header("Content-Type"), Some("application/json"));

    let slack = &rx.on("/slack")[0].body;
    let text = slack["text"].as_str().unwrap();
    assert!(text.contains("node_down on db2"), "{text}");

    let pd = &rx.on("/pd")[0].body;
    assert_eq!(pd["routing_key"], "RK");
    assert_eq!(pd["event_action"], "trigger");
    assert_eq!(pd["payload"]["severity"], "warning");
    assert_eq!(pd["payload"]["source"], "proxy-a");
    assert_eq!(pd["payload"]["component"], "db2");
    assert!(pd["payload"]["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(pd["dedup_key"].as_str().unwrap().contains("node_down"));

    // The 500 was retried with the same notification; the 400 was not.
    let retried = rx.on("/retry");
    assert_eq!(retried[0].body, retried[1].body);
    wait_until(5, "outcomes counted", || async {
        outcome(http, "delivered").await >= 4.0 && outcome(http, "failed").await >= 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.on("/refuse").len(), 1, "a 400 is not retried");
    assert_eq!(outcome(http, "delivered").await, 4.0);
    assert_eq!(outcome(http, "retried").await, 1.0);
    assert_eq!(outcome(http, "failed").await, 1.0);
    assert_eq!(outcome(http, "dropped").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_holds_up_no_switchover_and_its_queue_is_bounded() {
    let (cluster, primary, replica) = private_pair().await;
    let rx = Receiver::start().await;
    rx.script("/hang", &[Reply::Hang]);
    let notify = format!(
        "[[notify]]\nurl = \"{}\"\nevents = [\"switchover\", \"config_rejected\"]\ntimeout = \"60s\"\n\
         [[notify]]\nurl = \"{}\"\nevents = [\"switchover\"]\n",
        rx.url("/hang"),
        rx.url("/ok")
    );
    let toml = config(&primary.addr(), &replica.addr(), &notify);
    let dir = std::env::temp_dir().join(common::unique("sy_notify"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, &toml).unwrap();
    let (proxy, http) = Proxy::start_from_file_with_http(cluster.clone(), &path).await;
    let admin = proxy
        .client_as("admin", "adminpw", "switchyard")
        .await
        .unwrap();
    wait_until(15, "db2 seen as a replica", || async {
        let rows = admin.simple_query("SHOW NODES").await.unwrap();
        rows.iter().any(|m| {
            matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("db2") && r.get(2) == Some("replica"))
        })
    })
    .await;

    // The first receiver takes the switchover's notification and never
    // answers (its timeout is a minute); the switchover does not wait.
    let started = std::time::Instant::now();
    admin
        .simple_query("SWITCHOVER TO db2")
        .await
        .expect("switchover");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "switchover took {took:?}");
    wait_until(10, "the healthy receiver told", || async {
        rx.on("/ok")
            .iter()
            .any(|g| g.body["kind"] == "switchover_started")
    })
    .await;
    assert_eq!(rx.on("/hang").len(), 1);

    // Meanwhile rejected reloads pile up behind it: the console answers
    // each at once, and what does not fit in the queue is dropped.
    std::fs::write(&path, "this is not toml = = =").unwrap();
    for _ in 0..(switchyard::notify::QUEUE + 6) {
        let e = admin.simple_query("RELOAD").await;
        assert!(e.is_err(), "a bad file is rejected");
    }
    let c = proxy.client().await;
    c.simple_query("SELECT 1")
        .await
        .expect("clients are served");
    // One rejection is stuck in the hanging request, QUEUE wait behind it,
    // and the rest are dropped; nothing was delivered there or failed.
    wait_until(5, "the overflow counted", || async {
        outcome(http, "dropped").await >= 5.0
    })
    .await;
    assert_eq!(rx.on("/hang").len(), 1, "one attempt under way");
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
