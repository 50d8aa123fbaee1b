//! Where a client's conversation with its server stands, from message tags
//! alone: how many ReadyForQuery replies are still owed, whether an extended
//! query batch is open (sent without its Sync), and the last transaction status.
//! Transaction pooling may hand the server back only when all three say "idle".

/// Per-attachment protocol state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Txn {
    /// Query/Sync/FunctionCall messages sent whose ReadyForQuery has not arrived.
    pub pending: u32,
    /// Parse/Bind/Describe/Execute/Close/Flush sent since the last Sync.
    pub extended_open: bool,
    /// Status byte of the last ReadyForQuery (`I`, `T` or `E`).
    pub status: u8,
    /// A COMMIT was sent and its ReadyForQuery has not arrived.
    pub commit_in_flight: bool,
}

impl Default for Txn {
    fn default() -> Self {
        Txn {
            pending: 0,
            extended_open: false,
            status: b'I',
            commit_in_flight: false,
        }
    }
}

impl Txn {
    /// A client message with `tag` was forwarded to the server.
    pub fn on_client(&mut self, tag: u8) {
        match tag {
            b'Q' | b'F' => self.pending += 1,
            b'S' => {
                self.pending += 1;
                self.extended_open = false;
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.extended_open = true,
            _ => {}
        }
    }

    /// The server sent ReadyForQuery with `status`.
    pub fn on_ready(&mut self, status: u8) {
        self.pending = self.pending.saturating_sub(1);
        self.status = status;
        if self.pending == 0 {
            self.commit_in_flight = false;
        }
    }

    /// Nothing in flight and no transaction open: the server may be released.
    pub fn idle(&self) -> bool {
        self.pending == 0 && !self.extended_open && self.status == b'I'
    }

    /// Nothing in flight, but a transaction may be open (a ROLLBACK can clean it).
    pub fn quiet(&self) -> bool {
        self.pending == 0 && !self.extended_open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: &str) -> Txn {
        // Uppercase letters are client tags; lowercase i/t/e are ReadyForQuery statuses.
        let mut t = Txn::default();
        for c in events.bytes() {
            match c {
                b'i' | b't' | b'e' => t.on_ready(c.to_ascii_uppercase()),
                tag => t.on_client(tag),
            }
        }
        t
    }

    #[test]
    fn release_only_when_everything_is_answered_and_idle() {
        let cases = [
            ("", true),
            ("Q", false),
            ("Qi", true),
            ("Qt", false),   // BEGIN
            ("QtQi", true),  // BEGIN; COMMIT
            ("QtQe", false), // error inside a transaction
            ("QeQi", true),  // ... ROLLBACK
            ("PBE", false),  // extended batch without Sync
            ("PBESi", true),
            ("PBESiP", false), // next batch started before release
            ("QQi", false),    // pipelined simple queries
            ("QQii", true),
            ("SSi", false),       // two Syncs, one answer
            ("PBESPBESii", true), // pipelined batches
            ("PBEH", false),      // Flush keeps the batch open
            ("Fi", true),         // FunctionCall
            ("Qdci", true),       // COPY FROM STDIN via simple query
        ];
        for (events, idle) in cases {
            assert_eq!(run(events).idle(), idle, "{events}");
        }
    }

    #[test]
    fn quiet_allows_rollback_cleanup() {
        assert!(run("Qt").quiet());
        assert!(!run("Qt").idle());
        assert!(!run("QtQ").quiet());
    }
}
