//! The settings a session reads on its hot path, copied at login so that a
//! reload applies to new clients only.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::prepared::StatementBounds;
use super::settings::Bounds;
use crate::config::PoolMode;

/// Bytes of setting names and values tracked per client.
const TRACKED_BYTES: usize = 8 * 1024;

/// The settings a session reads on its hot path, copied at login.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Pooling mode.
    pub mode: PoolMode,
    /// `proxy.max_message_size`.
    pub max_message_size: usize,
    /// `proxy.max_prepared_statements`.
    pub max_prepared: usize,
    /// `proxy.max_client_prepared_statements` and `max_client_prepared_bytes`.
    pub statements: StatementBounds,
    /// How many settings, and how many bytes of them, follow the client.
    pub tracked: Bounds,
    /// How long a server may take to apply the client's settings
    /// (`proxy.server_connect_timeout`).
    pub settings_timeout: Duration,
    /// `proxy.idle_transaction_timeout`, when set.
    pub idle_transaction: Option<Duration>,
    /// `proxy.query_timeout`, when set.
    pub query_timeout: Option<Duration>,
    /// How long a large message waits for room in `proxy.max_memory`
    /// (`proxy.checkout_timeout`), and that budget's size.
    pub room_wait: Duration,
    /// `proxy.max_memory`.
    pub max_memory: usize,
}

/// The limits made last, and the configuration they were made from.
type Made = Option<(Weak<crate::config::Config>, Arc<Limits>)>;

impl Limits {
    /// The limits of `config`, one copy shared by every session that
    /// logged in under it (each idle client carries only a pointer).
    /// Taken at login only.
    pub fn shared(config: &Arc<crate::config::Config>) -> Arc<Limits> {
        static LAST: Mutex<Made> = Mutex::new(None);
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some((from, limits)) if from.as_ptr() == Arc::as_ptr(config) => limits.clone(),
            _ => {
                let limits = Arc::new(Limits::from(&**config));
                *last = Some((Arc::downgrade(config), limits.clone()));
                limits
            }
        }
    }
}

impl From<&crate::config::Config> for Limits {
    fn from(c: &crate::config::Config) -> Limits {
        Limits {
            mode: c.proxy.pool_mode,
            max_message_size: c.proxy.max_message_size,
            max_prepared: c.proxy.max_prepared_statements,
            statements: StatementBounds {
                count: c.proxy.max_client_prepared_statements,
                bytes: c.proxy.max_client_prepared_bytes,
            },
            tracked: Bounds {
                count: c.proxy.max_tracked_parameters,
                bytes: TRACKED_BYTES,
            },
            settings_timeout: c.proxy.server_connect_timeout,
            idle_transaction: Some(c.proxy.idle_transaction_timeout).filter(|t| !t.is_zero()),
            query_timeout: Some(c.proxy.query_timeout).filter(|t| !t.is_zero()),
            room_wait: c.proxy.checkout_timeout,
            max_memory: c.proxy.max_memory,
        }
    }
}
