//! The replies a server still owes, in order, for transaction pooling with
//! prepared statements. Rewriting names means the proxy sometimes sends a
//! message the client did not (a Parse injected before a Bind, a Close to
//! evict) and sometimes answers one itself (ParseComplete for a statement the
//! server already has, CloseComplete for a client's Close). This queue says,
//! for each server message, whether it is forwarded or dropped, and when the
//! proxy's own answers are due. Pure: no I/O, table-tested.

use std::collections::VecDeque;
use std::sync::Arc;

/// A message sent to the server whose reply is still expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Parse; `server` is the server-side statement name (None: unnamed),
    /// `client` the client's name to forget if it fails (None: injected).
    Parse {
        server: Option<Arc<str>>,
        client: Option<Arc<str>>,
    },
    /// Bind.
    Bind,
    /// Describe of a statement (ParameterDescription, then RowDescription or NoData).
    DescribeStatement,
    /// Describe of a portal.
    DescribePortal,
    /// Execute.
    Execute,
    /// Close (portal, or a statement the proxy evicts).
    Close,
    /// Sync.
    Sync,
    /// Simple Query or FunctionCall: everything up to ReadyForQuery.
    Query,
}

/// One entry of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The reply goes to the client.
    Forward(Sent),
    /// The reply is the proxy's business (an injected message): dropped.
    Swallow(Sent),
    /// The proxy answers with this message tag (`1` ParseComplete, `3` CloseComplete) when it reaches the head.
    Answer(u8),
    /// A message the proxy refused (a Parse past the client's bounds),
    /// sent to the server as one that fails there, so that the server
    /// skips the rest of the batch and aborts the transaction as
    /// PostgreSQL would: its error is replaced by this ErrorResponse.
    Refused(bytes::Bytes),
    /// The client ended a COPY IN (CopyDone/CopyFail): no reply of its own,
    /// it bounds the Syncs the server ignores during copy-in.
    CopyEnd,
}

/// What to do with one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it to the client.
    Forward,
    /// Drop it.
    Drop,
}

/// What server replies taught about statements.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// Server-side names to remove from the server's prepared set (Parse failed or skipped).
    pub server: Vec<Arc<str>>,
    /// Client names to remove from the client's statements.
    pub client: Vec<Arc<str>>,
    /// Server-side names a server accepted (ParseComplete): the text is valid.
    pub confirmed: Vec<Arc<str>>,
    /// Syncs sent during copy-in, which PostgreSQL ignores: no ReadyForQuery comes for them.
    pub ignored_syncs: u32,
}

impl Forgotten {
    /// Whether it names no statement.
    pub fn is_empty(&self) -> bool {
        self.server.is_empty() && self.client.is_empty() && self.confirmed.is_empty()
    }
}

/// The queue.
#[derive(Debug, Default)]
pub struct Expectations {
    queue: VecDeque<Expect>,
}

/// Entries a spare queue keeps room for: a queue that a long pipeline grew
/// is not kept for the client's life.
const SPARE_ROOM: usize = 16;

impl Expectations {
    /// Empties the queue for the next attachment, keeping its (small)
    /// allocation: a new one per transaction was an allocation and a free
    /// on the hot path.
    pub fn empty(&mut self) {
        self.queue.clear();
        if self.queue.capacity() > SPARE_ROOM {
            self.queue = VecDeque::new();
        }
    }

    /// Nothing owed either way.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Replies owed (and answers due).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// The ErrorResponse that replaces the server's error at the head.
    pub fn refusal(&self) -> Option<&bytes::Bytes> {
        match self.queue.front() {
            Some(Expect::Refused(err)) => Some(err),
            _ => None,
        }
    }

    /// The entries still queued, head first.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> Vec<Expect> {
        self.queue.iter().cloned().collect()
    }

    /// Records what was just sent (or will be answered by the proxy).
    pub fn push(&mut self, e: Expect) {
        if matches!(e, Expect::CopyEnd) && self.queue.is_empty() {
            return; // a stray CopyDone outside COPY: nothing to bound
        }
        self.queue.push_back(e);
    }

    fn pop(&mut self) {
        // `matches!`, not `==`: the derived comparison is a call per
        // message on the hot path.
        self.queue.pop_front();
        while matches!(self.queue.front(), Some(Expect::CopyEnd)) {
            self.queue.pop_front();
        }
    }

    /// The proxy's own answer, if one is at the head (all earlier replies done).
    pub fn take_answer(&mut self) -> Option<u8> {
        match self.queue.front() {
            Some(Expect::Answer(tag)) => {
                let tag = *tag;
                self.pop();
                Some(tag)
            }
            _ => None,
        }
    }

    /// The proxy's own answer is at the head: it goes before any further server message.
    pub fn answer_due(&self) -> bool {
        matches!(self.queue.front(), Some(Expect::Answer(_)))
    }

    /// What would happen to a server message with `tag` (no change made).
    pub fn verdict(&self, tag: u8) -> Verdict {
        match (self.queue.front(), tag) {
            (Some(Expect::Swallow(_)), b'1' | b'2' | b'3' | b't' | b'T' | b'n') => Verdict::Drop,
            (Some(Expect::Refused(_)), b'E') => Verdict::Drop,
            _ => Verdict::Forward,
        }
    }

    /// Applies a server message with `tag`: pops what it completes.
    pub fn on_server(&mut self, tag: u8) -> Forgotten {
        let mut forgotten = Forgotten::default();
        forgotten.ignored_syncs = self.learn(tag, &mut forgotten);
        forgotten
    }

    /// [`Expectations::on_server`] adding what the message taught about
    /// statements to `forgotten` (no lists made and dropped per message,
    /// the link's hot path). Returns the Syncs it found PostgreSQL ignores.
    pub fn learn(&mut self, tag: u8, forgotten: &mut Forgotten) -> u32 {
        let Some(head) = self.queue.front() else {
            return 0;
        };
        // Borrowed, not cloned: a clone of a Parse entry was two reference
        // counts up and down per server message.
        let sent = match head {
            Expect::Forward(s) | Expect::Swallow(s) => s,
            Expect::Refused(_) => &Sent::Bind,
            Expect::Answer(_) | Expect::CopyEnd => return 0,
        };
        let completes = match (sent, tag) {
            (Sent::Execute, b'G') => return self.drop_syncs_in_copy(),
            (_, b'N' | b'S' | b'A') => false,
            (Sent::Query, b'Z') => true,
            (Sent::Query, _) => false,
            (Sent::Sync, b'Z') => true,
            (_, b'E') => {
                self.fail_batch(forgotten);
                return 0;
            }
            (Sent::Parse { server, .. }, b'1') => {
                forgotten.confirmed.extend(server.clone());
                true
            }
            (Sent::Bind, b'2') | (Sent::Close, b'3') => true,
            (Sent::DescribeStatement | Sent::DescribePortal, b'T' | b'n') => true,
            (Sent::Execute, b'C' | b'I' | b's') => true,
            _ => false,
        };
        if completes {
            self.pop();
        }
        0
    }

    /// The Execute at the head started COPY IN: the Syncs the client sent
    /// after it and before its CopyDone/CopyFail are ignored by PostgreSQL.
    fn drop_syncs_in_copy(&mut self) -> u32 {
        let mut end = self
            .queue
            .iter()
            .position(|e| *e == Expect::CopyEnd)
            .unwrap_or(self.queue.len());
        let mut dropped = 0;
        let mut i = 1;
        while i < end {
            if self.queue[i] == Expect::Forward(Sent::Sync) {
                self.queue.remove(i);
                end -= 1;
                dropped += 1;
            } else {
                i += 1;
            }
        }
        dropped
    }

    /// An extended-protocol message failed: the server skips everything up to
    /// the next Sync, so those entries are dropped, and statements they would
    /// have prepared do not exist.
    fn fail_batch(&mut self, forgotten: &mut Forgotten) {
        while let Some(e) = self.queue.front() {
            if matches!(e, Expect::CopyEnd) {
                self.queue.pop_front();
                continue;
            }
            if matches!(e, Expect::Forward(Sent::Sync) | Expect::Swallow(Sent::Sync)) {
                break;
            }
            if let Some(
                Expect::Forward(Sent::Parse { server, client })
                | Expect::Swallow(Sent::Parse { server, client }),
            ) = self.queue.pop_front()
            {
                forgotten.server.extend(server);
                forgotten.client.extend(client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The link forwards a DataRow without asking the queue: this holds
    /// only while no head makes a row do anything.
    #[test]
    fn a_data_row_is_forwarded_and_completes_nothing_whatever_the_head() {
        let sent = [
            Sent::Parse {
                server: Some("s".into()),
                client: Some("c".into()),
            },
            Sent::Parse {
                server: None,
                client: None,
            },
            Sent::Bind,
            Sent::DescribeStatement,
            Sent::DescribePortal,
            Sent::Execute,
            Sent::Close,
            Sent::Sync,
            Sent::Query,
        ];
        let mut heads: Vec<Expect> = sent.iter().cloned().map(Expect::Forward).collect();
        heads.extend(sent.iter().cloned().map(Expect::Swallow));
        heads.push(Expect::Refused(bytes::Bytes::from_static(b"E")));
        for head in heads {
            let mut q = Expectations::default();
            q.push(head.clone());
            q.push(Expect::Forward(Sent::Sync));
            let before = q.queued();
            let mut forgotten = Forgotten::default();
            assert_eq!(q.verdict(b'D'), Verdict::Forward, "{head:?}");
            assert_eq!(q.learn(b'D', &mut forgotten), 0, "{head:?}");
            assert_eq!(q.queued(), before, "{head:?}");
            assert_eq!(forgotten, Forgotten::default(), "{head:?}");
        }
    }

    #[test]
    fn syncs_sent_during_copy_in_expect_no_reply() {
        // tokio-postgres copy_in: Bind, Execute, Sync, CopyData..., CopyDone, Sync; then Close + Sync.
        let mut q = Expectations::default();
        for e in [Sent::Bind, Sent::Execute, Sent::Sync] {
            q.push(Expect::Forward(e));
        }
        q.push(Expect::CopyEnd);
        q.push(Expect::Forward(Sent::Sync));
        q.push(Expect::Answer(b'3'));
        q.push(Expect::Forward(Sent::Sync));
        let mut ignored = 0;
        let mut seen = String::new();
        for &tag in b"2GCZZ" {
            while let Some(a) = q.take_answer() {
                seen.push(a as char);
            }
            seen.push(tag as char);
            ignored += q.on_server(tag).ignored_syncs;
        }
        assert_eq!(seen, "2GCZ3Z");
        assert_eq!(ignored, 1);
        assert!(q.is_empty());
        q.push(Expect::CopyEnd);
        assert!(q.is_empty(), "a stray CopyDone leaves nothing behind");
    }

    fn parse(server: &str, client: Option<&str>) -> Sent {
        Sent::Parse {
            server: Some(server.into()),
            client: client.map(Into::into),
        }
    }

    /// Feeds server tags; returns the verdicts and answers interleaved as the client would see them.
    fn run(q: &mut Expectations, server: &[u8]) -> String {
        let mut seen = String::new();
        for &tag in server {
            while let Some(a) = q.take_answer() {
                seen.push(a as char);
            }
            if q.verdict(tag) == Verdict::Forward {
                seen.push(tag as char);
            }
            q.on_server(tag);
        }
        while let Some(a) = q.take_answer() {
            seen.push(a as char);
        }
        seen
    }

    #[test]
    fn injected_parse_reply_is_dropped_and_answers_come_in_order() {
        let mut q = Expectations::default();
        // Client: Parse(s1) the server already has, Bind, Execute, Sync.
        q.push(Expect::Answer(b'1'));
        q.push(Expect::Forward(Sent::Bind));
        q.push(Expect::Forward(Sent::Execute));
        q.push(Expect::Forward(Sent::Sync));
        assert_eq!(run(&mut q, b"2DCZ"), "12DCZ");
        assert!(q.is_empty());

        // Client: Bind(s1) on a server without it: Parse injected first.
        q.push(Expect::Swallow(parse("sy_1", None)));
        q.push(Expect::Forward(Sent::Bind));
        q.push(Expect::Forward(Sent::Execute));
        q.push(Expect::Forward(Sent::Sync));
        assert_eq!(run(&mut q, b"12DDCZ"), "2DDCZ");
        assert!(q.is_empty());
    }

    #[test]
    fn a_failed_parse_forgets_its_names_and_skips_to_sync() {
        let mut q = Expectations::default();
        q.push(Expect::Forward(parse("sy_bad", Some("s1"))));
        q.push(Expect::Forward(Sent::Bind));
        q.push(Expect::Answer(b'3'));
        q.push(Expect::Forward(Sent::Sync));
        let mut seen = String::new();
        for &tag in b"EZ" {
            if q.verdict(tag) == Verdict::Forward {
                seen.push(tag as char);
            }
            let f = q.on_server(tag);
            if tag == b'E' {
                assert_eq!(f.server, vec![Arc::<str>::from("sy_bad")]);
                assert_eq!(f.client, vec![Arc::<str>::from("s1")]);
            }
        }
        assert_eq!(
            seen, "EZ",
            "answers after the error are skipped, as PostgreSQL would"
        );
        assert!(q.is_empty());
    }

    #[test]
    fn describe_statement_and_async_messages() {
        let mut q = Expectations::default();
        q.push(Expect::Swallow(parse("sy_2", None)));
        q.push(Expect::Forward(Sent::DescribeStatement));
        q.push(Expect::Forward(Sent::Sync));
        assert_eq!(run(&mut q, b"1NtTZ"), "NtTZ");
        q.push(Expect::Forward(Sent::Query));
        assert_eq!(
            run(&mut q, b"TDCSEZ"),
            "TDCSEZ",
            "errors inside a simple query end at ReadyForQuery"
        );
        assert!(q.is_empty());
    }
}
