//! Checks that a parsed configuration can run. Pure: the same function serves
//! startup, `check-config` and (later) reload, so all three agree.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use super::password::PasswordForm;
use super::{AuthType, ClientCertUser, ClusterTlsMode, Config, ProxyTlsMode};

/// What a valid configuration may still get wrong, one line each (printed
/// by `check-config`, logged at start).
pub fn warnings(cfg: &Config) -> Vec<String> {
    let mut out = vec![];
    let alone = cfg.coordination.backend == super::coordination::Backend::None;
    if cfg.failover.mode == super::FailoverMode::Promote && alone {
        out.push(
            "failover.mode = \"promote\": this proxy decides on promotion alone; \
             when more than one proxy (sidecars, an HA pair) fronts the same cluster, \
             coordinate them through etcd ([coordination]) or run them in \"follow\" mode, \
             or two of them may promote two replicas"
                .into(),
        );
    }
    out
}

/// Returns a message naming the first problem found.
pub fn validate(cfg: &Config) -> Result<(), String> {
    cfg.proxy
        .listen
        .parse::<SocketAddr>()
        .map_err(|e| format!("proxy.listen = {:?}: {e}", cfg.proxy.listen))?;
    cfg.http
        .listen
        .parse::<SocketAddr>()
        .map_err(|e| format!("http.listen = {:?}: {e}", cfg.http.listen))?;
    if cfg.proxy.default_pool_size == 0 {
        return Err("proxy.default_pool_size must be at least 1".into());
    }
    if cfg.proxy.max_client_conn == 0 {
        return Err("proxy.max_client_conn must be at least 1".into());
    }
    if cfg.proxy.max_pools == 0 {
        return Err("proxy.max_pools must be at least 1".into());
    }
    if cfg.proxy.max_pending_logins == 0 {
        return Err("proxy.max_pending_logins must be at least 1".into());
    }
    if cfg.proxy.max_message_size < 8192 {
        return Err("proxy.max_message_size must be at least 8192 bytes".into());
    }
    validate_trust(cfg)?;
    validate_nodes(cfg)?;
    validate_users(cfg)?;
    validate_auth_user(cfg)?;
    validate_tls(cfg)?;
    super::peers::validate(cfg.proxy.peer_id, &cfg.peers)?;
    super::notify::validate(&cfg.notify)?;
    if let Some(p) = cfg
        .coordination
        .problems(&cfg.cluster.name)
        .into_iter()
        .next()
    {
        return Err(p);
    }
    if cfg.coordination.backend == super::coordination::Backend::Patroni
        && cfg.failover.mode == super::FailoverMode::Promote
    {
        return Err(
            "failover.mode = \"promote\" with coordination.backend = \"patroni\": Patroni \
             promotes, and two that promote may promote two nodes; set failover.mode = \"follow\""
                .into(),
        );
    }
    if cfg.coordination.backend == super::coordination::Backend::Patroni
        && cfg.failover.switchover_on_degraded
    {
        return Err(
            "failover.switchover_on_degraded with coordination.backend = \"patroni\": Patroni \
             moves the primary; a degraded leader is reported, not switched over"
                .into(),
        );
    }
    if cfg.coordination.advertise.is_some() && cfg.proxy.peer_id.is_none() {
        return Err(
            "coordination.advertise needs proxy.peer_id: the id the cancel keys \
                    of this proxy carry, unique among the proxies of the cluster"
                .into(),
        );
    }
    for (name, db) in &cfg.databases {
        if db.pool_size == Some(0) {
            return Err(format!("databases.{name}.pool_size must be at least 1"));
        }
    }
    super::level_filter(&cfg.log.level)
        .map_err(|e| format!("log.level = {:?}: {e}", cfg.log.level))?;
    Ok(())
}

/// `trust` lets in anyone who reaches the port as any configured user:
/// refused on an address other than loopback unless asked for explicitly.
fn validate_trust(cfg: &Config) -> Result<(), String> {
    match cfg.proxy.listen.parse::<SocketAddr>() {
        Ok(addr) => trust_allowed_on(cfg, addr),
        // `validate` refused it already; a name might resolve anywhere.
        Err(e) => Err(format!("proxy.listen = {:?}: {e}", cfg.proxy.listen)),
    }
}

/// Whether `cfg`'s `auth_type` may serve clients on `listening`: `trust`
/// only on loopback, or anywhere with `proxy.allow_trust_on_network`. The
/// one rule for the file (`validate`), the socket bound at start, and the
/// socket a reload keeps (its `listen` change waits for a restart).
pub fn trust_allowed_on(cfg: &Config, listening: SocketAddr) -> Result<(), String> {
    let p = &cfg.proxy;
    if p.auth_type != AuthType::Trust || p.allow_trust_on_network || is_loopback(listening.ip()) {
        return Ok(());
    }
    Err(format!(
        "proxy.auth_type = \"trust\" with clients accepted on {listening} (proxy.listen, not \
         loopback) lets anyone on the network in without a password; listen on loopback, use \
         scram-sha-256, or set proxy.allow_trust_on_network = true"
    ))
}

/// Loopback, IPv4-mapped IPv6 included (`::ffff:127.0.0.1`: how an IPv4
/// loopback client looks to a socket bound to `[::]`).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

fn validate_nodes(cfg: &Config) -> Result<(), String> {
    let nodes = cfg.nodes();
    if nodes.is_empty() {
        return Err("cluster.nodes must list at least one node".into());
    }
    let mut names = HashSet::new();
    for node in &nodes {
        let (host, port) = node
            .addr
            .rsplit_once(':')
            .ok_or_else(|| format!("cluster node {:?}: address must be host:port", node.addr))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!(
                "cluster node {:?}: address must be host:port",
                node.addr
            ));
        }
        if !names.insert(node.name.clone()) {
            return Err(format!("cluster node name {:?} is used twice", node.name));
        }
        if let Some(hw) = &node.hardware {
            hw.validate()
                .map_err(|e| format!("cluster node {:?}: hardware: {e}", node.name))?;
        }
    }
    Ok(())
}

/// Which files each TLS mode needs; whether they can be read is checked when
/// they are loaded (startup, RELOAD), not here.
fn validate_tls(cfg: &Config) -> Result<(), String> {
    let p = &cfg.proxy.tls;
    if p.mode != ProxyTlsMode::Disable && (p.cert_file.is_none() || p.key_file.is_none()) {
        return Err(
            "proxy.tls: cert_file and key_file are needed unless mode = \"disable\"".into(),
        );
    }
    if p.client_cert_user == ClientCertUser::Cn
        && (p.client_ca_file.is_none() || p.mode == ProxyTlsMode::Disable)
    {
        return Err("proxy.tls: client_cert_user = \"cn\" needs client_ca_file, and mode \"allow\" or \"require\"".into());
    }
    let c = &cfg.cluster.tls;
    if matches!(
        c.mode,
        ClusterTlsMode::VerifyCa | ClusterTlsMode::VerifyFull
    ) && c.ca_file.is_none()
    {
        return Err("cluster.tls: ca_file is needed for verify-ca and verify-full".into());
    }
    if c.cert_file.is_some() != c.key_file.is_some() {
        return Err("cluster.tls: cert_file and key_file go together".into());
    }
    Ok(())
}

fn validate_users(cfg: &Config) -> Result<(), String> {
    let mut seen = HashSet::new();
    for user in &cfg.users {
        if user.name.is_empty() {
            return Err("users: a user has an empty name".into());
        }
        if !seen.insert(user.name.as_str()) {
            return Err(format!("users: {:?} is listed twice", user.name));
        }
        let form = PasswordForm::of(&user.password)
            .map_err(|e| format!("users.{}: password: {e}", user.name))?;
        if cfg.proxy.auth_type == AuthType::ScramSha256 && form == PasswordForm::Md5 {
            return Err(format!(
                "users.{}: an md5 verifier cannot be used with auth_type = \"scram-sha-256\"",
                user.name
            ));
        }
    }
    Ok(())
}

/// `proxy.auth_user` must be a `[[users]]` user Switchyard can log into
/// PostgreSQL as: it has a plaintext password or a `server_password`.
fn validate_auth_user(cfg: &Config) -> Result<(), String> {
    let Some(name) = &cfg.proxy.auth_user else {
        return Ok(());
    };
    let user = cfg
        .users
        .iter()
        .find(|u| &u.name == name)
        .ok_or_else(|| format!("proxy.auth_user = {name:?} must be listed in [[users]]"))?;
    let plain = PasswordForm::of(&user.password) == Ok(PasswordForm::Plain);
    if !plain && user.server_password.is_none() {
        return Err(format!(
            "proxy.auth_user = {name:?} needs a plaintext password or a server_password \
             to log into PostgreSQL"
        ));
    }
    if !cfg.proxy.auth_query.contains("$1") {
        return Err("proxy.auth_query must take the user name as $1".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;

    #[test]
    fn auth_user_must_be_a_user_switchyard_can_log_in_as() {
        let base = "[cluster]\nnodes = [\"127.0.0.1:5432\"]\n";
        let users = "[[users]]\nname = \"lookup\"\npassword = \"pw\"\n\
                     [[users]]\nname = \"hashed\"\n\
                     password = \"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n";
        let with = |proxy: &str| format!("[proxy]\nauth_type = \"md5\"\n{proxy}\n{users}{base}");
        assert!(load_str(&with("auth_user = \"lookup\"")).is_ok());
        assert!(err_of(&with("auth_user = \"nobody\"")).contains("must be listed in [[users]]"));
        assert!(err_of(&with("auth_user = \"hashed\"")).contains("server_password"));
        assert!(err_of(&with("auth_user = \"lookup\"\nauth_query = \"SELECT 1\"")).contains("$1"));
    }

    fn err_of(toml: &str) -> String {
        load_str(toml).unwrap_err().to_string()
    }

    #[test]
    fn the_cancel_route_published_is_the_advertised_or_a_specific_listen_address() {
        let base =
            "[[users]]\nname = \"a\"\npassword = \"b\"\n[cluster]\nnodes=[\"127.0.0.1:5432\"]\n";
        // (peer_id, listen, advertise) -> published
        for (id, listen, advertise, want) in [
            (None, "10.0.0.5:6432", None, None),
            (Some(3), "10.0.0.5:6432", None, Some((3, "10.0.0.5:6432"))),
            (Some(3), "0.0.0.0:6432", None, None),
            (Some(3), "[::]:6432", None, None),
            (
                Some(3),
                "0.0.0.0:6432",
                Some("db-proxy-1:6432"),
                Some((3, "db-proxy-1:6432")),
            ),
        ] {
            let id_line = id.map_or(String::new(), |i| format!("peer_id = {i}\n"));
            let adv = advertise.map_or(String::new(), |a| {
                format!("[coordination]\nadvertise = \"{a}\"\n")
            });
            let toml = format!("{base}[proxy]\nlisten = \"{listen}\"\n{id_line}{adv}");
            let cfg = load_str(&toml).unwrap();
            let got = cfg.cancel_route();
            let want = want.map(|(i, a): (u8, &str)| (i, a.to_string()));
            assert_eq!(got, want, "{toml}");
        }
        let orphan = format!("{base}[coordination]\nadvertise = \"a:1\"\n");
        assert!(err_of(&orphan).contains("proxy.peer_id"));
    }

    #[test]
    fn with_patroni_switchyard_never_promotes() {
        let base = concat!(
            "[cluster]\nnodes = [\"127.0.0.1:5432\"]\n",
            "[coordination]\nbackend = \"patroni\"\n",
            "patroni = { scope = \"orders\", endpoints = [\"http://127.0.0.1:2379\"] }\n",
        );
        // ([failover] mode, accepted)
        for (mode, accepted) in [("promote", false), ("follow", true), ("off", true)] {
            let toml = format!("{base}[failover]\nmode = \"{mode}\"\n");
            match accepted {
                true => assert!(load_str(&toml).is_ok(), "{mode}"),
                false => assert!(err_of(&toml).contains("Patroni promotes"), "{mode}"),
            }
        }
        assert!(
            err_of(base).contains("Patroni promotes"),
            "promote is the default"
        );
        let degraded =
            format!("{base}[failover]\nmode = \"follow\"\nswitchover_on_degraded = true\n");
        assert!(err_of(&degraded).contains("Patroni moves the primary"));
    }

    #[test]
    fn trust_only_on_loopback_unless_allowed() {
        // (listen, allow_trust_on_network, accepted, what a refusal names)
        let cases = [
            ("127.0.0.1:6432", false, true, ""),
            ("127.0.0.2:6432", false, true, ""),
            ("[::1]:6432", false, true, ""),
            // An IPv6 socket on the IPv4-mapped loopback takes IPv4 loopback only.
            ("[::ffff:127.0.0.1]:6432", false, true, ""),
            ("0.0.0.0:6432", false, false, "allow_trust_on_network"),
            ("[::]:6432", false, false, "allow_trust_on_network"),
            ("10.1.2.3:6432", false, false, "allow_trust_on_network"),
            ("[fe80::1]:6432", false, false, "allow_trust_on_network"),
            (
                "[::ffff:10.1.2.3]:6432",
                false,
                false,
                "allow_trust_on_network",
            ),
            ("0.0.0.0:6432", true, true, ""),
            ("[::]:6432", true, true, ""),
            ("10.1.2.3:6432", true, true, ""),
            // A name may resolve anywhere: listen takes an IP address only.
            ("localhost:6432", false, false, "proxy.listen"),
            ("localhost:6432", true, false, "proxy.listen"),
            ("db.example.com:6432", true, false, "proxy.listen"),
        ];
        let base = "[cluster]\nnodes=[\"127.0.0.1:5432\"]\n[proxy]\nauth_type = \"trust\"\n";
        for (listen, allow, ok, names) in cases {
            let toml = format!("{base}listen = \"{listen}\"\nallow_trust_on_network = {allow}\n");
            match load_str(&toml) {
                Ok(_) => assert!(ok, "{listen} allow={allow}: accepted"),
                Err(e) => {
                    assert!(!ok, "{listen} allow={allow}: {e}");
                    assert!(e.to_string().contains(names), "{listen}: {e}");
                }
            }
        }
        // Other methods never need the override.
        let scram = "[cluster]\nnodes=[\"127.0.0.1:5432\"]\n[proxy]\nlisten = \"[::]:6432\"\n";
        assert!(load_str(scram).is_ok());
    }

    #[test]
    fn rejects_what_cannot_run() {
        let base = "[cluster]\nnodes=[\"127.0.0.1:5432\"]\n";
        let cases = [
            ("[proxy]\nlisten = \"nowhere\"\n", "proxy.listen"),
            ("[proxy]\ndefault_pool_size = 0\n", "default_pool_size"),
            ("[proxy]\nmax_client_conn = 0\n", "max_client_conn"),
            ("[proxy]\nmax_pending_logins = 0\n", "max_pending_logins"),
            (
                "[[users]]\nname=\"a\"\npassword=\"x\"\n[[users]]\nname=\"a\"\npassword=\"y\"\n",
                "twice",
            ),
            (
                "[[users]]\nname=\"a\"\npassword=\"md50123456789abcdef0123456789abcdef\"\n",
                "md5",
            ),
            (
                "[[users]]\nname=\"a\"\npassword=\"SCRAM-SHA-256$bad\"\n",
                "SCRAM",
            ),
            ("[databases.x]\npool_size = 0\n", "databases.x.pool_size"),
            (
                "[proxy]\nauth_type = \"trust\"\nlisten = \"0.0.0.0:6432\"\n",
                "allow_trust_on_network",
            ),
            ("[proxy.tls]\nmode = \"require\"\n", "proxy.tls"),
            (
                "[proxy.tls]\nmode = \"allow\"\ncert_file = \"c.pem\"\n",
                "key_file",
            ),
            (
                "[proxy.tls]\nmode = \"require\"\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_cert_user = \"cn\"\n",
                "client_cert_user = \"cn\" needs client_ca_file",
            ),
            (
                "[proxy.tls]\nclient_ca_file = \"ca.pem\"\nclient_cert_user = \"cn\"\n",
                "client_cert_user = \"cn\" needs",
            ),
            ("[proxy]\npeer_id = 999\n", "proxy.peer_id = 999"),
            (
                "[proxy]\npeer_id = 1\n[[peers]]\nid = 1\naddr = \"b:6432\"\n",
                "own proxy.peer_id",
            ),
        ];
        for (extra, needle) in cases {
            let err = err_of(&format!("{extra}{base}"));
            assert!(err.contains(needle), "{extra:?}: {err}");
        }
        assert!(err_of("[cluster]\nnodes=[]\n").contains("at least one node"));
        assert!(err_of("[cluster]\nnodes=[\"nohost\"]\n").contains("host:port"));
        let cluster_tls = |body: &str| err_of(&format!("{base}[cluster.tls]\n{body}"));
        assert!(cluster_tls("mode = \"verify-full\"\n").contains("ca_file"));
        assert!(cluster_tls("cert_file = \"c.pem\"\n").contains("go together"));
        assert!(
            err_of("[proxy.tls]\nmode = \"prefer\"\n[cluster]\nnodes=[\"a:1\"]\n").contains("mode")
        );
    }
}
