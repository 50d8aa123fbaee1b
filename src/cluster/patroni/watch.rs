//! The task that keeps Patroni's view current: one session at a time with
//! one etcd endpoint, which reads every key under the prefix, then watches
//! from the revision after that read, so no change falls between the two.
//! A session that ends (etcd unreachable, a compacted or cancelled watch,
//! no etcd leader) is followed by one on the next endpoint, with a pause
//! once per pass over the list that grows while no session gets through.
//! The last view read stays shown, marked not current.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use tokio_util::sync::CancellationToken;

use super::parse;
use super::shown::Shown;
use crate::cluster::Cluster;
use crate::config::coordination::PatroniConfig;

/// At most this many keys under the prefix: a Patroni cluster has a few
/// plus one per member.
const MAX_KEYS: usize = 1024;
/// A longer value is read as an empty one (Patroni's are far shorter; the
/// history grows by about 100 bytes a promotion).
const MAX_VALUE: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings on the watch's connection, and how long one may go
/// unanswered: a peer that vanished without a word ends the session within
/// both. etcd ends a connection that pings more often than its
/// `--grpc-keepalive-min-time` (5 s by default) while no data flows, and
/// a watch on a quiet cluster carries none for a whole Patroni loop.
const KEEP_ALIVE: Duration = Duration::from_secs(6);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(4);
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// Why a session with etcd ended (another follows after a pause).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("etcd: {0}")]
    Client(#[from] etcd_client::Error),
    #[error("etcd: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("etcd: more than {MAX_KEYS} keys under {0}")]
    TooManyKeys(String),
    #[error("etcd: the watch ended: {0}")]
    WatchEnded(String),
}

/// Runs sessions until `shutdown`.
pub(super) async fn run(cluster: Arc<Cluster>, cfg: PatroniConfig, shutdown: CancellationToken) {
    let prefix = parse::prefix(&cfg.namespace, &cfg.scope);
    let mut shown = Shown::new(cluster, prefix.clone());
    let count = cfg.endpoints.len().max(1);
    let mut ended = 0usize;
    let mut pause = FIRST_PAUSE;
    // Whether a session of this pass over the endpoints read the view.
    let mut read_in_pass = false;
    loop {
        let endpoint = cfg
            .endpoints
            .get(ended % count)
            .cloned()
            .unwrap_or_default();
        let outcome = tokio::select! {
            r = session(&cfg, &endpoint, &prefix, &mut shown) => r,
            _ = shutdown.cancelled() => return,
        };
        let Err(e) = outcome;
        tracing::warn!(error = %e, %endpoint, "patroni: session with etcd ended");
        read_in_pass |= shown.lost(e.to_string());
        ended += 1;
        if !ended.is_multiple_of(count) {
            continue;
        }
        pause = next_pause(pause, std::mem::take(&mut read_in_pass));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The pause before the next pass over the endpoints: short again after a
/// pass in which a session read the view, twice the last one (up to a
/// bound) while none does.
pub fn next_pause(last: Duration, read_the_view: bool) -> Duration {
    if read_the_view {
        FIRST_PAUSE
    } else {
        (last * 2).min(LONGEST_PAUSE)
    }
}

async fn connect(cfg: &PatroniConfig, endpoint: &str) -> Result<Client, WatchError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(KEEP_ALIVE, KEEP_ALIVE_TIMEOUT)
        // A member cut off from the others would serve an old view.
        .with_require_leader(true);
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        opts = opts.with_user(u.clone(), p.clone());
    }
    // Read at every connection: a certificate renewed in place is used
    // from the next one on.
    if let Some(pem) = crate::tls::EtcdPem::read_as(&cfg.tls, &crate::tls::PATRONI_TLS)? {
        opts = opts.with_tls(crate::cluster::coord::etcd::tls_options(
            pem,
            CONNECT_TIMEOUT,
        ));
    }
    Ok(Client::connect([endpoint], Some(opts)).await?)
}

/// One session: read everything, then follow the watch. Ends only with
/// the reason it ended.
async fn session(
    cfg: &PatroniConfig,
    endpoint: &str,
    prefix: &str,
    shown: &mut Shown,
) -> Result<Infallible, WatchError> {
    let mut client = connect(cfg, endpoint).await?;
    let read = GetOptions::new().with_prefix().with_limit(MAX_KEYS as i64);
    let first = client.get(prefix, Some(read)).await?;
    if first.more() {
        return Err(WatchError::TooManyKeys(prefix.to_string()));
    }
    let mut store = Store::default();
    for kv in first.kvs() {
        store.put(prefix, kv.key(), kv.value());
    }
    let mut revision = first.header().map_or(0, |h| h.revision());
    shown.show_keys(&store.0, revision);
    let from = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut watch = client.watch(prefix, Some(from)).await?;
    loop {
        let Some(resp) = watch.message().await? else {
            return Err(WatchError::WatchEnded("etcd closed it".into()));
        };
        if resp.canceled() {
            let why = match resp.compact_revision() {
                0 => resp.cancel_reason().to_string(),
                r => format!("revision {} compacted (to {r})", revision + 1),
            };
            return Err(WatchError::WatchEnded(why));
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => store.put(prefix, kv.key(), kv.value()),
                EventType::Delete => store.delete(prefix, kv.key()),
            }
        }
        if store.len() > MAX_KEYS {
            return Err(WatchError::TooManyKeys(prefix.to_string()));
        }
        revision = resp.header().map_or(revision, |h| h.revision());
        shown.show_keys(&store.0, revision);
    }
}

/// The keys the view reads (relative to the prefix) and their values.
#[derive(Default)]
struct Store(BTreeMap<String, Vec<u8>>);

impl Store {
    fn put(&mut self, prefix: &str, key: &[u8], value: &[u8]) {
        if let Some(k) = relative(prefix, key) {
            let value = if value.len() > MAX_VALUE {
                &[][..]
            } else {
                value
            };
            self.0.insert(k.to_string(), value.to_vec());
        }
    }

    fn delete(&mut self, prefix: &str, key: &[u8]) {
        if let Some(k) = relative(prefix, key) {
            self.0.remove(k);
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// `key` without `prefix`, when it is one the view reads.
fn relative<'k>(prefix: &str, key: &'k [u8]) -> Option<&'k str> {
    let rest = key.strip_prefix(prefix.as_bytes())?;
    std::str::from_utf8(rest).ok().filter(|k| parse::is_read(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_grows_while_no_session_reads_the_view() {
        let ms = Duration::from_millis;
        // (last pause, the session read the view) -> next pause
        let cases = [
            (ms(500), false, ms(1000)),
            (ms(1000), false, ms(2000)),
            (ms(4000), false, ms(5000)),
            (ms(5000), false, ms(5000)),
            (ms(5000), true, ms(500)),
            (ms(500), true, ms(500)),
        ];
        for (last, read, want) in cases {
            assert_eq!(next_pause(last, read), want, "{last:?} {read}");
        }
    }

    #[test]
    fn the_store_keeps_the_keys_read_under_the_prefix_only() {
        let mut s = Store::default();
        let p = "/service/orders/";
        s.put(p, b"/service/orders/leader", b"pg0");
        s.put(p, b"/service/orders/members/pg0", b"{}");
        s.put(p, b"/service/orders/failsafe", b"{}");
        s.put(p, b"/service/orders2/leader", b"pg9");
        s.put(p, b"/service/orders/history", &vec![b'['; MAX_VALUE + 1]);
        s.put(p, b"/service/orders/\xff", b"x");
        let kept: Vec<(&str, usize)> = s.0.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
        assert_eq!(kept, [("history", 0), ("leader", 3), ("members/pg0", 2)]);
        s.delete(p, b"/service/orders/leader");
        s.delete(p, b"/service/orders2/members/pg0");
        assert_eq!(s.len(), 2);
    }
}
