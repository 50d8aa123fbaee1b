//! Metric names, declared in one place, with their help text. Recording goes
//! through the `metrics` facade: without an installed recorder (the Prometheus
//! exporter arrives with the HTTP endpoint, issue #5) recording costs a no-op.

/// Clients pinned to their server connection in transaction mode, by reason.
pub const PINNED_CLIENTS_TOTAL: &str = "switchyard_pinned_clients_total";
/// Failover events on the incident timeline, by kind.
pub const EVENTS_TOTAL: &str = "switchyard_events_total";

/// Registers the help text of every metric with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(PINNED_CLIENTS_TOTAL, "Clients pinned to one server connection in transaction mode (LISTEN, temp tables, ...), by reason");
    metrics::describe_counter!(
        EVENTS_TOTAL,
        "Topology and failover events recorded on the incident timeline, by kind"
    );
}

/// Counts a client pinned for `reason`.
pub fn client_pinned(reason: &'static str) {
    metrics::counter!(PINNED_CLIENTS_TOTAL, "reason" => reason).increment(1);
}

/// Counts an event of `kind`.
pub fn event(kind: &'static str) {
    metrics::counter!(EVENTS_TOTAL, "kind" => kind).increment(1);
}
