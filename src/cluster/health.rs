//! Probing one node over a persistent check connection: role, timeline, WAL
//! positions, replication state, in one round trip; plus the heartbeat the
//! serving primary gets so replicas can witness it (docs/failover.md).

use std::future::Future;
use std::time::{Duration, Instant};

use super::view::{Probe, Role, Timers};
use crate::server::{ConnectError, Login, ServerConn};
use crate::tls::Stream;

/// One query, one round trip. The timeline of a primary comes from its current
/// WAL file name (`pg_control_checkpoint()` lags until the post-promotion
/// checkpoint); a replica's from its WAL receiver, else its last checkpoint.
/// Then how long ago the replica's WAL receiver last heard from its upstream
/// (WAL or keepalive), on the replica's own clock; last the replication
/// timers that bound how long a live primary can leave it without a word.
const PROBE_SQL: &str = "SELECT r, \
  CASE WHEN r THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver), (SELECT timeline_id FROM pg_control_checkpoint())) \
       ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
  ((CASE WHEN r THEN COALESCE(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) ELSE pg_current_wal_lsn() END) - '0/0')::bigint, \
  ((CASE WHEN r THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END) - '0/0')::bigint, \
  COALESCE((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false), \
  CASE WHEN r THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END, \
  current_setting('synchronous_standby_names') <> '', \
  CASE WHEN r THEN extract(epoch FROM clock_timestamp() - (SELECT last_msg_receipt_time FROM pg_stat_wal_receiver)) END, \
  current_setting('wal_sender_timeout'), current_setting('wal_receiver_timeout'), \
  current_setting('wal_receiver_status_interval') \
  FROM pg_is_in_recovery() AS r";

/// A tiny WAL record on the primary; replicas receiving it prove the primary
/// lives. Committed with a local flush: a non-transactional message would
/// wait in the WAL buffers until something else flushes them (seconds on an
/// idle server), and reach the replicas long after it was written, when it
/// proves nothing. `local`, so a missing synchronous standby cannot hold it;
/// `READ WRITE`, so a primary an operator made read-only by default still
/// gets it (it touches no table).
const HEARTBEAT_SQL: &str = "BEGIN READ WRITE; SET LOCAL synchronous_commit = local; \
  SELECT pg_logical_emit_message(true, 'switchyard', 'heartbeat'); COMMIT";

/// A health check of the primary still unanswered after this is late (one
/// normally answers in a millisecond or two): its hardware probe, if it has
/// one, is asked at once instead of at its next interval.
pub(super) const LATE_PROBE: Duration = Duration::from_millis(100);

/// While a check stays unanswered past `LATE_PROBE`, the node's hardware
/// probe is asked again this often, so that a `failing` reading is
/// confirmed (`failing_after` in a row) in a fraction of a second when the
/// node is silent too, not one probe interval per reading.
pub(super) const CONFIRM_PACE: Duration = Duration::from_millis(200);

/// Why a control statement did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No answer in time, or the connection failed: the node may be gone.
    #[error("{0}")]
    Unreachable(String),
    /// The node answered with an error: it lives, the statement failed.
    #[error("{addr}: {message} ({code})")]
    Refused {
        /// Node address.
        addr: String,
        /// SQLSTATE.
        code: String,
        /// What the server said.
        message: String,
    },
}

/// Why a probe gave no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The probe itself failed: no answer in time, or an error.
    #[error(transparent)]
    Check(#[from] ControlError),
    /// Other evidence says the node is gone (its hardware probe), so the
    /// probe was not waited for.
    #[error("{0}")]
    GaveUp(String),
}

/// The check connection of one node.
pub struct Checker {
    addr: String,
    login: Login,
    /// TLS as `[cluster.tls]` says, the same as pooled connections.
    tls: crate::tls::SharedConnector,
    conn: Option<ServerConn>,
    /// The heartbeat's own connection: a commit that is slow (a disk
    /// stall) or stuck must not cost the probes their session, or every
    /// probe after it pays for a new login on a node already under strain.
    beat: Option<ServerConn>,
    heartbeat_failed: bool,
    /// When the last heartbeat was committed.
    last_heartbeat: Option<Instant>,
}

impl Checker {
    /// A checker for `addr` logging in with `login` over `tls`.
    pub fn new(addr: String, login: Login, tls: crate::tls::SharedConnector) -> Checker {
        Checker {
            addr,
            login,
            tls,
            conn: None,
            beat: None,
            heartbeat_failed: false,
            last_heartbeat: None,
        }
    }

    /// Another checker for the same node, with a connection of its own (for
    /// work that must not hold up the monitor).
    pub fn sibling(&self) -> Checker {
        Checker::new(self.addr.clone(), self.login.clone(), self.tls.clone())
    }

    /// When the last heartbeat on this node was committed.
    pub fn last_heartbeat(&self) -> Option<Instant> {
        self.last_heartbeat
    }

    /// Whether the last heartbeat failed: the node may be writing nothing
    /// its replicas would hear.
    pub fn heartbeat_failing(&self) -> bool {
        self.heartbeat_failed
    }

    /// Runs one probe within `timeout`, followed by a heartbeat if asked.
    /// Any failure drops the connection so the next probe reconnects.
    pub async fn probe(&mut self, timeout: Duration, heartbeat: bool) -> Result<Probe, ProbeError> {
        self.probe_until(timeout, heartbeat, std::future::pending())
            .await
    }

    /// As [`Checker::probe`], abandoned with `give_up`'s reason if that
    /// resolves first (other evidence says the node is gone: no need to wait
    /// out the timeout). The heartbeat is not part of the probe: a primary
    /// whose commits are slow (a disk stall) still answers its probes.
    pub async fn probe_until(
        &mut self,
        timeout: Duration,
        heartbeat: bool,
        give_up: impl Future<Output = String>,
    ) -> Result<Probe, ProbeError> {
        let bounded = tokio::time::timeout(timeout, self.probe_inner(timeout));
        let raced = tokio::select! {
            outcome = bounded => Ok(outcome),
            why = give_up => Err(why),
        };
        let probe = match raced {
            Ok(outcome) => self.settle(outcome, timeout)?,
            Err(why) => {
                // The query may be half-answered: this connection is spent.
                self.conn = None;
                return Err(ProbeError::GaveUp(why));
            }
        };
        if heartbeat && probe.role == Role::Primary {
            self.heartbeat(timeout).await;
        }
        Ok(probe)
    }

    async fn probe_inner(&mut self, timeout: Duration) -> Result<Probe, ConnectError> {
        let row = self.connected(timeout).await?.query_row(PROBE_SQL).await?;
        parse_probe(&row, Instant::now())
            .ok_or_else(|| ConnectError::Protocol(self.addr.clone(), "unexpected probe result"))
    }

    async fn heartbeat(&mut self, timeout: Duration) {
        let run = async {
            let tls = self.tls.current();
            open(&mut self.beat, &self.addr, &self.login, &tls, timeout)
                .await?
                .query_row(HEARTBEAT_SQL)
                .await
        };
        let error = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(_)) => {
                self.last_heartbeat = Some(Instant::now());
                self.heartbeat_failed = false;
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        if !self.heartbeat_failed {
            tracing::warn!(node = %self.addr, error = %error, "heartbeat failed; replicas cannot witness this primary");
        }
        self.heartbeat_failed = true;
        // Cut short, or failed inside its BEGIN (an aborted transaction):
        // the next heartbeat starts on a fresh session.
        self.beat = None;
    }

    /// Runs a control statement (promote, repoint) on this node's check connection.
    pub async fn control(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<Vec<Option<String>>, ControlError> {
        self.control_until(sql, timeout, std::future::pending())
            .await
    }

    /// As [`Checker::control`], abandoned (the node counts as unreachable)
    /// with `give_up`'s reason if that resolves first.
    pub async fn control_until(
        &mut self,
        sql: &str,
        timeout: Duration,
        give_up: impl Future<Output = String>,
    ) -> Result<Vec<Option<String>>, ControlError> {
        let run = async { self.connected(timeout).await?.query_row(sql).await };
        let raced = tokio::select! {
            outcome = tokio::time::timeout(timeout, run) => Ok(outcome),
            why = give_up => Err(why),
        };
        match raced {
            Ok(outcome) => self.settle(outcome, timeout),
            Err(why) => {
                self.conn = None;
                Err(ControlError::Unreachable(why))
            }
        }
    }

    /// The check connection, opened if needed.
    async fn connected(&mut self, timeout: Duration) -> Result<&mut ServerConn, ConnectError> {
        let tls = self.tls.current();
        open(&mut self.conn, &self.addr, &self.login, &tls, timeout).await
    }

    /// Turns a bounded attempt into a result; a failure other than an error
    /// the server answered with drops the connection.
    fn settle<T>(
        &mut self,
        outcome: Result<Result<T, ConnectError>, tokio::time::error::Elapsed>,
        timeout: Duration,
    ) -> Result<T, ControlError> {
        let err = match outcome {
            Ok(Ok(v)) => return Ok(v),
            // The statement failed, the session is fine (it is ready for
            // the next query); only a login refused leaves no session.
            Ok(Err(ConnectError::Refused { addr, error })) if self.conn.is_some() => {
                ControlError::Refused {
                    addr,
                    code: error.code,
                    message: error.message,
                }
            }
            Ok(Err(e)) => ControlError::Unreachable(e.to_string()),
            Err(_) => {
                ControlError::Unreachable(format!("{}: timed out after {timeout:?}", self.addr))
            }
        };
        if matches!(err, ControlError::Unreachable(_)) {
            self.conn = None;
        }
        Err(err)
    }
}

/// The connection in `slot`, opened first if there is none.
async fn open<'a>(
    slot: &'a mut Option<ServerConn>,
    addr: &str,
    login: &Login,
    tls: &crate::tls::Connector,
    timeout: Duration,
) -> Result<&'a mut ServerConn, ConnectError> {
    if slot.is_none() {
        let conn = ServerConn::connect(addr, login, tls, timeout).await?;
        bound_unacknowledged(conn.stream(), timeout);
        *slot = Some(conn);
    }
    slot.as_mut()
        .ok_or_else(|| ConnectError::Protocol(addr.to_string(), "no connection"))
}

/// A check connection to a host that lost power gets no acknowledgement for
/// what it sends: the kernel gives up on it after the probe timeout (at least
/// a second, so a lost packet or two is survived) instead of the 15 s
/// pooled connections allow, and the next probe starts on a fresh socket.
fn bound_unacknowledged(stream: &Stream, timeout: Duration) {
    let limit = Some(timeout.max(Duration::from_secs(1)));
    let set = |tcp: &tokio::net::TcpStream| {
        let _ = socket2::SockRef::from(tcp).set_tcp_user_timeout(limit);
    };
    match stream {
        Stream::Plain(tcp) => set(tcp),
        Stream::Tls(tls) => set(tls.lock().unwrap_or_else(|e| e.into_inner()).get_ref().0),
        Stream::Closed => {}
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
        last_heard: text(7)
            .and_then(|v| v.parse::<f64>().ok())
            .and_then(|age| heard_at(at, age)),
        timers: parse_timers(&[text(8), text(9), text(10)]),
        at,
    })
}

/// Reads the three timers as `current_setting` shows them; one missing or
/// unreadable is taken to be PostgreSQL's default.
fn parse_timers([sender, receiver, status]: &[Option<&str>; 3]) -> Timers {
    let ms = Duration::from_millis(1);
    let s = Duration::from_secs(1);
    let d = Timers::POSTGRES_DEFAULTS;
    let read = |v: &Option<&str>, unit, default| {
        v.and_then(|v| setting_duration(v, unit)).unwrap_or(default)
    };
    Timers {
        sender_timeout: read(sender, ms, d.sender_timeout),
        receiver_timeout: read(receiver, ms, d.receiver_timeout),
        status_interval: read(status, s, d.status_interval),
    }
}

/// A time setting as `current_setting` shows it: an integer with the
/// largest unit that divides it (`500ms`, `4s`, `1min`), or bare in the
/// setting's own `unit` (`0`).
fn setting_duration(text: &str, unit: Duration) -> Option<Duration> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n: u32 = text[..digits].parse().ok()?;
    let unit = match &text[digits..] {
        "" => unit,
        "ms" => Duration::from_millis(1),
        "s" => Duration::from_secs(1),
        "min" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "d" => Duration::from_secs(86400),
        _ => return None,
    };
    unit.checked_mul(n)
}

/// When a replica last heard from upstream, on our clock: `age` seconds
/// (measured on the replica) before the probe answered. Only the difference
/// of two readings of one clock is used, so clock skew does not matter.
fn heard_at(at: Instant, age: f64) -> Option<Instant> {
    let age = Duration::try_from_secs_f64(age.max(0.0)).ok()?;
    at.checked_sub(age)
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
                Some("0.25"),
            ]),
            now,
        )
        .unwrap();
        assert_eq!(
            (r.role, r.lsn, r.replay_lsn, r.streaming, r.lag_seconds),
            (Role::Replica, 0, 99, true, Some(0.5))
        );
        assert_eq!(r.last_heard, now.checked_sub(Duration::from_millis(250)));
        assert_eq!(p.last_heard, None, "no WAL receiver on a primary");
        assert!(parse_probe(&row(&[Some("x")]), now).is_none());
        assert!(parse_probe(&row(&[]), now).is_none());
        assert!(parse_probe(&row(&[Some("f"), Some("nan")]), now).is_none());
    }

    #[test]
    fn reads_the_replication_timers_as_postgres_shows_them() {
        let now = Instant::now();
        let timers = |values: [Option<&str>; 3]| {
            let mut r = vec![
                Some("t"),
                Some("1"),
                None,
                None,
                Some("t"),
                None,
                Some("f"),
                None,
            ];
            r.extend(values);
            parse_probe(&row(&r), now).unwrap().timers
        };
        let t = timers([Some("4s"), Some("1min"), Some("10s")]);
        assert_eq!(
            (t.sender_timeout, t.receiver_timeout, t.status_interval),
            (
                Duration::from_secs(4),
                Duration::from_secs(60),
                Duration::from_secs(10)
            )
        );
        let t = timers([Some("0"), Some("1500ms"), Some("0")]);
        assert_eq!(
            (t.sender_timeout, t.receiver_timeout, t.status_interval),
            (Duration::ZERO, Duration::from_millis(1500), Duration::ZERO),
            "zero (disabled) is shown bare"
        );
        assert_eq!(timers([None, None, None]), Timers::POSTGRES_DEFAULTS);
        assert_eq!(
            timers([Some("-1"), Some("5 s"), Some("2weeks")]),
            Timers::POSTGRES_DEFAULTS,
            "unreadable: the defaults"
        );
        // (shown, the setting's unit) -> duration
        let cases = [
            (
                "250",
                Duration::from_millis(1),
                Some(Duration::from_millis(250)),
            ),
            ("7", Duration::from_secs(1), Some(Duration::from_secs(7))),
            (
                "2h",
                Duration::from_millis(1),
                Some(Duration::from_secs(7200)),
            ),
            (
                "1d",
                Duration::from_secs(1),
                Some(Duration::from_secs(86400)),
            ),
            ("ms", Duration::from_millis(1), None),
            ("", Duration::from_millis(1), None),
        ];
        for (text, unit, want) in cases {
            assert_eq!(setting_duration(text, unit), want, "{text}");
        }
    }

    #[test]
    fn a_replica_clock_ahead_of_its_receipt_time_means_just_now() {
        let now = Instant::now();
        assert_eq!(
            heard_at(now, -0.003),
            Some(now),
            "receipt stamped after the probe began"
        );
        assert_eq!(heard_at(now, f64::NAN), Some(now));
        assert_eq!(heard_at(now, 1e30), None, "older than our clock can say");
    }
}
