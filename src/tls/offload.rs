//! TLS handshakes off a single-threaded event loop.
//!
//! A handshake costs a key exchange and a signature: a few hundred
//! microseconds of CPU that, on a current-thread runtime (`[proxy] workers =
//! 1`), would stall every running transaction behind it, and that a burst of
//! connecting clients would serialise on one core. There, handshakes run on a
//! small multi-thread runtime of their own; the socket stays registered with
//! the proxy's reactor, which keeps driving its readiness. A multi-thread
//! proxy runtime already spreads handshakes over its workers: they run in place.

use std::future::Future;
use std::io;
use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime, RuntimeFlavor};
use tokio_util::task::AbortOnDropHandle;

/// The handshake runtime, made on first use and kept for the process's
/// life; `None` if its threads could not be started (handshakes then run in
/// place, as they would on a multi-thread runtime).
fn handshakes() -> Option<&'static Runtime> {
    static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("switchyard-tls")
                .enable_all()
                .build()
                .inspect_err(|e| tracing::warn!(error = %e, "TLS handshakes run on the event loop"))
                .ok()
        })
        .as_ref()
}

/// Runs `handshake` off the event loop when the caller's runtime is
/// single-threaded, in place otherwise.
pub async fn run<F, T>(handshake: F) -> io::Result<T>
where
    F: Future<Output = io::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let offload = Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread;
    match handshakes().filter(|_| offload) {
        // Aborted when the caller stops waiting (client_login_timeout, shutdown):
        // a client that never finishes its handshake must not keep a task.
        Some(rt) => AbortOnDropHandle::new(rt.spawn(handshake))
            .await
            .map_err(|e| io::Error::other(format!("TLS handshake task failed: {e}")))?,
        None => handshake.await,
    }
}
