//! Which instance issued a cancel key. Behind a load balancer a
//! CancelRequest comes on a new connection that may reach another instance
//! than the one running the query; with peering on, the pid each instance
//! gives its clients carries that instance's peer id, so whichever instance
//! gets the request can tell where it belongs without asking anyone.
//!
//! Layout of the pid with peering on (big-endian bits):
//! `0 | peer id (8 bits) | random (23 bits)`. The sign bit stays 0 because
//! drivers show the pid as a process id and some expect it positive. The
//! secret stays 32 random bits, so a key has 55 random bits in all (63
//! without peering); PostgreSQL's own keys have 32 unguessable bits, since
//! its pid is a real process id.

/// Bits of the pid that carry the peer id.
pub const PEER_ID_BITS: u32 = 8;
/// Random bits left in the pid with peering on.
pub const RANDOM_PID_BITS: u32 = 31 - PEER_ID_BITS;
const RANDOM_PID_MASK: i32 = (1 << RANDOM_PID_BITS) - 1;

/// The pid to give a client: `random` with the sign bit cleared, and with
/// `peer` (this instance's id) in its top bits when peering is on.
pub fn issue_pid(peer: Option<u8>, random: i32) -> i32 {
    match peer {
        None => random & i32::MAX,
        Some(id) => (i32::from(id) << RANDOM_PID_BITS) | (random & RANDOM_PID_MASK),
    }
}

/// The peer id a pid carries (meaningful only for keys issued with peering on).
pub fn peer_of(pid: i32) -> u8 {
    // Masked, so a negative pid from a foreign client cannot spill the sign in.
    ((pid >> RANDOM_PID_BITS) & 0xFF) as u8
}

/// Where a CancelRequest goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<A> {
    /// Look the key up here (and do nothing if it is not ours).
    Local,
    /// Send the request on, unchanged, to the peer at this address.
    Peer(A),
}

/// Where a CancelRequest with `pid` goes, for an instance whose own id is
/// `own` (`None`: peering off) and whose peers' addresses `addr_of` knows.
/// Never to a peer for our own id, and never for an id no peer has: a
/// forwarded request always ends at the instance it names, or here.
pub fn route<A>(own: Option<u8>, pid: i32, addr_of: impl FnOnce(u8) -> Option<A>) -> Route<A> {
    let Some(own) = own else {
        return Route::Local;
    };
    let id = peer_of(pid);
    if id == own {
        return Route::Local;
    }
    addr_of(id).map_or(Route::Local, Route::Peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_id_survives_the_pid_and_the_rest_stays_random() {
        let cases: [(Option<u8>, i32, i32); 7] = [
            (None, 0x1234_5678, 0x1234_5678),
            (None, -1, i32::MAX),
            (None, i32::MIN, 0),
            (Some(0), -1, 0x007F_FFFF),
            (Some(1), 0, 0x0080_0000),
            (Some(1), 0x7FFF_FFFF, 0x00FF_FFFF),
            (Some(255), -1, i32::MAX),
        ];
        for (peer, random, want) in cases {
            let pid = issue_pid(peer, random);
            assert_eq!(pid, want, "{peer:?} {random:#x}");
            assert!(pid >= 0, "{peer:?} {random:#x}: pid {pid} must be positive");
            if let Some(id) = peer {
                assert_eq!(peer_of(pid), id);
            }
        }
        // Every random bit below the id is kept.
        for bit in 0..RANDOM_PID_BITS {
            assert_eq!(issue_pid(Some(9), 1 << bit), (9 << 23) | (1 << bit));
        }
        assert_eq!(
            peer_of(-1),
            0xFF,
            "a foreign negative pid decodes to some id"
        );
    }

    #[test]
    fn a_cancel_goes_to_the_peer_its_key_names_and_nowhere_else() {
        let peers = [(2u8, "b:6432"), (3, "c:6432")];
        let addr_of = |id: u8| peers.iter().find(|p| p.0 == id).map(|p| p.1);
        let pid = |id: u8| issue_pid(Some(id), 0x0055_5555);
        let cases: [(Option<u8>, i32, Route<&str>); 7] = [
            // Peering off: always here, whatever the key says (today's behaviour).
            (None, pid(2), Route::Local),
            (None, pid(1), Route::Local),
            // Our own key: here, never forwarded.
            (Some(1), pid(1), Route::Local),
            // A peer's key: to that peer.
            (Some(1), pid(2), Route::Peer("b:6432")),
            (Some(1), pid(3), Route::Peer("c:6432")),
            // No peer has that id: here (finds nothing unless it is ours).
            (Some(1), pid(4), Route::Local),
            // A peer's key arriving at that peer: here, never sent back.
            (Some(2), pid(2), Route::Local),
        ];
        for (own, pid, want) in cases {
            assert_eq!(route(own, pid, addr_of), want, "own {own:?} pid {pid:#x}");
        }
    }

    #[test]
    fn the_config_bound_matches_the_bits() {
        assert_eq!(
            u32::from(crate::config::MAX_PEER_ID),
            (1 << PEER_ID_BITS) - 1
        );
    }
}
