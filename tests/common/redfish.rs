//! A BMC for the Redfish tests: sushy-tools' static emulator (`sushy-static`)
//! serving a small mock tree in a temporary directory, which the test
//! rewrites (the emulator reads the files at every request), and a TLS
//! front that demands one basic-auth credential, as a BMC does (the
//! emulator checks none).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::hardware::{header, read_head, tls_acceptor};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Where `.ci/run` installs the emulator.
const DEFAULT_SUSHY: &str = "/opt/switchyard-sushy/bin/sushy-static";

/// The emulator's executable: `$SUSHY_STATIC`, else [`DEFAULT_SUSHY`].
/// Missing, the test fails and says how to install it.
fn sushy_static() -> PathBuf {
    let path = std::env::var_os("SUSHY_STATIC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SUSHY));
    assert!(
        path.is_file(),
        "sushy-static not found at {}: install sushy-tools with \
         `python3 -m venv /opt/switchyard-sushy && /opt/switchyard-sushy/bin/pip install sushy-tools` \
         (bash .ci/run does; apt-get install python3-venv first if venv is missing), \
         or set SUSHY_STATIC to its path",
        path.display()
    );
    path
}

/// A power supply as the mock tree has it: `State` and `Health` (`None`: null).
#[derive(Clone, Copy)]
pub struct Psu {
    pub state: &'static str,
    pub health: Option<&'static str>,
}

/// What the mock BMC reports; the tree on disk is written from it.
#[derive(Clone)]
struct Tree {
    psus: [Psu; 3],
    fan_health: &'static str,
    power_state: &'static str,
    /// Chassis link the newer PowerSubsystem and ThermalSubsystem instead of
    /// Power and Thermal.
    subsystems: bool,
}

impl Default for Tree {
    fn default() -> Tree {
        let on = Psu {
            state: "Enabled",
            health: Some("OK"),
        };
        let empty_bay = Psu {
            state: "Absent",
            health: None,
        };
        Tree {
            psus: [on, on, empty_bay],
            fan_health: "OK",
            power_state: "On",
            subsystems: false,
        }
    }
}

/// `sushy-static` on a free port of 127.0.0.1; killed on drop.
pub struct Sushy {
    pub addr: SocketAddr,
    dir: PathBuf,
    tree: Mutex<Tree>,
    child: Child,
}

impl Sushy {
    /// Writes the mock tree and starts the emulator; returns once it answers.
    pub async fn start() -> Sushy {
        Sushy::start_preferring(super::free_port()).await
    }

    /// Starts it on `port`, or on another if that one is taken: a harness
    /// check. On a fresh port whenever its own was taken before the
    /// emulator could bind it: [`super::free_port`] only finds a port free,
    /// it cannot hold it, and tests running beside this one bind ports too.
    pub async fn start_preferring(port: u16) -> Sushy {
        let mut port = port;
        for _ in 0..START_TRIES {
            let mut sushy = Sushy::spawn(port);
            match sushy.ready().await {
                Ok(()) => return sushy,
                // `sushy` drops here (killed, removed): again on a new port.
                Err(log) if port_taken(&log) => port = super::free_port(),
                Err(log) => panic!("sushy-static did not answer:\n{log}"),
            }
        }
        panic!("sushy-static found its port taken {START_TRIES} times");
    }

    /// Writes the mock tree and starts the emulator on `port`, without
    /// waiting.
    fn spawn(port: u16) -> Sushy {
        let exe = sushy_static();
        let dir = std::env::temp_dir().join(super::unique("sy_redfish"));
        std::fs::create_dir_all(dir.join("mockup")).unwrap();
        let log = std::fs::File::create(dir.join("sushy.log")).unwrap();
        let child = Command::new(exe)
            .args(["--interface", "127.0.0.1", "--port", &port.to_string()])
            .arg("--mockup-files")
            .arg(dir.join("mockup"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start sushy-static");
        let sushy = Sushy {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            tree: Mutex::new(Tree::default()),
            child,
        };
        sushy.write_all();
        sushy
    }

    /// The service root, over plain HTTP.
    pub fn url(&self) -> String {
        format!("http://{}/redfish/v1", self.addr)
    }

    /// A directory for the test's own files (CA certificates), removed with it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits until it answers (15 s at most). Err: its log, once the
    /// process has exited or the time is up.
    async fn ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let log = |dir: &Path| std::fs::read_to_string(dir.join("sushy.log")).unwrap_or_default();
        while Instant::now() < deadline {
            // What holds a taken port may accept and never answer; another
            // test's emulator answers too, but its request is not in our log.
            let root = get_status(self.addr, ROOT);
            let answer = tokio::time::timeout(Duration::from_secs(1), root).await;
            if answer == Ok(Some(200)) && log(&self.dir).contains("\"GET /redfish/v1 ") {
                return Ok(());
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return Err(format!("(sushy-static exited)\n{}", log(&self.dir)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("(no answer within 15 s)\n{}", log(&self.dir)))
    }

    /// Power supply `i` (0..3) reports `state` and `health` from now on.
    pub fn set_psu(&self, i: usize, state: &'static str, health: Option<&'static str>) {
        self.change(|t| t.psus[i] = Psu { state, health });
    }

    /// The fan reports `health` from now on.
    pub fn set_fan(&self, health: &'static str) {
        self.change(|t| t.fan_health = health);
    }

    /// The system's `PowerState` from now on.
    pub fn set_power_state(&self, state: &'static str) {
        self.change(|t| t.power_state = state);
    }

    /// Serve the newer PowerSubsystem/ThermalSubsystem layout, or the classic one.
    pub fn set_subsystems(&self, on: bool) {
        self.change(|t| t.subsystems = on);
    }

    /// Serves `text` as the resource at `path` (under `/redfish/v1`) until
    /// the next change.
    pub fn corrupt(&self, path: &str, text: &str) {
        self.write_text(path, text);
    }

    fn change(&self, f: impl FnOnce(&mut Tree)) {
        f(&mut self.tree.lock().unwrap());
        self.write_all();
    }

    /// Writes every resource of the tree as it is now.
    fn write_all(&self) {
        let tree = self.tree.lock().unwrap().clone();
        for (path, doc) in resources(&tree) {
            self.write_text(&path, &doc.to_string());
        }
    }

    /// Replaces `mockup/<path>/index.json` in one rename, so the emulator
    /// never serves half a file.
    fn write_text(&self, path: &str, text: &str) {
        let dir = self.dir.join("mockup").join(path);
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join("index.json.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join("index.json")).unwrap();
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const ROOT: &str = "/redfish/v1";

/// Starts on a fresh port before a test gives up on the emulator.
const START_TRIES: usize = 5;

/// Whether the emulator's log says it could not bind its port (Python's
/// `OSError: [Errno 98] Address already in use`).
fn port_taken(log: &str) -> bool {
    log.contains("Address already in use")
}

fn id(path: &str) -> Value {
    json!({ "@odata.id": format!("{ROOT}{path}") })
}

/// The mock tree: (path under the mockup directory, resource). One chassis
/// with three power supply bays, a temperature and a fan; one system.
fn resources(t: &Tree) -> Vec<(String, Value)> {
    let chassis = "/Chassis/1U";
    let mut out = vec![
        (
            String::new(),
            json!({
                "@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot", "@odata.id": ROOT,
                "Id": "RootService", "Name": "Root Service", "RedfishVersion": "1.6.0",
                "Chassis": id("/Chassis"), "Systems": id("/Systems"),
            }),
        ),
        (
            "Chassis".into(),
            collection("ChassisCollection", &[chassis]),
        ),
        (
            "Systems".into(),
            collection("ComputerSystemCollection", &["/Systems/db1"]),
        ),
        (
            "Systems/db1".into(),
            json!({
                "@odata.type": "#ComputerSystem.v1_5_0.ComputerSystem", "@odata.id": format!("{ROOT}/Systems/db1"),
                "Id": "db1", "Name": "db1", "PowerState": t.power_state,
                "Status": { "State": "Enabled", "Health": "OK", "HealthRollup": "OK" },
            }),
        ),
    ];
    let (power, thermal) = if t.subsystems {
        ("PowerSubsystem", "ThermalSubsystem")
    } else {
        ("Power", "Thermal")
    };
    out.push((
        "Chassis/1U".into(),
        json!({
            "@odata.type": "#Chassis.v1_8_0.Chassis", "@odata.id": format!("{ROOT}{chassis}"),
            "Id": "1U", "Name": "Computer System Chassis", "ChassisType": "RackMount",
            "Status": { "State": "Enabled", "Health": "OK", "HealthRollup": "OK" },
            power: id(&format!("{chassis}/{power}")), thermal: id(&format!("{chassis}/{thermal}")),
        }),
    ));
    let psus: Vec<Value> = t.psus.iter().enumerate().map(|(i, p)| json!({
        "@odata.id": format!("{ROOT}{chassis}/Power#/PowerSupplies/{i}"), "MemberId": i.to_string(),
        "Name": format!("PS{}", i + 1), "PowerSupplyType": "AC",
        "Status": { "State": p.state, "Health": p.health },
    })).collect();
    let fan = json!({ "Name": "Fan1", "Status": { "State": "Enabled", "Health": t.fan_health } });
    out.push((
        "Chassis/1U/Power".into(),
        json!({ "@odata.type": "#Power.v1_5_0.Power", "PowerSupplies": psus }),
    ));
    out.push(("Chassis/1U/Thermal".into(), json!({
        "@odata.type": "#Thermal.v1_4_0.Thermal",
        "Temperatures": [{ "Name": "CPU1 Temp", "ReadingCelsius": 41, "Status": { "State": "Enabled", "Health": "OK" } }],
        "Fans": [fan],
    })));
    // The newer layout: one resource per power supply and fan.
    let sub = |kind: &str, members: &[String]| {
        let members: Vec<&str> = members.iter().map(String::as_str).collect();
        collection(kind, &members)
    };
    let psu_paths: Vec<String> = (1..=3)
        .map(|i| format!("{chassis}/PowerSubsystem/PowerSupplies/{i}"))
        .collect();
    out.push((
        "Chassis/1U/PowerSubsystem".into(),
        json!({
            "Status": { "State": "Enabled", "Health": "OK" },
            "PowerSupplies": id(&format!("{chassis}/PowerSubsystem/PowerSupplies")),
        }),
    ));
    out.push((
        "Chassis/1U/PowerSubsystem/PowerSupplies".into(),
        sub("PowerSupplyCollection", &psu_paths),
    ));
    for (i, p) in psus.iter().enumerate() {
        out.push((
            format!("Chassis/1U/PowerSubsystem/PowerSupplies/{}", i + 1),
            p.clone(),
        ));
    }
    let fan_paths = vec![format!("{chassis}/ThermalSubsystem/Fans/1")];
    out.push((
        "Chassis/1U/ThermalSubsystem".into(),
        json!({
            "Status": { "State": "Enabled", "Health": "OK" },
            "Fans": id(&format!("{chassis}/ThermalSubsystem/Fans")),
        }),
    ));
    out.push((
        "Chassis/1U/ThermalSubsystem/Fans".into(),
        sub("FanCollection", &fan_paths),
    ));
    out.push(("Chassis/1U/ThermalSubsystem/Fans/1".into(), fan));
    out
}

fn collection(kind: &str, members: &[&str]) -> Value {
    let members: Vec<Value> = members.iter().map(|m| id(m)).collect();
    json!({
        "@odata.type": format!("#{kind}.{kind}"), "Name": kind,
        "Members@odata.count": members.len(), "Members": members,
    })
}

/// The status code of a plain GET of `path` at `addr`, if anything answers.
async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A TLS front for a BMC's HTTP port: answers 401 unless a request carries
/// `Authorization: Basic <user:password>`, else passes it on and relays the
/// answer. Keeps every `Authorization` it was sent.
pub struct Gate {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Gate {
    pub async fn start(upstream: SocketAddr, cert_pem: &str, key_pem: &str, basic: &str) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls_acceptor(cert_pem, key_pem);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (kept, wanted) = (seen.clone(), format!("Basic {basic}"));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, kept, wanted) = (acceptor.clone(), kept.clone(), wanted.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let head = read_head(&mut tls).await;
                    let auth = header(&head, "authorization").unwrap_or_default();
                    kept.lock().unwrap().push(auth.to_string());
                    let answer = if auth == wanted {
                        relay(upstream, &head).await
                    } else {
                        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"bmc\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
                    };
                    let _ = tls.write_all(&answer).await;
                    // close_notify: the end of a body framed by the close.
                    let _ = tls.shutdown().await;
                });
            }
        });
        Gate { addr, seen, task }
    }

    /// The service root through the front.
    pub fn url(&self) -> String {
        format!("https://{}/redfish/v1", self.addr)
    }

    /// Every `Authorization` value sent so far (empty for none), and forgets them.
    pub fn take_seen(&self) -> Vec<String> {
        std::mem::take(&mut self.seen.lock().unwrap())
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends a request head to `upstream` and returns all it answers.
async fn relay(upstream: SocketAddr, head: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(mut s) = TcpStream::connect(upstream).await {
        if s.write_all(head.as_bytes()).await.is_ok() {
            let _ = s.read_to_end(&mut out).await;
        }
    }
    out
}
