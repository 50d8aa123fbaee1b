//! A proxy in this process in front of a [`super::patroni::PatroniCluster`]'s
//! members, and reading its `/status`: what the Patroni tests share (the
//! Patroni harness itself is also used by a benchmark, which has none of
//! this module's helpers).

/// A proxy (with its HTTP endpoints) in this process, in front of a Patroni
/// cluster's members: its nodes are Patroni's, so no `LocalCluster` is
/// involved.
pub struct RunningProxy {
    pub addr: std::net::SocketAddr,
    pub http: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningProxy {
    pub async fn start(toml: &str) -> RunningProxy {
        let config = switchyard::config::load_str(toml).expect("test config is valid");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            switchyard::listener::run_with_http(config, listener, Some(http), shutdown)
                .await
                .expect("proxy runs");
        });
        RunningProxy {
            addr,
            http: http_addr,
            stop,
            task,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// `/status` of the proxy whose HTTP endpoints are at `http`, parsed.
pub async fn status(http: std::net::SocketAddr) -> serde_json::Value {
    let (code, body) = super::http_request(http, "GET", "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}
