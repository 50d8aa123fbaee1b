//! What a failing host looks like from outside, for the hardware and
//! failover tests: a real HTTP exporter serving Prometheus text that the
//! test rewrites (an ipmi_exporter stand-in), and a node frozen with SIGSTOP
//! (a host that lost power: nothing answers, nothing is refused).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use switchyard::local_cluster::PgNode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A Prometheus-text endpoint the test rewrites.
pub struct Exporter {
    pub addr: SocketAddr,
    text: Arc<Mutex<String>>,
}

impl Exporter {
    pub async fn start(text: &str) -> Exporter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let text = Arc::new(Mutex::new(text.to_string()));
        let served = text.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let body = served.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut req = [0u8; 1024];
                    let _ = s.read(&mut req).await;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        Exporter { addr, text }
    }

    pub fn set(&self, text: &str) {
        *self.text.lock().unwrap() = text.to_string();
    }

    /// The `hardware = { ... }` body probing this exporter with the usual
    /// rules: a power supply not nominal is degraded; a hot CPU or the
    /// chassis powered off is failing.
    pub fn spec(&self) -> String {
        format!(
            "url = \"http://{}/metrics\", interval = \"200ms\", timeout = \"1s\", rules = [ \
             {{ metric = \"ipmi_sensor_state\", labels = {{ type = \"Power Supply\" }}, op = \"!=\", value = 0, status = \"degraded\" }}, \
             {{ metric = \"node_hwmon_temp_celsius\", op = \">\", value = 90, status = \"failing\" }}, \
             {{ metric = \"ipmi_chassis_power_state\", op = \"==\", value = 0, status = \"failing\" }} ]",
            self.addr
        )
    }
}

/// What the exporter says: PS1's sensor state (0 nominal, 1 warning, 2
/// critical), the CPU temperature, and the chassis powered on.
pub fn exposition(psu_state: u32, temp: u32) -> String {
    format!("{}ipmi_chassis_power_state 1\n", sensors(psu_state, temp))
}

/// What a BMC on standby power says once the host lost power.
pub fn powered_off() -> String {
    format!("{}ipmi_chassis_power_state 0\n", sensors(0, 20))
}

fn sensors(psu_state: u32, temp: u32) -> String {
    format!(
        "# HELP ipmi_sensor_state Indicates the severity of the state reported by an IPMI sensor (0=nominal, 1=warning, 2=critical).\n\
         # TYPE ipmi_sensor_state gauge\n\
         ipmi_sensor_state{{id=\"52\",name=\"PS1 Status\",type=\"Power Supply\"}} {psu_state}\n\
         ipmi_sensor_state{{id=\"53\",name=\"PS2 Status\",type=\"Power Supply\"}} 0\n\
         ipmi_sensor_state{{id=\"12\",name=\"Fan1\",type=\"Fan\"}} 0\n\
         # TYPE node_hwmon_temp_celsius gauge\n\
         node_hwmon_temp_celsius{{chip=\"platform_coretemp_0\",sensor=\"temp1\"}} {temp}\n\
         # TYPE ipmi_chassis_power_state gauge\n"
    )
}

/// A node frozen with SIGSTOP (postmaster and every child): connections hang
/// instead of being refused, like a host that lost power. Thawed on drop, so
/// teardown works even when the test fails.
pub struct Frozen {
    pids: Vec<u32>,
}

impl Frozen {
    pub fn freeze(node: &PgNode) -> Frozen {
        let pidfile = node.data_dir().join("postmaster.pid");
        let text = std::fs::read_to_string(&pidfile)
            .unwrap_or_else(|e| panic!("reading {}: {e}", pidfile.display()));
        let postmaster: u32 = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("postmaster pid");
        // The postmaster first, so it forks no new children meanwhile.
        let mut frozen = Frozen {
            pids: vec![postmaster],
        };
        signal("STOP", postmaster);
        for child in children_of(postmaster) {
            signal("STOP", child);
            frozen.pids.push(child);
        }
        frozen
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &pid in self.pids.iter().rev() {
            signal("CONT", pid);
        }
    }
}

fn signal(sig: &str, pid: u32) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Pids whose parent is `parent`, from `/proc/*/stat`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = vec![];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let ppid = after
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}
