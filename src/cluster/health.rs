//! Probing one node over a persistent check connection: role, timeline, WAL
//! positions, replication state, in one round trip; plus the heartbeat the
//! primary writes so replicas can witness a live primary (docs/failover.md).

use std::time::{Duration, Instant};

use super::view::{Probe, Role};
use crate::pool::server_conn::{ConnectError, Login, ServerConn};

/// One query, one round trip. The timeline of a primary comes from its current
/// WAL file name (`pg_control_checkpoint()` lags until the post-promotion
/// checkpoint); a replica's from its WAL receiver, else its last checkpoint.
const PROBE_SQL: &str = "SELECT r, \
  CASE WHEN r THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver), (SELECT timeline_id FROM pg_control_checkpoint())) \
       ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
  ((CASE WHEN r THEN COALESCE(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) ELSE pg_current_wal_lsn() END) - '0/0')::bigint, \
  ((CASE WHEN r THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END) - '0/0')::bigint, \
  COALESCE((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false), \
  CASE WHEN r THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END, \
  current_setting('synchronous_standby_names') <> '' \
  FROM pg_is_in_recovery() AS r";

/// A tiny WAL record on the primary; replicas receiving it prove the primary lives.
const HEARTBEAT_SQL: &str = "SELECT pg_logical_emit_message(false, 'switchyard', 'heartbeat')";

/// The check connection of one node.
pub struct Checker {
    addr: String,
    login: Login,
    /// TLS as `[cluster.tls]` says, the same as pooled connections.
    tls: crate::tls::SharedConnector,
    conn: Option<ServerConn>,
    heartbeat_failed: bool,
}

impl Checker {
    /// A checker for `addr` logging in with `login` over `tls`.
    pub fn new(addr: String, login: Login, tls: crate::tls::SharedConnector) -> Checker {
        Checker {
            addr,
            login,
            tls,
            conn: None,
            heartbeat_failed: false,
        }
    }

    /// Runs one probe within `timeout`; a primary also gets a heartbeat.
    /// Any failure drops the connection so the next probe reconnects.
    pub async fn probe(&mut self, timeout: Duration) -> Result<Probe, String> {
        let outcome = tokio::time::timeout(timeout, self.probe_inner(timeout)).await;
        self.settle(outcome, timeout)
    }

    async fn probe_inner(&mut self, timeout: Duration) -> Result<Probe, ConnectError> {
        let row = self.connected(timeout).await?.query_row(PROBE_SQL).await?;
        let probe = parse_probe(&row, Instant::now())
            .ok_or_else(|| ConnectError::Protocol(self.addr.clone(), "unexpected probe result"))?;
        if probe.role == Role::Primary {
            if let Err(e) = self
                .connected(timeout)
                .await?
                .query_row(HEARTBEAT_SQL)
                .await
            {
                if !self.heartbeat_failed {
                    tracing::warn!(node = %self.addr, error = %e, "heartbeat failed; replicas cannot witness this primary");
                }
                self.heartbeat_failed = true;
            }
        }
        Ok(probe)
    }

    /// Runs a control statement (promote, repoint) on this node's check connection.
    pub async fn control(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<Vec<Option<String>>, String> {
        let run = async { self.connected(timeout).await?.query_row(sql).await };
        let outcome = tokio::time::timeout(timeout, run).await;
        self.settle(outcome, timeout)
    }

    /// The check connection, opened if needed.
    async fn connected(&mut self, timeout: Duration) -> Result<&mut ServerConn, ConnectError> {
        if self.conn.is_none() {
            let tls = self.tls.current();
            self.conn = Some(ServerConn::connect(&self.addr, &self.login, &tls, timeout).await?);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| ConnectError::Protocol(self.addr.clone(), "no connection"))
    }

    /// Turns a bounded attempt into a result; any failure drops the connection.
    fn settle<T>(
        &mut self,
        outcome: Result<Result<T, ConnectError>, tokio::time::error::Elapsed>,
        timeout: Duration,
    ) -> Result<T, String> {
        let err = match outcome {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("{}: timed out after {timeout:?}", self.addr),
        };
        self.conn = None;
        Err(err)
    }
}

/// Reads PROBE_SQL's row.
pub fn parse_probe(row: &[Option<String>], at: Instant) -> Option<Probe> {
    let text = |i: usize| row.get(i).and_then(|v| v.as_deref());
    let flag = |i: usize| text(i) == Some("t");
    let role = match text(0)? {
        "t" => Role::Replica,
        "f" => Role::Primary,
        _ => return None,
    };
    Some(Probe {
        role,
        timeline: text(1)?.parse().ok()?,
        lsn: text(2).and_then(|v| v.parse().ok()).unwrap_or(0),
        replay_lsn: text(3).and_then(|v| v.parse().ok()).unwrap_or(0),
        streaming: flag(4),
        lag_seconds: text(5).and_then(|v| v.parse().ok()),
        sync_standby_names: flag(6),
        at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
        values.iter().map(|v| v.map(str::to_string)).collect()
    }

    #[test]
    fn parses_primary_and_replica_rows() {
        let now = Instant::now();
        let p = parse_probe(
            &row(&[
                Some("f"),
                Some("2"),
                Some("1234"),
                Some("1234"),
                Some("f"),
                None,
                Some("t"),
            ]),
            now,
        )
        .unwrap();
        assert_eq!(
            (p.role, p.timeline, p.lsn, p.sync_standby_names),
            (Role::Primary, 2, 1234, true)
        );
        let r = parse_probe(
            &row(&[
                Some("t"),
                Some("1"),
                None,
                Some("99"),
                Some("t"),
                Some("0.5"),
                Some("f"),
            ]),
            now,
        )
        .unwrap();
        assert_eq!(
            (r.role, r.lsn, r.replay_lsn, r.streaming, r.lag_seconds),
            (Role::Replica, 0, 99, true, Some(0.5))
        );
        assert!(parse_probe(&row(&[Some("x")]), now).is_none());
        assert!(parse_probe(&row(&[]), now).is_none());
        assert!(parse_probe(&row(&[Some("f"), Some("nan")]), now).is_none());
    }
}
