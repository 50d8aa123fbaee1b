//! Times and counts one client's traffic while it holds a server, from the
//! message tags the link already reads: a request (Query, Sync, FunctionCall)
//! starts a query timer when nothing was in flight; the ReadyForQuery that
//! leaves nothing in flight ends it, and ends the transaction when its status
//! is idle. Counts accumulate in a [`Tally`] that the session adds to its
//! pool's counters once per transaction.

use crate::measure::latency::{Kind, Latencies};
use crate::measure::tick::Tick;
use crate::pool::stats::Tally;

/// A server just taken from the pool, not yet counted: the meter of the
/// attachment it serves counts it with that attachment's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkout {
    /// The time read as it was taken: the first request's start, without
    /// reading the clock again. `None` once that is no longer so (the
    /// client's settings took a round trip since).
    pub at: Option<Tick>,
    /// How long the client waited for it, µs.
    pub wait_us: u64,
}

/// Per-attachment timers and counts.
#[derive(Debug, Default)]
pub struct Meter {
    /// Timing is off when `[http] metrics = false`.
    on: bool,
    query_start: Option<Tick>,
    xact_start: Option<Tick>,
    /// A time read just before the attachment (as the checkout ended):
    /// the first request's start, without reading the clock again.
    hint: Option<Tick>,
    /// That checkout's wait (µs), not yet recorded: it goes into the
    /// histograms with the query's samples, under the same lock.
    wait_due: Option<u64>,
    /// When the last ReadyForQuery that ended a query came.
    answered: Option<Tick>,
    /// A ReadyForQuery ended a transaction since [`Meter::take_ended`]
    /// last looked: the tally is due at the pool before that answer goes.
    ended: bool,
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

    /// The attachment began with checkout `c`: its time stands for the
    /// first request's start, and it is counted with the transaction (its
    /// assignment and wait in the tally, its wait with the latencies the
    /// transaction records), not apart, which would take the pool's
    /// counters and the histograms' lock once more.
    pub fn checked_out(&mut self, c: Checkout) {
        self.hint = c.at;
        self.tally.server_assignments += 1;
        self.tally.wait_us += c.wait_us;
        self.wait_due = self.on.then_some(c.wait_us);
    }

    /// Records the checkout's wait if no ReadyForQuery took it along (the
    /// attachment ended before one came).
    pub fn finish(&mut self, latencies: &Latencies) {
        if let Some(us) = self.wait_due.take() {
            latencies.record(Kind::Wait, us);
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
        if pending > 0 {
            return;
        }
        self.ended |= status == b'I';
        if !self.on {
            return;
        }
        let now = Tick::now();
        self.answered = Some(now);
        let mut samples = [(Kind::Query, 0); 3];
        let mut n = 0;
        if let Some(us) = self.wait_due.take() {
            samples[n] = (Kind::Wait, us);
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

    /// Whether a transaction ended since the last call. Its counts are
    /// then added to the pool before its last answer is forwarded, so that
    /// a client sees its transaction in `SHOW STATS` as soon as the answer
    /// (PgBouncer, one thread, counts before it forwards).
    pub fn take_ended(&mut self) -> bool {
        std::mem::take(&mut self.ended)
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

    /// Counts bytes forwarded from the client (`up`, as written to the
    /// server) or to it (as queued for the client, so that an answer's
    /// bytes are in the tally its transaction adds before it is sent).
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

    /// A recording meter whose attachment began with a checkout at `at`
    /// that waited `wait_us`.
    fn after_checkout(at: Option<Tick>, wait_us: u64) -> Meter {
        let mut m = Meter::new(true);
        m.checked_out(Checkout { at, wait_us });
        m
    }

    /// One simple query that ends its transaction.
    fn one_query(m: &mut Meter, lat: &Latencies) {
        m.request(0);
        m.ready(0, b'I', lat);
    }

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
        let at = Tick::now();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut m = after_checkout(Some(at), 0);
        one_query(&mut m, &lat);
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
        one_query(&mut m, &lat);
        assert!(m.tally.query_us < 100_000, "{}", m.tally.query_us);
    }

    #[test]
    fn a_checkout_that_served_no_query_is_still_counted() {
        let lat = Latencies::default();
        let mut m = after_checkout(Some(Tick::now()), 0);
        m.finish(&lat);
        assert_eq!(lat.merged(Kind::Wait).len(), 1);
        assert_eq!(m.tally.server_assignments, 1);
    }

    #[test]
    fn a_checkout_that_waited_is_counted_with_its_wait() {
        let lat = Latencies::default();
        let mut m = after_checkout(Some(Tick::now()), 40_000);
        // Nothing recorded apart: the wait goes with the query's samples.
        assert_eq!(lat.merged(Kind::Wait).len(), 0);
        one_query(&mut m, &lat);
        let waits = lat.merged(Kind::Wait);
        assert_eq!(waits.len(), 1);
        assert!(waits.max() >= 30_000, "{}", waits.max());
        assert_eq!((m.tally.server_assignments, m.tally.wait_us), (1, 40_000));
        m.finish(&lat);
        assert_eq!(lat.merged(Kind::Wait).len(), 1);
    }

    #[test]
    fn a_checkout_without_its_time_starts_the_query_at_the_request() {
        let lat = Latencies::default();
        let long_ago = Tick::now();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut m = after_checkout(None, 7);
        one_query(&mut m, &lat);
        assert!(m.answered_at().is_some_and(|t| t > long_ago));
        assert!(m.tally.query_us < 50_000, "{}", m.tally.query_us);
        assert_eq!(m.tally.wait_us, 7);
    }

    /// The tally is due at the pool when, and only when, a ReadyForQuery
    /// that leaves nothing in flight says the transaction is over, whether
    /// or not the meter times anything.
    #[test]
    fn a_transaction_end_is_reported_once() {
        let lat = Latencies::default();
        // (metering on, requests still in flight, status, ended)
        let cases = [
            (true, 0, b'I', true),
            (true, 0, b'T', false),
            (true, 0, b'E', false),
            (true, 1, b'I', false),
            (false, 0, b'I', true),
            (false, 1, b'I', false),
        ];
        for (on, pending, status, ended) in cases {
            let mut m = Meter::new(on);
            m.request(0);
            m.ready(pending, status, &lat);
            let case = (on, pending, status as char);
            assert_eq!(m.take_ended(), ended, "{case:?}");
            assert!(!m.take_ended(), "reported twice: {case:?}");
        }
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
