//! Times and counts one client's traffic while it holds a server, from the
//! message tags the link already reads: a request (Query, Sync, FunctionCall)
//! starts a query timer when nothing was in flight; the ReadyForQuery that
//! leaves nothing in flight ends it, and ends the transaction when its status
//! is idle. Counts accumulate in a [`Tally`] that the session adds to its
//! pool's counters once per transaction.

use std::time::Instant;

use crate::measure::latency::{Kind, Latencies};
use crate::pool::stats::Tally;

/// Per-attachment timers and counts.
#[derive(Debug, Default)]
pub struct Meter {
    /// Timing is off when `[http] metrics = false`.
    on: bool,
    query_start: Option<Instant>,
    xact_start: Option<Instant>,
    /// Counts not yet added to the pool.
    pub tally: Tally,
}

impl Meter {
    /// A meter that records (`on`) or only forwards (`!on`).
    pub fn new(on: bool) -> Meter {
        Meter {
            on,
            ..Default::default()
        }
    }

    /// A client request was sent while `pending` requests were in flight.
    pub fn request(&mut self, pending: u32) {
        if self.on && pending == 0 && self.query_start.is_none() {
            let now = Instant::now();
            self.query_start = Some(now);
            self.xact_start.get_or_insert(now);
        }
    }

    /// ReadyForQuery arrived with `status`, leaving `pending` requests in flight.
    pub fn ready(&mut self, pending: u32, status: u8, latencies: &Latencies) {
        if !self.on || pending > 0 {
            return;
        }
        let now = Instant::now();
        let mut samples = [(Kind::Query, 0); 2];
        let mut n = 0;
        if let Some(start) = self.query_start.take() {
            let us = micros(now, start);
            self.tally.queries += 1;
            self.tally.query_us += us;
            samples[n] = (Kind::Query, us);
            n += 1;
        }
        if status == b'I' {
            if let Some(start) = self.xact_start.take() {
                let us = micros(now, start);
                self.tally.xacts += 1;
                self.tally.xact_us += us;
                samples[n] = (Kind::Transaction, us);
                n += 1;
            }
        }
        latencies.record_all(&samples[..n]);
    }

    /// Counts a client message by tag (Parse and Bind, for `SHOW STATS`).
    pub fn client_message(&mut self, tag: u8) {
        if self.on {
            match tag {
                b'P' => self.tally.client_parses += 1,
                b'B' => self.tally.binds += 1,
                _ => {}
            }
        }
    }

    /// Counts a Parse sent to the server.
    pub fn server_parse(&mut self) {
        if self.on {
            self.tally.server_parses += 1;
        }
    }

    /// Counts bytes forwarded from the client (`up`) or to it.
    pub fn bytes(&mut self, up: bool, n: usize) {
        if self.on {
            if up {
                self.tally.received += n as u64;
            } else {
                self.tally.sent += n as u64;
            }
        }
    }
}

fn micros(now: Instant, start: Instant) -> u64 {
    now.duration_since(start).as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_transactions_are_counted_at_their_end() {
        let lat = Latencies::with_slots(1);
        let mut m = Meter::new(true);
        // BEGIN; SELECT; COMMIT as three simple queries.
        for status in [b'T', b'T', b'I'] {
            m.request(0);
            m.ready(0, status, &lat);
        }
        // A pipelined extended batch: two Syncs, one query until the last answer.
        m.request(0);
        m.request(1);
        m.ready(1, b'I', &lat);
        m.ready(0, b'I', &lat);
        assert_eq!((m.tally.queries, m.tally.xacts), (4, 2));
        assert_eq!(lat.merged(Kind::Query).len(), 4);
        assert_eq!(lat.merged(Kind::Transaction).len(), 2);
    }

    #[test]
    fn off_records_nothing() {
        let lat = Latencies::with_slots(1);
        let mut m = Meter::new(false);
        m.request(0);
        m.bytes(true, 10);
        m.ready(0, b'I', &lat);
        assert!(m.tally.is_empty());
        assert_eq!(lat.merged(Kind::Query).len(), 0);
    }
}
