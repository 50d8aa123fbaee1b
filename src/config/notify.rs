//! `[[notify]]`: where incident notifications are sent (a webhook, Slack,
//! PagerDuty). Only what the file says and the checks serde cannot make;
//! which timeline events belong to which group, and the payloads, are the
//! `notify` module's.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration, Hidden, HttpUrl, Scheme};

/// Debian's bundle of public CAs: what an `https://` receiver is checked
/// against when no `ca_file` is given.
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// One `[[notify]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Where each notification is POSTed (`http://` or `https://`).
    pub url: String,
    /// Which groups of events are sent.
    #[serde(default = "default_events")]
    pub events: Vec<EventGroup>,
    /// The body's shape.
    #[serde(default)]
    pub format: NotifyFormat,
    /// Signs each body: `X-Switchyard-Signature: sha256=<hex HMAC-SHA256>`.
    #[serde(default)]
    pub secret: Option<Hidden>,
    /// Extra headers on every request (e.g. `Authorization`); values are secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, Hidden>,
    /// PagerDuty's integration key (`format = "pagerduty"` only).
    #[serde(default)]
    pub routing_key: Option<Hidden>,
    /// CAs that sign an `https://` receiver's certificate; default the system's.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Longest wait for one attempt's answer. Default `5s`.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// Attempts per notification, the first included. Default 5.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Names this proxy in the notifications; default the host name.
    #[serde(default)]
    pub source: Option<String>,
}

/// A group of timeline events a receiver can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventGroup {
    /// A failover starts, promotes, or cannot start.
    Failover,
    /// A planned switchover starts or is abandoned.
    Switchover,
    /// Writes resume on a primary (after a failover, a switchover, or at start).
    WritesResumed,
    /// A node fails its health checks.
    NodeDown,
    /// A node passes again.
    NodeUp,
    /// A node is fenced.
    NodeFenced,
    /// A node's hardware reports degraded.
    HardwareDegraded,
    /// A node's hardware reports failing.
    HardwareFailing,
    /// A node's hardware is ok again.
    HardwareOk,
    /// No primary can be routed to, with nothing under way to fix it: a
    /// failover is blocked, or two primaries stopped writes.
    NoPrimary,
    /// A configuration file was rejected.
    ConfigRejected,
}

/// The shape of a notification's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyFormat {
    /// Switchyard's own JSON object (the event's fields).
    #[default]
    Json,
    /// A Slack incoming webhook's `{"text": ...}`.
    Slack,
    /// PagerDuty Events API v2 (`routing_key`, `event_action`, `payload`).
    Pagerduty,
}

fn default_events() -> Vec<EventGroup> {
    use EventGroup::*;
    vec![
        Failover,
        Switchover,
        NodeDown,
        NodeFenced,
        HardwareDegraded,
        HardwareFailing,
        NoPrimary,
    ]
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_attempts() -> u32 {
    5
}

impl NotifyConfig {
    /// The CA file an `https://` receiver is checked against, if any.
    pub fn ca_file_for_https(&self) -> &str {
        self.ca_file.as_deref().unwrap_or(SYSTEM_CA_FILE)
    }
}

/// The first problem with the `[[notify]]` entries, if any.
pub fn validate(entries: &[NotifyConfig]) -> Result<(), String> {
    for (i, n) in entries.iter().enumerate() {
        let at = format!("notify[{i}]");
        let url = HttpUrl::parse(&n.url).map_err(|e| format!("{at}.url = {:?}: {e}", n.url))?;
        if url.scheme == Scheme::Http && n.ca_file.is_some() {
            return Err(format!("{at}.ca_file is for https:// urls"));
        }
        match (n.format, &n.routing_key) {
            (NotifyFormat::Pagerduty, None) => {
                return Err(format!("{at}: format = \"pagerduty\" needs routing_key"))
            }
            (NotifyFormat::Json | NotifyFormat::Slack, Some(_)) => {
                return Err(format!("{at}.routing_key is for format = \"pagerduty\""))
            }
            _ => {}
        }
        if n.events.is_empty() {
            return Err(format!(
                "{at}.events is empty: the entry would send nothing"
            ));
        }
        if !(1..=20).contains(&n.max_attempts) {
            return Err(format!("{at}.max_attempts must be 1 to 20"));
        }
        if n.timeout.is_zero() {
            return Err(format!("{at}.timeout must be more than 0"));
        }
        for name in n.headers.keys() {
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            let ours = ["host", "content-length", "connection", "content-type"]
                .contains(&name.to_ascii_lowercase().as_str());
            if !token || ours {
                return Err(format!("{at}.headers: {name:?} cannot be set"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(toml_text: &str) -> Result<NotifyConfig, String> {
        let text = format!("[cluster]\nnodes = [\"h:5432\"]\n[[notify]]\n{toml_text}\n");
        let mut config = super::super::load_str(&text).map_err(|e| e.to_string())?;
        Ok(config.notify.remove(0))
    }

    #[test]
    fn defaults_and_refusals() {
        let n = entry("url = \"http://hook:8080/x\"").unwrap();
        assert_eq!(n.format, NotifyFormat::Json);
        assert_eq!(n.events, default_events());
        assert_eq!((n.timeout, n.max_attempts), (Duration::from_secs(5), 5));
        for (bad, why) in [
            ("url = \"ftp://x\"", "notify[0].url"),
            (
                "url = \"http://x/\"\nformat = \"pagerduty\"",
                "needs routing_key",
            ),
            ("url = \"http://x/\"\nrouting_key = \"k\"", "is for format"),
            ("url = \"http://x/\"\nevents = []", "events is empty"),
            ("url = \"http://x/\"\nca_file = \"/ca\"", "for https://"),
            ("url = \"http://x/\"\nmax_attempts = 0", "max_attempts"),
            (
                "url = \"http://x/\"\nheaders = { \"Host\" = \"h\" }",
                "cannot be set",
            ),
            (
                "url = \"http://x/\"\nheaders = { \"A\\nB\" = \"h\" }",
                "cannot be set",
            ),
            (
                "url = \"http://x/\"\nevents = [\"nope\"]",
                "does not have variant",
            ),
        ] {
            let e = entry(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let pd = entry(
            "url = \"https://events.example/v2/enqueue\"\nformat = \"pagerduty\"\nrouting_key = \"k\"\nheaders = { \"X-Team\" = \"db\" }",
        )
        .unwrap();
        assert_eq!(pd.ca_file_for_https(), SYSTEM_CA_FILE);
    }
}
