//! The container packaging under docker/, checked without a Docker engine:
//! every TOML file there passes `switchyard check-config`, also with the
//! environment that compose.yaml and k8s-sidecar.yaml give it; the ConfigMap
//! holds exactly docker/switchyard.toml; the proxies of both coordinate
//! through etcd (compose: its etcd service, by the URL etcd advertises;
//! Kubernetes: over TLS with the files of a mounted Secret); the Dockerfile keeps the rules a
//! linter would check; and the real binary runs from `SWITCHYARD__...`
//! variables alone in front of a real PostgreSQL and answers `healthcheck`.
//!
//! The YAML is read with a few line-based helpers written for these files'
//! layout; each extraction asserts what it expects to find, so a change of
//! layout fails here instead of silently checking nothing.

mod common;

use common::free_port;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use switchyard::local_cluster::{APP_DB, APP_PASSWORD, APP_USER, CLUSTER_PASSWORD, CLUSTER_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn docker_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker")
}

fn read(name: &str) -> String {
    let path = docker_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The binary with none of this process's `SWITCHYARD__*` variables, and
/// `env` instead.
fn switchyard(args: &[&str], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|n| n.to_ascii_uppercase().starts_with("SWITCHYARD__"))
        {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

fn check_config(file: &Path, env: &[(String, String)]) -> Output {
    switchyard(&["check-config", "--config"], env)
        .arg(file)
        .output()
        .unwrap()
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A scratch directory, removed on drop: a working directory with no
/// `config/switchyard.toml` in it.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(common::unique(&format!("sy_docker_{tag}")));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- line-based YAML helpers -------------------------------------------------

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The lines nested under `lines[at]` (indented deeper), blank lines inside
/// included, trailing blank lines dropped.
fn block<'a>(lines: &[&'a str], at: usize) -> Vec<&'a str> {
    let base = indent(lines[at]);
    let mut out: Vec<&str> = lines[at + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > base)
        .copied()
        .collect();
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    out
}

/// Index of the first line whose trimmed text is `text`.
fn line_index(lines: &[&str], text: &str) -> usize {
    lines
        .iter()
        .position(|l| l.trim() == text)
        .unwrap_or_else(|| panic!("no line {text:?}"))
}

/// A YAML scalar as written on one line: plain, 'single' or "double" quoted
/// (double-quoted values here hold no escapes).
fn unquote(v: &str) -> String {
    let v = v.trim();
    if let Some(inner) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        inner.replace("''", "'")
    } else if let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        assert!(!inner.contains('\\'), "escapes are not handled: {v}");
        inner.to_string()
    } else {
        v.to_string()
    }
}

/// `key: value` entries of a mapping block, comments skipped.
fn mapping(block: &[&str]) -> Vec<(String, String)> {
    block
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once(": ")
                .unwrap_or_else(|| panic!("not key: value: {l}"));
            (k.to_string(), unquote(v))
        })
        .collect()
}

fn names(env: &[(String, String)]) -> Vec<&str> {
    let mut names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    names
}

/// The block of compose.yaml's service `name`.
fn compose_service(name: &str) -> Vec<String> {
    let text = read("compose.yaml");
    let lines: Vec<&str> = text.lines().collect();
    let services = line_index(&lines, "services:");
    let header = format!("  {name}:");
    let service = services
        + 1
        + lines[services + 1..]
            .iter()
            .position(|l| l.trim_end() == header)
            .unwrap_or_else(|| panic!("a {name} service"));
    block(&lines, service)
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// The names of compose.yaml's services that run Switchyard (its image).
fn compose_proxies() -> Vec<String> {
    let text = read("compose.yaml");
    let lines: Vec<&str> = text.lines().collect();
    let services = line_index(&lines, "services:");
    let names: Vec<String> = block(&lines, services)
        .iter()
        .filter(|l| indent(l) == 2 && !l.trim_start().starts_with('#'))
        .filter_map(|l| l.trim().strip_suffix(':'))
        .map(str::to_string)
        .filter(|name| {
            compose_service(name)
                .iter()
                .any(|l| l.trim() == "image: switchyard:dev")
        })
        .collect();
    assert!(!names.is_empty(), "compose.yaml runs Switchyard");
    names
}

/// compose.yaml's Switchyard service `name`: the TOML file it mounts at
/// /etc/switchyard/switchyard.toml, and its environment.
fn compose_switchyard(name: &str) -> (PathBuf, Vec<(String, String)>) {
    let body = compose_service(name);
    let body: Vec<&str> = body.iter().map(String::as_str).collect();
    let env = mapping(&block(&body, line_index(&body, "environment:")));
    let toml = body
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix("- ./")?
                .strip_suffix(":/etc/switchyard/switchyard.toml:ro")
        })
        .unwrap_or_else(|| {
            panic!("{name}: a TOML file mounted at /etc/switchyard/switchyard.toml")
        });
    (docker_dir().join(toml), env)
}

/// k8s-sidecar.yaml: the ConfigMap's switchyard.toml, and the switchyard
/// container's environment with the Secret's values filled in.
fn k8s_sidecar() -> (String, Vec<(String, String)>) {
    let text = read("k8s-sidecar.yaml");
    let lines: Vec<&str> = text.lines().collect();

    let toml_block = block(&lines, line_index(&lines, "switchyard.toml: |"));
    let margin = toml_block.first().map_or(0, |l| indent(l));
    let mut toml = String::new();
    for l in &toml_block {
        toml.push_str(l.get(margin..).unwrap_or(""));
        toml.push('\n');
    }

    let secret = mapping(&block(&lines, line_index(&lines, "stringData:")));
    let container = block(&lines, line_index(&lines, "- name: switchyard"));
    let mut env = Vec::new();
    let mut name = None;
    for l in block(&container, line_index(&container, "env:")) {
        let l = l.trim();
        if let Some(n) = l.strip_prefix("- name: ") {
            name = Some(n.to_string());
        } else if let Some(v) = l.strip_prefix("value: ") {
            env.push((name.take().expect("value after name"), unquote(v)));
        } else if let Some(key) = l.strip_prefix("key: ") {
            let value = secret
                .iter()
                .find(|(k, _)| k == key)
                .unwrap_or_else(|| panic!("the Secret has no {key}"))
                .1
                .clone();
            env.push((name.take().expect("key after name"), value));
        }
    }
    (toml, env)
}

// ---- the files ------------------------------------------------------------------

#[test]
fn every_toml_under_docker_passes_check_config() {
    fn tomls(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                tomls(&path, out);
            } else if path.extension().is_some_and(|e| e == "toml") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    tomls(&docker_dir(), &mut files);
    assert!(!files.is_empty(), "docker/ has TOML files");
    for file in files {
        assert_success(&file.display().to_string(), &check_config(&file, &[]));
    }
}

#[test]
fn compose_environment_and_file_pass_check_config() {
    for name in compose_proxies() {
        let (toml, env) = compose_switchyard(&name);
        assert_eq!(
            names(&env),
            ["SWITCHYARD__CLUSTER__PASSWORD", "SWITCHYARD__USERS"],
            "{name}"
        );
        let what = format!("compose.yaml's {name}");
        assert_success(&what, &check_config(&toml, &env));
    }
}

/// The demo's proxies coordinate: more than one, each with the same file
/// (coordination refuses a proxy whose nodes or failover settings differ),
/// pointed at the etcd service by the URL it advertises.
#[test]
fn compose_proxies_coordinate_through_its_etcd() {
    let proxies = compose_proxies();
    assert!(proxies.len() >= 2, "{proxies:?}");
    let files: Vec<PathBuf> = proxies.iter().map(|p| compose_switchyard(p).0).collect();
    assert!(files.iter().all(|f| *f == files[0]), "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let cfg = switchyard::config::load_str(&text).unwrap();
    assert_eq!(
        cfg.coordination.backend,
        switchyard::config::coordination::Backend::Etcd
    );
    assert!(!cfg.cluster.name.is_empty());

    let etcd = compose_service("etcd");
    let flag = |name: &str| -> String {
        etcd.iter()
            .find_map(|l| l.trim().strip_prefix(&format!("- --{name}=")))
            .unwrap_or_else(|| panic!("etcd is started with --{name}"))
            .to_string()
    };
    let advertised = flag("advertise-client-urls");
    for endpoint in &cfg.coordination.endpoints {
        assert!(
            advertised.split(',').any(|u| u == endpoint),
            "{endpoint} is not among etcd's --advertise-client-urls {advertised}"
        );
    }
    // The member's own peer URL is the one its one-member cluster names.
    let peer = flag("initial-advertise-peer-urls");
    let member = flag("name");
    assert_eq!(flag("initial-cluster"), format!("{member}={peer}"));
    // Both proxies wait for a healthy etcd.
    for name in &proxies {
        let body = compose_service(name);
        let body: Vec<&str> = body.iter().map(String::as_str).collect();
        let deps = block(&body, line_index(&body, "depends_on:"));
        let etcd = line_index(&deps, "etcd:");
        assert_eq!(
            block(&deps, etcd)
                .iter()
                .map(|l| l.trim())
                .collect::<Vec<_>>(),
            ["condition: service_healthy"],
            "{name}"
        );
    }
}

#[test]
fn k8s_configmap_is_docker_switchyard_toml() {
    let (configmap, _) = k8s_sidecar();
    assert_eq!(
        configmap,
        read("switchyard.toml"),
        "k8s-sidecar.yaml's ConfigMap must hold exactly docker/switchyard.toml"
    );
}

#[test]
fn k8s_environment_and_configmap_pass_check_config() {
    let (configmap, env) = k8s_sidecar();
    assert_eq!(
        names(&env),
        [
            "SWITCHYARD__CLUSTER__NODES",
            "SWITCHYARD__CLUSTER__PASSWORD",
            "SWITCHYARD__COORDINATION__ENDPOINTS",
            "SWITCHYARD__COORDINATION__TLS__CA_FILE",
            "SWITCHYARD__COORDINATION__TLS__CERT_FILE",
            "SWITCHYARD__COORDINATION__TLS__KEY_FILE",
            "SWITCHYARD__PROXY__LISTEN",
            "SWITCHYARD__USERS",
        ]
    );
    // Several sidecars must not each decide on promotion alone: the
    // ConfigMap has them promote through one leader elected in etcd, and
    // the environment changes neither.
    let cfg = switchyard::config::load_str(&configmap).unwrap();
    assert_eq!(
        cfg.coordination.backend,
        switchyard::config::coordination::Backend::Etcd
    );
    assert_eq!(cfg.failover.mode, switchyard::config::FailoverMode::Promote);
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let endpoints = get("SWITCHYARD__COORDINATION__ENDPOINTS").unwrap();
    assert!(
        endpoints.split(',').all(|e| e.starts_with("https://")),
        "{endpoints}"
    );
    // The TLS files are in the Secret the container mounts.
    let text = read("k8s-sidecar.yaml");
    let lines: Vec<&str> = text.lines().collect();
    let container = block(&lines, line_index(&lines, "- name: switchyard"));
    let mounts = block(&container, line_index(&container, "volumeMounts:"));
    let at = line_index(&mounts, "- name: switchyard-etcd-tls");
    let dir = block(&mounts, at)
        .iter()
        .find_map(|l| l.trim().strip_prefix("mountPath: "))
        .expect("the etcd TLS Secret is mounted")
        .to_string();
    for key in ["CA_FILE", "CERT_FILE", "KEY_FILE"] {
        let file = get(&format!("SWITCHYARD__COORDINATION__TLS__{key}")).unwrap();
        assert!(file.starts_with(&format!("{dir}/")), "{key}: {file}");
    }
    assert!(text.contains("secretName: switchyard-etcd-tls"));
    // The ConfigMap is docker/switchyard.toml (the test above).
    let out = check_config(&docker_dir().join("switchyard.toml"), &env);
    assert_success("k8s-sidecar.yaml's switchyard", &out);
}

/// Hadolint-style rules, checked by hand: there is no linter on this machine.
#[test]
fn dockerfile_follows_the_image_rules() {
    let text = read("Dockerfile").replace("\\\n", " ");
    let instructions: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<usize> = (0..instructions.len())
        .filter(|&i| instructions[i].starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage");
    for &i in &froms {
        let image = instructions[i].split_whitespace().nth(1).unwrap();
        let tag = image.rsplit_once(':').map(|(_, t)| t);
        assert!(
            tag.is_some_and(|t| t != "latest"),
            "pinned base image: {image}"
        );
    }
    let runtime = &instructions[*froms.last().unwrap()..];
    let user = runtime
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "numeric non-root USER: {user}"
    );
    assert!(runtime
        .iter()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["EXPOSE", "6432", "9930"]));
    for l in runtime {
        for word in ["ENTRYPOINT ", "CMD "] {
            if let Some(rest) = l.strip_prefix(word) {
                assert!(rest.trim_start().starts_with('['), "exec form: {l}");
            }
        }
    }
    let healthcheck = runtime
        .iter()
        .find(|l| l.starts_with("HEALTHCHECK "))
        .expect("a HEALTHCHECK");
    assert!(
        healthcheck.contains("CMD [\"/usr/local/bin/switchyard\", \"healthcheck\"")
            && healthcheck.contains("/healthz"),
        "{healthcheck}"
    );
    // The built binary is the only thing copied from the builder.
    for l in &instructions[..*froms.last().unwrap()] {
        assert!(!l.starts_with("COPY --from="), "{l}");
    }
    for l in runtime.iter().filter(|l| l.starts_with("COPY ")) {
        assert!(l.starts_with("COPY --from=builder "), "{l}");
    }
    for l in &instructions {
        if l.contains("apt-get install") {
            assert!(l.contains("--no-install-recommends"), "{l}");
            assert!(l.contains("rm -rf /var/lib/apt/lists"), "{l}");
        }
        let upper = l.to_ascii_uppercase();
        if upper.starts_with("ENV ") || upper.starts_with("ARG ") {
            for secret in ["PASSWORD", "SECRET", "TOKEN", "USERS"] {
                assert!(!upper.contains(secret), "no secrets in the image: {l}");
            }
        }
    }
}

#[test]
fn images_are_pinned() {
    for (file, prefix) in [("compose.yaml", "image: "), ("k8s-sidecar.yaml", "image: ")] {
        let text = read(file);
        let images: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix(prefix))
            .collect();
        assert!(!images.is_empty(), "{file}");
        for image in images {
            let tag = image.rsplit_once(':').map(|(_, t)| t);
            assert!(tag.is_some_and(|t| t != "latest"), "{file}: {image}");
        }
    }
}

// ---- the binary ---------------------------------------------------------------

#[test]
fn config_file_rule_explicit_default_and_environment() {
    let cwd = TempDir::new("rule");
    let nodes = [(
        "SWITCHYARD__CLUSTER__NODES".to_string(),
        "db1:5432,db2:5432".to_string(),
    )];
    if Path::new("/etc/switchyard/switchyard.toml").exists() {
        eprintln!("skipped: /etc/switchyard/switchyard.toml exists on this machine");
        return;
    }
    // No file anywhere, no nodes in the environment: an error naming both.
    let out = switchyard(&["check-config"], &[])
        .current_dir(&cwd.0)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("config/switchyard.toml") && err.contains("SWITCHYARD__CLUSTER__NODES"),
        "{err}"
    );
    // The environment alone.
    let out = switchyard(&["check-config"], &nodes)
        .current_dir(&cwd.0)
        .output()
        .unwrap();
    assert_success("environment alone", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("environment"));
    // An explicit --config must exist, whatever the environment says.
    let out = switchyard(&["check-config", "--config", "missing.toml"], &nodes)
        .current_dir(&cwd.0)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    // A default file in the working directory is found without --config.
    std::fs::create_dir(cwd.0.join("config")).unwrap();
    std::fs::write(
        cwd.0.join("config/switchyard.toml"),
        "[cluster]\nnodes = [\"a:1\"]\n",
    )
    .unwrap();
    let out = switchyard(&["check-config"], &[])
        .current_dir(&cwd.0)
        .output()
        .unwrap();
    assert_success("default file", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("config/switchyard.toml"));
}

/// The proxy as a child process; killed (and reaped) on drop.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over HTTP/1.0: the status code, 0 when nothing answers.
async fn http_status(port: u16, path: &str) -> u16 {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return 0;
    };
    let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

async fn healthcheck(url: &str) -> Output {
    tokio::process::Command::new(BIN)
        .args(["healthcheck", "--url", url])
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_from_environment_alone_and_answers_healthcheck() {
    if Path::new("/etc/switchyard/switchyard.toml").exists() {
        eprintln!("skipped: /etc/switchyard/switchyard.toml exists on this machine");
        return;
    }
    let cluster = common::cluster();
    let cwd = TempDir::new("envonly");
    let pg_port = free_port();
    let http_port = loop {
        let p = free_port();
        if p != pg_port {
            break p;
        }
    };
    let nodes: Vec<String> = cluster.nodes().iter().map(|n| n.addr()).collect();
    // A client password with the characters a `name:password` list would trip
    // on; the proxy logs into PostgreSQL with the real one.
    let client_password = "pa:ss,w\"o'rd";
    let users = serde_json::json!([{
        "name": APP_USER,
        "password": client_password,
        "server_password": APP_PASSWORD,
    }]);
    let env: Vec<(String, String)> = [
        ("SWITCHYARD__CLUSTER__NODES", nodes.join(",")),
        ("SWITCHYARD__CLUSTER__USER", CLUSTER_USER.to_string()),
        (
            "SWITCHYARD__CLUSTER__PASSWORD",
            CLUSTER_PASSWORD.to_string(),
        ),
        ("SWITCHYARD__USERS", users.to_string()),
        ("SWITCHYARD__PROXY__LISTEN", format!("127.0.0.1:{pg_port}")),
        ("SWITCHYARD__PROXY__DEFAULT_POOL_SIZE", "4".to_string()),
        // The default on a 2-core machine is one worker (a current-thread
        // runtime, which the other tests of the binary run); this one runs
        // the multi-thread runtime.
        ("SWITCHYARD__PROXY__WORKERS", "2".to_string()),
        ("SWITCHYARD__HTTP__LISTEN", format!("127.0.0.1:{http_port}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let log = cwd.0.join("switchyard.log");
    let mut proxy = Running {
        child: switchyard(&["run"], &env)
            .current_dir(&cwd.0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        log,
    };

    // Serving: /healthz answers once both listeners are bound.
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_status(http_port, "/healthz").await != 200 {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            panic!("switchyard exited ({status}):\n{}", proxy.log());
        }
        assert!(Instant::now() < deadline, "no /healthz:\n{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        proxy.log().contains("environment"),
        "the log says where the configuration came from:\n{}",
        proxy.log()
    );

    // A query through it, as the user from SWITCHYARD__USERS.
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(pg_port)
        .user(APP_USER)
        .password(client_password)
        .dbname(APP_DB)
        .connect_timeout(Duration::from_secs(10))
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect through switchyard: {e}\n{}", proxy.log()));
    tokio::spawn(conn);
    let row = client.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);

    // `switchyard healthcheck`: 0 on 2xx, 1 on anything else.
    let base = format!("http://127.0.0.1:{http_port}");
    let out = healthcheck(&format!("{base}/healthz")).await;
    assert_success("healthcheck /healthz", &out);
    // A query ran, so a primary is routable.
    assert_success(
        "healthcheck /readyz",
        &healthcheck(&format!("{base}/readyz")).await,
    );
    let out = healthcheck(&format!("{base}/no-such-endpoint")).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    let closed = format!("http://127.0.0.1:{}/healthz", free_port());
    let out = healthcheck(&closed).await;
    assert_eq!(out.status.code(), Some(1), "closed port");
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());

    drop(client);
    drop(proxy);
}
