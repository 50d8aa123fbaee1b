//! Topology: which node is the primary. Until health checks arrive (issue #3)
//! the primary is found the way libpq's `target_session_attrs=read-write` does:
//! the first reachable node that is not a hot standby, starting with the last
//! one that was. The choice of order is a pure function, tested without sockets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::Node;
use crate::pool::server_conn::{ConnectError, Login, ServerConn};

/// The nodes and what is known about them.
pub struct Cluster {
    nodes: Vec<Node>,
    /// Index of the node that was primary last time; tried first.
    primary_hint: AtomicUsize,
}

/// Why no primary connection could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Every node was unreachable or a standby.
    #[error("no primary among {0} node(s)")]
    NoPrimary(usize),
    /// A node answered with an error that is the client's business (bad
    /// database, auth failure): trying another node would not help.
    #[error(transparent)]
    Login(ConnectError),
}

impl Cluster {
    /// A cluster over `nodes`, first node presumed primary.
    pub fn new(nodes: Vec<Node>) -> Cluster {
        Cluster {
            nodes,
            primary_hint: AtomicUsize::new(0),
        }
    }

    /// Opens a logged-in connection to the primary.
    pub async fn connect_primary(
        &self,
        login: &Login,
        timeout: Duration,
    ) -> Result<ServerConn, ClusterError> {
        let hint = self.primary_hint.load(Ordering::Relaxed);
        for idx in try_order(self.nodes.len(), hint) {
            let node = &self.nodes[idx];
            match ServerConn::connect(&node.addr, login, timeout).await {
                Ok(mut conn) => match conn.is_standby().await {
                    Ok(false) => {
                        self.primary_hint.store(idx, Ordering::Relaxed);
                        return Ok(conn);
                    }
                    Ok(true) => {
                        tracing::debug!(node = %node.name, "node is a standby; trying the next")
                    }
                    Err(e) => tracing::warn!(node = %node.name, error = %e, "role check failed"),
                },
                Err(e @ ConnectError::Refused { .. }) if !is_node_state_error(&e) => {
                    return Err(ClusterError::Login(e));
                }
                Err(e @ ConnectError::Auth { .. }) => return Err(ClusterError::Login(e)),
                Err(e) => tracing::warn!(node = %node.name, error = %e, "node unreachable"),
            }
        }
        Err(ClusterError::NoPrimary(self.nodes.len()))
    }
}

/// Node indexes to try: the hint first, then the others in configured order.
pub fn try_order(n: usize, hint: usize) -> impl Iterator<Item = usize> {
    let hint = if hint < n { Some(hint) } else { None };
    hint.into_iter()
        .chain((0..n).filter(move |&i| Some(i) != hint))
}

/// Errors that say the node, not the login, is the problem (starting up,
/// shutting down, in recovery, too many connections): try another node.
fn is_node_state_error(e: &ConnectError) -> bool {
    match e {
        ConnectError::Refused { error, .. } => {
            matches!(
                error.code.as_str(),
                "57P03" | "57P01" | "57P02" | "53300" | "08006"
            )
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_first_then_configured_order() {
        assert_eq!(try_order(3, 0).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(try_order(3, 2).collect::<Vec<_>>(), vec![2, 0, 1]);
        assert_eq!(try_order(3, 9).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(try_order(0, 0).count(), 0);
    }
}
