//! Users not in `[[users]]`, looked up in PostgreSQL (`proxy.auth_user` runs
//! `proxy.auth_query`): what was found is cached for `proxy.auth_query_ttl`,
//! an absent user too, so a stream of logins costs one query per user and
//! TTL. The cache and its decisions live here; the query itself in `fetch`.

pub mod fetch;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::pass_through::ScramKeys;
use crate::auth::scram::ClientKey;
use crate::auth::secret::Credentials;
use crate::auth::server_side::ServerSecret;
use crate::auth::Secret;

/// Users cached at most; past it, expired entries go first, then the oldest.
const MAX_ENTRIES: usize = 10_000;

/// Lookups running at once (each holds a server connection while it runs).
const MAX_LOOKUPS: usize = 4;

/// Looked-up users' stored passwords, in memory only.
pub struct AuthCache {
    entries: Mutex<HashMap<String, Entry>>,
    lookups: tokio::sync::Semaphore,
}

impl Default for AuthCache {
    fn default() -> Self {
        AuthCache {
            entries: Mutex::default(),
            lookups: tokio::sync::Semaphore::new(MAX_LOOKUPS),
        }
    }
}

struct Entry {
    fetched: Instant,
    /// `None`: the query found no such user (or no password).
    creds: Option<Credentials>,
}

impl AuthCache {
    /// The cached answer for `user` while younger than `ttl`: `Some(None)`
    /// for a user known to be absent, `None` when the query must run.
    pub fn fresh(&self, user: &str, now: Instant, ttl: Duration) -> Option<Option<Credentials>> {
        let entries = self.lock();
        let e = entries.get(user)?;
        is_fresh(e.fetched, now, ttl).then(|| e.creds.clone())
    }

    /// Remembers what the query found for `user` (fetched at `now`).
    pub fn store(&self, user: &str, creds: Option<Credentials>, now: Instant, ttl: Duration) {
        let mut entries = self.lock();
        if !entries.contains_key(user) && entries.len() >= MAX_ENTRIES {
            make_room(&mut entries, now, ttl);
        }
        entries.insert(
            user.to_string(),
            Entry {
                fetched: now,
                creds,
            },
        );
    }

    /// Waits for a lookup's turn: at most `MAX_LOOKUPS` run at once.
    pub async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        // The semaphore is never closed; `None` would only let the lookup run.
        self.lookups.acquire().await.ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether an answer fetched at `fetched` may still be used at `now`.
fn is_fresh(fetched: Instant, now: Instant, ttl: Duration) -> bool {
    now.saturating_duration_since(fetched) < ttl
}

/// Drops expired entries; when none was, the oldest one.
fn make_room(entries: &mut HashMap<String, Entry>, now: Instant, ttl: Duration) {
    entries.retain(|_, e| is_fresh(e.fetched, now, ttl));
    if entries.len() >= MAX_ENTRIES {
        let oldest = entries
            .iter()
            .min_by_key(|(_, e)| e.fetched)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            entries.remove(&k);
        }
    }
}

/// What Switchyard logs into PostgreSQL with for a looked-up user whose
/// client passed: the recovered SCRAM keys for a SCRAM verifier (none after
/// an md5 or trust login: no key was given away), the md5 hash as is, a
/// plaintext as is.
pub fn server_secret(stored: &Credentials, client_key: Option<ClientKey>) -> Option<ServerSecret> {
    match &stored.secret {
        Secret::Plain(p) => Some(ServerSecret::Password(p.clone())),
        Secret::Md5(h) => Some(ServerSecret::Md5(h.clone())),
        Secret::Scram(v) => client_key.map(|k| ServerSecret::Scram(ScramKeys::new(v, k))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(stored: &str) -> Credentials {
        Credentials::new("ann", stored, None).unwrap()
    }

    #[test]
    fn answers_are_used_until_the_ttl_then_asked_again() {
        let cache = AuthCache::default();
        let (t0, ttl) = (Instant::now(), Duration::from_secs(60));
        assert!(cache.fresh("ann", t0, ttl).is_none());
        cache.store("ann", Some(creds("pw")), t0, ttl);
        cache.store("bob", None, t0, ttl);
        assert!(matches!(
            cache.fresh("ann", t0 + ttl / 2, ttl),
            Some(Some(_))
        ));
        assert!(matches!(cache.fresh("bob", t0 + ttl / 2, ttl), Some(None)));
        assert!(cache.fresh("ann", t0 + ttl, ttl).is_none());
        assert!(cache.fresh("bob", t0 + ttl, ttl).is_none());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = AuthCache::default();
        let (t0, ttl) = (Instant::now(), Duration::from_secs(60));
        for i in 0..MAX_ENTRIES + 50 {
            cache.store(
                &format!("u{i}"),
                None,
                t0 + Duration::from_millis(i as u64),
                ttl,
            );
        }
        assert_eq!(cache.lock().len(), MAX_ENTRIES);
        // The newest stay; the oldest went.
        assert!(cache
            .fresh(&format!("u{}", MAX_ENTRIES + 49), t0, ttl)
            .is_some());
        assert!(cache.fresh("u0", t0, ttl).is_none());
    }

    #[test]
    fn the_server_is_answered_with_what_the_stored_form_allows() {
        let scram = creds(&postgres_protocol::password::scram_sha_256(b"pw"));
        let md5 = creds(&postgres_protocol::password::md5(b"pw", "ann"));
        let key = || Some(ClientKey([1; 32]));
        assert!(matches!(
            server_secret(&scram, key()),
            Some(ServerSecret::Scram(_))
        ));
        assert!(server_secret(&scram, None).is_none());
        assert!(matches!(
            server_secret(&md5, None),
            Some(ServerSecret::Md5(_))
        ));
        assert!(matches!(
            server_secret(&creds("pw"), None),
            Some(ServerSecret::Password(_))
        ));
    }
}
