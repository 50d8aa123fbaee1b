//! What a client sees when its server dies under it (a failover): every
//! request in flight gets an ErrorResponse (08006, or 08007 when a COMMIT was
//! in flight) and the connection stays open. A client that was inside a
//! transaction is then treated exactly like PostgreSQL treats an aborted
//! transaction: statements get 25P02 until it sends ROLLBACK (or COMMIT, which
//! reports ROLLBACK). This is what keeps a COMMIT sent after the failure from
//! "succeeding" on a fresh server with nothing in it.

use bytes::BytesMut;

use super::relay::Session;
use crate::error::ClientError;
use crate::protocol::frame::put_frame;
use crate::protocol::frame_len;
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
    super::sql::statements(sql).any(|h| h.is(0, "COMMIT") || h.is(0, "END"))
}

impl Session {
    /// Answers what was in flight on a server that just died, per `last_txn`.
    pub(super) async fn answer_lost_server(&mut self) -> Result<(), ()> {
        let txn = self.last_txn;
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
        let status = if aborted { b'E' } else { b'I' };
        let mut out = BytesMut::new();
        for _ in 0..txn.pending {
            err.encode(&mut out);
            self.ctx.errors().add(err.sqlstate());
            backend::ready_for_query(&mut out, status);
        }
        self.client.send(&out).await.map_err(|_| ())?;
        if aborted {
            self.lost = Some(LostTxn {
                untold: txn.pending == 0,
            });
        }
        if txn.extended_open {
            // The batch's Sync is still to come: answer it like the others.
            self.discard(true).await?;
            out.clear();
            err.encode(&mut out);
            self.ctx.errors().add(err.sqlstate());
            backend::ready_for_query(&mut out, status);
            self.client.send(&out).await.map_err(|_| ())?;
        }
        Ok(())
    }

    /// A request while the client's transaction is lost: ROLLBACK/COMMIT end
    /// it (answered ROLLBACK), anything else fails with 25P02.
    pub(super) async fn answer_in_lost_txn(&mut self, tag: u8) -> Result<(), ()> {
        let Some(lost) = self.lost else { return Ok(()) };
        let mut out = BytesMut::new();
        if tag == b'Q' {
            let query = self.read_whole_message().await?;
            if ends_transaction(query.get(5..).unwrap_or_default()).is_some() {
                self.lost = None;
                put_frame(&mut out, b'C', b"ROLLBACK\0");
                backend::ready_for_query(&mut out, backend::IDLE);
                return self.client.send(&out).await.map_err(|_| ());
            }
        }
        let err = if lost.untold {
            ClientError::TransactionLost
        } else {
            ClientError::InFailedTransaction
        };
        self.lost = Some(LostTxn { untold: false });
        err.encode(&mut out);
        self.ctx.errors().add(err.sqlstate());
        self.client.send(&out).await.map_err(|_| ())?;
        if tag != b'Q' {
            self.discard(!matches!(tag, b'F')).await?;
        }
        out.clear();
        backend::ready_for_query(&mut out, b'E');
        self.client.send(&out).await.map_err(|_| ())
    }

    /// Reads and removes one whole client message (a Query is small).
    async fn read_whole_message(&mut self) -> Result<BytesMut, ()> {
        let max = self.limits.max_message_size;
        loop {
            if let Some(len) = frame_len(&self.client.buf, max).map_err(|_| ())? {
                return Ok(self.client.buf.split_to(len));
            }
            if !matches!(self.client.fill().await, Ok(n) if n > 0) {
                return Err(());
            }
        }
    }
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
}
