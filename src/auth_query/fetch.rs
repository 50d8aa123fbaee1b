//! Running `proxy.auth_query` as `proxy.auth_user` on the primary: one fresh
//! server connection per lookup (lookups are cached, so they are rare), in
//! `proxy.auth_dbname` or else the database the client asked for.

use std::collections::HashMap;

use crate::auth::secret::Credentials;
use crate::auth::server_side::ServerSecret;
use crate::cluster::{Cluster, ClusterError, Route};
use crate::config::{Config, Target};
use crate::server::{ConnectError, Login};

/// Why a lookup gave no answer (not "no such user": that is an answer).
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// No primary is routable now.
    #[error("no primary to run auth_query on")]
    NoPrimary,
    /// The auth_user's connection could not be opened or logged in.
    #[error("auth_user could not log in: {0}")]
    Connect(#[from] ClusterError),
    /// The query failed (a missing function, no right to read pg_shadow...).
    #[error("auth_query failed: {0}")]
    Query(#[from] ConnectError),
    /// The row's password is in no form PostgreSQL stores.
    #[error("auth_query returned an unusable password: {0}")]
    BadPassword(&'static str),
}

/// The stored credentials of `user` (`None`: no such user, or no
/// password), found by `proxy.auth_query` for a client of `database`;
/// `users` are the `[[users]]` credentials (the auth_user's among them).
pub async fn fetch(
    cluster: &Cluster,
    config: &Config,
    users: &HashMap<String, Credentials>,
    user: &str,
    database: &str,
) -> Result<Option<Credentials>, LookupError> {
    let Some(login) = lookup_login(config, users, database) else {
        return Ok(None);
    };
    let route = primary(cluster, config.failover.hold_timeout).await?;
    let timeout = config.proxy.server_connect_timeout;
    let mut conn = cluster.connect(&route, &login, timeout).await?;
    let row = conn
        .query_row_with(&config.proxy.auth_query, &[user])
        .await?;
    // PgBouncer's convention: the second column is the stored password.
    match row.into_iter().nth(1).flatten() {
        None => Ok(None),
        Some(stored) => Credentials::new(user, &stored, None)
            .map(Some)
            .map_err(LookupError::BadPassword),
    }
}

/// The primary's route, waiting up to `hold` for one (at start, or during
/// a failover), as a pool's checkout does.
async fn primary(cluster: &Cluster, hold: std::time::Duration) -> Result<Route, LookupError> {
    let deadline = tokio::time::Instant::now() + hold;
    loop {
        let version = cluster.version();
        if let Some(route) = cluster.route(Target::Primary) {
            return Ok(route);
        }
        tokio::time::timeout_at(deadline, cluster.changed(version))
            .await
            .map_err(|_| LookupError::NoPrimary)?;
    }
}

/// Who runs the lookup, where: `None` when `proxy.auth_user` is not set.
fn lookup_login(
    config: &Config,
    users: &HashMap<String, Credentials>,
    database: &str,
) -> Option<Login> {
    let user = config.proxy.auth_user.clone()?;
    let secret = users
        .get(&user)
        .and_then(|c| c.server_password.clone())
        .map(ServerSecret::Password);
    let database = match &config.proxy.auth_dbname {
        Some(db) => db.clone(),
        None => config.database(database).0,
    };
    Some(Login {
        user,
        database,
        secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lookup_runs_as_auth_user_in_auth_dbname_or_the_clients_database() {
        let toml = |extra: &str| {
            format!(
                "[proxy]\n{extra}\n[[users]]\nname = \"lookup\"\npassword = \"pw\"\n\
                 [cluster]\nnodes = [\"127.0.0.1:5432\"]\n\
                 [databases.shop]\ndbname = \"shop_real\"\n"
            )
        };
        let users = |c: &Config| -> HashMap<String, Credentials> {
            c.users
                .iter()
                .map(|u| {
                    (
                        u.name.clone(),
                        Credentials::new(&u.name, &u.password, None).unwrap(),
                    )
                })
                .collect()
        };
        let off = crate::config::load_str(&toml("")).unwrap();
        assert!(lookup_login(&off, &users(&off), "shop").is_none());
        let on = crate::config::load_str(&toml("auth_user = \"lookup\"")).unwrap();
        let login = lookup_login(&on, &users(&on), "shop").unwrap();
        assert_eq!(
            (login.user.as_str(), login.database.as_str()),
            ("lookup", "shop_real")
        );
        assert!(matches!(login.secret, Some(ServerSecret::Password(_))));
        let fixed =
            crate::config::load_str(&toml("auth_user = \"lookup\"\nauth_dbname = \"auth\""))
                .unwrap();
        assert_eq!(
            lookup_login(&fixed, &users(&fixed), "shop")
                .unwrap()
                .database,
            "auth"
        );
    }
}
