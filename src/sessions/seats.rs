//! `max_db_client_connections` and `max_user_client_connections`: how many
//! clients of each database and of each user are logged in, and whether one
//! more may be. Counted at login and logout only, never per query.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A login past a limit, naming it (SQLSTATE 53300 for the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `max_db_client_connections` clients of the database are logged in.
    #[error("too many client connections for database \"{database}\" (max_db_client_connections = {max})")]
    Database {
        /// Client-facing database name.
        database: String,
        /// The limit.
        max: usize,
    },
    /// `max_user_client_connections` clients of the user are logged in.
    #[error(
        "too many client connections for user \"{user}\" (max_user_client_connections = {max})"
    )]
    User {
        /// Login user.
        user: String,
        /// The limit.
        max: usize,
    },
}

/// Logged-in clients per database and per user.
#[derive(Debug, Default)]
pub struct Seats {
    taken: Mutex<Taken>,
}

#[derive(Debug, Default)]
struct Taken {
    by_db: HashMap<String, usize>,
    by_user: HashMap<String, usize>,
}

/// The limits a login is checked against; 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeatLimits {
    /// `max_db_client_connections`.
    pub per_db: usize,
    /// `max_user_client_connections`.
    pub per_user: usize,
}

/// Why a login gets no seat, if it does not: the database's limit is told
/// first (it is the one PgBouncer checks first too).
pub fn refusal(
    limits: SeatLimits,
    db_taken: usize,
    user_taken: usize,
    database: &str,
    user: &str,
) -> Option<Refused> {
    if limits.per_db > 0 && db_taken >= limits.per_db {
        return Some(Refused::Database {
            database: database.to_string(),
            max: limits.per_db,
        });
    }
    if limits.per_user > 0 && user_taken >= limits.per_user {
        return Some(Refused::User {
            user: user.to_string(),
            max: limits.per_user,
        });
    }
    None
}

/// A logged-in client's seat; given back when dropped.
#[derive(Debug)]
pub struct Seat {
    seats: Arc<Seats>,
    database: String,
    user: String,
}

impl Seats {
    /// A seat for a client of `database` as `user`, or the limit it is past.
    pub fn take(
        self: &Arc<Self>,
        limits: SeatLimits,
        database: &str,
        user: &str,
    ) -> Result<Seat, Refused> {
        let mut t = self.lock();
        let db_taken = t.by_db.get(database).copied().unwrap_or(0);
        let user_taken = t.by_user.get(user).copied().unwrap_or(0);
        if let Some(e) = refusal(limits, db_taken, user_taken, database, user) {
            return Err(e);
        }
        *t.by_db.entry(database.to_string()).or_default() += 1;
        *t.by_user.entry(user.to_string()).or_default() += 1;
        Ok(Seat {
            seats: self.clone(),
            database: database.to_string(),
            user: user.to_string(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Taken> {
        // Counters only: a panic elsewhere cannot leave them half-updated.
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut t = self.seats.lock();
        give_back(&mut t.by_db, &self.database);
        give_back(&mut t.by_user, &self.user);
    }
}

/// One fewer under `name`; a name at zero is forgotten (the maps stay as
/// small as the set of names logged in now).
fn give_back(map: &mut HashMap<String, usize>, name: &str) {
    if let Some(n) = map.get_mut(name) {
        *n -= 1;
        if *n == 0 {
            map.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_limit_reached() {
        let l = |per_db, per_user| SeatLimits { per_db, per_user };
        let cases = [
            (l(0, 0), 100, 100, None),
            (l(2, 0), 1, 100, None),
            (l(2, 0), 2, 0, Some("max_db_client_connections = 2")),
            (l(0, 3), 100, 3, Some("max_user_client_connections = 3")),
            (l(2, 3), 2, 3, Some("max_db_client_connections = 2")),
            (l(2, 3), 1, 3, Some("max_user_client_connections = 3")),
            (l(2, 3), 1, 2, None),
        ];
        for (limits, db, user, want) in cases {
            let got = refusal(limits, db, user, "app", "u").map(|e| e.to_string());
            match want {
                None => assert_eq!(got, None, "{limits:?} {db} {user}"),
                Some(w) => assert!(got.as_deref().unwrap_or("").contains(w), "{got:?}"),
            }
        }
    }

    #[test]
    fn seats_are_given_back_when_dropped() {
        let seats = Arc::new(Seats::default());
        let l = SeatLimits {
            per_db: 1,
            per_user: 0,
        };
        let a = seats.take(l, "app", "u").unwrap();
        let err = seats.take(l, "app", "v").unwrap_err();
        assert!(err.to_string().contains("max_db_client_connections = 1"));
        assert!(seats.take(l, "other", "u").is_ok());
        drop(a);
        assert!(seats.take(l, "app", "v").is_ok());
        assert!(seats.lock().by_db.is_empty(), "names at zero are forgotten");
    }
}
