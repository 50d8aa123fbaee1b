//! Reading the configuration: a TOML file (or none), then
//! `SWITCHYARD__SECTION__KEY` environment overrides, then validation. Nothing
//! here touches the network.
//!
//! Where it comes from (docs/configuration.md): an explicit `--config` file must
//! exist; without one, the first of [`DEFAULT_PATHS`] that exists is used, and
//! when none does the environment alone is the configuration — it must then set
//! at least `SWITCHYARD__CLUSTER__NODES`. `[[users]]` and `[[peers]]`, lists
//! of tables, come from the environment as JSON in `SWITCHYARD__USERS` and
//! `SWITCHYARD__PEERS`.

use std::path::{Path, PathBuf};

use config::{File, FileFormat, Value, ValueKind};

use super::{Config, PeerConfig, UserConfig};

/// Files tried, in order, when no `--config` is given: the working directory's
/// (development), then the system-wide one (containers mount it there).
pub const DEFAULT_PATHS: [&str; 2] = ["config/switchyard.toml", "/etc/switchyard/switchyard.toml"];

/// Prefix of every overriding environment variable (matched without regard to case).
const ENV_PREFIX: &str = "SWITCHYARD__";
/// `[[users]]` as a JSON list; replaces the file's users when set.
pub const USERS_ENV: &str = "SWITCHYARD__USERS";
/// `[[peers]]` as a JSON list; replaces the file's peers when set.
pub const PEERS_ENV: &str = "SWITCHYARD__PEERS";
/// The one key a configuration from the environment alone cannot do without.
pub const NODES_ENV: &str = "SWITCHYARD__CLUSTER__NODES";
/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: [&str; 5] = [
    "proxy.admin_users",
    "cluster.nodes",
    "coordination.endpoints",
    "coordination.patroni.endpoints",
    "coordination.patroni.rest",
];

/// Why a configuration could not be used. No message quotes a secret
/// (see `From<config::ConfigError>` and `parse_list`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing or does not match the schema.
    #[error(transparent)]
    Parse(config::ConfigError),
    /// The file is not TOML: where, and what is wrong.
    #[error("{0}")]
    Syntax(String),
    /// The file parsed but a value is not acceptable.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// No `--config`, no default file, and the environment names no nodes.
    #[error(
        "no configuration: neither {} nor {} exists and {NODES_ENV} is not set \
         (pass --config FILE, or configure through SWITCHYARD__SECTION__KEY variables)",
        DEFAULT_PATHS[0],
        DEFAULT_PATHS[1]
    )]
    NotFound,
}

// The TOML parser's message (and its Debug) quotes the offending line,
// which may be a password: a syntax error keeps only its position and what
// is wrong.
impl From<config::ConfigError> for ConfigError {
    fn from(e: config::ConfigError) -> Self {
        match e {
            config::ConfigError::FileParse { uri, cause } => {
                ConfigError::Syntax(syntax(uri.as_deref(), cause.as_ref()))
            }
            other => ConfigError::Parse(other),
        }
    }
}

/// "not valid TOML at line L, column C: what is wrong" (callers name the
/// file). The position is worked out from the file, read again (this is
/// the error path).
fn syntax(file: Option<&str>, cause: &(dyn std::error::Error + 'static)) -> String {
    let Some(e) = cause.downcast_ref::<toml::de::Error>() else {
        // Some other failure of the file's reader: its first line only.
        let shown = cause.to_string();
        return format!(
            "not valid TOML: {}",
            shown.lines().next().unwrap_or_default()
        );
    };
    let text = file.and_then(|f| std::fs::read_to_string(f).ok());
    let at = match (e.span(), text) {
        (Some(span), Some(text)) => {
            let (line, column) = line_column(&text, span.start);
            format!(" at line {line}, column {column}")
        }
        _ => String::new(),
    };
    format!("not valid TOML{at}: {}", e.message().trim_end())
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// Loads `path`, applies environment overrides and validates the result.
/// A missing file is an error.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(Some(path), &switchyard_env()?)
}

/// The configuration from the environment alone (no file): needs at least
/// `SWITCHYARD__CLUSTER__NODES`.
pub fn load_env() -> Result<Config, ConfigError> {
    load_env_only(&switchyard_env()?)
}

/// The first of [`DEFAULT_PATHS`] that exists. A path whose existence cannot
/// be checked (e.g. no permission) counts as existing, so loading it reports
/// the real problem instead of silently falling back to the environment.
pub fn default_file() -> Option<PathBuf> {
    DEFAULT_PATHS
        .iter()
        .map(Path::new)
        .find(|p| p.try_exists().unwrap_or(true))
        .map(Path::to_path_buf)
}

/// Loads a configuration from TOML text (no environment overrides); used by
/// tests, the demo and the benchmark, which build their configuration in code.
pub fn load_str(toml: &str) -> Result<Config, ConfigError> {
    finish(
        config::Config::builder().add_source(File::from_str(toml, FileFormat::Toml)),
        Lists::default(),
    )
}

/// The environment alone, as a list of `SWITCHYARD__*` variables.
fn load_env_only(env: &[(String, String)]) -> Result<Config, ConfigError> {
    if !env
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case(NODES_ENV))
    {
        return Err(ConfigError::NotFound);
    }
    load_with(None, env)
}

/// `file` (if any) with `env` (`SWITCHYARD__*` name, value) on top.
fn load_with(file: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        builder = builder.add_source(File::from(path).format(FileFormat::Toml));
    }
    let mut lists = Lists::default();
    for (name, value) in env {
        let key = env_key(name);
        match key.as_str() {
            "users" => lists.users = Some(parse_list(USERS_ENV, USERS_EXAMPLE, value)?),
            "peers" => lists.peers = Some(parse_list(PEERS_ENV, PEERS_EXAMPLE, value)?),
            _ => builder = builder.set_override(key.as_str(), env_value(name, &key, value))?,
        }
    }
    finish(builder, lists)
}

/// The lists of tables the environment gives as JSON, each replacing the file's.
#[derive(Default)]
struct Lists {
    users: Option<Vec<UserConfig>>,
    peers: Option<Vec<PeerConfig>>,
}

/// `SWITCHYARD__PROXY__DEFAULT_POOL_SIZE` → `proxy.default_pool_size`. A single
/// `_` is part of a key (`pool_size`), so sections are separated by `__`.
fn env_key(name: &str) -> String {
    name.get(ENV_PREFIX.len()..)
        .unwrap_or_default()
        .to_lowercase()
        .replace("__", ".")
}

/// The value as a string, or a list of strings for [`LIST_KEYS`]. Never
/// guessed as a number or a boolean here: a password `0123` or `true` must stay
/// what it is; numeric and boolean keys convert when the struct is filled in.
fn env_value(name: &str, key: &str, value: &str) -> Value {
    let origin = Some(name.to_string());
    let kind = if LIST_KEYS.contains(&key) {
        ValueKind::Array(
            value
                .split(',')
                .map(|item| Value::new(origin.as_ref(), item.trim()))
                .collect(),
        )
    } else {
        ValueKind::String(value.to_string())
    };
    Value::new(origin.as_ref(), kind)
}

const USERS_EXAMPLE: &str = r#"[{"name": "app", "password": "..."}]"#;
const PEERS_EXAMPLE: &str = r#"[{"id": 2, "addr": "10.0.0.12:6432"}]"#;

/// `SWITCHYARD__USERS` or `SWITCHYARD__PEERS`: the tables as a JSON list of
/// objects with the same keys, e.g. `[{"name": "app", "password": "s3cr:t"}]`.
/// JSON quoting lets a password hold any character. Error messages never
/// repeat the value, nor a value serde would quote (`"password": 1234`).
fn parse_list<T: serde::de::DeserializeOwned>(
    var: &str,
    example: &str,
    json: &str,
) -> Result<Vec<T>, ConfigError> {
    let bad = |what: String| {
        ConfigError::Invalid(format!(
            "{var}: {} (expected a JSON list like {example})",
            super::redact::without_values(&what)
        ))
    };
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| bad(format!("not JSON: {e}")))?;
    let serde_json::Value::Array(entries) = value else {
        return Err(bad("not a JSON list".into()));
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            if !entry.is_object() {
                return Err(bad(format!("entry {i} is not an object")));
            }
            serde_json::from_value(entry).map_err(|e| bad(format!("entry {i}: {e}")))
        })
        .collect()
}

/// This process's `SWITCHYARD__*` variables. A non-UTF-8 value is an error
/// naming the variable; a non-UTF-8 name cannot be ours and is skipped.
fn switchyard_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut env = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Ok(name) = name.into_string() else {
            continue;
        };
        let ours = name
            .get(..ENV_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(ENV_PREFIX));
        if !ours {
            continue;
        }
        let value = value
            .into_string()
            .map_err(|_| ConfigError::Invalid(format!("{name}: the value is not UTF-8")))?;
        env.push((name, value));
    }
    Ok(env)
}

fn finish(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
    lists: Lists,
) -> Result<Config, ConfigError> {
    let mut cfg: Config = builder.build()?.try_deserialize()?;
    if let Some(users) = lists.users {
        cfg.users = users;
    }
    if let Some(peers) = lists.peers {
        cfg.peers = peers;
    }
    super::validate(&cfg).map_err(ConfigError::Invalid)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [cluster]
        nodes = ["127.0.0.1:5432"]
    "#;

    #[test]
    fn minimal_file_gets_defaults() {
        let cfg = load_str(MINIMAL).unwrap();
        assert_eq!(cfg.proxy.listen, "127.0.0.1:6432");
        assert_eq!(cfg.proxy.default_pool_size, 20);
        assert_eq!(cfg.proxy.checkout_timeout.as_secs(), 5);
        assert_eq!(cfg.nodes()[0].addr, "127.0.0.1:5432");
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = load_str("[proxy]\npool_sise = 3\n[cluster]\nnodes=[\"a:1\"]").unwrap_err();
        assert!(err.to_string().contains("pool_sise"), "{err}");
    }

    #[test]
    fn bad_duration_is_rejected() {
        let err = load_str("[proxy]\ncheckout_timeout = \"5 parsecs\"\n[cluster]\nnodes=[\"a:1\"]")
            .unwrap_err();
        assert!(err.to_string().contains("parsecs"), "{err}");
    }

    #[test]
    fn node_tables_and_strings_mix() {
        let cfg = load_str(
            r#"
            [[cluster.nodes]]
            name = "db1"
            addr = "10.0.0.1:5432"
            priority = 5
            [[cluster.nodes]]
            addr = "10.0.0.2:5432"
        "#,
        )
        .unwrap();
        let nodes = cfg.nodes();
        assert_eq!((nodes[0].name.as_str(), nodes[0].priority), ("db1", 5));
        assert_eq!(nodes[1].name, "10.0.0.2:5432");
    }
    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_reaches_nested_tls_tables() {
        let cfg = load_env_only(&env(&[
            ("SWITCHYARD__CLUSTER__NODES", "db1:5432"),
            ("SWITCHYARD__PROXY__TLS__MODE", "require"),
            ("SWITCHYARD__PROXY__TLS__CERT_FILE", "/c.pem"),
            ("SWITCHYARD__PROXY__TLS__KEY_FILE", "/k.pem"),
            ("SWITCHYARD__CLUSTER__TLS__MODE", "verify-full"),
            ("SWITCHYARD__CLUSTER__TLS__CA_FILE", "/ca.pem"),
        ]))
        .unwrap();
        assert_eq!(cfg.proxy.tls.mode, crate::config::ProxyTlsMode::Require);
        assert_eq!(cfg.proxy.tls.key_file.as_deref(), Some("/k.pem"));
        assert_eq!(
            cfg.cluster.tls.mode,
            crate::config::ClusterTlsMode::VerifyFull
        );
        assert_eq!(cfg.cluster.tls.ca_file.as_deref(), Some("/ca.pem"));
    }

    #[test]
    fn environment_reaches_coordination_endpoints_and_tls() {
        let cfg = load_env_only(&env(&[
            ("SWITCHYARD__CLUSTER__NODES", "db1:5432"),
            ("SWITCHYARD__CLUSTER__NAME", "orders"),
            ("SWITCHYARD__COORDINATION__BACKEND", "etcd"),
            (
                "SWITCHYARD__COORDINATION__ENDPOINTS",
                "https://etcd-0:2379, https://etcd-1:2379",
            ),
            ("SWITCHYARD__COORDINATION__TLS__CA_FILE", "/tls/ca.crt"),
            ("SWITCHYARD__COORDINATION__TLS__CERT_FILE", "/tls/tls.crt"),
            ("SWITCHYARD__COORDINATION__TLS__KEY_FILE", "/tls/tls.key"),
        ]))
        .unwrap();
        let c = &cfg.coordination;
        assert_eq!(c.endpoints, ["https://etcd-0:2379", "https://etcd-1:2379"]);
        assert_eq!(c.tls.ca_file.as_deref(), Some("/tls/ca.crt"));
        assert_eq!(c.tls.key_file.as_deref(), Some("/tls/tls.key"));
    }

    #[test]
    fn environment_reaches_the_patroni_table() {
        let cfg = load_env_only(&env(&[
            ("SWITCHYARD__CLUSTER__NODES", "db1:5432"),
            ("SWITCHYARD__FAILOVER__MODE", "follow"),
            ("SWITCHYARD__COORDINATION__BACKEND", "patroni"),
            ("SWITCHYARD__COORDINATION__PATRONI__SCOPE", "orders"),
            (
                "SWITCHYARD__COORDINATION__PATRONI__ENDPOINTS",
                "http://etcd-0:2379, http://etcd-1:2379",
            ),
        ]))
        .unwrap();
        let p = cfg.coordination.patroni.unwrap();
        assert_eq!(p.endpoints, ["http://etcd-0:2379", "http://etcd-1:2379"]);
        assert_eq!(
            (p.scope.as_str(), p.namespace.as_str()),
            ("orders", "/service")
        );
        let cfg = load_env_only(&env(&[
            ("SWITCHYARD__CLUSTER__NODES", "db1:5432"),
            ("SWITCHYARD__FAILOVER__MODE", "follow"),
            ("SWITCHYARD__COORDINATION__BACKEND", "patroni"),
            ("SWITCHYARD__COORDINATION__PATRONI__SCOPE", "orders"),
            (
                "SWITCHYARD__COORDINATION__PATRONI__REST",
                "http://db1:8008, http://db2:8008",
            ),
        ]))
        .unwrap();
        let p = cfg.coordination.patroni.unwrap();
        assert_eq!(p.rest, ["http://db1:8008", "http://db2:8008"]);
    }

    #[test]
    fn environment_alone_is_a_configuration() {
        let cfg = load_env_only(&env(&[
            ("SWITCHYARD__CLUSTER__NODES", "db1:5432, db2:5432"),
            ("SWITCHYARD__PROXY__LISTEN", "0.0.0.0:6432"),
            ("SWITCHYARD__PROXY__DEFAULT_POOL_SIZE", "7"),
            ("SWITCHYARD__PROXY__PEER_ID", "3"),
            ("SWITCHYARD__FAILOVER__REPOINT_REPLICAS", "false"),
            ("SWITCHYARD__HEALTH__INTERVAL", "250ms"),
            ("SWITCHYARD__DATABASES__APP_RO__TARGET", "replica"),
            (
                "SWITCHYARD__USERS",
                r#"[{"name": "app", "password": "p:a,s\"s w"},
                    {"name": "ops", "password": "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$mZ3ZEWdVuo9HwvBYKC2aH4p5EfWB4nPWn+YQ2e6TT+8=:LzCNuUVE+AT1GLb6c8CQLPDVv3dv4YxdD7rRy2jyOjE=", "server_password": "x"}]"#,
            ),
        ]))
        .unwrap();
        let addrs: Vec<_> = cfg.nodes().into_iter().map(|n| n.addr).collect();
        assert_eq!(addrs, ["db1:5432", "db2:5432"]);
        assert_eq!(cfg.proxy.listen, "0.0.0.0:6432");
        assert_eq!(cfg.proxy.default_pool_size, 7);
        assert_eq!(cfg.proxy.peer_id, Some(3));
        assert!(!cfg.failover.repoint_replicas);
        assert_eq!(cfg.health.interval.as_millis(), 250);
        assert_eq!(cfg.database("app_ro").1, crate::config::Target::Replica);
        assert_eq!(cfg.users[0].password, "p:a,s\"s w");
        assert_eq!(cfg.users[1].server_password.as_deref(), Some("x"));
    }

    #[test]
    fn environment_without_nodes_is_no_configuration() {
        let err =
            load_env_only(&env(&[("SWITCHYARD__PROXY__LISTEN", "0.0.0.0:6432")])).unwrap_err();
        assert!(matches!(err, ConfigError::NotFound), "{err}");
        assert!(err.to_string().contains(NODES_ENV), "{err}");
        assert!(load_env_only(&[]).is_err());
    }

    #[test]
    fn string_values_are_never_guessed_as_numbers() {
        // `0123`, `1e3` and `true` are passwords and names here, not numbers or booleans.
        let cfg = load_env_only(&env(&[
            ("SWITCHYARD__CLUSTER__NODES", "db1:5432"),
            ("SWITCHYARD__CLUSTER__USER", "true"),
            ("SWITCHYARD__CLUSTER__PASSWORD", "0123"),
            ("SWITCHYARD__HEALTH__DATABASE", "1e3"),
        ]))
        .unwrap();
        assert_eq!(cfg.cluster.user.as_deref(), Some("true"));
        assert_eq!(cfg.cluster.password.as_deref(), Some("0123"));
        assert_eq!(cfg.health.database, "1e3");
    }

    #[test]
    fn environment_users_replace_the_files_users() {
        let path = std::env::temp_dir().join(format!("sy_users_{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "[[users]]\nname = \"file\"\npassword = \"f\"\n[cluster]\nnodes = [\"a:1\"]\n",
        )
        .unwrap();
        let from_file = load_with(Some(&path), &[]).unwrap();
        let replaced = load_with(
            Some(&path),
            &env(&[
                ("SWITCHYARD__USERS", r#"[{"name": "env", "password": "e"}]"#),
                ("SWITCHYARD__CLUSTER__NODES", "b:2,c:3"),
            ]),
        );
        let _ = std::fs::remove_file(&path);
        assert_eq!(from_file.users[0].name, "file");
        let replaced = replaced.unwrap();
        let names: Vec<_> = replaced.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["env"]);
        assert_eq!(replaced.nodes().len(), 2);
    }

    #[test]
    fn bad_users_json_is_explained_without_echoing_it() {
        for (json, says) in [
            ("app:secret-pw", "not JSON"),
            (r#""secret-pw""#, "not a JSON list"),
            (r#"["secret-pw"]"#, "entry 0 is not an object"),
            (r#"[{"name": "app"}]"#, "missing field `password`"),
            (
                r#"[{"name": "app", "pasword": "secret-pw"}]"#,
                "unknown field `pasword`",
            ),
        ] {
            let err = load_env_only(&env(&[
                ("SWITCHYARD__CLUSTER__NODES", "a:1"),
                ("SWITCHYARD__USERS", json),
            ]))
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(USERS_ENV) && err.contains(says),
                "{json}: {err}"
            );
            assert!(!err.contains("secret-pw"), "{json}: {err}");
        }
    }

    #[test]
    fn users_json_of_the_wrong_type_is_explained_without_echoing_it() {
        for (json, says) in [
            (r#"[{"name": "app", "password": 987654}]"#, "integer"),
            (
                r#"[{"name": "app", "password": 9876.54}]"#,
                "floating point",
            ),
            (
                r#"[{"name": "app", "password": "x", "server_password": 987654}]"#,
                "integer",
            ),
            (r#"[{"name": "app", "password": false}]"#, "boolean"),
        ] {
            let err = load_env_only(&env(&[
                ("SWITCHYARD__CLUSTER__NODES", "a:1"),
                ("SWITCHYARD__USERS", json),
            ]))
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("entry 0") && err.contains(says),
                "{json}: {err}"
            );
            for secret in ["987654", "9876.54", "false"] {
                assert!(!err.contains(secret), "{json}: {err}");
            }
        }
    }

    #[test]
    fn a_toml_syntax_error_says_where_without_quoting_the_line() {
        let path = std::env::temp_dir().join(format!("sy_syntax_{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "[cluster]\nnodes = [\"a:1\"]\n[[users]]\nname = \"é\"\npassword = \"s3cret\" junk\n",
        )
        .unwrap();
        let err = load_with(Some(&path), &[]).unwrap_err();
        let _ = std::fs::remove_file(&path);
        let (shown, debug) = (err.to_string(), format!("{err:?}"));
        assert!(
            !shown.contains("s3cret") && !debug.contains("s3cret"),
            "{shown}\n{debug}"
        );
        assert!(
            shown.contains("not valid TOML at line 5, column 21"),
            "{shown}"
        );
        assert_eq!(line_column("ab\ncé\nd", 6), (2, 3));
        assert_eq!(line_column("ab\ncé\nd", 7), (3, 1));
        assert_eq!(line_column("ab\ncé\nd", 5), (2, 2));
        assert_eq!(line_column("", 0), (1, 1));
    }

    #[test]
    fn environment_peers_replace_the_files_peers() {
        let cfg = load_env_only(&env(&[
            ("SWITCHYARD__CLUSTER__NODES", "a:1"),
            ("SWITCHYARD__PROXY__PEER_ID", "1"),
            (
                "SWITCHYARD__PEERS",
                r#"[{"id": 2, "addr": "b:6432"}, {"id": 3, "addr": "c:6432"}]"#,
            ),
        ]))
        .unwrap();
        let ids: Vec<_> = cfg.peers.iter().map(|p| (p.id, p.addr.as_str())).collect();
        assert_eq!(ids, [(2, "b:6432"), (3, "c:6432")]);
        for (json, says) in [
            (r#"{"id": 2}"#, "not a JSON list"),
            (r#"[{"id": 2, "adr": "b:1"}]"#, "unknown field `adr`"),
            (r#"[{"id": 1, "addr": "b:1"}]"#, "own proxy.peer_id"),
        ] {
            let err = load_env_only(&env(&[
                ("SWITCHYARD__CLUSTER__NODES", "a:1"),
                ("SWITCHYARD__PROXY__PEER_ID", "1"),
                ("SWITCHYARD__PEERS", json),
            ]))
            .unwrap_err()
            .to_string();
            assert!(err.contains(says), "{json}: {err}");
        }
    }

    #[test]
    fn log_section_from_file_and_environment() {
        use crate::config::LogFormat;
        let cfg = load_str(MINIMAL).unwrap();
        assert_eq!(
            (cfg.log.format, cfg.log.level.as_str()),
            (LogFormat::Text, "info")
        );
        let cfg = load_str(&format!(
            "{MINIMAL}\n[log]\nformat = \"json\"\nlevel = \"warn\"\n"
        ))
        .unwrap();
        assert_eq!(
            (cfg.log.format, cfg.log.level.as_str()),
            (LogFormat::Json, "warn")
        );
        // A comma in the level is part of it, not a list.
        let cfg = load_env_only(&env(&[
            ("SWITCHYARD__CLUSTER__NODES", "a:1"),
            ("SWITCHYARD__LOG__FORMAT", "json"),
            ("SWITCHYARD__LOG__LEVEL", "warn,switchyard=debug"),
        ]))
        .unwrap();
        assert_eq!(cfg.log.format, LogFormat::Json);
        assert_eq!(cfg.log.level, "warn,switchyard=debug");
    }

    #[test]
    fn a_bad_log_setting_names_its_key() {
        for (log, says) in [
            ("level = \"warning\"", "log.level = \"warning\""),
            ("level = \"switchyard=loud\"", "log.level"),
            ("format = \"xml\"", "xml"),
            ("colour = true", "colour"),
        ] {
            let err = load_str(&format!("{MINIMAL}\n[log]\n{log}\n")).expect_err(log);
            assert!(err.to_string().contains(says), "{log}: {err}");
        }
    }

    #[test]
    fn env_keys_map_to_dotted_paths() {
        assert_eq!(
            env_key("SWITCHYARD__PROXY__DEFAULT_POOL_SIZE"),
            "proxy.default_pool_size"
        );
        assert_eq!(env_key("switchyard__http__listen"), "http.listen");
        assert_eq!(env_key("SWITCHYARD__USERS"), "users");
    }
}
