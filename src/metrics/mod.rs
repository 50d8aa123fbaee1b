//! Every metric, declared in one place with its help text, and the scrape
//! that renders them. Values live where they are cheapest to keep (pool
//! counters, the client registry, per-worker histograms, the cluster
//! status); a scrape copies them into this proxy's own Prometheus recorder
//! (not the process-global one: tests run several proxies in one process)
//! and renders it, then appends the histograms: latency ones bucketed from
//! hdrhistogram, which also serves the windowed percentiles of `/status`.

use std::collections::BTreeMap;
use std::fmt::Write;

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

use crate::context::Context;
use crate::sessions::registry::ClientState;

/// The Prometheus type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Fixed cumulative buckets (`_bucket{le=...}`) plus `_sum` and `_count`.
    Histogram,
}

/// Name, type and help text of every metric Switchyard exports.
pub const METRICS: &[(&str, Type, &str)] = &[
    (CLIENTS, Type::Gauge, "Client connections by state: active (holding a server), idle, waiting (for a server connection, paused or held)"),
    (SERVER_CONNECTIONS, Type::Gauge, "Server connections by node and state: active (linked to a client), idle (pooled)"),
    (SERVER_LOGINS, Type::Gauge, "Server connections being opened and logged in, by database and user"),
    (QUERIES, Type::Counter, "Requests answered with ReadyForQuery (a simple query or an extended-protocol batch), by database and user"),
    (TRANSACTIONS, Type::Counter, "Transactions completed, by database and user"),
    (RECEIVED_BYTES, Type::Counter, "Bytes received from clients, by database and user"),
    (SENT_BYTES, Type::Counter, "Bytes sent to clients, by database and user"),
    (ERRORS, Type::Counter, "ErrorResponses sent to clients (from PostgreSQL or from Switchyard), by SQLSTATE class (first two characters)"),
    (CLIENT_ERRORS, Type::Counter, "ErrorResponses sent to clients, by SQLSTATE class and origin: proxy (made by Switchyard) or server (from PostgreSQL)"),
    (QUERY_DURATION, Type::Histogram, "Query latency through the proxy, from request to ReadyForQuery (since start)"),
    (TRANSACTION_DURATION, Type::Histogram, "Transaction latency through the proxy, from the first request to the ReadyForQuery that ends it (since start)"),
    (CHECKOUT_WAIT, Type::Histogram, "Wait for a server connection, per checkout (since start)"),
    (HELD_DURATION, Type::Histogram, "How long a request was held for a routable node (a failover or switchover under way), from its first wait to its release or timeout"),
    (WRITE_UNAVAILABLE, Type::Counter, "Seconds during which at least one request was held waiting for a routable primary"),
    (NODE_UP, Type::Gauge, "1 when the node passes health checks, by node"),
    (NODE_ROLE, Type::Gauge, "1 for the node's current role (primary, replica, unknown), by node and role"),
    (NODE_LAG_BYTES, Type::Gauge, "Replication lag of a replica in bytes, by node"),
    (NODE_LAG_SECONDS, Type::Gauge, "Seconds since a replica replayed its last transaction, by node"),
    (NODE_TIMELINE, Type::Gauge, "PostgreSQL timeline the node is on, by node"),
    (NODE_FENCED, Type::Gauge, "1 when the node is fenced (never routed to until READMIT), by node"),
    (FENCED_NODES, Type::Gauge, "Nodes fenced now"),
    (COORDINATION_UP, Type::Gauge, "With [coordination]: 1 while etcd answers and this proxy's lease is alive"),
    (COORDINATION_LEADER, Type::Gauge, "With [coordination]: 1 while this proxy is the leader (the one that acts)"),
    (SPLIT_BRAIN, Type::Gauge, "1 while two or more nodes report primary on the same timeline: writes to all of them are stopped until only one is left"),
    (FAILOVERS, Type::Counter, "Failovers completed (writes resumed on a new primary after the old one failed)"),
    (REPLICAS_NOT_STREAMING, Type::Counter, "Replicas repointed at a new primary that were not streaming from it within 15 s"),
    (LAST_FAILOVER_SECONDS, Type::Gauge, "Seconds from the start of the last failover to writes resuming"),
    (SWITCHOVERS, Type::Counter, "Planned switchovers completed (admin SWITCHOVER, POST /switchover, hardware)"),
    (LAST_SWITCHOVER_SECONDS, Type::Gauge, "Write pause of the last switchover: from holding new transactions to releasing them on the new primary"),
    (NODE_HARDWARE, Type::Gauge, "1 for the node's current hardware status (ok, degraded, failing, unknown), by node and status"),
    (HELD_QUERIES, Type::Gauge, "Requests held waiting for a routable primary (a failover in progress)"),
    (PINNED_CLIENTS, Type::Gauge, "Clients connected now that are pinned to one server connection in transaction mode"),
    (PINNED_CLIENTS_TOTAL, Type::Counter, "Clients pinned to one server connection in transaction mode (LISTEN, temp tables, SET ROLE, ...), by database, user and reason"),
    (PAUSED_POOLS, Type::Gauge, "Pools paused by the admin console"),
    (PEER_CANCELS, Type::Counter, "CancelRequests whose key names another instance among [[peers]], by outcome: forwarded (sent on, and the peer closed), failed (peer unreachable or not done within 2 s), in_flight (dropped: that key was still being forwarded, a loop of misconfigured peers or a repeat), busy (dropped: 64 forwards under way)"),
    (NOTIFICATIONS, Type::Counter, "Notifications to [[notify]] receivers, by outcome: delivered, retried (an attempt failed and another follows), failed (refused, or out of attempts), dropped (never attempted: the receiver fell too far behind)"),
    (EVENTS, Type::Counter, "Topology and failover events recorded on the incident timeline, by kind"),
    (EVENT_LOOP_LAG, Type::Histogram, "How late the event loops ran a timer task, per tick of a ticker per worker every 100 ms: time every task on that loop waited (a task that does not yield shows here)"),
];

/// Client connections by state.
pub const CLIENTS: &str = "switchyard_clients";
/// Server connections by node and state.
pub const SERVER_CONNECTIONS: &str = "switchyard_server_connections";
/// Server connections logging in.
pub const SERVER_LOGINS: &str = "switchyard_server_logins";
/// Requests completed.
pub const QUERIES: &str = "switchyard_queries_total";
/// Transactions completed.
pub const TRANSACTIONS: &str = "switchyard_transactions_total";
/// Bytes from clients.
pub const RECEIVED_BYTES: &str = "switchyard_received_bytes_total";
/// Bytes to clients.
pub const SENT_BYTES: &str = "switchyard_sent_bytes_total";
/// Errors by SQLSTATE class.
pub const ERRORS: &str = "switchyard_errors_total";
/// Errors by SQLSTATE class and origin.
pub const CLIENT_ERRORS: &str = "switchyard_client_errors_total";
/// Query latency histogram.
pub const QUERY_DURATION: &str = "switchyard_query_duration_seconds";
/// Transaction latency histogram.
pub const TRANSACTION_DURATION: &str = "switchyard_transaction_duration_seconds";
/// Checkout wait histogram.
pub const CHECKOUT_WAIT: &str = "switchyard_checkout_wait_seconds";
/// Held request histogram.
pub const HELD_DURATION: &str = "switchyard_held_query_duration_seconds";
/// Time with a request held for a primary.
pub const WRITE_UNAVAILABLE: &str = "switchyard_write_unavailable_seconds_total";

/// Upper bounds of the latency histograms' buckets, seconds. Fixed, so the
/// series of a fleet of proxies add up.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Node health.
pub const NODE_UP: &str = "switchyard_node_up";
/// Node role.
pub const NODE_ROLE: &str = "switchyard_node_role";
/// Replica lag, bytes.
pub const NODE_LAG_BYTES: &str = "switchyard_node_replication_lag_bytes";
/// Replica lag, seconds.
pub const NODE_LAG_SECONDS: &str = "switchyard_node_replication_lag_seconds";
/// Node timeline.
pub const NODE_TIMELINE: &str = "switchyard_node_timeline";
/// Node fenced.
pub const NODE_FENCED: &str = "switchyard_node_fenced";
/// Fenced node count.
pub const FENCED_NODES: &str = "switchyard_fenced_nodes";
/// Coordination: etcd reachable, lease alive.
pub const COORDINATION_UP: &str = "switchyard_coordination_up";
/// Coordination: this proxy leads.
pub const COORDINATION_LEADER: &str = "switchyard_coordination_leader";
/// 1 while two or more nodes report primary on one timeline.
pub const SPLIT_BRAIN: &str = "switchyard_split_brain";
/// Failovers completed.
pub const FAILOVERS: &str = "switchyard_failovers_total";
/// Repointed replicas that did not stream.
pub const REPLICAS_NOT_STREAMING: &str = "switchyard_replicas_not_streaming_total";
/// Last failover's duration.
pub const LAST_FAILOVER_SECONDS: &str = "switchyard_last_failover_duration_seconds";
/// Switchovers completed.
pub const SWITCHOVERS: &str = "switchyard_switchovers_total";
/// Last switchover's write pause.
pub const LAST_SWITCHOVER_SECONDS: &str = "switchyard_last_switchover_pause_seconds";
/// Node hardware status.
pub const NODE_HARDWARE: &str = "switchyard_node_hardware_status";
/// Held requests.
pub const HELD_QUERIES: &str = "switchyard_held_queries";
/// Pinned clients now.
pub const PINNED_CLIENTS: &str = "switchyard_pinned_clients";
/// Clients pinned, ever.
pub const PINNED_CLIENTS_TOTAL: &str = "switchyard_pinned_clients_total";
/// Paused pools.
pub const PAUSED_POOLS: &str = "switchyard_paused_pools";
/// CancelRequests for peers, by outcome.
pub const PEER_CANCELS: &str = "switchyard_peer_cancels_total";
/// Notification outcomes.
pub const NOTIFICATIONS: &str = "switchyard_notifications_total";
/// Timeline events by kind.
pub const EVENTS: &str = "switchyard_events_total";
/// Event-loop scheduling delay.
pub const EVENT_LOOP_LAG: &str = "switchyard_event_loop_lag_seconds";

/// This proxy's Prometheus recorder, with every metric's help text.
pub fn recorder() -> PrometheusRecorder {
    let rec = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&rec, || {
        for &(name, ty, help) in METRICS {
            match ty {
                Type::Counter => metrics::describe_counter!(name, help),
                Type::Gauge => metrics::describe_gauge!(name, help),
                // Rendered by `render` from where the values live, not by the recorder.
                Type::Histogram => {}
            }
        }
    });
    rec
}

/// The `/metrics` page.
pub fn render(ctx: &Context) -> String {
    let rec = ctx.prometheus(recorder);
    metrics::with_local_recorder(&*rec, || {
        record_clients(ctx);
        record_pools(ctx);
        record_nodes(ctx);
        record_events(ctx);
        for (outcome, n) in ctx.notify_stats().counts() {
            counter!(NOTIFICATIONS, "outcome" => outcome).absolute(n);
        }
        for (outcome, n) in ctx.peer_cancels().counts() {
            counter!(PEER_CANCELS, "outcome" => outcome.as_str()).absolute(n);
        }
        for (class, n) in ctx.errors().snapshot() {
            counter!(ERRORS, "class" => class).absolute(n);
        }
        for ((class, origin), n) in ctx.errors().by_origin() {
            counter!(CLIENT_ERRORS, "class" => class, "origin" => origin.as_str()).absolute(n);
        }
    });
    let mut out = rec.handle().render();
    // Fractional seconds: the recorder's counters are integers.
    let unavailable = ctx.cluster().holds().unavailable(std::time::Instant::now());
    let _ = writeln!(
        out,
        "# HELP {WRITE_UNAVAILABLE} {}\n# TYPE {WRITE_UNAVAILABLE} counter\n{WRITE_UNAVAILABLE} {}",
        help_of(WRITE_UNAVAILABLE),
        unavailable.as_secs_f64()
    );
    // Series that have no value yet (no error of any class so far) still
    // announce themselves, so dashboards and the README list stay checkable.
    for &(name, ty, help) in METRICS {
        if matches!(ty, Type::Counter | Type::Gauge) && !out.contains(&format!("# TYPE {name} ")) {
            let ty = if ty == Type::Counter {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}");
        }
    }
    let names = [
        QUERY_DURATION,
        TRANSACTION_DURATION,
        CHECKOUT_WAIT,
        HELD_DURATION,
    ];
    for (name, h) in names.into_iter().zip(ctx.latency_totals()) {
        histogram(
            &mut out,
            name,
            &LATENCY_BUCKETS,
            &bucketed(&h, &LATENCY_BUCKETS),
        );
    }
    let lag = ctx.loop_lag().snapshot();
    let lag = Buckets {
        cumulative: lag.cumulative,
        sum: lag.sum,
    };
    histogram(&mut out, EVENT_LOOP_LAG, &crate::runtime::LAG_BUCKETS, &lag);
    out
}

fn help_of(name: &str) -> &'static str {
    METRICS.iter().find(|m| m.0 == name).map_or("", |m| m.2)
}

/// A histogram as Prometheus shows it.
struct Buckets {
    /// Cumulative counts per bound, then the total (`+Inf`).
    cumulative: Vec<u64>,
    /// Sum of all samples, seconds.
    sum: f64,
}

/// An hdrhistogram of µs samples as cumulative counts at `bounds` (seconds;
/// exact to the histogram's 1 % resolution) and a sum in seconds.
fn bucketed(h: &hdrhistogram::Histogram<u64>, bounds: &[f64]) -> Buckets {
    let mut cumulative: Vec<u64> = bounds
        .iter()
        .map(|b| {
            if h.is_empty() {
                0
            } else {
                h.count_between(0, (b * 1e6) as u64)
            }
        })
        .collect();
    cumulative.push(h.len());
    Buckets {
        cumulative,
        sum: h.mean() * h.len() as f64 / 1e6,
    }
}

/// Renders a fixed-bucket histogram.
fn histogram(out: &mut String, name: &str, bounds: &[f64], s: &Buckets) {
    let _ = writeln!(out, "# HELP {name} {}", help_of(name));
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (le, n) in bounds
        .iter()
        .map(|b| b.to_string())
        .chain(["+Inf".to_string()])
        .zip(&s.cumulative)
    {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_sum {}", s.sum);
    let _ = writeln!(
        out,
        "{name}_count {}",
        s.cumulative.last().copied().unwrap_or(0)
    );
}

fn record_clients(ctx: &Context) {
    let mut by_state = [0u64; 3];
    let mut pinned = 0;
    let mut servers: BTreeMap<String, u64> = BTreeMap::new();
    for c in ctx.clients().all() {
        by_state[c.state() as usize] += 1;
        pinned += u64::from(c.is_pinned());
        if let Some(link) = c.link() {
            *servers.entry(node_name(ctx, &link.addr)).or_default() += 1;
        }
    }
    for s in [ClientState::Idle, ClientState::Waiting, ClientState::Active] {
        gauge!(CLIENTS, "state" => s.as_str()).set(by_state[s as usize] as f64);
    }
    gauge!(PINNED_CLIENTS).set(pinned as f64);
    for node in live_nodes(ctx) {
        let active = servers.get(&node.name).copied().unwrap_or(0);
        gauge!(SERVER_CONNECTIONS, "node" => node.name.clone(), "state" => "active")
            .set(active as f64);
    }
}

fn record_pools(ctx: &Context) {
    let mut idle: BTreeMap<String, u64> = BTreeMap::new();
    let (mut held, mut paused) = (0, 0);
    for ((db, user), pool) in ctx.pools().all() {
        let t = pool.stats().totals();
        let labels = [("database", db.clone()), ("user", user.clone())];
        counter!(QUERIES, &labels).absolute(t.queries);
        counter!(TRANSACTIONS, &labels).absolute(t.xacts);
        counter!(RECEIVED_BYTES, &labels).absolute(t.received);
        counter!(SENT_BYTES, &labels).absolute(t.sent);
        for (why, n) in pool.stats().pinned_by_reason() {
            let labels = [
                ("database", db.clone()),
                ("user", user.clone()),
                ("reason", why.to_string()),
            ];
            counter!(PINNED_CLIENTS_TOTAL, &labels).absolute(n);
        }
        let counts = pool.counts();
        gauge!(SERVER_LOGINS, &labels).set(counts.opening as f64);
        held += counts.held;
        paused += usize::from(counts.paused);
        for s in pool.idle_servers() {
            *idle.entry(node_name(ctx, &s.addr)).or_default() += 1;
        }
    }
    gauge!(HELD_QUERIES).set(held as f64);
    gauge!(PAUSED_POOLS).set(paused as f64);
    for node in live_nodes(ctx) {
        let n = idle.get(&node.name).copied().unwrap_or(0);
        gauge!(SERVER_CONNECTIONS, "node" => node.name.clone(), "state" => "idle").set(n as f64);
    }
}

fn record_nodes(ctx: &Context) {
    let status = ctx.cluster().status();
    let mut fenced = 0;
    for n in status.iter() {
        let node = n.name.clone();
        gauge!(NODE_UP, "node" => node.clone()).set(f64::from(u8::from(n.state == "up")));
        for role in ["primary", "replica", "unknown"] {
            let on = f64::from(u8::from(n.role == role));
            gauge!(NODE_ROLE, "node" => node.clone(), "role" => role).set(on);
        }
        gauge!(NODE_LAG_BYTES, "node" => node.clone()).set(n.lag_bytes.unwrap_or(0) as f64);
        gauge!(NODE_LAG_SECONDS, "node" => node.clone()).set(n.lag_seconds.unwrap_or(0.0));
        gauge!(NODE_TIMELINE, "node" => node.clone()).set(f64::from(n.timeline));
        for hw in ["ok", "degraded", "failing", "unknown"] {
            let on = f64::from(u8::from(n.hardware == hw));
            gauge!(NODE_HARDWARE, "node" => node.clone(), "status" => hw).set(on);
        }
        gauge!(NODE_FENCED, "node" => node).set(f64::from(u8::from(n.fenced)));
        fenced += usize::from(n.fenced);
    }
    gauge!(FENCED_NODES).set(fenced as f64);
    gauge!(SPLIT_BRAIN).set(f64::from(u8::from(ctx.cluster().split_brain())));
    if let Some(c) = ctx.cluster().coordination() {
        gauge!(COORDINATION_UP).set(f64::from(u8::from(c.connected)));
        gauge!(COORDINATION_LEADER).set(f64::from(u8::from(c.leader)));
    }
}

fn record_events(ctx: &Context) {
    let t = ctx.cluster().events.tallies();
    for (kind, n) in t.by_kind {
        counter!(EVENTS, "kind" => kind).absolute(n);
    }
    counter!(FAILOVERS).absolute(t.failovers);
    counter!(REPLICAS_NOT_STREAMING).absolute(ctx.cluster().replicas_not_streaming());
    gauge!(LAST_FAILOVER_SECONDS).set(t.last_failover_seconds.unwrap_or(0.0));
    counter!(SWITCHOVERS).absolute(t.switchovers);
    gauge!(LAST_SWITCHOVER_SECONDS).set(t.last_switchover_seconds.unwrap_or(0.0));
}

/// Nodes not removed by a reload.
fn live_nodes(ctx: &Context) -> Vec<crate::config::Node> {
    let nodes = ctx.cluster().nodes();
    (0..nodes.len())
        .filter(|&i| !ctx.cluster().is_removed(i))
        .map(|i| nodes[i].clone())
        .collect()
}

/// The configured name of the node at `addr`.
fn node_name(ctx: &Context, addr: &str) -> String {
    ctx.cluster()
        .nodes()
        .iter()
        .find(|n| n.addr == addr)
        .map_or_else(|| addr.to_string(), |n| n.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_described() {
        let mut seen = std::collections::HashSet::new();
        for (name, ty, help) in METRICS {
            assert!(name.starts_with("switchyard_"), "{name}");
            assert!(seen.insert(name), "{name} declared twice");
            assert!(!help.is_empty(), "{name} has no help");
            assert_eq!(
                name.ends_with("_total"),
                *ty == Type::Counter,
                "{name}: counters and only counters end in _total"
            );
        }
    }

    #[test]
    fn latency_histograms_are_cumulative_and_end_with_the_count() {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 2).unwrap();
        for us in [300, 1000, 3000, 3000, 40_000_000] {
            h.record(us).unwrap();
        }
        let s = bucketed(&h, &LATENCY_BUCKETS);
        // le 0.0005: 1; 0.001: 2; 0.005: 4; ...; 30: 4; +Inf: 5.
        assert_eq!(
            s.cumulative,
            vec![1, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5]
        );
        assert!((s.sum - 40.0073).abs() < 0.5, "{}", s.sum);
        let mut out = String::new();
        histogram(&mut out, QUERY_DURATION, &LATENCY_BUCKETS, &s);
        assert!(out.contains("# TYPE switchyard_query_duration_seconds histogram"));
        assert!(out.contains("switchyard_query_duration_seconds_bucket{le=\"0.001\"} 2"));
        assert!(out.contains("switchyard_query_duration_seconds_bucket{le=\"+Inf\"} 5"));
        assert!(out.contains("switchyard_query_duration_seconds_count 5"));
        let empty = bucketed(
            &hdrhistogram::Histogram::<u64>::new(2).unwrap(),
            &LATENCY_BUCKETS,
        );
        assert!(empty.cumulative.iter().all(|&n| n == 0) && empty.sum == 0.0);
    }
}
