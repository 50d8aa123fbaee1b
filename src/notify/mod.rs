//! Incident notifications. Each `[[notify]]` receiver has a task of its
//! own that takes the timeline's events of the groups it asked for and
//! POSTs them in its format, retrying with backoff. Nothing that records an
//! event ever waits for a receiver: the timeline hands events over a bounded
//! broadcast channel, the task keeps at most `QUEUE` notifications for a
//! receiver that hangs or fails, and drops (and counts) the rest.

pub mod payload;
pub mod policy;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::notify::NotifyConfig;
use crate::config::{HttpUrl, Scheme};
use crate::events::Event;
use crate::http_client::{self, Options};
use payload::Notice;
use policy::Verdict;

/// Why a receiver cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The URL does not parse (validation catches this first).
    #[error("notify.url: {0}")]
    Url(String),
    /// The CA file for an `https://` receiver cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Delivery outcomes, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    delivered: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

impl Stats {
    /// `(outcome, count)` for each outcome.
    pub fn counts(&self) -> [(&'static str, u64); 4] {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("delivered", get(&self.delivered)),
            ("retried", get(&self.retried)),
            ("failed", get(&self.failed)),
            ("dropped", get(&self.dropped)),
        ]
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One receiver, ready to send to.
pub struct Receiver {
    config: NotifyConfig,
    url: HttpUrl,
    options: Options,
    source: String,
}

impl Receiver {
    /// Sets up `config`'s receiver (reads its CA file: off the event loop).
    pub fn new(config: &NotifyConfig) -> Result<Receiver, NotifyError> {
        let url = HttpUrl::parse(&config.url).map_err(NotifyError::Url)?;
        let tls = match url.scheme {
            Scheme::Https => Some(crate::tls::https_client(
                "notify.ca_file",
                config.ca_file_for_https(),
            )?),
            Scheme::Http => None,
        };
        let source = config.source.clone().unwrap_or_else(host_name);
        Ok(Receiver {
            config: config.clone(),
            url,
            options: Options {
                tls,
                ..Options::default()
            },
            source,
        })
    }

    /// The body and headers of `event`'s notification, if this receiver
    /// wants it.
    fn prepare(&self, event: &Event) -> Option<Prepared<'_>> {
        let group = policy::wanted_group(event.kind, &self.config.events)?;
        let group_name = serde_json::to_value(group).ok()?;
        let notice = Notice {
            seq: event.seq,
            at: event.at,
            kind: event.kind.as_str(),
            group: group_name.as_str().unwrap_or_default(),
            severity: policy::severity(event.kind),
            node: event.node.as_deref(),
            message: &event.message,
            source: &self.source,
        };
        let key = self.config.routing_key.as_ref().map(|k| k.expose());
        let body = payload::render(self.config.format, &notice, key);
        let mut headers = vec![("Content-Type", "application/json".to_string())];
        if let Some(secret) = &self.config.secret {
            headers.push(("X-Switchyard-Signature", signature(secret.expose(), &body)));
        }
        for (name, value) in &self.config.headers {
            headers.push((name.as_str(), value.expose().to_string()));
        }
        Some((body, headers))
    }
}

/// `sha256=<hex HMAC-SHA256 of body>`, as webhook receivers commonly check.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "switchyard".into())
}

/// Notifications waiting for a receiver that is slow or retrying; past
/// this many the newest are dropped (and counted).
pub const QUEUE: usize = 64;

/// A notification ready to send: body and headers.
type Prepared<'a> = (Vec<u8>, Vec<(&'a str, String)>);

/// Sends `receiver` the events it wants from `events` until `shutdown`.
/// One half picks the events (it never waits on the receiver), the other
/// sends them in order.
pub async fn run(
    receiver: Receiver,
    events: broadcast::Receiver<Event>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    tokio::select! {
        _ = pick(&receiver, events, tx, &stats) => {}
        _ = send_all(&receiver, rx, &stats) => {}
        _ = shutdown.cancelled() => {}
    }
}

/// Queues the events `receiver` wants; drops what does not fit.
async fn pick<'a>(
    receiver: &'a Receiver,
    mut events: broadcast::Receiver<Event>,
    queue: tokio::sync::mpsc::Sender<Prepared<'a>>,
    stats: &Stats,
) {
    loop {
        match events.recv().await {
            Ok(event) => {
                let Some(prepared) = receiver.prepare(&event) else {
                    continue;
                };
                if queue.try_send(prepared).is_err() {
                    Stats::add(&stats.dropped, 1);
                    tracing::warn!(url = %receiver.config.url, seq = event.seq, "notification dropped: the receiver is too far behind");
                }
            }
            // Only if this task itself starved; what was lost is unknown,
            // so all of it counts.
            Err(broadcast::error::RecvError::Lagged(lost)) => Stats::add(&stats.dropped, lost),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn send_all(
    receiver: &Receiver,
    mut queue: tokio::sync::mpsc::Receiver<Prepared<'_>>,
    stats: &Stats,
) {
    while let Some((body, headers)) = queue.recv().await {
        deliver(receiver, &body, &headers, stats).await;
    }
}

/// Attempts until delivered, refused, or out of attempts.
async fn deliver(receiver: &Receiver, body: &[u8], headers: &[(&str, String)], stats: &Stats) {
    let config = &receiver.config;
    for attempt in 1..=config.max_attempts {
        let sent = http_client::post(&receiver.url, &receiver.options, headers, body);
        let result = tokio::time::timeout(config.timeout, sent).await.ok();
        match policy::verdict(result.as_ref()) {
            Verdict::Delivered => return Stats::add(&stats.delivered, 1),
            Verdict::Retry if attempt < config.max_attempts => {
                Stats::add(&stats.retried, 1);
                tokio::time::sleep(policy::backoff(attempt)).await;
            }
            Verdict::Retry | Verdict::Refused => {
                Stats::add(&stats.failed, 1);
                let why = match result {
                    Some(Ok(status)) => format!("HTTP {status}"),
                    Some(Err(e)) => e.to_string(),
                    None => format!("no answer within {:?}", config.timeout),
                };
                tracing::warn!(url = %config.url, attempts = attempt, why, "notification not delivered");
                return;
            }
        }
    }
}

/// Starts a task per receiver on `tracker`. Receivers are set up first,
/// so a bad CA file stops the start rather than every notification.
pub fn spawn_all(
    configs: &[NotifyConfig],
    events: &crate::events::Events,
    stats: &Arc<Stats>,
    tracker: &tokio_util::task::TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), NotifyError> {
    let receivers = configs
        .iter()
        .map(Receiver::new)
        .collect::<Result<Vec<_>, _>>()?;
    for r in receivers {
        tracker.spawn(run(r, events.subscribe(), stats.clone(), shutdown.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hex_hmac_sha256() {
        // RFC 4231, test case 2.
        let sig = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_receiver_prepares_only_what_it_asked_for() {
        let text = "[cluster]\nnodes = [\"h:5432\"]\n[[notify]]\nurl = \"http://127.0.0.1:9/hook\"\nevents = [\"node_down\"]\nsecret = \"s\"\nsource = \"p1\"\nheaders = { \"X-Team\" = \"db\" }";
        let config = crate::config::load_str(text).unwrap().notify.remove(0);
        let r = Receiver::new(&config).unwrap();
        let event = |kind| Event {
            seq: 1,
            at: std::time::SystemTime::now(),
            kind,
            node: Some("db1".into()),
            message: "down".into(),
        };
        assert!(r
            .prepare(&event(crate::events::EventKind::NodeUp))
            .is_none());
        let (body, headers) = r
            .prepare(&event(crate::events::EventKind::NodeDown))
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (v["group"].as_str(), v["source"].as_str()),
            (Some("node_down"), Some("p1"))
        );
        assert!(headers.contains(&("X-Switchyard-Signature", signature("s", &body))));
        assert!(headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("x-team") && v == "db"));
    }
}
