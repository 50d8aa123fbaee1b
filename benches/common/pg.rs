//! The benchmarks' PostgreSQL clients (tokio-postgres, no TLS): connecting,
//! waiting for a proxy to serve, and an error in a line.

use std::time::{Duration, Instant};

use anyhow::bail;
use tokio_postgres::{Client, NoTls};

/// Longest wait for one attempt of [`connect_when_ready`]: a proxy that
/// holds the attempt is tried again rather than waited for.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two attempts of [`connect_when_ready`].
const ATTEMPT_PAUSE: Duration = Duration::from_millis(100);

/// A client on `conninfo`, its connection driven by a task of its own on
/// the current runtime.
pub async fn connect(conninfo: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A client that has answered `probe` (`SELECT 1`; `SHOW VERSION` on the
/// admin console, which knows no SQL), retrying for at most `within`: a
/// proxy serves nothing before its first health checks.
pub async fn connect_when_ready(
    conninfo: &str,
    probe: &str,
    within: Duration,
) -> anyhow::Result<Client> {
    let deadline = Instant::now() + within;
    loop {
        let attempt = async {
            let c = connect(conninfo).await?;
            c.simple_query(probe).await?;
            Ok::<_, tokio_postgres::Error>(c)
        };
        let err = match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) => describe(&e),
            Err(_) => format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs()),
        };
        if Instant::now() >= deadline {
            bail!(
                "the proxy did not answer `{probe}` within {}s: {err}",
                within.as_secs()
            );
        }
        tokio::time::sleep(ATTEMPT_PAUSE).await;
    }
}

/// `SQLSTATE: message` for server errors, the error's text otherwise.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}
