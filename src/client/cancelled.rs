//! Waiting for a cancellation token inside a loop whose `select!` polls
//! every branch each time its task wakes (the link, once per message), and
//! keeping that wait from one transaction to the next.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pin_project_lite::pin_project! {
    /// `token.cancelled()` that registers with the token once (again only
    /// if the task's waker changes), with a waker of its own that notes
    /// the cancel: the polls in between read one atomic. A plain
    /// `cancelled()` future, and `is_cancelled()`, take the lock of the
    /// token's node on every poll.
    pub struct Cancelled {
        #[pin]
        wait: WaitForCancellationFutureOwned,
        registered: Option<Arc<Noted>>,
    }
}

/// The waker given to the token: notes the wake, then wakes the task.
struct Noted {
    woken: AtomicBool,
    task: Waker,
}

impl Wake for Noted {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl Cancelled {
    pub fn new(token: &CancellationToken) -> Cancelled {
        Cancelled {
            wait: token.clone().cancelled_owned(),
            registered: None,
        }
    }
}

impl Future for Cancelled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        // The token wakes its waiters only when cancelled: until then, and
        // while the task keeps its waker, there is nothing to look at.
        if let Some(noted) = this.registered.as_ref() {
            if noted.task.will_wake(cx.waker()) && !noted.woken.load(Ordering::Acquire) {
                return Poll::Pending;
            }
        }
        let noted = Arc::new(Noted {
            woken: AtomicBool::new(false),
            task: cx.waker().clone(),
        });
        let waker = Waker::from(noted.clone());
        let polled = this.wait.poll(&mut Context::from_waker(&waker));
        *this.registered = polled.is_pending().then_some(noted);
        polled
    }
}

/// A client's wait for the retirement of the node incarnation its server
/// belongs to, kept between transactions: in transaction mode the next
/// server is usually of the same incarnation, and registering with its
/// token anew each time (an allocation and two locks) was a cost of every
/// transaction. While the client is idle the registration stays; a
/// retirement then wakes its task once, for nothing.
#[derive(Default)]
pub struct RetireWatch {
    wait: Option<(Incarnation, Pin<Box<Cancelled>>)>,
}

/// A node (index) and incarnation (epoch).
type Incarnation = (usize, u64);

impl RetireWatch {
    /// The wait for `token`, the retirement of incarnation `epoch` of node
    /// `node`: the one kept, when it is for the same incarnation.
    pub fn of(
        &mut self,
        node: usize,
        epoch: u64,
        token: &CancellationToken,
    ) -> Pin<&mut Cancelled> {
        let key = (node, epoch);
        if self.wait.as_ref().is_none_or(|(k, _)| *k != key) {
            self.wait = Some((key, Box::pin(Cancelled::new(token))));
        }
        let (_, wait) = self.wait.as_mut().expect("set just above");
        wait.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancel_after_registration_wakes_the_waiter() {
        let token = CancellationToken::new();
        let waiter = {
            let token = token.clone();
            tokio::spawn(async move {
                let wait = Cancelled::new(&token);
                tokio::pin!(wait);
                // Polled many times by a loop before the cancel comes.
                for _ in 0..3 {
                    assert!(futures_util::poll!(wait.as_mut()).is_pending());
                    tokio::task::yield_now().await;
                }
                wait.await;
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        token.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter woke")
            .unwrap();
    }

    #[tokio::test]
    async fn a_kept_watch_still_sees_its_incarnation_retired() {
        let (old, new) = (CancellationToken::new(), CancellationToken::new());
        let mut watch = RetireWatch::default();
        // Two transactions on incarnation 1 of node 0: the second polls the
        // wait the first registered, which stays pending.
        for _ in 0..2 {
            assert!(futures_util::poll!(watch.of(0, 1, &old)).is_pending());
        }
        // A server of the next incarnation gets a wait on its own token.
        assert!(futures_util::poll!(watch.of(0, 2, &new)).is_pending());
        old.cancel();
        assert!(futures_util::poll!(watch.of(0, 2, &new)).is_pending());
        // Back on incarnation 1 (a server opened before it was retired):
        // its retirement is seen.
        assert!(futures_util::poll!(watch.of(0, 1, &old)).is_ready());
        // A task whose kept wait (polled in an earlier transaction) is
        // woken by the cancel itself.
        let token = new.clone();
        let waiter = tokio::spawn(async move {
            let mut watch = RetireWatch::default();
            let first = futures_util::poll!(watch.of(0, 2, &token));
            watch.of(0, 2, &token).await;
            first.is_pending()
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        new.cancel();
        let waited = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the cancel woke the waiter")
            .unwrap();
        assert!(waited);
    }

    #[tokio::test]
    async fn a_cancelled_token_is_ready_at_once() {
        let token = CancellationToken::new();
        token.cancel();
        Cancelled::new(&token).await;
    }
}
