//! Times and counts one client's traffic while it holds a server, from the
//! message tags the link already reads: a request (Query, Sync, FunctionCall)
//! starts a query timer when nothing was in flight; the ReadyForQuery that
//! leaves nothing in flight ends it, and ends the transaction when its status
//! is idle. Counts accumulate in a [`Tally`] that the session adds to its
//! pool's counters once per transaction.

use crate::measure::latency::{Kind, Latencies};
use crate::measure::tick::Tick;
use crate::pool::stats::Tally;

/// Per-attachment timers and counts.
#[derive(Debug, Default)]
pub struct Meter {
    /// Timing is off when `[http] metrics = false`.
    on: bool,
    query_start: Option<Tick>,
    xact_start: Option<Tick>,
    /// A time read just before the attachment (a checkout that did not
    /// wait): the first request's start, without reading the clock again.
    hint: Option<Tick>,
    /// That checkout's zero wait, not yet recorded: it goes into the
    /// histograms with the query's samples, under the same lock.
    wait_due: bool,
    /// When the last ReadyForQuery that ended a query came.
    answered: Option<Tick>,
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

    /// The attachment began with a checkout that did not wait, at `at`:
    /// `at` stands for the first request's start, and the checkout is
    /// counted with the transaction (its assignment in the tally, its zero
    /// wait with the latencies the transaction records).
    pub fn started_at(&mut self, at: Tick) {
        self.hint = Some(at);
        self.tally.server_assignments += 1;
        self.wait_due = self.on;
    }

    /// Records the checkout's wait if no ReadyForQuery took it along (the
    /// attachment ended before one came).
    pub fn finish(&mut self, latencies: &Latencies) {
        if std::mem::take(&mut self.wait_due) {
            latencies.record(Kind::Wait, 0);
        }
    }

    /// When the last query ended, if it was timed.
    pub fn answered_at(&self) -> Option<Tick> {
        self.answered
    }

    /// A client request was sent while `pending` requests were in flight.
    pub fn request(&mut self, pending: u32) {
        if self.on && pending == 0 && self.query_start.is_none() {
            let now = self.hint.take().unwrap_or_else(Tick::now);
            self.query_start = Some(now);
            self.xact_start.get_or_insert(now);
        }
    }

    /// ReadyForQuery arrived with `status`, leaving `pending` requests in flight.
    pub fn ready(&mut self, pending: u32, status: u8, latencies: &Latencies) {
        if !self.on || pending > 0 {
            return;
        }
        let now = Tick::now();
        self.answered = Some(now);
        let mut samples = [(Kind::Query, 0); 3];
        let mut n = 0;
        if std::mem::take(&mut self.wait_due) {
            samples[n] = (Kind::Wait, 0);
            n += 1;
        }
        let mut query = None;
        if let Some(start) = self.query_start.take() {
            let us = micros(now, start);
            query = Some((start, us));
            self.tally.queries += 1;
            self.tally.query_us += us;
            samples[n] = (Kind::Query, us);
            n += 1;
        }
        if status == b'I' {
            if let Some(start) = self.xact_start.take() {
                // A one-query transaction (the usual one) began with its query.
                let us = match query {
                    Some((q, us)) if q == start => us,
                    _ => micros(now, start),
                };
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

fn micros(now: Tick, start: Tick) -> u64 {
    now.micros_since(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_transactions_are_counted_at_their_end() {
        let lat = Latencies::default();
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
    fn a_query_starts_at_the_time_its_checkout_read() {
        let lat = Latencies::default();
        let mut m = Meter::new(true);
        let at = Tick::now();
        std::thread::sleep(std::time::Duration::from_millis(50));
        m.started_at(at);
        m.request(0);
        m.ready(0, b'I', &lat);
        // One query, one transaction, both timed from the checkout.
        assert!(m.tally.query_us >= 50_000, "{}", m.tally.query_us);
        assert_eq!(m.tally.xact_us, m.tally.query_us);
        assert!(m.answered_at().is_some_and(|t| t > at));
        // The checkout is counted with the transaction it served.
        assert_eq!(m.tally.server_assignments, 1);
        assert_eq!(lat.merged(Kind::Wait).len(), 1);
        m.finish(&lat);
        assert_eq!(lat.merged(Kind::Wait).len(), 1);
        // The next query reads the clock itself.
        m.request(0);
        m.ready(0, b'I', &lat);
        assert!(m.tally.query_us < 100_000, "{}", m.tally.query_us);
    }

    #[test]
    fn a_checkout_that_served_no_query_is_still_counted() {
        let lat = Latencies::default();
        let mut m = Meter::new(true);
        m.started_at(Tick::now());
        m.finish(&lat);
        assert_eq!(lat.merged(Kind::Wait).len(), 1);
        assert_eq!(m.tally.server_assignments, 1);
    }

    #[test]
    fn off_records_nothing() {
        let lat = Latencies::default();
        let mut m = Meter::new(false);
        m.request(0);
        m.bytes(true, 10);
        m.ready(0, b'I', &lat);
        assert!(m.tally.is_empty());
        assert_eq!(lat.merged(Kind::Query).len(), 0);
    }
}
