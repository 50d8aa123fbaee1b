//! Patroni's keys in etcd and what they mean, pure. The layout, as
//! Patroni's DCS code writes it under `<namespace>/<scope>/`:
//!
//! | key | value |
//! |---|---|
//! | `leader` | the leader member's name, under its lease |
//! | `members/<name>` | JSON: `conn_url`, `api_url`, `state`, `role`, `xlog_location`, `timeline`, `tags`; under the member's lease |
//! | `failover` | JSON `{leader, member, scheduled_at}` (or the old `leader:member`) |
//! | `sync` | JSON `{leader, sync_standby, quorum}`; `sync_standby` comma-separated |
//! | `history` | JSON list of `[timeline, lsn, reason, time, new leader]` |
//! | `initialize` | the system identifier |
//! | `config` | the dynamic configuration, JSON (`pause`) |
//! | `status` | JSON `{optime, slots}` (older: `optime/leader`, a number) |
//!
//! A value Patroni itself could not read is read as Patroni reads it: a
//! member with unreadable JSON is a member with nothing known.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Member, PatroniView, Role, ScheduledSwitchover, SyncState, Tags, TimelineSwitch};

const LEADER: &str = "leader";
const MEMBERS: &str = "members/";
const FAILOVER: &str = "failover";
const SYNC: &str = "sync";
const HISTORY: &str = "history";
const INITIALIZE: &str = "initialize";
const CONFIG: &str = "config";
const STATUS: &str = "status";
/// Where Patroni before 2.1 kept the leader's position.
const LEGACY_OPTIME: &str = "optime/leader";

/// `/<namespace>/<scope>/` with runs of `/` made one, as Patroni builds
/// it (`service` and `/service/` are the same namespace).
pub fn prefix(namespace: &str, scope: &str) -> String {
    let joined = format!("/{namespace}/{scope}/");
    let mut out = String::with_capacity(joined.len());
    for c in joined.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// Whether the view reads the key `key` (relative to the prefix): other
/// keys (`failsafe`, an MPP group's) are not kept.
pub fn is_read(key: &str) -> bool {
    matches!(
        key,
        LEADER | FAILOVER | SYNC | HISTORY | INITIALIZE | CONFIG | STATUS | LEGACY_OPTIME
    ) || member_name(key).is_some()
}

/// `members/<name>`, with no further `/` (as Patroni reads them).
fn member_name(key: &str) -> Option<&str> {
    key.strip_prefix(MEMBERS)
        .filter(|n| !n.is_empty() && !n.contains('/'))
}

/// The view Patroni's keys (relative to the prefix) and values give.
pub fn view(keys: &BTreeMap<String, Vec<u8>>) -> PatroniView {
    let text = |k: &str| keys.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
    let json = |k: &str| {
        keys.get(k)
            .and_then(|v| serde_json::from_slice::<Value>(v).ok())
    };
    let leader = text(LEADER).filter(|l| !l.is_empty());
    let leader_lsn = json(STATUS)
        .and_then(|s| s.get("optime").and_then(int))
        .or_else(|| json(LEGACY_OPTIME).as_ref().and_then(int));
    let members = keys
        .iter()
        .filter_map(|(k, v)| Some((member_name(k)?, v)))
        .map(|(name, v)| member(name, v, leader.as_deref(), leader_lsn))
        .collect();
    PatroniView {
        leader,
        members,
        failover: text(FAILOVER).and_then(|v| failover(&v)),
        sync: json(SYNC).and_then(|v| sync(&v)),
        leader_lsn,
        paused: json(CONFIG).is_some_and(|c| c.get("pause").is_some_and(truthy)),
        system_id: text(INITIALIZE).filter(|s| !s.is_empty()),
        last_switch: json(HISTORY).and_then(|v| last_switch(&v)),
    }
}

/// One member from its key's value. The leader's lag is not counted: the
/// published position is its own.
fn member(name: &str, value: &[u8], leader: Option<&str>, leader_lsn: Option<u64>) -> Member {
    let data = member_data(value);
    let field = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_string);
    let (host, port) = match address(&data) {
        Some((h, p)) => (Some(h), Some(p)),
        None => (None, None),
    };
    let lsn = data.get("xlog_location").and_then(int);
    let lag_bytes = match (leader_lsn, lsn) {
        (Some(top), Some(at)) if leader != Some(name) => Some(top.saturating_sub(at)),
        _ => None,
    };
    Member {
        name: name.to_string(),
        host,
        port,
        role: role(data.get("role").and_then(Value::as_str)),
        state: field("state").unwrap_or_else(|| "unknown".into()),
        timeline: data
            .get("timeline")
            .and_then(int)
            .and_then(|t| u32::try_from(t).ok()),
        lsn,
        lag_bytes,
        api_url: field("api_url"),
        tags: tags(data.get("tags")),
    }
}

/// The member's JSON object; a bare connection string (how the oldest
/// Patroni wrote it) as its `conn_url`; anything else as nothing known.
fn member_data(value: &[u8]) -> serde_json::Map<String, Value> {
    let text = String::from_utf8_lossy(value);
    if text.starts_with("postgres") {
        let url = text.split('?').next().unwrap_or_default();
        let mut m = serde_json::Map::new();
        m.insert("conn_url".into(), Value::String(url.to_string()));
        return m;
    }
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

/// Host and port from `conn_url`, else from `conn_kwargs`.
fn address(data: &serde_json::Map<String, Value>) -> Option<(String, u16)> {
    if let Some(url) = data.get("conn_url").and_then(Value::as_str) {
        return conn_url_address(url);
    }
    let kwargs = data.get("conn_kwargs")?;
    let host = kwargs.get("host")?.as_str()?.to_string();
    let port = kwargs.get("port").map_or(Some(5432), int)?;
    Some((host, u16::try_from(port).ok()?))
}

/// `postgres://[user[:password]@]host[:port][/db][?...]`: the host and
/// port (5432 when none). The user and password are dropped, never kept.
pub fn conn_url_address(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => 5432,
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

pub(super) fn role(raw: Option<&str>) -> Role {
    match raw {
        Some("primary" | "master") => Role::Primary,
        Some("replica") => Role::Replica,
        Some("standby_leader") => Role::StandbyLeader,
        Some("demoted") => Role::Demoted,
        Some("promoted") => Role::Promoted,
        Some("uninitialized") => Role::Uninitialized,
        _ => Role::Unknown,
    }
}

/// Patroni's reading of the tags: a boolean tag set at all wins; without
/// it, a priority of 0 or less (`failover_priority`, `sync_priority`) means
/// the same.
pub(super) fn tags(tags: Option<&Value>) -> Tags {
    let get = |k: &str| tags.and_then(|t| t.get(k));
    let flag_or_priority = |flag: &str, priority: &str| match get(flag) {
        Some(v) if !v.is_null() => truthy(v),
        _ => get(priority).and_then(signed).is_some_and(|p| p <= 0),
    };
    Tags {
        nofailover: flag_or_priority("nofailover", "failover_priority"),
        noloadbalance: get("noloadbalance").is_some_and(truthy),
        nosync: flag_or_priority("nosync", "sync_priority"),
    }
}

/// The `failover` key; `{}` (what Patroni leaves once done) is none.
fn failover(value: &str) -> Option<ScheduledSwitchover> {
    let parsed = serde_json::from_str::<Value>(value);
    let (leader, candidate, at) = match &parsed {
        Ok(Value::Object(m)) => {
            let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
            (s("leader"), s("member"), s("scheduled_at"))
        }
        Ok(_) => (None, None, None),
        // The old form: `leader:candidate`.
        Err(_) => {
            let mut parts = value.split(':').map(|p| p.trim().to_string());
            (parts.next(), parts.next(), None)
        }
    };
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let (leader, candidate) = (nonempty(leader), nonempty(candidate));
    (leader.is_some() || candidate.is_some()).then_some(ScheduledSwitchover {
        leader,
        candidate,
        scheduled_at: at,
    })
}

/// Seconds since the Unix epoch of an ISO 8601 time as Patroni writes
/// `scheduled_at` (`2026-12-06T05:30:00+00:00`, fractions and `Z`
/// allowed); `None` when it is not one.
pub fn unix_seconds(iso: &str) -> Option<i64> {
    let num = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (date, time) = iso.trim().split_once(['T', ' '])?;
    let mut d = date.splitn(3, '-');
    let (y, mo, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let split = time.find(['Z', 'z', '+', '-']).unwrap_or(time.len());
    let (clock, zone) = time.split_at(split);
    let mut c = clock.splitn(3, ':');
    let (h, mi) = (num(c.next()?)?, num(c.next()?)?);
    let sec = num(c.next().unwrap_or("0").split('.').next()?)?;
    let offset = match zone {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let (oh, om) = zone[1..].split_once(':').unwrap_or((&zone[1..], "0"));
            sign * (num(oh)? * 3600 + num(om)? * 60)
        }
    };
    let valid = (1..=12).contains(&mo) && (1..=31).contains(&day) && h < 24 && mi < 60 && sec <= 60;
    valid.then(|| days_from_civil(y, mo, day) * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The `sync` key; without a leader it says nothing (as Patroni reads it).
fn sync(v: &Value) -> Option<SyncState> {
    let leader = v.get("leader")?.as_str().filter(|l| !l.is_empty())?;
    let standbys = v
        .get("sync_standby")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    Some(SyncState {
        leader: leader.to_string(),
        standbys,
        quorum: v
            .get("quorum")
            .and_then(int)
            .and_then(|q| u32::try_from(q).ok())
            .filter(|q| *q > 0),
    })
}

fn last_switch(v: &Value) -> Option<TimelineSwitch> {
    let line = v.as_array()?.last()?.as_array()?;
    let text = |i: usize| line.get(i).and_then(Value::as_str).map(str::to_string);
    Some(TimelineSwitch {
        timeline: u32::try_from(int(line.first()?)?).ok()?,
        lsn: int(line.get(1)?)?,
        at: text(3),
        leader: text(4),
    })
}

/// A non-negative integer, written as a number or a string.
pub(super) fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn signed(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Python's truth of a JSON value, which is what Patroni tests.
pub(super) fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests;
