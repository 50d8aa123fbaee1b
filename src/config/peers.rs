//! `proxy.peer_id` and `[[peers]]`: the other Switchyard instances behind the
//! same load balancer, so a CancelRequest that lands on the wrong one can be
//! sent on to the one that issued its key. Only what the file says and the
//! checks serde cannot make; the key layout is `sessions::peer_key`'s.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// Largest peer id: the cancel keys this proxy issues have 8 bits for it.
pub const MAX_PEER_ID: u16 = 255;

/// One `[[peers]]` entry: another instance and where its clients connect.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// That instance's `proxy.peer_id`.
    pub id: u16,
    /// That instance's client-facing `host:port` (its `proxy.listen`, as
    /// reachable from here).
    pub addr: String,
}

/// The first problem with this proxy's id and its peer list, if any.
pub fn validate(own: Option<u16>, peers: &[PeerConfig]) -> Result<(), String> {
    if let Some(id) = own.filter(|id| *id > MAX_PEER_ID) {
        return Err(format!(
            "proxy.peer_id = {id}: out of range 0..={MAX_PEER_ID}"
        ));
    }
    let Some(own) = own else {
        if peers.is_empty() {
            return Ok(());
        }
        return Err("[[peers]] needs proxy.peer_id: this proxy's own id, \
                    which the cancel keys it issues carry"
            .into());
    };
    let mut seen = HashSet::new();
    for p in peers {
        if p.id > MAX_PEER_ID {
            return Err(format!(
                "peers: id {} is out of range 0..={MAX_PEER_ID}",
                p.id
            ));
        }
        if p.id == own {
            return Err(format!(
                "peers: id {own} is this proxy's own proxy.peer_id; list only the others"
            ));
        }
        if !seen.insert(p.id) {
            return Err(format!("peers: id {} is listed twice", p.id));
        }
        if !is_host_port(&p.addr) {
            return Err(format!(
                "peers: id {}: addr {:?} must be host:port",
                p.id, p.addr
            ));
        }
    }
    Ok(())
}

fn is_host_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u16, addr: &str) -> PeerConfig {
        PeerConfig {
            id,
            addr: addr.into(),
        }
    }

    #[test]
    fn ids_must_be_in_range_unique_and_not_our_own() {
        let b = peer(2, "10.0.0.2:6432");
        let cases: [(Option<u16>, Vec<PeerConfig>, Option<&str>); 10] = [
            (None, vec![], None),
            (Some(0), vec![], None),
            (Some(1), vec![b.clone(), peer(0, "b:1")], None),
            (Some(255), vec![b.clone()], None),
            (
                Some(256),
                vec![],
                Some("proxy.peer_id = 256: out of range 0..=255"),
            ),
            (None, vec![b.clone()], Some("needs proxy.peer_id")),
            (
                Some(1),
                vec![peer(300, "b:1")],
                Some("id 300 is out of range"),
            ),
            (Some(2), vec![b.clone()], Some("id 2 is this proxy's own")),
            (
                Some(1),
                vec![b.clone(), b.clone()],
                Some("id 2 is listed twice"),
            ),
            (Some(1), vec![peer(2, "b")], Some("must be host:port")),
        ];
        for (own, peers, want) in cases {
            let got = validate(own, &peers);
            match want {
                None => assert!(got.is_ok(), "{own:?} {peers:?}: {got:?}"),
                Some(w) => assert!(
                    got.as_ref().is_err_and(|e| e.contains(w)),
                    "{own:?} {peers:?}: {got:?}, want {w}"
                ),
            }
        }
    }
}
