//! Waiting for a cancellation token inside a loop whose `select!` polls
//! every branch each time its task wakes (the link, once per message).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

pin_project_lite::pin_project! {
    /// `token.cancelled()` that registers with the token once (again only
    /// if the task's waker changes), with a waker of its own that notes
    /// the cancel: the polls in between read one atomic. A plain
    /// `cancelled()` future, and `is_cancelled()`, take the lock of the
    /// token's node on every poll.
    pub struct Cancelled<'a> {
        #[pin]
        wait: WaitForCancellationFuture<'a>,
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

impl<'a> Cancelled<'a> {
    pub fn new(token: &'a CancellationToken) -> Cancelled<'a> {
        Cancelled {
            wait: token.cancelled(),
            registered: None,
        }
    }
}

impl Future for Cancelled<'_> {
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
    async fn a_cancelled_token_is_ready_at_once() {
        let token = CancellationToken::new();
        token.cancel();
        Cancelled::new(&token).await;
    }
}
