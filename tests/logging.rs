//! The binary's logs as an operator gets them: stderr redirected to a file
//! (not a terminal, so no colour codes), `[log]` choosing the format and the
//! level, the command line and RUST_LOG above it, and a bad level refused by
//! `check-config`. No database is needed: the one node is a closed port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The info line the proxy logs once it listens.
const READY: &str = "switchyard is accepting connections";

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A temporary directory holding `switchyard.toml`, removed on drop.
struct ConfigDir(PathBuf);

impl ConfigDir {
    /// A valid configuration on free ports, with `extra` (e.g. a `[log]` table) at the end.
    fn new(extra: &str, http: u16) -> ConfigDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sy_logging_{}_{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml = format!(
            "[proxy]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n\
             [cluster]\nnodes = [\"127.0.0.1:{}\"]\n{extra}\n",
            free_port(),
            free_port(),
        );
        std::fs::write(dir.join("switchyard.toml"), toml).unwrap();
        ConfigDir(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("switchyard.toml")
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary with no logging settings inherited from the test's environment.
fn switchyard(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.args(args).env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        if name
            .to_string_lossy()
            .to_uppercase()
            .starts_with("SWITCHYARD__")
        {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// The running proxy, killed on drop so that a failed assertion leaks nothing.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the proxy with `[log]` lines `log` until it serves HTTP, then stops
/// it and returns what it wrote to stderr (a file, as under systemd or docker).
fn stderr_of_a_start(log: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let http = free_port();
    let dir = ConfigDir::new(log, http);
    let stderr_path = dir.0.join("stderr.log");
    let config = dir.file();
    let mut all_args = vec!["--config", config.to_str().unwrap()];
    all_args.extend_from_slice(args);
    let child = switchyard(&all_args, env)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("start switchyard");
    let mut proxy = Running(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answers_http(http) {
        let read = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
        if let Some(status) = proxy.0.try_wait().unwrap() {
            panic!("switchyard exited ({status}):\n{}", read());
        }
        assert!(
            Instant::now() < deadline,
            "not serving in 10 s:\n{}",
            read()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(proxy);
    std::fs::read_to_string(&stderr_path).unwrap()
}

/// Whether the HTTP endpoint answers a request. The endpoints are served
/// after the startup lines are logged, so an answer means they are written.
fn answers_http(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut reply = vec![];
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").is_ok()
        && s.read_to_end(&mut reply).is_ok()
        && reply.starts_with(b"HTTP/")
}

#[test]
fn text_logs_written_to_a_file_carry_no_colour_codes() {
    let out = stderr_of_a_start("", &[], &[]);
    assert!(out.contains(READY) && out.contains("INFO"), "{out}");
    assert!(!out.contains("\x1b["), "escape codes in:\n{out:?}");
}

#[test]
fn json_format_writes_one_object_per_line_with_top_level_fields() {
    let out = stderr_of_a_start("[log]\nformat = \"json\"", &[], &[]);
    let mut ready = None;
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["message"].is_string(), "{line}");
        if v["message"] == READY {
            ready = Some(v);
        }
    }
    let ready = ready.unwrap_or_else(|| panic!("no {READY:?} in:\n{out}"));
    assert_eq!(ready["level"], "INFO");
    assert!(ready["listen"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(ready["timestamp"].is_string() && ready["target"].is_string());
    assert!(!out.contains("\x1b["), "escape codes in:\n{out:?}");
}

#[test]
fn level_warn_keeps_warnings_and_drops_the_startup_line() {
    let out = stderr_of_a_start("[log]\nlevel = \"warn\"", &[], &[]);
    assert!(!out.contains(READY), "{out}");
    // Not silent: the filter passes warnings.
    assert!(out.contains("WARN") && out.contains("promote"), "{out}");
}

#[test]
fn command_line_beats_rust_log_which_beats_the_file() {
    let warn_file = "[log]\nlevel = \"warn\"";
    let out = stderr_of_a_start(warn_file, &[], &[("RUST_LOG", "info")]);
    assert!(out.contains(READY), "RUST_LOG=info over the file:\n{out}");
    let args = ["--log-level", "warn", "--log-format", "json"];
    let out = stderr_of_a_start(warn_file, &args, &[("RUST_LOG", "info")]);
    assert!(!out.contains(READY), "--log-level over RUST_LOG:\n{out}");
    let first = out.lines().next().unwrap_or_default();
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "--log-format json over the file's text: {first}"
    );
    let out = stderr_of_a_start(
        warn_file,
        &[],
        &[("SWITCHYARD__LOG__LEVEL", "info,switchyard=debug")],
    );
    assert!(out.contains(READY), "the environment over the file:\n{out}");
}

fn check_config(log: &str) -> Output {
    let dir = ConfigDir::new(log, free_port());
    let config = dir.file();
    switchyard(&["check-config", "--config", config.to_str().unwrap()], &[])
        .output()
        .unwrap()
}

#[test]
fn check_config_refuses_a_bad_level_and_names_the_key() {
    for bad in ["info,switchyard=loud", "warning"] {
        let out = check_config(&format!("[log]\nlevel = \"{bad}\""));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: accepted");
        assert!(stderr.contains("log.level"), "{bad}: {stderr}");
    }
    let out = check_config("[log]\nformat = \"json\"\nlevel = \"warn,switchyard=debug\"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
