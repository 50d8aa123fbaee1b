//! What a client sees when its server dies under it (a failover): every
//! request in flight gets an ErrorResponse (08006, or 08007 when a COMMIT was
//! in flight) and the connection stays open. A client that was inside a
//! transaction is then treated exactly like PostgreSQL treats an aborted
//! transaction: statements get 25P02 until it sends ROLLBACK (or COMMIT, which
//! reports ROLLBACK). This is what keeps a COMMIT sent after the failure from
//! "succeeding" on a fresh server with nothing in it.

use bytes::BytesMut;

use super::conn::{ClientConn, ClientGone};
use super::txn::Txn;
use crate::error::ClientError;
use crate::protocol::frame::put_frame;
use crate::protocol::messages::backend;

/// A transaction that died with its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostTxn {
    /// The client has not yet been told (it was idle in the transaction).
    pub untold: bool,
}

/// `Some(true)` if `sql` (a Query body) starts with COMMIT/END, `Some(false)`
/// for ROLLBACK/ABORT, `None` otherwise. Leading blanks and comments are skipped.
pub fn ends_transaction(sql: &[u8]) -> Option<bool> {
    let head = super::sql::statements(sql).next()?;
    if head.is(0, "COMMIT") || head.is(0, "END") {
        Some(true)
    } else if head.is(0, "ROLLBACK") || head.is(0, "ABORT") {
        Some(false)
    } else {
        None
    }
}

/// Whether any statement of `sql` commits (COMMIT/END): with such a query in
/// flight when the server dies, the outcome is unknown.
pub fn commits(sql: &[u8]) -> bool {
    super::sql::first_words(sql).any(|h| h.is(0, "COMMIT") || h.is(0, "END"))
}

/// What the client is told about the requests in flight on a server that
/// died, and what is left of its transaction.
#[derive(Debug)]
struct Verdict {
    /// Sent for each request in flight.
    err: ClientError,
    /// The ReadyForQuery status after each.
    status: u8,
    /// The transaction the client is now in, if it was inside one.
    lost: Option<LostTxn>,
}

/// Decides what a client whose server died (with `txn` as the link left it) is told. Pure.
fn on_server_lost(txn: Txn) -> Verdict {
    let in_txn = txn.status != b'I';
    // A statement outside an explicit transaction commits on its own:
    // like an explicit COMMIT in flight, its outcome is unknown.
    let err = if txn.commit_in_flight || !in_txn {
        ClientError::CommitUnknown
    } else {
        ClientError::TransactionLost
    };
    // After an unknown COMMIT there is no transaction left to abort.
    let aborted = in_txn && !txn.commit_in_flight;
    Verdict {
        err,
        status: if aborted { b'E' } else { b'I' },
        lost: aborted.then_some(LostTxn {
            untold: txn.pending == 0,
        }),
    }
}

/// Answers what was in flight on a server that just died, per `txn` (the
/// link's state at the end). Returns the lost transaction the client is now
/// in, if any.
pub(super) async fn answer_lost_server(
    client: &mut ClientConn,
    txn: Txn,
) -> Result<Option<LostTxn>, ClientGone> {
    let Verdict { err, status, lost } = on_server_lost(txn);
    let mut out = BytesMut::new();
    for _ in 0..txn.pending {
        err.encode(&mut out);
        client.errors.record(err.origin(), err.sqlstate());
        backend::ready_for_query(&mut out, status);
    }
    client.send(&out).await?;
    if txn.extended_open {
        // The batch's Sync is still to come: answer it like the others.
        client.discard(true).await?;
        out.clear();
        err.encode(&mut out);
        client.errors.record(err.origin(), err.sqlstate());
        backend::ready_for_query(&mut out, status);
        client.send(&out).await?;
    }
    Ok(lost)
}

/// A request (message `tag`) while the client's transaction is `lost`:
/// ROLLBACK/COMMIT end it (answered ROLLBACK), anything else fails with
/// 25P02. Returns the lost transaction still open, if any.
pub(super) async fn answer_in_lost_txn(
    client: &mut ClientConn,
    lost: LostTxn,
    tag: u8,
    max_message_size: usize,
) -> Result<Option<LostTxn>, ClientGone> {
    let mut out = BytesMut::new();
    if tag == b'Q' {
        let query = client.read_message(max_message_size).await?;
        if ends_transaction(query.get(5..).unwrap_or_default()).is_some() {
            put_frame(&mut out, b'C', b"ROLLBACK\0");
            backend::ready_for_query(&mut out, backend::IDLE);
            client.send(&out).await?;
            return Ok(None);
        }
    }
    let err = if lost.untold {
        ClientError::TransactionLost
    } else {
        ClientError::InFailedTransaction
    };
    err.encode(&mut out);
    client.errors.record(err.origin(), err.sqlstate());
    client.send(&out).await?;
    if tag != b'Q' {
        client.discard(!matches!(tag, b'F')).await?;
    }
    out.clear();
    backend::ready_for_query(&mut out, b'E');
    client.send(&out).await?;
    Ok(Some(LostTxn { untold: false }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spots_transaction_ends() {
        let cases: [(&[u8], Option<bool>); 9] = [
            (b"COMMIT\0", Some(true)),
            (b"  commit;", Some(true)),
            (b"END", Some(true)),
            (b"-- done\nCOMMIT", Some(true)),
            (b"/* x */ rollback", Some(false)),
            (b"ABORT", Some(false)),
            (b"COMMITTED", None),
            (b"SELECT 1", None),
            (b"", None),
        ];
        for (sql, want) in cases {
            assert_eq!(commits(sql), want == Some(true));
            assert_eq!(
                ends_transaction(sql),
                want,
                "{}",
                String::from_utf8_lossy(sql)
            );
        }
        // A batch that ends in COMMIT has a commit in flight.
        assert!(commits(b"INSERT INTO t VALUES (1); COMMIT"));
        assert!(!commits(b"SELECT 'COMMIT'; SELECT 1"));
    }

    #[test]
    fn a_dead_server_is_reported_per_transaction_state() {
        let txn = |pending, status, commit_in_flight| Txn {
            pending,
            extended_open: false,
            status,
            commit_in_flight,
        };
        // (state, SQLSTATE, status after, lost transaction left)
        let cases = [
            // Autocommit statement in flight: its outcome is unknown.
            (txn(1, b'I', false), "08007", b'I', None),
            // Inside a transaction, a statement in flight: the client is told now.
            (
                txn(1, b'T', false),
                "08006",
                b'E',
                Some(LostTxn { untold: false }),
            ),
            // Idle inside a transaction: told at its next request.
            (
                txn(0, b'T', false),
                "08006",
                b'E',
                Some(LostTxn { untold: true }),
            ),
            (
                txn(0, b'E', false),
                "08006",
                b'E',
                Some(LostTxn { untold: true }),
            ),
            // COMMIT in flight: unknown outcome, and no transaction left.
            (txn(1, b'T', true), "08007", b'I', None),
        ];
        for (t, code, status, lost) in cases {
            let v = on_server_lost(t);
            assert_eq!(
                (v.err.sqlstate(), v.status, v.lost),
                (code, status, lost),
                "{t:?}"
            );
        }
    }
}
