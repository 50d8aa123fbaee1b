//! Running one Redfish probe: from the service root, fetch the resources
//! [`redfish::read`] names, level by level, a few at a time, with HTTP basic
//! authentication on every request (Redfish allows it; no session to open
//! or leak), and judge what they report. The I/O half of [`super::redfish`].
//!
//! Bounded in every way a BMC could stretch it: the whole probe by the
//! spec's `timeout`, each resource by [`MAX_RESOURCE_BYTES`], the resources
//! fetched by [`MAX_RESOURCES`] (each path once, so links in a circle end).
//! What the probe cannot read is an `unknown` finding, which any real
//! finding outranks: a critical power supply read before the BMC stopped
//! answering is still failing.

use std::collections::HashSet;

use futures_util::stream::{self, StreamExt};
use serde_json::Value;

use super::redfish::{self, Finding, Link, Reading, RedfishError, Resource};
use super::rules::{HardwareStatus, Verdict};
use crate::config::hardware::HardwareSpec;
use crate::config::HttpUrl;
use crate::http_client::{self, Accept, FetchError, Options};

/// Resources fetched per probe, the service root included: a server's
/// chassis, power, thermal and system resources are about ten.
pub const MAX_RESOURCES: usize = 64;
/// Largest resource accepted. A Redfish resource is a few KiB; a thermal
/// resource with hundreds of sensors, tens of KiB.
pub const MAX_RESOURCE_BYTES: usize = 1024 * 1024;
/// Requests in flight at once: BMCs are small computers, but sequential
/// requests on a slow one would not fit in a probe's timeout.
const IN_FLIGHT: usize = 4;
/// The service root every Redfish service has (DSP0266).
const SERVICE_ROOT: &str = "/redfish/v1";

/// Why one resource could not be read.
#[derive(Debug, thiserror::Error)]
enum ResourceError {
    #[error("{0}")]
    Fetch(#[from] FetchError),
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Redfish(#[from] RedfishError),
}

/// Probes the BMC whose service root is `root`, bounded by `spec.timeout`.
/// Never fails: what cannot be read is `unknown` with the reason.
///
/// Cancel safe: dropping it drops the connections.
pub async fn probe(root: &str, spec: &HardwareSpec) -> Verdict {
    let root = match HttpUrl::parse(root) {
        Ok(url) => service_root(url),
        Err(e) => return Verdict::unknown(format!("{root}: {e}")),
    };
    let mut walk = Walk::default();
    let timeout = spec.timeout;
    let run = async {
        match super::probe::options(&root, spec).await {
            Ok(options) => walk.run(&root, &options).await,
            Err(e) => walk.unknown(format!("{root}: {e}")),
        }
    };
    if tokio::time::timeout(timeout, run).await.is_err() {
        walk.unknown(format!("{root}: no complete answer within {timeout:?}"));
    }
    redfish::verdict(walk.findings, walk.supplies_ok)
}

/// `https://bmc` means the service root there.
fn service_root(mut url: HttpUrl) -> HttpUrl {
    if url.path == "/" {
        url.path = SERVICE_ROOT.into();
    }
    url
}

/// What a probe found so far, and the paths it fetched.
#[derive(Debug, Default)]
struct Walk {
    findings: Vec<Finding>,
    supplies_ok: u32,
    fetched: HashSet<String>,
    cut_short: bool,
}

impl Walk {
    /// Fetches the service root, then what each level of resources links
    /// to, until nothing new is linked.
    async fn run(&mut self, root: &HttpUrl, options: &Options) {
        let start = Link {
            path: root.path.clone(),
            resource: Resource::ServiceRoot,
        };
        let mut level: Vec<Link> = [start]
            .into_iter()
            .filter(|l| self.admit(root, l))
            .collect();
        while !level.is_empty() {
            let mut next = Vec::new();
            let mut answers =
                stream::iter(level.into_iter().map(|link| fetch(root, options, link)))
                    .buffer_unordered(IN_FLIGHT);
            while let Some((link, answer)) = answers.next().await {
                match answer {
                    Ok(reading) => {
                        self.findings.extend(reading.findings);
                        self.supplies_ok += reading.supplies_ok;
                        next.extend(reading.links.into_iter().filter(|l| self.admit(root, l)));
                    }
                    Err(e) => self.unknown(format!("{}: {e}", at(root, &link.path))),
                }
            }
            level = next;
        }
    }

    /// Whether `link` is to be fetched: not fetched before (a path linked
    /// twice, or links in a circle), and within [`MAX_RESOURCES`].
    fn admit(&mut self, root: &HttpUrl, link: &Link) -> bool {
        let key = link.path.trim_end_matches('/');
        if self.fetched.contains(key) {
            return false;
        }
        if self.fetched.len() >= MAX_RESOURCES {
            if !std::mem::replace(&mut self.cut_short, true) {
                self.unknown(format!(
                    "{root}: more than {MAX_RESOURCES} resources; the rest were not read"
                ));
            }
            return false;
        }
        self.fetched.insert(key.to_owned())
    }

    fn unknown(&mut self, reason: String) {
        self.findings.push(Finding {
            status: HardwareStatus::Unknown,
            supply: false,
            reason,
        });
    }
}

/// `link`'s resource on the service of `root`, as a URL.
fn at(root: &HttpUrl, path: &str) -> HttpUrl {
    HttpUrl {
        path: path.to_owned(),
        ..root.clone()
    }
}

/// Fetches and reads one resource; returns the link with what came of it.
async fn fetch(
    root: &HttpUrl,
    options: &Options,
    link: Link,
) -> (Link, Result<Reading, ResourceError>) {
    let answer = async {
        let url = at(root, &link.path);
        let body =
            http_client::get_accepting(&url, options, Accept::Json, MAX_RESOURCE_BYTES).await?;
        let doc: Value = serde_json::from_slice(&body)?;
        Ok(redfish::read(link.resource, &link.path, &doc)?)
    }
    .await;
    (link, answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A BMC serving `tree` (path → JSON text; 404 elsewhere) and counting requests.
    struct Bmc {
        url: String,
        requests: Arc<Mutex<Vec<String>>>,
    }

    async fn bmc(tree: HashMap<String, String>) -> Bmc {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/redfish/v1", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (tree, seen) = (tree.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !head.ends_with(b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(n @ 1..) => head.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                    assert!(head.contains("\r\nAccept: application/json\r\n"), "{head}");
                    seen.lock().unwrap().push(path.clone());
                    let response = match tree.get(&path) {
                        Some(body) => format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        ),
                        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(),
                    };
                    let _ = sock.write_all(response.as_bytes()).await;
                });
            }
        });
        Bmc { url, requests }
    }

    fn spec(root: &str) -> HardwareSpec {
        let spec: HardwareSpec = serde_json::from_value(serde_json::json!({
            "redfish": root, "timeout": "2s",
        }))
        .unwrap();
        spec.validate().unwrap();
        spec
    }

    fn tree(entries: &[(&str, serde_json::Value)]) -> HashMap<String, String> {
        entries
            .iter()
            .map(|(p, v)| (p.to_string(), v.to_string()))
            .collect()
    }

    fn id(path: &str) -> serde_json::Value {
        serde_json::json!({ "@odata.id": path })
    }

    #[tokio::test]
    async fn links_in_a_circle_are_fetched_once_and_missing_ones_are_unknown() {
        use serde_json::json;
        let bmc = bmc(tree(&[
            ("/redfish/v1", json!({ "Chassis": id("/redfish/v1/Chassis"), "Systems": id("/redfish/v1/Systems") })),
            ("/redfish/v1/Chassis", json!({ "Members": [id("/redfish/v1/Chassis/1"), id("/redfish/v1/Chassis/1/")] })),
            ("/redfish/v1/Chassis/1", json!({ "Power": id("/redfish/v1/Chassis/1/Power"), "Thermal": id("/redfish/v1/Chassis/1/Thermal") })),
            ("/redfish/v1/Chassis/1/Power", json!({ "PowerSupplies": [{ "Name": "PS1", "Status": { "Health": "Warning" } }] })),
            // The systems collection links back to the service root.
            ("/redfish/v1/Systems", json!({ "Members": [id("/redfish/v1"), id("/redfish/v1/Systems/1")] })),
        ]))
        .await;
        let v = probe(&bmc.url, &spec(&bmc.url)).await;
        // The power supply outranks the thermal resource nobody serves.
        assert_eq!(v.status, HardwareStatus::Degraded, "{v:?}");
        assert!(v.reasons[0].contains("power supply \"PS1\""), "{v:?}");
        assert!(
            v.reasons
                .iter()
                .any(|r| r.ends_with("/redfish/v1/Chassis/1/Thermal: HTTP status 404 Not Found")),
            "{v:?}"
        );
        let mut requests = bmc.requests.lock().unwrap().clone();
        requests.sort();
        let mut unique = requests.clone();
        unique.dedup();
        assert_eq!(requests, unique, "a resource fetched twice");
        assert_eq!(requests.len(), 7, "{requests:?}");
    }

    #[tokio::test]
    async fn a_bare_host_means_its_service_root_and_the_resources_are_bounded() {
        use serde_json::json;
        // A chassis collection with more members than a probe follows.
        let members: Vec<_> = (0..100)
            .map(|i| id(&format!("/redfish/v1/Chassis/{i}")))
            .collect();
        let mut entries = vec![
            (
                "/redfish/v1".to_string(),
                json!({ "Chassis": id("/redfish/v1/Chassis") }),
            ),
            (
                "/redfish/v1/Chassis".to_string(),
                json!({ "Members": members }),
            ),
        ];
        for i in 0..100 {
            entries.push((
                format!("/redfish/v1/Chassis/{i}"),
                json!({ "Status": { "Health": "OK" } }),
            ));
        }
        let entries: Vec<(&str, serde_json::Value)> = entries
            .iter()
            .map(|(p, v)| (p.as_str(), v.clone()))
            .collect();
        let bmc = bmc(tree(&entries)).await;
        let bare = bmc.url.trim_end_matches("/redfish/v1").to_string();
        let v = probe(&bare, &spec(&bare)).await;
        assert_eq!(v.status, HardwareStatus::Unknown, "{v:?}");
        assert!(v.reasons[0].contains("more than 64 resources"), "{v:?}");
        assert_eq!(bmc.requests.lock().unwrap().len(), MAX_RESOURCES);
        assert_eq!(bmc.requests.lock().unwrap()[0], "/redfish/v1");
    }

    #[tokio::test]
    async fn a_silent_bmc_is_unknown_after_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/redfish/v1", listener.local_addr().unwrap());
        let holder = tokio::spawn(async move {
            let (_sock, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
        });
        let mut spec = spec(&url);
        spec.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let v = probe(&url, &spec).await;
        assert_eq!(
            v,
            Verdict::unknown(format!("{url}: no complete answer within 300ms"))
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        holder.abort();
    }
}
