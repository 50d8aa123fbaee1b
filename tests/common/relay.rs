//! A TCP relay in front of one PostgreSQL node that cuts the path of chosen
//! login roles only. Proxies that coordinate must list every node at the same
//! address (the address is part of the configuration they must agree on), so
//! one relay serves them all; each proxy logs in as roles of its own (its
//! `[cluster] user` for health checks and promotions, its clients' users for
//! their sessions), and cutting those roles cuts that one proxy off from the
//! node while the others still reach it.
//!
//! The relay reads each connection's StartupMessage to learn its role,
//! answering an SSLRequest or GSSENCRequest itself with `N` (the test nodes
//! do not speak TLS), then passes everything through. A cut role's
//! connections are closed, and new ones are closed as soon as they name it,
//! as a path that is gone would leave them.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// Relayed connections open now, by role.
type Live = Arc<Mutex<HashMap<String, usize>>>;

/// One relay; stops relaying when dropped.
pub struct Relay {
    /// Where the proxies connect instead of the node.
    pub addr: SocketAddr,
    cut: watch::Sender<HashSet<String>>,
    live: Live,
    stop: CancellationToken,
}

impl Relay {
    /// Relays `target` (`host:port`) on a free loopback port.
    pub async fn start(target: &str) -> Relay {
        let target: SocketAddr = target.parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(HashSet::new());
        let relay = Relay {
            addr,
            cut,
            live: Arc::default(),
            stop: CancellationToken::new(),
        };
        let (cut, live, stop) = (relay.cut.clone(), relay.live.clone(), relay.stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((inbound, _)) = accepted else { continue };
                let (rx, live, stop) = (cut.subscribe(), live.clone(), stop.clone());
                tokio::spawn(relay_one(inbound, target, rx, live, stop));
            }
        });
        relay
    }

    /// Cuts `roles` off: closes their connections and every new one that
    /// names them; returns once none of theirs is open, so a test acting
    /// right after sees a path that is really gone.
    pub async fn cut(&self, roles: &[&str]) {
        self.cut
            .send_modify(|set| set.extend(roles.iter().map(|r| r.to_string())));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let open: usize = {
                let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
                roles
                    .iter()
                    .map(|r| live.get(*r).copied().unwrap_or(0))
                    .sum()
            };
            if open == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{open} relayed connections of {roles:?} still open"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Lets `roles` through again.
    pub fn restore(&self, roles: &[&str]) {
        self.cut.send_modify(|set| {
            for r in roles {
                set.remove(*r);
            }
        });
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Counts one open connection of a role while it lives.
struct Open {
    live: Live,
    role: String,
}

impl Open {
    fn new(live: &Live, role: &str) -> Open {
        *live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(role.to_string())
            .or_default() += 1;
        Open {
            live: live.clone(),
            role: role.to_string(),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = live.get_mut(&self.role) {
            *n -= 1;
        }
    }
}

async fn relay_one(
    mut inbound: TcpStream,
    target: SocketAddr,
    mut cut: watch::Receiver<HashSet<String>>,
    live: Live,
    stop: CancellationToken,
) {
    let Some((first, role)) = read_startup(&mut inbound).await else {
        return;
    };
    // Counted before the cut is checked: `Relay::cut` changes the set
    // first and then waits for the count, so no connection slips between.
    let _open = Open::new(&live, &role);
    if cut.borrow_and_update().contains(&role) {
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    if outbound.write_all(&first).await.is_err() {
        return;
    }
    tokio::select! {
        _ = cut.wait_for(|set| set.contains(&role)) => {}
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = stop.cancelled() => {}
    }
}

/// Reads the client's first packet, answering encryption requests with
/// `N`: the StartupMessage (or CancelRequest) as received, and the role it
/// names (empty for a CancelRequest).
async fn read_startup(s: &mut TcpStream) -> Option<(Vec<u8>, String)> {
    loop {
        let len = s.read_u32().await.ok()? as usize;
        if !(8..=10_000).contains(&len) {
            return None;
        }
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.ok()?;
        let code = u32::from_be_bytes(body[..4].try_into().unwrap());
        if code == SSL_REQUEST || code == GSSENC_REQUEST {
            s.write_all(b"N").await.ok()?;
            continue;
        }
        let role = startup_user(&body[4..]).unwrap_or_default();
        let mut packet = (len as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        return Some((packet, role));
    }
}

/// The `user` parameter of a StartupMessage's `key\0value\0...` list.
fn startup_user(params: &[u8]) -> Option<String> {
    let mut fields = params.split(|b| *b == 0);
    while let Some(key) = fields.next() {
        let value = fields.next()?;
        if key == b"user" {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
    }
    None
}
