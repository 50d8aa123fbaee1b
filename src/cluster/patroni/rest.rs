//! Patroni's REST API `GET /cluster` and what it means, pure: the same
//! [`PatroniView`] that [`super::parse`] reads from the keys in etcd, from
//! the JSON any member serves (the member reads it from its DCS). The form,
//! as Patroni 3.0 writes it (`cluster_as_json` in `patroni/utils.py`):
//!
//! | field | value |
//! |---|---|
//! | `members[]` | `name`, `role`, `state`, `api_url`, `host`, `port`, `timeline`, `tags`; for all but the leader `lag`: bytes behind the leader's last published position, or `"unknown"` |
//! | `members[].role` | `leader` (`standby_leader` in a standby cluster) for the holder of the leader key, `sync_standby` (`quorum_standby` from 4.0) for a synchronous standby, else `replica` |
//! | `pause` | `true` in maintenance mode, absent otherwise |
//! | `scheduled_switchover` | `{at, from, to}`: only a switchover set for a time |
//! | `scope` | the cluster's scope (from 3.2) |
//!
//! Later versions add `lsn` (`X/Y`) to the replicas. What `/cluster` does
//! not carry stays unknown: the leader's own WAL position, the system
//! identifier, the timeline history, the quorum, a switchover asked for
//! now rather than at a time. A role is the member's place in the cluster,
//! not PostgreSQL's: the new leader reads `primary` from the moment it
//! holds the key, where the keys in etcd show it `replica`, then
//! `promoted`, then `primary`.

use serde_json::{Map, Value};

use super::parse::{int, role as member_role, tags, truthy};
use super::{Member, PatroniView, Role, ScheduledSwitchover, SyncState};

/// Why an answer is no view of the cluster.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no `members` list: not Patroni's /cluster")]
    NoMembers,
    /// A URL of another Patroni cluster: its view must not be taken for
    /// this one's.
    #[error("Patroni's scope is {said:?}, not {want:?}")]
    OtherScope { said: String, want: String },
}

/// The view a `/cluster` answer gives, if it is one of the cluster `scope`
/// (checked when the answer names its scope).
pub fn view(body: &[u8], scope: &str) -> Result<PatroniView, RestError> {
    let doc: Map<String, Value> = serde_json::from_slice(body)?;
    if let Some(said) = doc.get("scope").and_then(Value::as_str) {
        if said != scope {
            return Err(RestError::OtherScope {
                said: said.to_string(),
                want: scope.to_string(),
            });
        }
    }
    let listed = doc.get("members").and_then(Value::as_array);
    let members: Vec<&Map<String, Value>> = listed
        .ok_or(RestError::NoMembers)?
        .iter()
        .filter_map(Value::as_object)
        .filter(|m| name(m).is_some())
        .collect();
    let leader = members.iter().find(|m| leads(m)).and_then(|m| name(m));
    Ok(PatroniView {
        leader: leader.map(str::to_string),
        members: members.iter().filter_map(|m| member(m)).collect(),
        failover: doc.get("scheduled_switchover").and_then(scheduled),
        sync: sync(leader, &members),
        leader_lsn: None,
        paused: doc.get("pause").is_some_and(truthy),
        system_id: None,
        last_switch: None,
    })
}

fn name(m: &Map<String, Value>) -> Option<&str> {
    m.get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
}

fn raw_role(m: &Map<String, Value>) -> Option<&str> {
    m.get("role").and_then(Value::as_str)
}

/// Whether the member holds the leader key. `master` and `primary` are
/// the member's own roles, which no version writes here; read as leading
/// should a proxy in between rewrite them.
fn leads(m: &Map<String, Value>) -> bool {
    matches!(
        raw_role(m),
        Some("leader" | "standby_leader" | "master" | "primary")
    )
}

fn role(raw: Option<&str>) -> Role {
    match raw {
        Some("leader") => Role::Primary,
        Some("sync_standby" | "quorum_standby") => Role::Replica,
        other => member_role(other),
    }
}

fn member(m: &Map<String, Value>) -> Option<Member> {
    let text = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
    let host = text("host").filter(|h| !h.is_empty());
    Some(Member {
        name: name(m)?.to_string(),
        port: host
            .as_ref()
            .and(m.get("port"))
            .and_then(int)
            .and_then(|p| u16::try_from(p).ok()),
        host,
        role: role(raw_role(m)),
        state: text("state")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into()),
        timeline: m
            .get("timeline")
            .and_then(int)
            .and_then(|t| u32::try_from(t).ok()),
        lsn: m.get("lsn").and_then(lsn),
        // `"unknown"` (no position published) reads as no number.
        lag_bytes: m.get("lag").and_then(int),
        api_url: text("api_url"),
        tags: tags(m.get("tags")),
    })
}

/// A WAL position written `X/Y` (two hex halves), or as a number.
fn lsn(v: &Value) -> Option<u64> {
    let Some(s) = v.as_str() else {
        return int(v);
    };
    let (hi, lo) = s.trim().split_once('/')?;
    let half = |h: &str| u32::from_str_radix(h, 16).ok().map(u64::from);
    Some((half(hi)? << 32) | half(lo)?)
}

fn scheduled(v: &Value) -> Option<ScheduledSwitchover> {
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let (leader, candidate, at) = (s("from"), s("to"), s("at"));
    (leader.is_some() || candidate.is_some() || at.is_some()).then_some(ScheduledSwitchover {
        leader,
        candidate,
        scheduled_at: at,
    })
}

/// The synchronous standbys Patroni names; none when it names none or
/// there is no leader (with `synchronous_mode` on and no standby in sync,
/// the keys in etcd still say so; `/cluster` does not).
fn sync(leader: Option<&str>, members: &[&Map<String, Value>]) -> Option<SyncState> {
    let leader = leader?;
    let standbys: Vec<String> = members
        .iter()
        .filter(|m| matches!(raw_role(m), Some("sync_standby" | "quorum_standby")))
        .filter_map(|m| name(m).map(str::to_string))
        .collect();
    (!standbys.is_empty()).then(|| SyncState {
        leader: leader.to_string(),
        standbys,
        quorum: None,
    })
}

#[cfg(test)]
mod tests;
