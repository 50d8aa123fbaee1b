//! Reading the configuration: a TOML file, then `SWITCHYARD__SECTION__KEY`
//! environment overrides, then validation. Nothing here touches the network.

use std::path::Path;

use config::{Environment, File, FileFormat};

use super::Config;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing, is not TOML, or does not match the schema.
    #[error("{0}")]
    Parse(#[from] config::ConfigError),
    /// The file parsed but a value is not acceptable.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Loads `path`, applies environment overrides and validates the result.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let builder = config::Config::builder()
        .add_source(File::from(path).format(FileFormat::Toml))
        .add_source(env_source());
    finish(builder)
}

/// Loads a configuration from TOML text (no environment overrides); used by
/// tests, the demo and the benchmark, which build their configuration in code.
pub fn load_str(toml: &str) -> Result<Config, ConfigError> {
    finish(config::Config::builder().add_source(File::from_str(toml, FileFormat::Toml)))
}

fn env_source() -> Environment {
    // A single `_` separator would split `pool_size` into `pool.size`.
    Environment::with_prefix("SWITCHYARD")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .with_list_parse_key("proxy.admin_users")
        .with_list_parse_key("cluster.nodes")
}

fn finish(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
) -> Result<Config, ConfigError> {
    let cfg: Config = builder.build()?.try_deserialize()?;
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
}
