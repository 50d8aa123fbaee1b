//! Every example configuration under config/ loads and validates, and the
//! environment can override any key.

use std::path::Path;

#[test]
fn every_file_under_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            switchyard::config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            loaded += 1;
        }
    }
    assert!(loaded >= 1, "config/ has examples");
}

#[test]
fn check_config_command_accepts_good_and_rejects_bad_files() {
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/switchyard.toml");
    let out = std::process::Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The example promotes: check-config says what that means for several proxies.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("warning: failover.mode = \"promote\""),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let follow = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/follow-patroni.toml");
    let out = std::process::Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&follow)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("warning:"));

    let bad = std::env::temp_dir().join(format!("sy_bad_{}.toml", std::process::id()));
    std::fs::write(
        &bad,
        "[proxy]\ndefault_pool_size = \"lots\"\n[cluster]\nnodes = [\"a:1\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&bad);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("default_pool_size"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Environment overrides use SWITCHYARD__SECTION__KEY and are validated too.
    let out = std::process::Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&good)
        .env("SWITCHYARD__PROXY__DEFAULT_POOL_SIZE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("default_pool_size must be at least 1"));
}

#[test]
fn environment_overrides_reach_the_loaded_config() {
    // Run in a child process: the environment is process-wide.
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/switchyard.toml");
    let out = std::process::Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&good)
        .env("SWITCHYARD__PROXY__LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-an-address"));
}

#[test]
fn malformed_hardware_rules_are_refused_with_a_clear_message() {
    let cases = [
        (
            r#"{ metric = "ipmi_sensor_state", op = "=>", value = 0, status = "degraded" }"#,
            "unknown op",
        ),
        (
            r#"{ metric = "ipmi_sensor_state", op = "!=", value = 0, status = "broken" }"#,
            "broken",
        ),
        (
            r#"{ metric = "", op = "!=", value = 0, status = "degraded" }"#,
            "metric",
        ),
    ];
    for (rule, want) in cases {
        let toml = format!(
            "[cluster]\nnodes = [{{ addr = \"127.0.0.1:5432\", hardware = {{ url = \"http://127.0.0.1:9100/metrics\", rules = [{rule}] }} }}]\n"
        );
        let err = switchyard::config::load_str(&toml)
            .expect_err(rule)
            .to_string();
        assert!(err.contains(want), "{rule}: {err}");
    }
}

/// `check-config` as an operator runs it: the output names what is wrong and
/// where, never a password or token, whatever shape the mistake takes.
#[test]
fn check_config_never_prints_a_secret() {
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let dir = std::env::temp_dir().join(format!("sy_secrets_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("switchyard.toml");
    let nodes = "[cluster]\nnodes = [\"127.0.0.1:5432\"]\n";
    // (file body, SWITCHYARD__USERS, the secret, what the message must name)
    let cases = [
        (
            nodes.to_string(),
            r#"[{"name":"a","password":987654321}]"#,
            "987654321",
            "SWITCHYARD__USERS: entry 0: invalid type: integer",
        ),
        (
            nodes.to_string(),
            r#"[{"name":"a","password":31415.9265}]"#,
            "31415.9265",
            "entry 0: invalid type: floating point",
        ),
        (
            nodes.to_string(),
            r#"[{"name":"a","password":"x","server_password":55501234}]"#,
            "55501234",
            "entry 0: invalid type: integer",
        ),
        (
            format!("{nodes}[[users]]\nname = \"a\"\npassword = \"file-s3cret-1\n"),
            "",
            "file-s3cret-1",
            "line 5",
        ),
        (
            format!("{nodes}[[users]]\nname = \"a\"\npassword = \"file-s3cret-2\" junk\n"),
            "",
            "file-s3cret-2",
            "line 5",
        ),
        (
            format!("{nodes}password = 'file-s3cret-3''\n"),
            "",
            "file-s3cret-3",
            "line 3",
        ),
        (
            format!("{nodes}[http]\nswitchover_token = \"tok-s3cret-4\" \"again\"\n"),
            "",
            "tok-s3cret-4",
            "line 4",
        ),
        (
            format!("{nodes}[coordination]\nusername = \"u\"\npassword = tok-s3cret-5\n"),
            "",
            "tok-s3cret-5",
            "line 5",
        ),
    ];
    for (body, users, secret, names) in cases {
        std::fs::write(&file, &body).unwrap();
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["check-config", "--config"]).arg(&file);
        if !users.is_empty() {
            cmd.env("SWITCHYARD__USERS", users);
        }
        let out = cmd.output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{body:?} {users:?}: accepted");
        assert!(!said.contains(secret), "{body:?} {users:?}: {said}");
        assert!(said.contains(names), "{body:?} {users:?}: {said}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
