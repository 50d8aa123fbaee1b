//! HTTP for orchestrators and operators: `/healthz` (the process serves),
//! `/readyz` (a primary is routable: a sidecar's readiness probe), `/status`
//! (nodes, JSON), `/events?since=N` (the incident timeline, JSON) and
//! `/metrics` (Prometheus text). Loopback by default (`[http] listen`).
//! Handlers are pure functions of the cluster state, tested without sockets.
//! [`check`] is the other side: the `switchyard healthcheck` client.

pub mod check;

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, Snapshot};
use crate::events::Event;

/// The process-wide Prometheus recorder: a recorder can be installed once per
/// process, and tests run several proxies in one.
fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        })
        .as_ref()
}

/// Serves HTTP on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let metrics = prometheus();
    crate::metrics::describe();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = shutdown.cancelled() => return,
        };
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (status, content_type, body) =
                    respond(req.uri().path(), req.uri().query(), &cluster, metrics);
                let response = Response::builder()
                    .status(status)
                    .header("content-type", content_type)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The answer to one request: status, content type, body.
pub fn respond(
    path: &str,
    query: Option<&str>,
    cluster: &Cluster,
    metrics: Option<&PrometheusHandle>,
) -> (StatusCode, &'static str, String) {
    const JSON: &str = "application/json";
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/healthz" => (StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" => match readiness(&cluster.snapshot()) {
            Ok(()) => (StatusCode::OK, TEXT, "ready\n".into()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        "/status" => {
            let snap = cluster.snapshot();
            let body = serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "primary": snap.primary.map(|p| cluster.nodes()[p].name.clone()),
                "nodes": *cluster.status(),
            });
            (StatusCode::OK, JSON, body.to_string())
        }
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
        "/metrics" => match metrics {
            Some(h) => (StatusCode::OK, "text/plain; version=0.0.4", h.render()),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "metrics recorder not installed\n".into(),
            ),
        },
        _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

/// Ready while a primary is routable.
pub fn readiness(snap: &Snapshot) -> Result<(), &'static str> {
    match snap.primary {
        Some(_) => Ok(()),
        None => Err("no primary is routable (starting up, or a failover is in progress)"),
    }
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
    use crate::config::Node;
    use crate::events::{EventKind, Events};

    fn cluster() -> Cluster {
        let nodes = vec![Node {
            name: "db1".into(),
            addr: "127.0.0.1:1".into(),
            priority: 0,
        }];
        Cluster::new(nodes, Arc::new(Events::new(10)))
    }

    #[test]
    fn readiness_follows_the_primary() {
        assert!(readiness(&Snapshot::default()).is_err());
        assert!(readiness(&Snapshot {
            primary: Some(0),
            ..Default::default()
        })
        .is_ok());
    }

    #[test]
    fn endpoints_answer_from_cluster_state() {
        let c = cluster();
        assert_eq!(respond("/healthz", None, &c, None).0, StatusCode::OK);
        assert_eq!(
            respond("/readyz", None, &c, None).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        c.publish(Snapshot {
            primary: Some(0),
            ..Default::default()
        });
        assert_eq!(respond("/readyz", None, &c, None).0, StatusCode::OK);
        let (_, _, status) = respond("/status", None, &c, None);
        assert!(status.contains("\"primary\":\"db1\""), "{status}");
        c.events.record(EventKind::NodeUp, Some("db1"), "first");
        c.events.record(EventKind::NodeDown, Some("db1"), "second");
        let (_, _, all) = respond("/events", None, &c, None);
        assert!(all.contains("first") && all.contains("second"));
        let (_, _, later) = respond("/events", Some("since=1"), &c, None);
        assert!(
            !later.contains("first") && later.contains("node_down"),
            "{later}"
        );
        assert_eq!(respond("/nope", None, &c, None).0, StatusCode::NOT_FOUND);
    }
}
