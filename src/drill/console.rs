//! The admin console as the drill reads it: `SHOW NODES`, `SHOW EVENTS`,
//! `SWITCHOVER TO`, `READMIT`, over the simple query protocol the console
//! speaks. Rows are read by column name, so a console with more columns
//! still works.

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage, SimpleQueryRow};

use super::{DrillError, Stop};

/// Connect timeout when the URL sets none: a drill on a schedule must not
/// hang on a proxy that does not answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A URL's connection settings, with the drill's defaults where it has
/// none (a connect timeout, an application name the proxy shows).
pub(super) fn load_config(url: &str, what: &'static str) -> Result<Config, DrillError> {
    let mut cfg: Config = url
        .parse()
        .map_err(|error| DrillError::Url { what, error })?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("switchyard-drill");
    }
    Ok(cfg)
}

/// One connection, its I/O driven by a task of its own.
pub(super) async fn connect(cfg: &Config, what: &'static str) -> Result<Client, DrillError> {
    let (client, conn) = cfg
        .connect(NoTls)
        .await
        .map_err(|error| DrillError::Connect { what, error })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A node as `SHOW NODES` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Node {
    name: String,
    addr: String,
    role: String,
    state: String,
    lag_bytes: Option<u64>,
}

impl Node {
    /// A node as the console would list it (for the pure decisions' tests).
    #[cfg(test)]
    pub(super) fn new(name: &str, role: &str, state: &str, lag_bytes: Option<u64>) -> Node {
        Node {
            name: name.into(),
            addr: format!("{name}:5432"),
            role: role.into(),
            state: state.into(),
            lag_bytes,
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// `host:port`.
    pub(super) fn addr(&self) -> &str {
        &self.addr
    }

    /// `primary`, `replica` or `unknown`.
    pub(super) fn role(&self) -> &str {
        &self.role
    }

    /// `up`, `suspect`, `down`, `unknown` or `fenced`.
    pub(super) fn state(&self) -> &str {
        &self.state
    }

    /// Bytes behind the primary (replicas).
    pub(super) fn lag_bytes(&self) -> Option<u64> {
        self.lag_bytes
    }
}

/// A timeline event as `SHOW EVENTS` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    seq: u64,
    /// `YYYY-MM-DD HH:MM:SS.mmm UTC`, as the console prints it.
    time: String,
    /// The same, in milliseconds since the Unix epoch (`None` if the time
    /// did not parse).
    at_unix_ms: Option<i64>,
    kind: String,
    node: String,
    message: String,
}

impl Event {
    /// An event as the console would list it (for the pure decisions' tests).
    #[cfg(test)]
    pub(super) fn new(seq: u64, at_unix_ms: i64, kind: &str, node: &str) -> Event {
        Event {
            seq,
            time: String::new(),
            at_unix_ms: Some(at_unix_ms),
            kind: kind.into(),
            node: node.into(),
            message: String::new(),
        }
    }

    pub(super) fn kind(&self) -> &str {
        &self.kind
    }

    pub(super) fn at_unix_ms(&self) -> Option<i64> {
        self.at_unix_ms
    }

    /// One line for the text report.
    pub(super) fn line(&self) -> String {
        let node = if self.node.is_empty() {
            "-"
        } else {
            &self.node
        };
        format!(
            "{:>5}  {}  {:<20} {:<8} {}",
            self.seq, self.time, self.kind, node, self.message
        )
    }
}

/// The admin console connection.
pub(super) struct Console {
    client: Client,
}

impl Console {
    pub(super) async fn open(url: &str) -> Result<Console, DrillError> {
        let cfg = load_config(url, "--admin-url")?;
        let client = connect(&cfg, "the admin console (--admin-url)").await?;
        Ok(Console { client })
    }

    async fn query(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, DrillError> {
        self.client
            .simple_query(sql)
            .await
            .map_err(|e| DrillError::Console(format!("{sql}: {e}")))
    }

    pub(super) async fn nodes(&self) -> Result<Vec<Node>, DrillError> {
        let msgs = self.query("SHOW NODES").await?;
        rows(&msgs)
            .map(|r| {
                Ok(Node {
                    name: text(r, "name")?,
                    addr: text(r, "addr")?,
                    role: text(r, "role")?,
                    state: text(r, "state")?,
                    lag_bytes: text(r, "lag_bytes")?.parse().ok(),
                })
            })
            .collect()
    }

    /// The timeline after event `seq`, oldest first.
    pub(super) async fn events_after(&self, seq: u64) -> Result<Vec<Event>, DrillError> {
        let msgs = self.query("SHOW EVENTS").await?;
        let mut events = rows(&msgs)
            .map(|r| {
                let time = text(r, "time")?;
                Ok(Event {
                    seq: text(r, "seq")?.parse().unwrap_or(0),
                    at_unix_ms: parse_time(&time),
                    time,
                    kind: text(r, "kind")?,
                    node: text(r, "node")?,
                    message: text(r, "message")?,
                })
            })
            .collect::<Result<Vec<_>, DrillError>>()?;
        events.retain(|e| e.seq > seq);
        events.sort_by_key(|e| e.seq);
        Ok(events)
    }

    /// The newest event's number: later events are the drill's.
    pub(super) async fn last_seq(&self) -> Result<u64, DrillError> {
        let events = self.events_after(0).await?;
        Ok(events.last().map_or(0, |e| e.seq))
    }

    /// `SWITCHOVER TO <node>`; it answers once the switchover is done. An
    /// error the console sent is a finding; a broken connection is not.
    pub(super) async fn switchover(&self, node: &str) -> Result<(), Stop> {
        match self
            .client
            .simple_query(&format!("SWITCHOVER TO {node}"))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match e.as_db_error() {
                Some(db) => Err(Stop::MoveFailed(format!(
                    "SWITCHOVER TO {node}: {} ({})",
                    db.message(),
                    db.code().code()
                ))),
                None => Err(Stop::Tooling(format!("SWITCHOVER TO {node}: {e}"))),
            },
        }
    }

    pub(super) async fn readmit(&self, node: &str) -> Result<(), DrillError> {
        self.query(&format!("READMIT {node}")).await.map(drop)
    }
}

fn rows(msgs: &[SimpleQueryMessage]) -> impl Iterator<Item = &SimpleQueryRow> {
    msgs.iter().filter_map(|m| match m {
        SimpleQueryMessage::Row(r) => Some(r),
        _ => None,
    })
}

/// Column `col` of `row` as text (NULL as empty).
fn text(row: &SimpleQueryRow, col: &str) -> Result<String, DrillError> {
    row.try_get(col)
        .map(|v| v.unwrap_or_default().to_string())
        .map_err(|_| DrillError::Console(format!("the console's answer has no column {col}")))
}

/// Column `col` of every row, as integers (unparsable values skipped).
pub(super) fn column_i64(msgs: &[SimpleQueryMessage], col: &str) -> Vec<i64> {
    rows(msgs)
        .filter_map(|r| r.try_get(col).ok().flatten()?.parse().ok())
        .collect()
}

/// `YYYY-MM-DD HH:MM:SS.mmm UTC` (what `SHOW EVENTS` prints) in
/// milliseconds since the Unix epoch.
pub(super) fn parse_time(s: &str) -> Option<i64> {
    let s = s.strip_suffix(" UTC")?;
    let (date, time) = s.split_once(' ')?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, millis) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(str::parse::<i64>);
    let (h, m, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let millis: i64 = millis.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + h) * 60 + m) * 60_000 + sec * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of
/// the calendar the timeline prints with).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn event_times_parse_as_the_timeline_prints_them() {
        let cases = [
            ("1970-01-01 00:00:00.000 UTC", Some(0)),
            ("1970-01-01 00:00:01.250 UTC", Some(1250)),
            ("2000-02-29 12:00:00.001 UTC", Some(951_825_600_001)),
            ("2024-12-31 23:59:59.999 UTC", Some(1_735_689_599_999)),
            ("2024-12-31 23:59:59 UTC", Some(1_735_689_599_000)),
            ("2024-13-01 00:00:00.000 UTC", None),
            ("2024-12-31 23:59:59.999", None),
            ("yesterday UTC", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_time(text), want, "{text}");
        }
    }

    #[test]
    fn parsing_inverts_the_timeline_calendar() {
        for secs in [0u64, 59, 86_399, 951_782_400, 1_709_210_096, 4_102_444_800] {
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(secs * 1000 + 321);
            let u = crate::events::Utc::of(at);
            let (h, m, s) = u.hms;
            let text = format!(
                "{:04}-{:02}-{:02} {h:02}:{m:02}:{s:02}.{:03} UTC",
                u.year, u.month, u.day, u.millis
            );
            assert_eq!(parse_time(&text), Some(secs as i64 * 1000 + 321), "{text}");
        }
    }

    #[test]
    fn urls_get_the_drills_defaults_and_keep_their_own() {
        let cfg = load_config("postgres://app:pw@127.0.0.1:6432/app", "--url").unwrap();
        assert_eq!(cfg.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(cfg.get_application_name(), Some("switchyard-drill"));
        let url = "postgres://app@h/app?connect_timeout=3&application_name=cron";
        let cfg = load_config(url, "--url").unwrap();
        assert_eq!(cfg.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(cfg.get_application_name(), Some("cron"));
        assert!(matches!(
            load_config("postgres://h:notaport/app", "--url"),
            Err(DrillError::Url { what: "--url", .. })
        ));
    }
}
