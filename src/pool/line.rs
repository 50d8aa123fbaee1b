//! A pool's slots, its idle connections and the line of checkouts waiting
//! for a slot, behind one lock. A connection coming back while someone
//! waits goes straight to the first in line, with its slot, instead of
//! through the idle list and a semaphore; a slot freed by a connection that
//! closed goes the same way. Waits end in the order they began (FIFO), and
//! one timer per pool, not one per wait, ends those past
//! `checkout_timeout`: at many clients per server connection nearly every
//! transaction waits, and a timer of its own cost it a registration and a
//! removal in the runtime's timer wheel, each under a lock.
//!
//! Generic over the connection type so that its rules are tested here
//! without servers. A connection inside the line never holds a slot of
//! its own (the line counts them), so dropping one under the lock never
//! needs the lock again.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use super::lock;
use crate::measure::tick::Tick;

/// What a waiting checkout was given.
#[derive(Debug)]
pub enum Served<C> {
    /// A returned connection, and its slot.
    Conn(C),
    /// A slot (the connection that held it closed).
    Slot,
    /// Nothing within `checkout_timeout`.
    TimedOut,
}

struct Waiter {
    id: u64,
    since: Tick,
    waker: Waker,
}

/// The state behind a pool's lock.
pub struct Line<C> {
    /// Idle connections, most recently used last.
    pub idle: Vec<C>,
    /// The cluster's retirement count at the last sweep of `idle`.
    pub swept: u64,
    /// Slots neither held nor owed.
    free: usize,
    /// Slots to take out of use as they come back: the size shrank while
    /// they were held.
    owed: usize,
    /// Waiting checkouts, oldest first.
    waiting: VecDeque<Waiter>,
    /// What waiting checkouts were given, until they take it.
    served: Vec<(u64, Served<C>)>,
    next_id: u64,
    /// A timer runs for the line (started by the first wait, ended when it
    /// finds the line empty).
    timed: bool,
}

impl<C> Line<C> {
    /// `size` free slots, nothing idle, nobody waiting.
    pub fn new(size: usize) -> Line<C> {
        Line {
            idle: Vec::new(),
            swept: 0,
            free: size,
            owed: 0,
            waiting: VecDeque::new(),
            served: Vec::new(),
            next_id: 0,
            timed: false,
        }
    }

    /// Whether a slot can be taken now without passing anyone in line.
    pub fn can_take(&self) -> bool {
        self.free > 0 && self.waiting.is_empty()
    }

    /// Takes a slot if [`Line::can_take`].
    pub fn try_take(&mut self) -> bool {
        let can = self.can_take();
        if can {
            self.free -= 1;
        }
        can
    }

    /// A held slot comes back, with the connection that held it when that
    /// stays open: both go to the first in line (whose waker is returned,
    /// to wake once the lock is released), else the connection to the idle
    /// list and the slot to the free ones, or out of use if one is owed.
    #[must_use]
    pub fn give_back(&mut self, conn: Option<C>) -> Option<Waker> {
        if self.owed > 0 {
            self.owed -= 1;
        } else if let Some(w) = self.waiting.pop_front() {
            let served = conn.map_or(Served::Slot, Served::Conn);
            self.served.push((w.id, served));
            return Some(w.waker);
        } else {
            self.free += 1;
        }
        self.idle.extend(conn);
        None
    }

    /// Puts a checkout in line at `since`; also says whether the line's
    /// timer must be started.
    pub fn enqueue(&mut self, since: Tick, waker: Waker) -> (u64, bool) {
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(Waiter { id, since, waker });
        (id, !std::mem::replace(&mut self.timed, true))
    }

    /// What waiting checkout `id` was given, if anything yet; if not, its
    /// waker is kept up to date.
    pub fn collect(&mut self, id: u64, waker: &Waker) -> Option<Served<C>> {
        if let Some(pos) = self.served.iter().position(|(i, _)| *i == id) {
            return Some(self.served.swap_remove(pos).1);
        }
        if let Some(w) = self.waiting.iter_mut().find(|w| w.id == id) {
            if !w.waker.will_wake(waker) {
                w.waker = waker.clone();
            }
        }
        None
    }

    /// Checkout `id` stops waiting (its client left): what it was given
    /// passes on to the next in line.
    #[must_use]
    pub fn leave(&mut self, id: u64) -> Option<Waker> {
        if let Some(pos) = self.served.iter().position(|(i, _)| *i == id) {
            return match self.served.swap_remove(pos).1 {
                Served::Conn(c) => self.give_back(Some(c)),
                Served::Slot => self.give_back(None),
                Served::TimedOut => None,
            };
        }
        self.waiting.retain(|w| w.id != id);
        None
    }

    /// Ends the waits begun `timeout_ns` or more before `now`. Returns
    /// their wakers and the time until the next one would end, or `None`
    /// (and the timer ends) when nobody waits.
    pub fn expire(&mut self, now: Tick, timeout_ns: u64) -> (Vec<Waker>, Option<u64>) {
        let mut woken = Vec::new();
        while let Some(front) = self.waiting.front() {
            let waited = now.nanos_since(front.since);
            if waited < timeout_ns {
                return (woken, Some(timeout_ns - waited));
            }
            let w = self.waiting.pop_front().expect("front exists");
            self.served.push((w.id, Served::TimedOut));
            woken.push(w.waker);
        }
        self.timed = false;
        (woken, None)
    }

    /// The line's timer stopped before the line emptied (its runtime shut
    /// down): the next wait starts one.
    pub fn timer_stopped(&mut self) {
        self.timed = false;
    }

    /// The pool's size changes from `old` to `new`. More slots serve the
    /// line first; fewer are taken from the free ones, and the rest as
    /// they come back.
    #[must_use]
    pub fn resize(&mut self, old: usize, new: usize) -> Vec<Waker> {
        if new >= old {
            return (old..new).filter_map(|_| self.give_back(None)).collect();
        }
        let fewer = old - new;
        let now = fewer.min(self.free);
        self.free -= now;
        self.owed += fewer - now;
        Vec::new()
    }

    /// Empties the idle list and what was given but not taken, for the
    /// caller to drop outside the lock.
    pub fn drain(&mut self) -> (Vec<C>, Vec<(u64, Served<C>)>) {
        (
            std::mem::take(&mut self.idle),
            std::mem::take(&mut self.served),
        )
    }
}

/// A slot taken from a line; given back when dropped, unless it went to a
/// connection (`forget`).
pub struct Taken<'a, C> {
    line: &'a Mutex<Line<C>>,
}

impl<'a, C> Taken<'a, C> {
    /// A slot already taken from `line`.
    pub fn new(line: &'a Mutex<Line<C>>) -> Taken<'a, C> {
        Taken { line }
    }

    /// Keeps the slot taken: whoever now holds it gives it back.
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl<C> Drop for Taken<'_, C> {
    fn drop(&mut self) {
        let woken = lock(self.line).give_back(None);
        if let Some(w) = woken {
            w.wake();
        }
    }
}

/// A checkout's turn: a free slot at its first poll if nobody waits, else
/// a place in line, and then what it was given. Dropped before that, it leaves the line and passes
/// on what it was given. `start_timer` runs (outside the lock) when this
/// wait is the one that starts the line's timer.
pub struct Wait<'a, C, F: FnOnce()> {
    line: &'a Mutex<Line<C>>,
    since: Tick,
    id: Option<u64>,
    start_timer: Option<F>,
}

impl<'a, C, F: FnOnce()> Wait<'a, C, F> {
    /// A wait that began at `since`.
    pub fn new(line: &'a Mutex<Line<C>>, since: Tick, start_timer: F) -> Self {
        Wait {
            line,
            since,
            id: None,
            start_timer: Some(start_timer),
        }
    }
}

// No field is pinned: `F` is only called, never polled.
impl<C, F: FnOnce()> Unpin for Wait<'_, C, F> {}

impl<C, F: FnOnce()> Future for Wait<'_, C, F> {
    type Output = Served<C>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Served<C>> {
        let this = self.get_mut();
        let Some(id) = this.id else {
            let mut line = lock(this.line);
            if line.try_take() {
                return Poll::Ready(Served::Slot);
            }
            let (id, start) = line.enqueue(this.since, cx.waker().clone());
            drop(line);
            this.id = Some(id);
            if let (true, Some(f)) = (start, this.start_timer.take()) {
                f();
            }
            return Poll::Pending;
        };
        match lock(this.line).collect(id, cx.waker()) {
            Some(served) => {
                this.id = None;
                Poll::Ready(served)
            }
            None => Poll::Pending,
        }
    }
}

impl<C, F: FnOnce()> Drop for Wait<'_, C, F> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let woken = lock(self.line).leave(id);
            if let Some(w) = woken {
                w.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// A waker that counts its wakes.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }
    fn kind(s: &Served<&str>) -> &'static str {
        match s {
            Served::Conn(_) => "conn",
            Served::Slot => "slot",
            Served::TimedOut => "timeout",
        }
    }

    #[test]
    fn free_slots_are_taken_until_someone_waits() {
        let mut line = Line::<&str>::new(2);
        assert!(line.try_take() && line.try_take());
        assert!(!line.try_take(), "none left");
        let (_, w) = waker();
        let (_, timer) = line.enqueue(Tick::now(), w);
        assert!(timer, "the first wait starts the timer");
        assert!(line.give_back(None).is_some(), "the waiter is served");
        assert!(!line.try_take(), "its slot is not free");
        assert!(line.give_back(Some("c")).is_none());
        assert_eq!(line.idle, ["c"], "kept idle");
        assert!(line.try_take(), "with nobody waiting, a freed slot is free");
    }

    #[test]
    fn what_comes_back_goes_to_the_first_in_line() {
        let mut line = Line::<&str>::new(0);
        let t = Tick::now();
        let (c1, w1) = waker();
        let (_, w2) = waker();
        let (a, timer) = line.enqueue(t, w1);
        let (b, again) = line.enqueue(t, w2);
        assert!(timer && !again, "one timer per line");
        assert!(line.collect(b, &waker().1).is_none(), "nothing yet");
        line.give_back(Some("conn")).unwrap().wake();
        assert_eq!(c1.0.load(Ordering::Relaxed), 1, "the first is woken");
        assert!(line.collect(b, &waker().1).is_none(), "not the second");
        let got = line.collect(a, &waker().1).unwrap();
        assert!(matches!(got, Served::Conn("conn")));
        assert!(line.idle.is_empty(), "handed over, not kept idle");
        line.give_back(None).unwrap();
        assert_eq!(kind(&line.collect(b, &waker().1).unwrap()), "slot");
    }

    #[test]
    fn a_wait_that_leaves_passes_on_what_it_was_given() {
        let mut line = Line::<&str>::new(0);
        let t = Tick::now();
        let (a, _) = line.enqueue(t, waker().1);
        let (b, _) = line.enqueue(t, waker().1);
        let (c, _) = line.enqueue(t, waker().1);
        assert!(line.leave(b).is_none(), "left before anything came");
        line.give_back(Some("x")).unwrap();
        assert!(line.leave(a).is_some(), "a's connection goes to c");
        assert!(matches!(
            line.collect(c, &waker().1),
            Some(Served::Conn("x"))
        ));
        assert!(line.give_back(None).is_none(), "nobody left to wake");
    }

    #[test]
    fn waits_end_in_order_at_the_timeout() {
        let mut line = Line::<&str>::new(0);
        let t0 = Tick::now();
        let at = |ms| t0.plus(std::time::Duration::from_millis(ms));
        let (a, _) = line.enqueue(at(0), waker().1);
        let (b, _) = line.enqueue(at(30), waker().1);
        // (now, timeout, woken, next in)
        let cases: [(u64, u64, usize, Option<u64>); 3] = [
            (50, 100, 0, Some(50)),
            (100, 100, 1, Some(30)),
            (130, 100, 1, None),
        ];
        for (now, timeout, woken, next) in cases {
            let ms = 1_000_000;
            let (w, n) = line.expire(at(now), timeout * ms);
            assert_eq!((w.len(), n), (woken, next.map(|n| n * ms)), "at {now}");
        }
        assert_eq!(kind(&line.collect(a, &waker().1).unwrap()), "timeout");
        assert_eq!(kind(&line.collect(b, &waker().1).unwrap()), "timeout");
        let (_, timer) = line.enqueue(at(200), waker().1);
        assert!(
            timer,
            "an empty line's timer ended: the next wait starts one"
        );
    }

    #[test]
    fn a_smaller_size_takes_free_slots_then_returning_ones() {
        let mut line = Line::<&str>::new(3);
        assert!(line.try_take() && line.try_take());
        assert!(line.resize(3, 1).is_empty());
        assert!(!line.try_take(), "the free one went first");
        assert!(line.give_back(None).is_none());
        assert!(!line.try_take(), "then the first to come back");
        assert!(line.give_back(Some("c")).is_none());
        assert!(line.try_take(), "the size is 1");
        assert!(!line.try_take());
        let (id, _) = line.enqueue(Tick::now(), waker().1);
        assert_eq!(line.resize(1, 2).len(), 1, "a larger size serves the line");
        assert_eq!(kind(&line.collect(id, &waker().1).unwrap()), "slot");
    }

    #[test]
    fn a_wait_future_is_served_and_one_dropped_passes_it_on() {
        let line = Mutex::new(Line::<&str>::new(0));
        let started = AtomicUsize::new(0);
        let start = || {
            started.fetch_add(1, Ordering::Relaxed);
        };
        let (count, w) = waker();
        let mut cx = Context::from_waker(&w);
        let free = Mutex::new(Line::<&str>::new(1));
        let mut now = Wait::new(&free, Tick::now(), start);
        assert!(matches!(
            Pin::new(&mut now).poll(&mut cx),
            Poll::Ready(Served::Slot)
        ));
        assert!(!lock(&free).can_take(), "taken");
        let mut first = Wait::new(&line, Tick::now(), start);
        let mut second = Wait::new(&line, Tick::now(), start);
        assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut second).poll(&mut cx).is_pending());
        assert_eq!(started.load(Ordering::Relaxed), 1);
        let woken = lock(&line).give_back(Some("c"));
        woken.unwrap().wake();
        drop(first);
        assert_eq!(count.0.load(Ordering::Relaxed), 2, "passed on and woken");
        match Pin::new(&mut second).poll(&mut cx) {
            Poll::Ready(Served::Conn("c")) => {}
            other => panic!("{:?}", other.map(|s| kind(&s))),
        }
        drop(second);
        assert!(lock(&line).idle.is_empty());
        assert!(!lock(&line).can_take(), "the slot went with the connection");
    }
}
