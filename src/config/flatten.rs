//! The configuration as flat `key = value` settings, for `SHOW CONFIG`.
//! `[proxy]` keys keep their bare names (most are PgBouncer's, so tools that
//! read `max_client_conn` find it); other sections are `section.key`.
//! Users and passwords are never listed.

use serde::Serialize;
use serde_json::Value;

use super::{
    ClusterTlsConfig, Config, FailoverConfig, HealthConfig, HttpConfig, LogConfig, ProxyConfig,
    RoutingConfig, SwitchoverConfig,
};

/// Whether changing the `SHOW CONFIG` setting `key` needs a restart (RELOAD
/// reports it instead of applying it). `[proxy]` keys are listed bare here.
pub fn needs_restart(key: &str) -> bool {
    if key.contains('.') {
        super::reload::is_restart_key(key)
    } else {
        super::reload::is_restart_key(&format!("proxy.{key}"))
    }
}

/// Every setting: (key, value, default), in section order.
pub fn settings(config: &Config) -> Vec<(String, String, String)> {
    let mut out = vec![];
    section(&mut out, "", &config.proxy, &ProxyConfig::default());
    section(
        &mut out,
        "health.",
        &config.health,
        &HealthConfig::default(),
    );
    section(
        &mut out,
        "failover.",
        &config.failover,
        &FailoverConfig::default(),
    );
    section(
        &mut out,
        "routing.",
        &config.routing,
        &RoutingConfig::default(),
    );
    section(&mut out, "http.", &config.http, &HttpConfig::default());
    section(
        &mut out,
        "switchover.",
        &config.switchover,
        &SwitchoverConfig::default(),
    );
    section(
        &mut out,
        "cluster.tls.",
        &config.cluster.tls,
        &ClusterTlsConfig::default(),
    );
    // The file's values: the binary's flags and RUST_LOG may override them.
    section(&mut out, "log.", &config.log, &LogConfig::default());
    out
}

fn section<T: Serialize>(
    out: &mut Vec<(String, String, String)>,
    prefix: &str,
    now: &T,
    default: &T,
) {
    let (Ok(Value::Object(now)), Ok(Value::Object(default))) =
        (serde_json::to_value(now), serde_json::to_value(default))
    else {
        return;
    };
    flatten(out, prefix, &now, &default);
}

/// Nested tables (`[proxy.tls]`) become `tls.key` settings.
fn flatten(
    out: &mut Vec<(String, String, String)>,
    prefix: &str,
    now: &serde_json::Map<String, Value>,
    default: &serde_json::Map<String, Value>,
) {
    for (key, value) in now {
        if let Value::Object(inner) = value {
            let empty = serde_json::Map::new();
            let inner_default = match default.get(key) {
                Some(Value::Object(d)) => d,
                _ => &empty,
            };
            flatten(out, &format!("{prefix}{key}."), inner, inner_default);
            continue;
        }
        let default = default.get(key).map(text).unwrap_or_default();
        let mut value = text(value);
        if key.ends_with("token") && !value.is_empty() {
            value = "(set)".into();
        }
        out.push((format!("{prefix}{key}"), value, default));
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_settings_with_defaults_and_no_secrets() {
        let config = crate::config::load_str(
            "[proxy]\nmax_client_conn = 50\n[cluster]\nnodes = [\"127.0.0.1:5432\"]\npassword = \"s3cret\"\n[[users]]\nname = \"app\"\npassword = \"pw\"\n",
        )
        .unwrap();
        let s = settings(&config);
        let get = |k: &str| s.iter().find(|(key, _, _)| key == k).cloned();
        assert_eq!(
            get("max_client_conn"),
            Some(("max_client_conn".into(), "50".into(), "10000".into()))
        );
        assert_eq!(get("checkout_timeout").unwrap().1, "5s");
        assert_eq!(get("pool_mode").unwrap().1, "transaction");
        assert_eq!(get("admin_users").unwrap().1, "admin");
        assert!(get("health.interval").is_some());
        assert!(get("http.listen").is_some());
        assert_eq!(get("tls.mode").unwrap().1, "disable");
        assert_eq!(get("cluster.tls.mode").unwrap().1, "prefer");
        assert!(s.iter().all(|(_, v, _)| !v.contains("s3cret") && v != "pw"));
        assert!(get("switchover.drain_timeout").is_some());
        assert!(needs_restart("listen") && !needs_restart("default_pool_size"));
        assert!(needs_restart("workers") && needs_restart("http.metrics"));
        assert_eq!(get("log.level").unwrap().1, "info");
        assert!(needs_restart("log.format") && needs_restart("log.level"));
    }
}
