//! The settings a session reads on its hot path, copied at login so that a
//! reload applies to new clients only.

use crate::config::PoolMode;

/// The settings a session reads on its hot path, copied at login.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Pooling mode.
    pub mode: PoolMode,
    /// `proxy.max_message_size`.
    pub max_message_size: usize,
    /// `proxy.max_prepared_statements`.
    pub max_prepared: usize,
}

impl From<&crate::config::Config> for Limits {
    fn from(c: &crate::config::Config) -> Limits {
        Limits {
            mode: c.proxy.pool_mode,
            max_message_size: c.proxy.max_message_size,
            max_prepared: c.proxy.max_prepared_statements,
        }
    }
}
