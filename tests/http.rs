//! The HTTP endpoints of a running proxy, over a real socket.

mod common;

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    common::http_request(addr, "GET", path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_status_events_and_metrics() {
    let cluster = common::cluster();
    let toml = format!(
        "{}\n[cluster]\nnodes = [\"{}\", \"{}\"]\nuser = \"switchyard\"\npassword = \"switchyard\"\n",
        common::USERS,
        cluster.primary().addr(),
        cluster.replicas()[0].addr()
    );
    let config = switchyard::config::load_str(&toml).unwrap();
    let pg = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (pg_addr, http_addr) = (pg.local_addr().unwrap(), http.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(switchyard::run_with_http(config, pg, Some(http), async {
        let _ = stopped.await;
    }));

    assert_eq!(get(http_addr, "/healthz").await.0, 200);
    // Ready once the first health checks found the primary.
    let mut ready = 0;
    for _ in 0..50 {
        ready = get(http_addr, "/readyz").await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 200);
    let (_, status) = get(http_addr, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["primary"],
        serde_json::json!(cluster.primary().addr())
    );
    assert_eq!(status["nodes"][1]["role"], "replica");
    assert!(
        status["event_loop_lag_seconds"].as_f64().is_some(),
        "{status}"
    );
    let (_, events) = get(http_addr, "/events?since=0").await;
    assert!(events.contains("writes_resumed"), "{events}");
    // Traffic moves the counters and the latency summary.
    let url = format!(
        "host=127.0.0.1 port={} user=app password=app dbname=app",
        pg_addr.port()
    );
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.simple_query("SELECT 1").await.unwrap();
    let before = scrape(http_addr).await;
    for _ in 0..10 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    let _ = c.simple_query("SELECT 1/0").await.unwrap_err();
    c.batch_execute("LISTEN sy_http").await.unwrap();
    let after = scrape(http_addr).await;
    let app = [("database", "app"), ("user", "app")];
    let queries = |m: &Metrics| value(m, "switchyard_queries_total", &app);
    assert!(
        queries(&after) >= queries(&before) + 11.0,
        "queries_total {} -> {}",
        queries(&before),
        queries(&after)
    );
    let count = |m: &Metrics| value(m, "switchyard_query_duration_seconds_count", &[]);
    assert!(count(&after) >= count(&before) + 11.0);
    // The lag tickers have ticked (every 100 ms), each tick in one bucket.
    let ticks = value(&after, "switchyard_event_loop_lag_seconds_count", &[]);
    assert!(ticks >= 1.0, "no event-loop tick recorded");
    assert_eq!(
        value(
            &after,
            "switchyard_event_loop_lag_seconds_bucket",
            &[("le", "+Inf")]
        ),
        ticks
    );
    // Latency histograms: cumulative buckets ending with the count.
    let buckets: Vec<f64> = after
        .iter()
        .filter(|s| s.name == "switchyard_query_duration_seconds_bucket")
        .map(|s| s.value)
        .collect();
    assert_eq!(buckets.len(), 16, "15 bounds and +Inf");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&count(&after)));
    assert!(value(&after, "switchyard_query_duration_seconds_sum", &[]) > 0.0);
    // The last minute's percentiles are in /status.
    let (_, status) = get(http_addr, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let q = &status["latency"]["query"]["1m"];
    assert!(q["count"].as_u64().unwrap() >= 11, "{status}");
    assert!(
        q["p99"].as_f64().unwrap() >= q["p50"].as_f64().unwrap(),
        "{q}"
    );
    assert!(q["p50"].as_f64().unwrap() > 0.0, "{q}");
    assert!(
        value(&after, "switchyard_transactions_total", &app)
            > value(&before, "switchyard_transactions_total", &app)
    );
    assert!(
        value(&after, "switchyard_sent_bytes_total", &app)
            > value(&before, "switchyard_sent_bytes_total", &app)
    );
    assert_eq!(
        value(&after, "switchyard_errors_total", &[("class", "22")]),
        1.0,
        "division by zero"
    );
    // PostgreSQL's error is the server's; a wrong password is the proxy's.
    let server_22 = [("class", "22"), ("origin", "server")];
    assert_eq!(
        value(&after, "switchyard_client_errors_total", &server_22),
        1.0
    );
    let bad = url.replace("password=app", "password=wrong");
    assert!(tokio_postgres::connect(&bad, tokio_postgres::NoTls)
        .await
        .is_err());
    let proxy_28 = [("class", "28"), ("origin", "proxy")];
    let m = scrape(http_addr).await;
    assert_eq!(value(&m, "switchyard_client_errors_total", &proxy_28), 1.0);
    assert_eq!(
        value(
            &m,
            "switchyard_client_errors_total",
            &[("class", "22"), ("origin", "proxy")]
        ),
        0.0
    );
    assert_eq!(
        value(&m, "switchyard_write_unavailable_seconds_total", &[]),
        0.0
    );
    assert_eq!(value(&after, "switchyard_pinned_clients", &[]), 1.0);
    assert_eq!(value(&after, "switchyard_pinned_clients_total", &app), 1.0);
    assert_eq!(
        value(&after, "switchyard_clients", &[("state", "idle")]),
        0.0
    );
    assert_eq!(
        value(&after, "switchyard_clients", &[("state", "active")]),
        1.0,
        "the pinned client holds its server"
    );
    let primary = cluster.primary().addr();
    assert_eq!(
        value(&after, "switchyard_node_up", &[("node", &primary)]),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "switchyard_node_role",
            &[("node", &primary), ("role", "primary")]
        ),
        1.0
    );
    let replica = cluster.replicas()[0].addr();
    assert_eq!(
        value(
            &after,
            "switchyard_node_role",
            &[("node", &replica), ("role", "replica")]
        ),
        1.0
    );
    assert!(value(&after, "switchyard_node_timeline", &[("node", &primary)]) >= 1.0);
    assert_eq!(get(http_addr, "/nope").await.0, 404);
    drop(c);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

type Metrics = Vec<switchyard::cluster::hardware::Sample>;

/// Scrapes `/metrics`, checks it parses as Prometheus text and that every
/// declared metric is there with its help text (labelled series appear once
/// they have a value).
async fn scrape(addr: std::net::SocketAddr) -> Metrics {
    let (code, text) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    let samples = switchyard::cluster::hardware::exposition::parse(&text)
        .unwrap_or_else(|e| panic!("/metrics is not Prometheus text: {e}\n{text}"));
    for (name, _, help) in switchyard::metrics::METRICS {
        assert!(
            text.contains(&format!("# HELP {name} {help}")),
            "{name} has no help line"
        );
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} has no type line"
        );
    }
    samples
}

/// The value of the sample `name` whose labels include `labels` (0 if absent).
fn value(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map_or(0.0, |s| s.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_no_primary_is_routable() {
    use switchyard::local_cluster::{StopMode, CLUSTER_PASSWORD, CLUSTER_USER};
    let (cluster, primary, replica) = common::private_pair().await;
    let toml = format!(
        "{}\n[failover]\nmode = \"off\"\n[cluster]\nnodes = [\"{}\", \"{}\"]\nuser = \"{CLUSTER_USER}\"\npassword = \"{CLUSTER_PASSWORD}\"\n",
        common::USERS,
        primary.addr(),
        replica.addr()
    );
    let (_proxy, http) = common::Proxy::start_with_http(cluster.clone(), &toml).await;
    let ready = |code: u16| async move { get(http, "/readyz").await.0 == code };
    common::wait_until(10, "ready with a primary", || ready(200)).await;

    let p = primary.clone();
    tokio::task::spawn_blocking(move || p.stop(StopMode::Immediate))
        .await
        .unwrap()
        .unwrap();
    common::wait_until(10, "not ready without a primary", || ready(503)).await;
    let (_, body) = get(http, "/readyz").await;
    assert!(body.contains("no primary"), "{body}");
    let (_, status) = get(http, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let roles: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["state"].as_str().unwrap())
        .collect();
    assert_eq!(roles[0], "down", "{status}");
    assert_eq!(status["nodes"][1]["role"], "replica");

    let p = primary.clone();
    tokio::task::spawn_blocking(move || p.start())
        .await
        .unwrap()
        .unwrap();
    common::wait_until(20, "ready again", || ready(200)).await;
}

/// Nodes whose health probes hang: both "servers" accept connections and
/// never answer, so the first round of checks lasts the whole
/// `health.timeout`. Meanwhile `/status` lists every configured node, as
/// `unknown`, not nothing; and a shutdown ends at once, without waiting
/// for the probes to time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_whose_probes_hang_are_listed_and_do_not_hold_up_shutdown() {
    let mut silent = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(l.local_addr().unwrap().to_string());
        // Accepts and keeps each connection, and never writes to it.
        silent.push(tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        }));
    }
    let toml = format!(
        "{}\n[health]\ntimeout = \"60s\"\n[cluster]\nnodes = [\"{}\", \"{}\"]\n",
        common::USERS,
        addrs[0],
        addrs[1]
    );
    let config = switchyard::config::load_str(&toml).unwrap();
    let pg = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(switchyard::run_with_http(config, pg, Some(http), async {
        let _ = stopped.await;
    }));

    let (code, status) = get(http_addr, "/status").await;
    assert_eq!(code, 200, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let nodes = status["nodes"].as_array().expect("nodes");
    let listed: Vec<(&str, &str, &str)> = nodes
        .iter()
        .map(|n| {
            let field = |k: &str| n[k].as_str().unwrap_or_default();
            (field("addr"), field("role"), field("state"))
        })
        .collect();
    assert_eq!(
        listed,
        [
            (addrs[0].as_str(), "unknown", "unknown"),
            (addrs[1].as_str(), "unknown", "unknown")
        ],
        "{status}"
    );
    assert_eq!(get(http_addr, "/readyz").await.0, 503);

    stop.send(()).unwrap();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
    assert!(ended.is_ok(), "the shutdown waited for the hanging probes");
    silent.iter().for_each(|t| t.abort());
}

/// With `[http] switchover_token` set, `POST /switchover` needs it from
/// loopback too: without it or with a wrong one the answer is 401 and
/// nothing moves; with it the request reaches the switchover (here refused
/// with 409: the target does not exist).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_needs_the_token_from_loopback_too() {
    let cluster = common::cluster();
    let toml = format!(
        "{}\n[http]\nswitchover_token = \"s3cret-token\"\n[cluster]\nnodes = [{}]\n",
        common::USERS,
        common::nodes_toml(&cluster)
    );
    let (_proxy, http) = common::Proxy::start_with_http(cluster, &toml).await;
    assert!(http.ip().is_loopback());
    common::wait_until(10, "a primary", || async {
        get(http, "/readyz").await.0 == 200
    })
    .await;
    let post = |headers: &'static [&'static str]| {
        common::http_request_with(http, "POST", "/switchover?to=nope", headers)
    };
    for headers in [
        &[][..],
        &["Authorization: Bearer wrong"][..],
        &["Authorization: Bearer "][..],
        &["Authorization: Basic czNjcmV0LXRva2Vu"][..],
    ] {
        let (code, head, body) = post(headers).await;
        assert_eq!(code, 401, "{headers:?}: {body}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{headers:?}: {head}"
        );
        assert!(!body.contains("s3cret-token"), "{body}");
    }
    let (code, _, body) = post(&["Authorization: Bearer s3cret-token"]).await;
    assert_eq!(code, 409, "the token lets the request through: {body}");
    assert!(body.contains("nope"), "{body}");
}
