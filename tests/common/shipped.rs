//! The proxy as it ships: the `switchyard` binary as its own process with a
//! configuration file, in front of the shared cluster. Its CPU time and open
//! sockets are read from /proc, which an in-process proxy cannot give.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchyard::local_cluster::LocalCluster;

use super::{free_port, http_request, unique, USERS};

/// A running `switchyard` process; killed when dropped.
pub struct Shipped {
    child: Child,
    dir: PathBuf,
    /// Where clients connect.
    pub addr: std::net::SocketAddr,
    /// The HTTP endpoints.
    pub http: std::net::SocketAddr,
}

impl Shipped {
    /// Starts the binary with `[proxy] extra` (TOML lines) in front of
    /// `cluster`, and waits until it routes to a primary.
    pub async fn start(cluster: &LocalCluster, extra: &str) -> Shipped {
        let nodes = super::nodes_toml(cluster);
        Self::start_with(|addr, http| {
            format!(
                "[proxy]\nlisten = \"{addr}\"\n{extra}\n{USERS}\n[cluster]\nnodes = [{nodes}]\n\
                 [http]\nlisten = \"{http}\"\n"
            )
        })
        .await
    }

    /// Starts the binary with the whole configuration `toml` gives for its
    /// client and HTTP listen addresses, and waits until it routes to a
    /// primary. A binary that exits before it is ready (a port
    /// [`free_port`] found free was taken before the binary bound it) is
    /// started again on fresh ports, a few times.
    pub async fn start_with(
        toml: impl Fn(std::net::SocketAddr, std::net::SocketAddr) -> String,
    ) -> Shipped {
        for _ in 0..START_TRIES {
            if let Some(shipped) = Self::try_start(&toml).await {
                return shipped;
            }
        }
        panic!("the binary exited before it was ready, {START_TRIES} times");
    }

    /// One start on fresh ports; `None` when the binary exited first.
    async fn try_start(
        toml: &impl Fn(std::net::SocketAddr, std::net::SocketAddr) -> String,
    ) -> Option<Shipped> {
        let dir = std::env::temp_dir().join(unique("sy_shipped"));
        std::fs::create_dir_all(&dir).unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let file = dir.join("switchyard.toml");
        std::fs::write(&file, toml(addr, http)).unwrap();
        let child = Self::command(&file)
            .spawn()
            .expect("start the switchyard binary");
        let mut shipped = Shipped {
            child,
            dir,
            addr,
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(shipped.child.try_wait(), Ok(Some(_))) {
                return None;
            }
            let up = tokio::net::TcpStream::connect(http).await.is_ok();
            if up && http_request(http, "GET", "/readyz").await.0 == 200 {
                return Some(shipped);
            }
            assert!(Instant::now() < deadline, "the binary never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The binary's command line for the configuration in `file`.
    fn command(file: &std::path::Path) -> Command {
        // SWITCHYARD_BIN runs another build (the release binary, for numbers).
        let bin = std::env::var_os("SWITCHYARD_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_switchyard").into());
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(file).stdout(Stdio::null());
        cmd.stderr(match std::env::var_os("SHIPPED_LOG") {
            Some(_) => Stdio::inherit(),
            None => Stdio::null(),
        });
        for (name, _) in std::env::vars_os() {
            if name
                .to_string_lossy()
                .to_ascii_uppercase()
                .starts_with("SWITCHYARD__")
            {
                cmd.env_remove(name);
            }
        }
        // A test process killed mid-test (a timeout) must not leave the
        // proxy running: it dies with the thread that started it.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the process has used, all threads, exited ones included
    /// (utime + stime of /proc/PID/stat, in 10 ms clock ticks).
    pub fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<u64> = after
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
        Duration::from_millis(ticks * 10)
    }

    /// CPU used over the next `window`, as a fraction of one core.
    pub async fn cpu_share_over(&self, window: Duration) -> f64 {
        let before = self.cpu();
        let started = Instant::now();
        tokio::time::sleep(window).await;
        self.cpu().saturating_sub(before).as_secs_f64() / started.elapsed().as_secs_f64()
    }

    /// Sockets the process holds open: clients, server connections, health
    /// checks, listeners. A session that ended closed its client socket; a
    /// leaked server connection stays here.
    pub fn sockets(&self) -> usize {
        let fds = format!("/proc/{}/fd", self.pid());
        std::fs::read_dir(fds)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .map(|t| t.to_string_lossy().starts_with("socket:"))
                    .unwrap_or(false)
            })
            .count()
    }

    /// `/status` as JSON.
    pub async fn status(&self) -> serde_json::Value {
        let (code, body) = tokio::time::timeout(
            Duration::from_secs(10),
            http_request(self.http, "GET", "/status"),
        )
        .await
        .expect("/status answers within 10 s");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// Server connections over every pool: (open, of which idle).
    pub async fn servers(&self) -> (u64, u64) {
        let status = self.status().await;
        let mut sum = (0, 0);
        for p in status["pools"].as_array().into_iter().flatten() {
            let idle = p["idle"].as_u64().unwrap_or(0);
            sum.0 += p["held"].as_u64().unwrap_or(0) + idle;
            sum.1 += idle;
        }
        sum
    }

    /// Server connections being opened and logged in, over every pool.
    pub async fn server_logins(&self) -> u64 {
        let status = self.status().await;
        let pools = status["pools"].as_array().cloned().unwrap_or_default();
        pools
            .iter()
            .map(|p| p["opening"].as_u64().unwrap_or(0))
            .sum()
    }

    /// A connection string for `user`/`password` on `db`.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db} connect_timeout=10",
            self.addr.port()
        )
    }
}

/// Starts on fresh ports before a test gives up on the binary.
const START_TRIES: usize = 5;

impl Drop for Shipped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
