//! The status page at `/`, in a real browser: Debian's `chromium`, headless,
//! against a proxy in front of a primary and replica of its own. After the
//! primary crashes, the page shows the promoted replica as the primary and
//! the failover on its timeline, and markup sent as data stays text.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{Proxy, USERS};
use switchyard::local_cluster::{LocalCluster, StopMode, CLUSTER_PASSWORD, CLUSTER_USER};

/// Virtual time the page runs before the browser reads it: two refreshes
/// (every 2 s). Virtual time waits for fetches in flight and skips the
/// idle rest, so this takes well under a second of real time.
const BUDGET_MS: u32 = 6000;

/// A node name an attacker might wish on the page: `SWITCHOVER TO` it is
/// refused, and the refusal's event message quotes it.
const MARKUP: &str = "<img src=x id=injected>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_promoted_primary_and_the_failover() {
    let browser = chromium();
    let (_cluster, proxy, http) = failed_over(true).await;

    let (code, head, body) = common::http_request_with(http, "GET", "/", &[]).await;
    assert_eq!(code, 200, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    let csp = header(&head, "content-security-policy").unwrap_or_else(|| panic!("{head}"));
    assert!(csp.starts_with("default-src 'none';"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    // Self-contained: no URL of another host to load anything from.
    assert!(!body.contains("://"), "an absolute URL in the page");

    let dom = render(&browser, http, &["--dump-dom"]).await;
    assert_eq!(text_of(&dom, "primary"), "db2", "{dom}");
    let db2 = start_tag(&dom, r#"data-node="db2""#);
    assert!(db2.contains(r#"data-role="primary""#), "{db2}");
    assert!(db2.contains(r#"data-state="up""#), "{db2}");
    let db1 = start_tag(&dom, r#"data-node="db1""#);
    assert!(db1.contains(r#"data-state="down""#), "{db1}");
    start_tag(&dom, r#"data-database="app" data-user="app""#);
    assert!(dom.contains(r#"<body data-stale="false">"#), "{dom}");
    // Newest first: the failover's writes_resumed above its start.
    let at = |kind: &str| {
        dom.find(&format!("data-kind=\"{kind}\""))
            .unwrap_or_else(|| panic!("no {kind} event: {dom}"))
    };
    assert!(
        at("writes_resumed") < at("failover_started"),
        "events not newest first: {dom}"
    );
    assert!(dom.contains("&lt;img src=x id=injected&gt;"), "{dom}");
    assert!(
        !dom.contains(r#"id="injected""#),
        "server data became markup"
    );
    proxy.shutdown().await;
}

/// Regenerates docs/status-page.png:
/// `cargo test --test status_page -- --ignored screenshot`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/status-page.png"]
async fn screenshot() {
    let browser = chromium();
    let (_cluster, proxy, http) = failed_over(false).await;
    let png = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png");
    let shot = format!("--screenshot={}", png.display());
    render(&browser, http, &[&shot, "--window-size=1200,760"]).await;
    assert!(png.exists(), "no screenshot at {}", png.display());
    proxy.shutdown().await;
}

/// The browser, or a failure that says how to get it: this test never
/// skips silently.
fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
        .expect(
            "chromium is not installed; the status page is tested in it: apt-get install chromium",
        )
}

/// A proxy with HTTP in front of a pair of its own (db1 primary, db2
/// replica) after db1 crashed and db2 took over. A client ran a query first
/// (a pool to show) and, with `markup`, an admin asked to switch over to
/// [`MARKUP`].
async fn failed_over(markup: bool) -> (Arc<LocalCluster>, Proxy, SocketAddr) {
    let (cluster, primary, replica) = common::private_pair().await;
    let toml = format!(
        "{USERS}\n[cluster]\nnodes = [{{ name = \"db1\", addr = \"{}\" }}, \
         {{ name = \"db2\", addr = \"{}\" }}]\nuser = \"{CLUSTER_USER}\"\n\
         password = \"{CLUSTER_PASSWORD}\"\n",
        primary.addr(),
        replica.addr()
    );
    let (proxy, http) = Proxy::start_with_http(cluster.clone(), &toml).await;
    until_status(15, "db1 primary, db2 an up replica", http, |s| {
        s["primary"] == "db1"
            && s["nodes"][1]["role"] == "replica"
            && s["nodes"][1]["state"] == "up"
    })
    .await;
    proxy.client().await.simple_query("SELECT 1").await.unwrap();
    if markup {
        let admin = proxy
            .client_as("admin", "adminpw", "switchyard")
            .await
            .unwrap();
        let refused = admin
            .simple_query(&format!("SWITCHOVER TO \"{MARKUP}\""))
            .await;
        assert!(
            refused.is_err(),
            "a switchover to a node that does not exist"
        );
    }
    tokio::task::spawn_blocking(move || primary.stop(StopMode::Immediate))
        .await
        .unwrap()
        .expect("crash db1");
    until_status(25, "db2 promoted", http, |s| s["primary"] == "db2").await;
    (cluster, proxy, http)
}

/// Polls `/status` until `ok` holds, for at most `secs`.
async fn until_status(
    secs: u64,
    what: &str,
    http: SocketAddr,
    ok: impl Fn(&serde_json::Value) -> bool,
) {
    let ok = &ok;
    common::wait_until(secs, what, || async move {
        let (_, body) = common::http_request(http, "GET", "/status").await;
        serde_json::from_str(&body).is_ok_and(|s| ok(&s))
    })
    .await;
}

/// Runs headless chromium on the page with `args` (what to output) and
/// returns its standard output. A profile of its own, so runs never share
/// state; `--no-sandbox` because tests run as root in CI.
async fn render(browser: &Path, http: SocketAddr, args: &[&str]) -> String {
    let profile = std::env::temp_dir().join(common::unique("status_page_chromium"));
    let run = tokio::process::Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={BUDGET_MS}"))
        .args(args)
        .arg(format!("http://{http}/"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("chromium finished within 20 s")
        .expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of header `name` (lower case) in a lower-cased response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The whole start tag holding `attr`, e.g. `<tr data-node="db2" ...>`.
fn start_tag<'a>(dom: &'a str, attr: &str) -> &'a str {
    let at = dom
        .find(attr)
        .unwrap_or_else(|| panic!("no element with {attr}: {dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let end = at + dom[at..].find('>').unwrap();
    &dom[start..=end]
}

/// The text directly inside the element with id `id`.
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let tag = start_tag(dom, &format!("id=\"{id}\""));
    let at = dom.find(tag).unwrap() + tag.len();
    &dom[at..at + dom[at..].find('<').unwrap_or(0)]
}
