//! The body of a notification in each format. Pure: an event in, bytes out.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::policy::Severity;
use crate::config::notify::NotifyFormat;

/// What a notification says.
#[derive(Debug, Clone, Copy)]
pub struct Notice<'a> {
    /// The event's sequence number on this proxy's timeline.
    pub seq: u64,
    /// When it happened.
    pub at: SystemTime,
    /// The event kind (`failover_started`, ...).
    pub kind: &'a str,
    /// The group it was sent for.
    pub group: &'a str,
    /// How urgent it is.
    pub severity: Severity,
    /// The node concerned, if any.
    pub node: Option<&'a str>,
    /// Why, in words.
    pub message: &'a str,
    /// This proxy's name.
    pub source: &'a str,
}

/// PagerDuty caps a summary at this many characters.
const PAGERDUTY_SUMMARY: usize = 1024;

/// The body for `format`; `routing_key` is PagerDuty's integration key.
pub fn render(format: NotifyFormat, n: &Notice<'_>, routing_key: Option<&str>) -> Vec<u8> {
    let at = rfc3339(n.at);
    let value = match format {
        NotifyFormat::Json => json!({
            "source": n.source,
            "seq": n.seq,
            "at": at,
            "at_unix": n.at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64(),
            "kind": n.kind,
            "group": n.group,
            "severity": n.severity.as_str(),
            "node": n.node,
            "message": n.message,
        }),
        NotifyFormat::Slack => json!({ "text": slack_text(n) }),
        NotifyFormat::Pagerduty => json!({
            "routing_key": routing_key.unwrap_or_default(),
            "event_action": "trigger",
            // One incident per proxy, kind and node: repeats fold into it.
            "dedup_key": format!("switchyard/{}/{}/{}", n.source, n.kind, n.node.unwrap_or("-")),
            "payload": {
                "summary": summary(n).chars().take(PAGERDUTY_SUMMARY).collect::<String>(),
                "source": n.source,
                "severity": n.severity.as_str(),
                "timestamp": at,
                "component": n.node.unwrap_or("cluster"),
                "group": "switchyard",
                "class": n.kind,
                "custom_details": { "seq": n.seq, "group": n.group, "message": n.message },
            },
        }),
    };
    value.to_string().into_bytes()
}

/// One line: what, where, why.
fn summary(n: &Notice<'_>) -> String {
    match n.node {
        Some(node) => format!("{} on {node}: {} ({})", n.kind, n.message, n.source),
        None => format!("{}: {} ({})", n.kind, n.message, n.source),
    }
}

/// Slack's text, with its three control characters escaped so a message
/// cannot turn into a mention or a link.
fn slack_text(n: &Notice<'_>) -> String {
    let icon = match n.severity {
        Severity::Critical => ":rotating_light:",
        Severity::Warning => ":warning:",
        Severity::Info => ":information_source:",
    };
    let escaped = summary(n)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!("{icon} {escaped}")
}

fn rfc3339(at: SystemTime) -> String {
    crate::events::Utc::of(at).rfc3339()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    fn notice() -> Notice<'static> {
        Notice {
            seq: 7,
            at: at(1_796_525_759, 0),
            kind: "node_down",
            group: "node_down",
            severity: Severity::Warning,
            node: Some("db1"),
            message: "3 checks failed: <connection refused> & more",
            source: "app-7",
        }
    }

    fn parse(b: Vec<u8>) -> serde_json::Value {
        serde_json::from_slice(&b).unwrap()
    }

    #[test]
    fn each_format_has_its_shape() {
        let n = notice();
        let j = parse(render(NotifyFormat::Json, &n, None));
        assert_eq!(j["kind"], "node_down");
        assert_eq!(j["node"], "db1");
        assert_eq!(j["seq"], 7);
        assert_eq!(j["at"], "2026-12-06T02:55:59.000Z");
        assert_eq!(j["severity"], "warning");
        assert_eq!(j["source"], "app-7");

        let s = parse(render(NotifyFormat::Slack, &n, None));
        let text = s["text"].as_str().unwrap();
        assert!(text.starts_with(":warning: node_down on db1: "), "{text}");
        assert!(
            text.contains("&lt;connection refused&gt; &amp; more"),
            "{text}"
        );

        let p = parse(render(NotifyFormat::Pagerduty, &n, Some("KEY")));
        assert_eq!(p["routing_key"], "KEY");
        assert_eq!(p["event_action"], "trigger");
        assert_eq!(p["dedup_key"], "switchyard/app-7/node_down/db1");
        assert_eq!(p["payload"]["severity"], "warning");
        assert_eq!(p["payload"]["source"], "app-7");
        assert_eq!(p["payload"]["component"], "db1");
        assert_eq!(p["payload"]["timestamp"], "2026-12-06T02:55:59.000Z");
        assert!(p["payload"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("node_down on db1"));
    }

    #[test]
    fn a_long_message_fits_pagerduty() {
        let long = "x".repeat(5000);
        let n = Notice {
            message: &long,
            node: None,
            ..notice()
        };
        let p = parse(render(NotifyFormat::Pagerduty, &n, Some("K")));
        assert_eq!(
            p["payload"]["summary"].as_str().unwrap().chars().count(),
            1024
        );
        assert_eq!(p["payload"]["component"], "cluster");
    }
}
