//! The task that keeps Patroni's view current from its REST API: every
//! [`INTERVAL`], `GET /cluster` of one member, parsed by [`rest`]. It asks
//! the member that answered last first, and the next on a failure, so a
//! member that is down costs one timeout when it goes, not one a second.
//! When none answers, the last view stays shown, marked not current, and
//! the next tick tries them all again.
//!
//! A poll learns nothing of what changed between two polls: a leader that
//! changes and changes back within one interval is not seen.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::rest::{self, RestError};
use super::shown::Shown;
use super::{parse, PatroniView};
use crate::cluster::Cluster;
use crate::config::coordination::{rest_cluster_url, PatroniConfig, PATRONI_REST_CA};
use crate::config::{HttpUrl, Scheme};
use crate::http_client::{self, Accept, FetchError, Options};

/// How often `/cluster` is read: Patroni's own loop is 10 s by default,
/// so a change is seen well within one of its cycles.
const INTERVAL: Duration = Duration::from_secs(1);
/// One member's answer, connection included; a member that does not
/// answer within it counts as down and the next is asked.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The largest `/cluster` answer read: a few hundred bytes per member.
const MAX_BODY: usize = 1024 * 1024;

/// Why one member gave no view.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("{url}: {source}")]
    Fetch { url: String, source: FetchError },
    #[error("{url}: no answer within {TIMEOUT:?}")]
    Timeout { url: String },
    #[error("{url}: {source}")]
    Answer { url: String, source: RestError },
    /// The CA file for `https://` could not be used (it names itself).
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("reading {PATRONI_REST_CA} stopped short: {0}")]
    TlsRead(#[from] tokio::task::JoinError),
}

/// Why no member gave a view this time.
#[derive(Debug, thiserror::Error)]
#[error("Patroni's REST API: {}", join(.0))]
pub struct AllFailed(Vec<PollError>);

fn join(errors: &[PollError]) -> String {
    let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
    all.join("; ")
}

/// Polls until `shutdown`.
pub(super) async fn run(cluster: Arc<Cluster>, cfg: PatroniConfig, shutdown: CancellationToken) {
    let mut shown = Shown::new(cluster, parse::prefix(&cfg.namespace, &cfg.scope));
    let mut poller = Poller::new(&cfg);
    let mut shows = Shows::default();
    let mut tick = tokio::time::interval(INTERVAL);
    // A slow pass delays the next one rather than bunching them up.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let read = tokio::select! {
            r = async { tick.tick().await; poller.read().await } => r,
            _ = shutdown.cancelled() => return,
        };
        shows.report(read, &mut shown);
    }
}

/// The members' `/cluster` URLs and how to reach them.
struct Poller {
    urls: Vec<HttpUrl>,
    scope: String,
    /// Where the next pass starts: the member that answered last.
    first: usize,
    /// `tls.ca_file`, when the URLs are `https://`.
    ca_file: Option<String>,
    /// Built from `ca_file` when needed; dropped after a pass with no
    /// answer, so a CA renewed in place is read again.
    options: Option<Options>,
}

impl Poller {
    fn new(cfg: &PatroniConfig) -> Poller {
        // The configuration was checked: a URL refused there is skipped.
        let urls: Vec<HttpUrl> = cfg
            .rest
            .iter()
            .filter_map(|r| rest_cluster_url(r).ok())
            .collect();
        let https = urls.iter().any(|u| u.scheme == Scheme::Https);
        Poller {
            urls,
            scope: cfg.scope.clone(),
            first: 0,
            ca_file: cfg.tls.ca_file.clone().filter(|_| https),
            options: None,
        }
    }

    /// One pass: the first member that answers with a view.
    async fn read(&mut self) -> Result<PatroniView, AllFailed> {
        let options = self.options().await.map_err(|e| AllFailed(vec![e]))?;
        let mut errors = vec![];
        for i in 0..self.urls.len() {
            let at = (self.first + i) % self.urls.len();
            let Some(url) = self.urls.get(at) else { break };
            match read_one(url, &options, &self.scope).await {
                Ok(view) => {
                    self.first = at;
                    return Ok(view);
                }
                Err(e) => errors.push(e),
            }
        }
        self.options = None;
        Err(AllFailed(errors))
    }

    /// The client's options, reading the CA file (on the blocking pool: a
    /// file read has no place on the event loop) when none are held.
    async fn options(&mut self) -> Result<Options, PollError> {
        if let Some(o) = &self.options {
            return Ok(o.clone());
        }
        let tls = match self.ca_file.clone() {
            Some(ca) => Some(
                tokio::task::spawn_blocking(move || crate::tls::https_client(PATRONI_REST_CA, &ca))
                    .await??,
            ),
            None => None,
        };
        let options = Options {
            tls,
            authorization: None,
        };
        self.options = Some(options.clone());
        Ok(options)
    }
}

/// `url`'s view, within [`TIMEOUT`].
async fn read_one(url: &HttpUrl, options: &Options, scope: &str) -> Result<PatroniView, PollError> {
    let get = http_client::get_accepting(url, options, Accept::Json, MAX_BODY);
    let body = match tokio::time::timeout(TIMEOUT, get).await {
        Err(_) => {
            return Err(PollError::Timeout {
                url: url.to_string(),
            })
        }
        Ok(r) => r.map_err(|source| PollError::Fetch {
            url: url.to_string(),
            source,
        })?,
    };
    rest::view(&body, scope).map_err(|source| PollError::Answer {
        url: url.to_string(),
        source,
    })
}

/// What was last shown: a view is shown (and the monitor nudged) when it
/// changes, not at every poll, as the etcd watch shows one per change; a
/// failure when its reason changes, and it is logged once.
#[derive(Default)]
struct Shows {
    /// Successful reads so far: the "revision" a view is shown as of.
    reads: i64,
    /// The view shown as current, while it is.
    current: Option<PatroniView>,
    /// Why the last pass failed, while passes fail.
    failing: Option<String>,
}

impl Shows {
    fn report(&mut self, read: Result<PatroniView, AllFailed>, shown: &mut Shown) {
        match read {
            Ok(view) => self.answered(view, shown),
            Err(e) => self.failed(e.to_string(), shown),
        }
    }

    fn answered(&mut self, view: PatroniView, shown: &mut Shown) {
        self.reads += 1;
        if self.failing.take().is_some() {
            tracing::info!("patroni: the REST API answers again");
        }
        if self.current.as_ref() != Some(&view) {
            shown.show(view.clone(), self.reads);
            self.current = Some(view);
        }
    }

    fn failed(&mut self, error: String, shown: &mut Shown) {
        if self.failing.is_none() {
            tracing::warn!(%error, "patroni: no member's REST API answered");
        }
        self.current = None;
        if self.failing.as_ref() != Some(&error) {
            shown.lost(error.clone());
            self.failing = Some(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_is_named_with_its_url() {
        let url = "http://db1:8008/cluster".to_string();
        let all = AllFailed(vec![
            PollError::Timeout { url: url.clone() },
            PollError::Fetch {
                url: "http://db2:8008/cluster".into(),
                source: FetchError::Truncated,
            },
            PollError::Answer {
                url,
                source: RestError::NoMembers,
            },
            PollError::Tls(crate::tls::TlsError::File {
                key: PATRONI_REST_CA,
                path: "/ca.pem".into(),
                why: "no PEM certificate in the file".into(),
            }),
        ]);
        assert_eq!(
            all.to_string(),
            "Patroni's REST API: http://db1:8008/cluster: no answer within 2s; \
             http://db2:8008/cluster: connection closed before the response was complete; \
             http://db1:8008/cluster: no `members` list: not Patroni's /cluster; \
             coordination.patroni.tls.ca_file = \"/ca.pem\": no PEM certificate in the file"
        );
    }

    /// A server that answers every connection as Patroni 3.0 does (HTTP/1.0,
    /// the body ended by the close) with `body`.
    async fn patroni_like(body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut request = [0u8; 1024];
                let _ = conn.read(&mut request).await;
                let head = "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n";
                let _ = conn.write_all(format!("{head}{body}").as_bytes()).await;
            }
        });
        url
    }

    fn rest_cfg(rest: Vec<String>) -> PatroniConfig {
        PatroniConfig {
            scope: "orders".into(),
            namespace: "/service".into(),
            endpoints: vec![],
            rest,
            username: None,
            password: None,
            tls: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_member_that_refuses_is_passed_over_and_a_view_shown_once_per_change() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let up = patroni_like(r#"{"members": [{"name": "pg0", "role": "leader"}]}"#).await;
        let mut poller = Poller::new(&rest_cfg(vec![closed.clone(), up]));
        let view = poller.read().await.expect("the second member answers");
        assert_eq!((view.leader.as_deref(), poller.first), (Some("pg0"), 1));

        let cluster = Arc::new(Cluster::new(
            vec![],
            Arc::new(crate::events::Events::new(10)),
        ));
        let mut shown = Shown::new(cluster.clone(), "/service/orders/".into());
        let mut shows = Shows::default();
        let seen = || {
            cluster
                .patroni()
                .map(|o| (o.connected, o.revision, o.error.clone()))
        };
        shows.report(Ok(view.clone()), &mut shown);
        shows.report(Ok(view.clone()), &mut shown);
        assert_eq!(
            seen(),
            Some((true, 1, None)),
            "an unchanged view is not shown again"
        );
        let refused = Poller::new(&rest_cfg(vec![closed])).read().await;
        shows.report(refused, &mut shown);
        let (connected, revision, error) = seen().unwrap();
        assert!(
            !connected && revision == 1,
            "the last view stays, not current"
        );
        assert!(error.is_some_and(|e| e.contains("cannot connect")));
        shows.report(Ok(view), &mut shown);
        assert_eq!(
            seen(),
            Some((true, 3, None)),
            "current again, as of the third read"
        );
    }

    #[test]
    fn the_urls_asked_are_the_roots_cluster_and_the_ca_only_for_https() {
        let cfg = |rest: &[&str], ca: Option<&str>| PatroniConfig {
            tls: crate::config::coordination::CoordinationTlsConfig {
                ca_file: ca.map(str::to_string),
                ..Default::default()
            },
            ..rest_cfg(rest.iter().map(|r| r.to_string()).collect())
        };
        let p = Poller::new(&cfg(&["http://db1:8008", "http://db2:8008/"], Some("/ca")));
        let urls: Vec<String> = p.urls.iter().map(ToString::to_string).collect();
        assert_eq!(urls, ["http://db1:8008/cluster", "http://db2:8008/cluster"]);
        assert_eq!(p.ca_file, None);
        let p = Poller::new(&cfg(&["https://db1:8008"], Some("/ca")));
        assert_eq!(p.ca_file.as_deref(), Some("/ca"));
    }
}
