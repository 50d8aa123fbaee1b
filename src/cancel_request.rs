//! A CancelRequest, served: looked up here and sent to the server running
//! that client's query, or, when its key names another instance among
//! `[[peers]]`, sent on unchanged to that instance. Which of the two is
//! `sessions::peer_key::route`'s decision; this is the I/O around it.
//! Either way a request ends in `Context::cancel_local` at the instance
//! that issued the key, the one place a target is looked up
//! (`sessions::cancel`), so every cancel, however it came, is one that
//! instance's relay waits for.

use std::time::Duration;

use crate::context::Context;
use crate::server::send_cancel_plain;
use crate::sessions::forwards::Outcome;
use crate::sessions::peer_key::{self, Route};

/// How long a forward to a peer may take, connect to close. Short: nobody
/// waits on it (the client that asked has already hung up or ignores the
/// reply), and each hop of a loop of misconfigured peers holds its key this
/// long at most.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves the CancelRequest for key (`pid`, `secret`). Never fails: as in
/// PostgreSQL, the sender gets no answer either way.
pub async fn serve(ctx: &Context, pid: i32, secret: i32) {
    // Decided and copied out before any await: no config guard is held across one.
    let route = {
        let config = ctx.config();
        peer_key::route(ctx.cancels().peer_id(), pid, |id| {
            match config.peers.iter().find(|p| p.id == u16::from(id)) {
                Some(peer) => Some(peer.addr.clone()),
                None => published_addr(ctx, id),
            }
        })
    };
    match route {
        Route::Local => ctx.cancel_local(pid, secret).await,
        Route::Peer(addr) => forward(ctx, &addr, (pid, secret)).await,
    }
}

/// The address the one live proxy with peer id `id` published through
/// coordination. None when no proxy, or more than one, claims that id: a
/// request sent to the wrong one would be dropped there, so it is looked
/// up here instead (and matches nothing).
fn published_addr(ctx: &Context, id: u8) -> Option<String> {
    let status = ctx.cluster().coordination()?;
    let mut claims = status
        .peers
        .into_iter()
        .filter_map(|p| p.cancel_route)
        .filter(|(peer, _)| *peer == id);
    match (claims.next(), claims.next()) {
        (Some((_, addr)), None) => Some(addr),
        (Some(_), Some(_)) => {
            tracing::warn!(peer_id = id, "two proxies publish the same proxy.peer_id: a cancel request for it is not sent on");
            None
        }
        _ => None,
    }
}

/// Sends the request on to the peer at `addr` (the same 16 bytes) and waits
/// for it to close, within [`PEER_TIMEOUT`].
async fn forward(ctx: &Context, addr: &str, key: (i32, i32)) {
    let forwards = ctx.peer_cancels();
    let _forwarding = match forwards.begin(key) {
        Ok(f) => f,
        Err(why) => {
            tracing::debug!(peer = %addr, outcome = why.as_str(), "cancel request for a peer dropped");
            return;
        }
    };
    let outcome = match tokio::time::timeout(PEER_TIMEOUT, send_cancel_plain(addr, key)).await {
        Ok(Ok(())) => Outcome::Forwarded,
        Ok(Err(e)) => {
            tracing::warn!(peer = %addr, error = %e, "could not send a cancel request on to its peer");
            Outcome::Failed
        }
        Err(_) => {
            tracing::warn!(peer = %addr, timeout = ?PEER_TIMEOUT, "peer did not take a cancel request in time");
            Outcome::Failed
        }
    };
    forwards.count(outcome);
}
