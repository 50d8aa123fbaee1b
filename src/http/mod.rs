//! HTTP for orchestrators and operators: `/healthz` (the process serves),
//! `/readyz` (a primary is routable: a sidecar's readiness probe), `/status`
//! (nodes, JSON), `/events?since=N` (the incident timeline, JSON),
//! `/metrics` (Prometheus text) and `/`, a status page for people that
//! reads `/status` and `/events` from the browser. Loopback by default
//! (`[http] listen`).
//! Handlers are pure functions of the cluster state, tested without sockets.
//! [`check`] is the other side: the `switchyard healthcheck` client.

pub mod check;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::cluster::Snapshot;
use crate::context::Context;
use crate::events::Event;

/// How long a client has to send a whole request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The content type of the status page, the one HTML answer.
const HTML: &str = "text/html; charset=utf-8";

/// The status page: one file with its script and style inline, so it needs
/// no build step and loads nothing from elsewhere.
const STATUS_PAGE: &str = include_str!("status_page.html");

/// Serves HTTP on `listener` until the proxy shuts down: at most
/// `http.max_connections` at once (more are closed on accept), one request
/// per connection, whose head must arrive within [`HEADER_TIMEOUT`]. A
/// slow or silent client therefore holds a connection for seconds, never
/// for ever, and cannot run the process out of file descriptors, which
/// the PostgreSQL port shares.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(
        ctx.config().http.max_connections,
    ));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "http: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = ctx.shutdown().cancelled() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "http: connection limit reached, closed");
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // hyper's header timeout runs from the first byte: a client that
            // sends none is given the same time to start.
            if tokio::time::timeout(HEADER_TIMEOUT, stream.readable())
                .await
                .is_err()
            {
                return;
            }
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let ctx = ctx.clone();
                async move {
                    let (status, content_type, body) = if req.method() == Method::POST {
                        post(&req, peer, &ctx).await
                    } else {
                        respond(req.uri().path(), req.uri().query(), &ctx)
                    };
                    // nosniff: a browser reads each answer as the type it
                    // names, never JSON or text as a page.
                    let mut response = Response::builder()
                        .status(status)
                        .header("content-type", content_type)
                        .header(hyper::header::X_CONTENT_TYPE_OPTIONS, "nosniff");
                    if content_type == HTML {
                        response =
                            response.header(hyper::header::CONTENT_SECURITY_POLICY, page_policy());
                    }
                    if status == StatusCode::UNAUTHORIZED {
                        // Bearer is the one scheme any endpoint takes (RFC 6750).
                        response = response.header(
                            hyper::header::WWW_AUTHENTICATE,
                            r#"Bearer realm="switchyard""#,
                        );
                    }
                    let response = response
                        .body(Full::new(Bytes::from(body)))
                        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The answer to one request: status, content type, body.
pub fn respond(
    path: &str,
    query: Option<&str>,
    ctx: &Context,
) -> (StatusCode, &'static str, String) {
    const JSON: &str = "application/json";
    const TEXT: &str = "text/plain; charset=utf-8";
    let cluster = &ctx.cluster();
    match path {
        "/" => (StatusCode::OK, HTML, STATUS_PAGE.into()),
        "/healthz" => (StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" => match readiness(&cluster.snapshot(), held(cluster).as_deref()) {
            Ok(()) => (StatusCode::OK, TEXT, "ready\n".into()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        "/status" => (StatusCode::OK, JSON, status_json(ctx).to_string()),
        "/events" => {
            let since = query
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("since=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let events: Vec<serde_json::Value> =
                cluster.events.since(since).iter().map(event_json).collect();
            (
                StatusCode::OK,
                JSON,
                serde_json::Value::Array(events).to_string(),
            )
        }
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            crate::metrics::render(ctx),
        ),
        _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

/// The status page's Content-Security-Policy: its own inline script and
/// style, named by their hashes, and fetches to the origin that served it.
/// Nothing else loads or runs, so even markup that got into the page could
/// not act.
fn page_policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            inline_hash(STATUS_PAGE, "script"),
            inline_hash(STATUS_PAGE, "style"),
        )
    })
}

/// The CSP source `'sha256-…'` of the text between the first `<tag>` and
/// `</tag>` of `page`, hashed as the browser hashes an inline element.
fn inline_hash(page: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = page.find(&open).map(|i| i + open.len());
    let end = page.find(&format!("</{tag}>"));
    let text = match (start, end) {
        (Some(s), Some(e)) if s <= e => &page[s..e],
        _ => "",
    };
    format!(
        "'sha256-{}'",
        STANDARD.encode(Sha256::digest(text.as_bytes()))
    )
}

/// `POST /switchover[?to=node]`: a planned switchover, answered when done.
/// With `[http] switchover_token` set, only that bearer token allows it,
/// from anywhere (loopback too: a sidecar's neighbours, a mesh proxy and an
/// application's SSRF all arrive from loopback); without one, only loopback.
async fn post(
    req: &Request<hyper::body::Incoming>,
    peer: SocketAddr,
    ctx: &Context,
) -> (StatusCode, &'static str, String) {
    const JSON: &str = "application/json";
    if req.uri().path() != "/switchover" {
        return (
            StatusCode::NOT_FOUND,
            JSON,
            r#"{"error":"not found"}"#.into(),
        );
    }
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = ctx.config().http.switchover_token.clone();
    match control_access(peer, token.as_deref(), authorization) {
        Access::Allowed => {}
        Access::Unauthorized => {
            let body = r#"{"error":"POST /switchover needs Authorization: Bearer <[http] switchover_token>"}"#;
            return (StatusCode::UNAUTHORIZED, JSON, body.into());
        }
        Access::Forbidden => {
            let body = r#"{"error":"POST /switchover is for loopback clients only while [http] switchover_token is not set"}"#;
            return (StatusCode::FORBIDDEN, JSON, body.into());
        }
    }
    let target = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("to=")))
        .map(str::to_string);
    let reason = format!("POST /switchover from {peer}");
    match ctx.cluster().switchover(target, reason).await {
        Ok(primary) => (
            StatusCode::OK,
            JSON,
            serde_json::json!({ "primary": primary }).to_string(),
        ),
        Err(e) => (
            status_of(e.sqlstate()),
            JSON,
            serde_json::json!({ "error": e.to_string() }).to_string(),
        ),
    }
}

/// The HTTP status of a refused control-plane request, from its SQLSTATE
/// class: `55` (object not in prerequisite state) conflicts with the
/// cluster's current state.
fn status_of(sqlstate: &str) -> StatusCode {
    match sqlstate.get(..2) {
        Some("55") => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Whether a request may use a control endpoint (one that changes the
/// cluster: `POST /switchover`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Go ahead.
    Allowed,
    /// A token is configured and the request did not carry it (HTTP 401).
    Unauthorized,
    /// No token is configured and the client is not on loopback (HTTP 403).
    Forbidden,
}

/// A configured token is always required, from any address (loopback too:
/// a sidecar's neighbours, a mesh proxy and an application's SSRF all
/// arrive from loopback); without one, only loopback clients may.
/// `authorization` is the header's value as sent.
pub fn control_access(
    peer: SocketAddr,
    token: Option<&str>,
    authorization: Option<&str>,
) -> Access {
    let carries = |t: &str| {
        bearer(authorization).is_some_and(|b| constant_time_eq(t.as_bytes(), b.as_bytes()))
    };
    match token {
        Some(t) if carries(t) => Access::Allowed,
        Some(_) => Access::Unauthorized,
        None if crate::config::is_loopback(peer.ip()) => Access::Allowed,
        None => Access::Forbidden,
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme's
/// case does not matter, RFC 7235).
fn bearer(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `/status`: nodes, pools, clients, a config summary, the version.
fn status_json(ctx: &Context) -> serde_json::Value {
    let snap = ctx.cluster().snapshot();
    let config = ctx.config();
    let pools: Vec<serde_json::Value> = ctx
        .pools()
        .all()
        .into_iter()
        .map(|((database, user), pool)| {
            let c = pool.counts();
            let t = pool.stats().totals();
            serde_json::json!({
                "database": database, "user": user, "size": c.size, "idle": c.idle,
                "opening": c.opening, "held": c.held, "paused": c.paused,
                "transactions": t.xacts, "queries": t.queries,
            })
        })
        .collect();
    let mut clients = serde_json::Map::new();
    for c in ctx.clients().all() {
        let n = clients.entry(c.state().as_str()).or_insert(0.into());
        *n = (n.as_u64().unwrap_or(0) + 1).into();
    }
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "primary": snap.primary.map(|p| ctx.cluster().nodes()[p].name.clone()),
        "nodes": *ctx.cluster().status(),
        "pools": pools,
        "clients": clients,
        "event_loop_lag_seconds": ctx.loop_lag().snapshot().last,
        "latency": latency_json(ctx),
        "write_unavailable_seconds": ctx.cluster().holds().unavailable(std::time::Instant::now()).as_secs_f64(),
        "coordination": ctx.cluster().coordination(),
        "patroni": ctx.cluster().patroni().as_deref(),
        "config": {
            "pool_mode": crate::config::settings(&config).into_iter().find(|s| s.0 == "pool_mode").map(|s| s.1),
            "failover_mode": format!("{:?}", config.failover.mode).to_lowercase(),
            "nodes": config.nodes().iter().map(|n| serde_json::json!({"name": n.name, "addr": n.addr})).collect::<Vec<_>>(),
        },
    })
}

/// Percentiles per latency series and window, seconds:
/// `{"query": {"1m": {"count", "p50", ...}, "5m": ...}, ...}`.
fn latency_json(ctx: &Context) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (series, window, p) in ctx.latency_windows() {
        let entry = out
            .entry(series)
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        entry[window] = serde_json::to_value(p).unwrap_or_default();
    }
    out.into()
}

/// Ready while a primary is routable. Otherwise the reason, with why this
/// proxy does not fail over when coordination holds it back (`held`: e.g.
/// too few proxies see the primary down), which a failover in progress
/// would not explain.
pub fn readiness(snap: &Snapshot, held: Option<&str>) -> Result<(), String> {
    match (snap.primary, held) {
        (Some(_), _) => Ok(()),
        (None, Some(why)) => Err(format!("no primary is routable: {why}")),
        (None, None) => {
            Err("no primary is routable (starting up, or a failover is in progress)".into())
        }
    }
}

/// Why coordination holds this proxy back from failing over, if it does.
fn held(cluster: &crate::cluster::Cluster) -> Option<String> {
    cluster.coordination().and_then(|c| c.held)
}

fn event_json(e: &Event) -> serde_json::Value {
    let at =
        e.at.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
    serde_json::json!({ "seq": e.seq, "at_unix": at, "kind": e.kind.as_str(), "node": e.node, "message": e.message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;

    fn context() -> Context {
        let config = crate::config::load_str(
            "[cluster]\nnodes = [{ name = \"db1\", addr = \"127.0.0.1:1\" }]\n[[users]]\nname = \"app\"\npassword = \"pw\"\n",
        )
        .unwrap();
        Context::new(config, Default::default()).unwrap()
    }

    #[test]
    fn the_status_page_is_html_that_loads_nothing_from_elsewhere() {
        let (code, content_type, page) = respond("/", None, &context());
        assert_eq!((code, content_type), (StatusCode::OK, HTML));
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(!page.contains("://"), "an absolute URL in the page");
        // One inline script and one style, the two the policy hashes; a
        // style attribute or inline handler would be blocked by it.
        assert_eq!(page.matches("<script").count(), 1);
        assert_eq!(page.matches("<style").count(), 1);
        assert!(!page.contains(" style=") && !page.contains(" onload="));
        // Server data goes in as text only.
        assert!(!page.contains("innerHTML") && !page.contains("insertAdjacentHTML"));
    }

    #[test]
    fn the_page_policy_allows_its_own_script_and_style_only() {
        assert_eq!(
            inline_hash("<p><script>x</script></p>", "script"),
            "'sha256-LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE='"
        );
        let policy = page_policy();
        assert!(policy.starts_with("default-src 'none';"), "{policy}");
        assert!(policy.contains("connect-src 'self';"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
        for tag in ["script", "style"] {
            let hash = inline_hash(STATUS_PAGE, tag);
            assert!(policy.contains(&format!("{tag}-src {hash};")), "{policy}");
        }
    }

    #[test]
    fn a_refused_switchover_is_a_conflict() {
        let refused = crate::cluster::SwitchoverError::NoFitReplica;
        assert_eq!(status_of(refused.sqlstate()), StatusCode::CONFLICT);
    }

    #[test]
    fn switchover_needs_the_token_when_set_else_loopback() {
        use Access::{Allowed, Forbidden, Unauthorized};
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1".parse().unwrap();
        let local6: SocketAddr = "[::1]:1".parse().unwrap();
        let remote: SocketAddr = "10.0.0.5:1".parse().unwrap();
        let remote_mapped: SocketAddr = "[::ffff:10.0.0.5]:1".parse().unwrap();
        let token = Some("s3cret");
        let cases = [
            // No token configured: loopback only.
            (local, None, None, Allowed),
            (local6, None, None, Allowed),
            (mapped, None, None, Allowed),
            (remote, None, None, Forbidden),
            (remote_mapped, None, None, Forbidden),
            (remote, None, Some("Bearer x"), Forbidden),
            // A token configured is required from everywhere, loopback too.
            (remote, token, Some("Bearer s3cret"), Allowed),
            (remote, token, Some("bearer  s3cret "), Allowed),
            (remote, token, Some("Bearer s3cre"), Unauthorized),
            (remote, token, None, Unauthorized),
            (local, token, None, Unauthorized),
            (mapped, token, None, Unauthorized),
            (local, token, Some("Bearer wrong"), Unauthorized),
            (local, token, Some("Bearer "), Unauthorized),
            (local, token, Some("Basic s3cret"), Unauthorized),
            (local, token, Some("s3cret"), Unauthorized),
            (local, token, Some("Bearer s3cret"), Allowed),
        ];
        for (peer, token, authorization, want) in cases {
            assert_eq!(
                control_access(peer, token, authorization),
                want,
                "{peer} {token:?} {authorization:?}"
            );
        }
    }

    #[test]
    fn readiness_follows_the_primary_and_says_why_a_failover_is_held() {
        assert!(readiness(&Snapshot::default(), None).is_err());
        let serving = Snapshot {
            primary: Some(0),
            ..Default::default()
        };
        assert!(readiness(&serving, None).is_ok());
        let why = "1 of 3 live proxies see db1 down: no majority, no failover";
        assert_eq!(readiness(&serving, Some(why)), Ok(()));
        let not_ready = readiness(&Snapshot::default(), Some(why)).unwrap_err();
        assert!(not_ready.ends_with(why), "{not_ready}");
    }

    #[test]
    fn readyz_says_why_coordination_holds_a_failover_back() {
        let ctx = context();
        let why = "1 of 3 live proxies see db1 down: no majority, no failover";
        ctx.cluster()
            .set_coordination(crate::cluster::coord::CoordinationStatus {
                held: Some(why.into()),
                ..Default::default()
            });
        let (code, _, body) = respond("/readyz", None, &ctx);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, format!("not ready: no primary is routable: {why}\n"));
    }

    #[test]
    fn endpoints_answer_from_cluster_state() {
        let ctx = context();
        let c = &ctx.cluster();
        assert_eq!(respond("/healthz", None, &ctx).0, StatusCode::OK);
        assert_eq!(
            respond("/readyz", None, &ctx).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        c.publish(Snapshot {
            primary: Some(0),
            ..Default::default()
        });
        assert_eq!(respond("/readyz", None, &ctx).0, StatusCode::OK);
        let (_, _, status) = respond("/status", None, &ctx);
        assert!(status.contains("\"primary\":\"db1\""), "{status}");
        c.events.record(EventKind::NodeUp, Some("db1"), "first");
        c.events.record(EventKind::NodeDown, Some("db1"), "second");
        let (_, _, all) = respond("/events", None, &ctx);
        assert!(all.contains("first") && all.contains("second"));
        let (_, _, later) = respond("/events", Some("since=1"), &ctx);
        assert!(
            !later.contains("first") && later.contains("node_down"),
            "{later}"
        );
        let (code, _, metrics) = respond("/metrics", None, &ctx);
        assert_eq!(code, StatusCode::OK);
        assert!(
            metrics.contains("switchyard_events_total{kind=\"node_down\"} 1"),
            "{metrics}"
        );
        assert_eq!(respond("/nope", None, &ctx).0, StatusCode::NOT_FOUND);
    }
}
