//! The drill's write load: `writers` tasks, each on a connection of its own
//! through the proxy, inserting rows with ids no other writer uses. Every
//! acknowledged id is recorded with its time, every error with its SQLSTATE
//! (or `connection lost`); a lost connection is reopened with a short
//! backoff. The ledger is shared, so a writer still held by the proxy when
//! the drill ends loses nothing already recorded.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config};
use tokio_util::sync::CancellationToken;

use super::console::connect;
use super::DrillError;

/// Pause between a writer's inserts: a light load that still measures a
/// write pause to a few milliseconds.
const PACE: Duration = Duration::from_millis(5);

/// First and longest wait before reconnecting.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// How long the writers get to finish their statement once stopped; one
/// still held by the proxy after that is abandoned (its outcome unknown,
/// so not acknowledged).
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// What the writers saw.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    acks: Vec<(i64, Instant)>,
    /// SQLSTATE, `connection lost` or `connect failed`.
    errors: Vec<String>,
    reconnects: u64,
}

/// The ledger as the report reads it: times as offsets from the start.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Offsets {
    /// When each acknowledged write came back, sorted.
    pub(super) acks: Vec<Duration>,
    pub(super) errors: Vec<String>,
    pub(super) reconnects: u64,
}

impl Ledger {
    /// Acknowledged ids not in `found`.
    pub(super) fn missing(&self, found: &[i64]) -> u64 {
        let found: HashSet<i64> = found.iter().copied().collect();
        self.acks
            .iter()
            .filter(|(id, _)| !found.contains(id))
            .count() as u64
    }

    pub(super) fn offsets(&self, epoch: Instant) -> Offsets {
        let mut acks: Vec<Duration> = self
            .acks
            .iter()
            .map(|(_, at)| at.saturating_duration_since(epoch))
            .collect();
        acks.sort();
        Offsets {
            acks,
            errors: self.errors.clone(),
            reconnects: self.reconnects,
        }
    }
}

/// The running writers.
pub(super) struct Load {
    stop: CancellationToken,
    ledger: Arc<Mutex<Ledger>>,
    acked: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

/// What one writer shares with the others.
#[derive(Clone)]
struct Shared {
    cfg: Config,
    table: Arc<str>,
    writers: u32,
    stop: CancellationToken,
    ledger: Arc<Mutex<Ledger>>,
    acked: Arc<AtomicUsize>,
}

impl Load {
    /// Opens every writer's connection, then starts them.
    pub(super) async fn start(cfg: &Config, table: &str, writers: u32) -> Result<Load, DrillError> {
        let mut clients = Vec::new();
        for _ in 0..writers {
            clients.push(connect(cfg, "the proxy (--url)").await?);
        }
        let shared = Shared {
            cfg: cfg.clone(),
            table: table.into(),
            writers,
            stop: CancellationToken::new(),
            ledger: Arc::default(),
            acked: Arc::default(),
        };
        let tasks = (0..writers)
            .zip(clients)
            .map(|(w, client)| tokio::spawn(write(shared.clone(), w, client)))
            .collect();
        Ok(Load {
            stop: shared.stop,
            ledger: shared.ledger,
            acked: shared.acked,
            tasks,
        })
    }

    /// Writes acknowledged so far.
    pub(super) fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stops the writers and returns what they saw.
    pub(super) async fn finish(self) -> Ledger {
        self.stop.cancel();
        let deadline = tokio::time::Instant::now() + FINISH_TIMEOUT;
        for mut task in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
        std::mem::take(&mut *lock(&self.ledger))
    }
}

fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|e| e.into_inner())
}

/// One writer: insert, record, pause, until stopped. Its ids are
/// `n * writers + w`, so no two writers share one.
async fn write(s: Shared, w: u32, mut client: Client) {
    let mut n: i64 = 0;
    while !s.stop.is_cancelled() {
        let id = n * i64::from(s.writers) + i64::from(w);
        n += 1;
        let sql = format!("INSERT INTO {} (id, writer) VALUES ({id}, {w})", s.table);
        match client.simple_query(&sql).await {
            Ok(_) => {
                lock(&s.ledger).acks.push((id, Instant::now()));
                s.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let kind = match e.code() {
                    Some(code) => code.code().to_string(),
                    None => "connection lost".to_string(),
                };
                lock(&s.ledger).errors.push(kind);
                if client.is_closed() {
                    match reconnect(&s).await {
                        Some(c) => client = c,
                        None => return,
                    }
                }
            }
        }
        tokio::select! {
            _ = s.stop.cancelled() => {}
            _ = tokio::time::sleep(PACE) => {}
        }
    }
}

/// A new connection, retried with a doubling backoff; `None` once stopped.
async fn reconnect(s: &Shared) -> Option<Client> {
    let mut wait = BACKOFF.0;
    loop {
        tokio::select! {
            _ = s.stop.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
        match connect(&s.cfg, "the proxy (--url)").await {
            Ok(c) => {
                lock(&s.ledger).reconnects += 1;
                return Some(c);
            }
            Err(e) => {
                tracing::debug!("drill: a writer could not reconnect: {e}");
                lock(&s.ledger).errors.push("connect failed".into());
            }
        }
        wait = (wait * 2).min(BACKOFF.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_counts_acknowledged_ids_not_read_back() {
        let t = Instant::now();
        let ledger = Ledger {
            acks: vec![(1, t), (2, t), (5, t)],
            ..Ledger::default()
        };
        let cases: [(&[i64], u64); 4] = [
            (&[1, 2, 5], 0),
            (&[1, 2, 5, 7], 0), // an unacknowledged write that committed
            (&[1, 5], 1),
            (&[], 3),
        ];
        for (found, want) in cases {
            assert_eq!(ledger.missing(found), want, "{found:?}");
        }
    }

    #[test]
    fn offsets_are_sorted_from_the_start() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let ledger = Ledger {
            acks: vec![(1, t + ms(30)), (2, t + ms(10)), (3, t + ms(20))],
            errors: vec!["08006".into()],
            reconnects: 1,
        };
        let o = ledger.offsets(t);
        assert_eq!(o.acks, [ms(10), ms(20), ms(30)]);
        assert_eq!((o.errors.len(), o.reconnects), (1, 1));
    }
}
