//! A throw-away Patroni cluster for tests/patroni.rs: Debian's `patroni`
//! (3.0.x, installed by `.ci/run`) managing two PostgreSQL members on free
//! loopback ports, on an etcd of its own ([`Etcd`]), with its data in a
//! temporary directory, run as the `postgres` OS user when we are root
//! (PostgreSQL refuses root). Timings are Patroni's defaults made short:
//! `ttl` 10 s, `loop_wait` 1 s, `retry_timeout` 5 s; [`PatroniCluster::start_with`]
//! takes others ([`PatroniOptions::DEFAULTS`]: Patroni's own).
//!
//! Drop kills everything it started: each Patroni's process group (Patroni
//! and what it runs: initdb, pg_basebackup), then the postmasters, which
//! Patroni starts in sessions of their own, found by their data directory.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::etcd::Etcd;
use super::{free_port, unique};

/// Two Patroni members and their etcd.
pub struct PatroniCluster {
    /// Patroni's `scope`.
    pub scope: String,
    pub members: Vec<PatroniMember>,
    dir: PathBuf,
    bindir: PathBuf,
    run_as: Option<(u32, u32)>,
    options: PatroniOptions,
    // Last: stopped after the members, whose keys it holds.
    etcd: Etcd,
}

/// One member: Patroni and the PostgreSQL it manages.
pub struct PatroniMember {
    /// Patroni's `name`.
    pub name: String,
    /// PostgreSQL's port on 127.0.0.1.
    pub port: u16,
    /// Patroni's REST API port on 127.0.0.1.
    pub api: u16,
    config: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// What a cluster's Patroni is told beyond the harness's fixed settings.
#[derive(Clone, Copy, Debug)]
pub struct PatroniOptions {
    /// `bootstrap.dcs.ttl`, seconds.
    pub ttl: u32,
    /// `bootstrap.dcs.loop_wait`, seconds.
    pub loop_wait: u32,
    /// `bootstrap.dcs.retry_timeout`, seconds.
    pub retry_timeout: u32,
    /// `bootstrap.dcs.postgresql.use_pg_rewind`: a crashed leader that
    /// comes back behind the new timeline is rewound rather than left out.
    pub use_pg_rewind: bool,
}

impl PatroniOptions {
    /// The tests' timings (what [`PatroniCluster::start`] uses).
    pub const SHORT: PatroniOptions = PatroniOptions {
        ttl: 10,
        loop_wait: 1,
        retry_timeout: 5,
        use_pg_rewind: false,
    };
    /// Patroni's own defaults: `ttl` 30 s, `loop_wait` 10 s,
    /// `retry_timeout` 10 s, no pg_rewind.
    pub const DEFAULTS: PatroniOptions = PatroniOptions {
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
        use_pg_rewind: false,
    };
}

impl PatroniCluster {
    /// Starts etcd and two members, `pg0` first so that it leads, and
    /// waits until `pg1` streams from it (at most 60 s).
    pub fn start() -> PatroniCluster {
        PatroniCluster::start_with(PatroniOptions::SHORT)
    }

    /// [`PatroniCluster::start`] with other timings; each wait is at most
    /// 60 s or three `ttl`s, whichever is longer.
    pub fn start_with(options: PatroniOptions) -> PatroniCluster {
        PatroniCluster::launch_all(options, [free_port(), free_port()])
    }

    /// Starts with pg0's and pg1's PostgreSQL on `ports`, or on others if
    /// those are taken: a harness check.
    pub fn start_preferring(ports: [u16; 2]) -> PatroniCluster {
        PatroniCluster::launch_all(PatroniOptions::SHORT, ports)
    }

    /// Starts the members, each with its PostgreSQL on its port of `ports`
    /// (or, taken, on another).
    fn launch_all(options: PatroniOptions, ports: [u16; 2]) -> PatroniCluster {
        assert!(
            Path::new("/usr/bin/patroni").exists(),
            "patroni is installed (apt-get install patroni python3-etcd; .ci/run does it)"
        );
        let dir = std::env::temp_dir().join(format!("sy-patroni-{}", unique("d")));
        std::fs::create_dir_all(&dir).expect("patroni dir");
        let run_as = postgres_user();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown patroni dir");
        }
        let mut cluster = PatroniCluster {
            scope: unique("sy"),
            members: vec![],
            bindir: switchyard::local_cluster::find_pg_bindir().expect("PostgreSQL binaries"),
            run_as,
            options,
            etcd: Etcd::start(),
            dir,
        };
        cluster.run_on_free_ports("pg0", ports[0], "pg0 to lead", |c| {
            c.leader().as_deref() == Some("pg0")
        });
        let streams = "pg1 to stream from pg0, and Patroni to say so";
        cluster.run_on_free_ports("pg1", ports[1], streams, |c| {
            c.streams("pg1", "pg0") && c.running() == ["pg0", "pg1"]
        });
        cluster
    }

    /// The etcd client URL Patroni uses.
    pub fn endpoint(&self) -> String {
        self.etcd.endpoint()
    }

    /// The member called `name`.
    pub fn member(&self, name: &str) -> &PatroniMember {
        self.members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    /// `[cluster] nodes` for a proxy in front of the members.
    pub fn nodes_toml(&self) -> String {
        let nodes: Vec<String> = self
            .members
            .iter()
            .map(|m| {
                format!(
                    "{{ name = \"{}\", addr = \"127.0.0.1:{}\" }}",
                    m.name, m.port
                )
            })
            .collect();
        nodes.join(", ")
    }

    /// The leader as `patronictl list` shows it (None while there is none,
    /// or when patronictl fails).
    pub fn leader(&self) -> Option<String> {
        let members = self.list();
        let leader = members.iter().find(|m| m["Role"] == "Leader")?;
        leader["Member"].as_str().map(str::to_string)
    }

    /// The members `patronictl list` shows running, by name.
    pub fn running(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .list()
            .iter()
            .filter(|m| m["State"] == "running")
            .filter_map(|m| m["Member"].as_str().map(str::to_string))
            .collect();
        names.sort();
        names
    }

    fn list(&self) -> Vec<serde_json::Value> {
        let out = self.patronictl(&["list", "--format", "json"]);
        out.ok()
            .and_then(|o| serde_json::from_str(&o).ok())
            .unwrap_or_default()
    }

    /// `patronictl switchover --leader from --candidate to --force`, which
    /// returns once Patroni has moved the leader key.
    pub fn switchover(&self, from: &str, to: &str) -> String {
        let args = ["switchover", "--leader", from, "--candidate", to, "--force"];
        self.patronictl(&args)
            .unwrap_or_else(|e| panic!("patronictl switchover: {e}"))
    }

    /// Whether `replica` streams from `leader` (by its application name,
    /// which Patroni sets to the member's: `pg_basebackup`'s own stream
    /// does not count).
    pub fn streams(&self, replica: &str, leader: &str) -> bool {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_replication \
             WHERE state = 'streaming' AND application_name = '{replica}'"
        );
        let port = self.member(leader).port.to_string();
        let out = Command::new(self.bindir.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
            .args(["-d", "postgres", "-AtXc", &sql])
            .env("PGCONNECT_TIMEOUT", "2")
            .stderr(Stdio::null())
            .output();
        out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "1")
    }

    /// Polls `done` every 200 ms for at most 60 s (or three `ttl`s, when
    /// longer); on timeout, fails with the members' logs.
    pub fn wait_for(&self, what: &str, done: impl Fn(&PatroniCluster) -> bool) {
        let (budget, deadline) = self.deadline();
        while !done(self) {
            if Instant::now() > deadline {
                panic!("waiting for {what}: not within {budget} s\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// How long a wait lasts at most, in seconds, and when it ends if it
    /// starts now.
    fn deadline(&self) -> (u64, Instant) {
        let budget = 60.max(3 * u64::from(self.options.ttl));
        (budget, Instant::now() + Duration::from_secs(budget))
    }

    fn patronictl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("/usr/bin/patronictl")
            .arg("-c")
            .arg(&self.members[0].config)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match out.status.success() {
            true => Ok(text),
            false => Err(format!(
                "{}: {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }

    /// Crashes member `name`: SIGKILL to its Patroni (with whatever runs
    /// in Patroni's process group) and to its postmaster, whose backends
    /// then exit on their own. [`PatroniCluster::relaunch`] starts its
    /// Patroni again.
    pub fn kill(&mut self, name: &str) {
        let m = self
            .members
            .iter_mut()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"));
        if let Some(mut child) = m.child.take() {
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
        for pid in processes_using(std::slice::from_ref(&m.data_dir)) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    /// Starts member `name`'s Patroni again (after [`PatroniCluster::kill`]);
    /// its log goes on in the same file.
    pub fn relaunch(&mut self, name: &str) {
        let i = self
            .members
            .iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"));
        assert!(self.members[i].child.is_none(), "{name}'s Patroni runs");
        self.launch(i);
    }

    /// The tail of every member's log.
    fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            out.push_str(&format!("--- {}:\n{tail}\n", m.name));
        }
        out
    }
}

impl PatroniCluster {
    /// Starts member `name` with its PostgreSQL on `port` and waits for
    /// `what` (`up`); on fresh ports whenever one of its own was taken
    /// before it could bind it: [`free_port`] only finds a port free, it
    /// cannot hold it, and tests running beside this one bind ports too.
    fn run_on_free_ports(
        &mut self,
        name: &str,
        mut port: u16,
        what: &str,
        up: impl Fn(&PatroniCluster) -> bool,
    ) {
        for _ in 0..START_TRIES {
            let member = self.member_config(name, port, free_port());
            self.members.push(member);
            self.launch(self.members.len() - 1);
            match self.ready(&up) {
                Ok(()) => return,
                Err(log) if port_taken(&log) => {
                    self.kill(name);
                    let m = self.members.pop().expect("the member just started");
                    let _ = std::fs::remove_dir_all(&m.data_dir);
                    let _ = std::fs::remove_file(&m.log);
                    // A bootstrap cut short may leave its initialize key in
                    // etcd, where the next would wait for it: a new cluster.
                    if self.members.is_empty() {
                        self.scope = unique("sy");
                    }
                    port = free_port();
                }
                Err(log) => panic!("waiting for {what}: {log}"),
            }
        }
        panic!("Patroni's {name} found its ports taken {START_TRIES} times");
    }

    /// Waits until `up`, which the last member started brings. Err: its
    /// log, once its Patroni has exited or the log says a port was taken
    /// (a replica's Patroni runs on and starts PostgreSQL again and again);
    /// the members' logs when the time is up.
    fn ready(&mut self, up: &impl Fn(&PatroniCluster) -> bool) -> Result<(), String> {
        let i = self.members.len() - 1;
        let (budget, deadline) = self.deadline();
        while !up(self) {
            let log = std::fs::read_to_string(&self.members[i].log).unwrap_or_default();
            let child = self.members[i].child.as_mut();
            let exited = child.map(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited.unwrap_or(true) {
                return Err(format!("(Patroni exited)\n{log}"));
            }
            if port_taken(&log) {
                return Err(format!("(a port was taken)\n{log}"));
            }
            if Instant::now() > deadline {
                return Err(format!("not within {budget} s\n{}", self.logs()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Writes `name`'s configuration, with PostgreSQL on `port` and the
    /// REST API on `api`; nothing runs yet.
    fn member_config(&self, name: &str, port: u16, api: u16) -> PatroniMember {
        let data_dir = self.dir.join(name);
        let config = self.dir.join(format!("{name}.yml"));
        let yaml = patroni_yaml(&PatroniYaml {
            scope: &self.scope,
            name,
            etcd: &self.etcd.endpoint(),
            port,
            api,
            data_dir: &data_dir,
            dir: &self.dir,
            bindir: &self.bindir,
            options: self.options,
        });
        std::fs::write(&config, yaml).expect("write patroni.yml");
        PatroniMember {
            name: name.to_string(),
            port,
            api,
            log: self.dir.join(format!("{name}.log")),
            config,
            data_dir,
            child: None,
        }
    }

    /// Starts member `i`'s Patroni in a process group of its own.
    fn launch(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.members[i].log)
            .expect("patroni log");
        let mut cmd = Command::new("/usr/bin/patroni");
        cmd.arg(&self.members[i].config)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &self.dir)
            .env("LANG", "C.UTF-8")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("patroni log"))
            .stderr(log)
            .process_group(0);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        self.members[i].child = Some(cmd.spawn().expect("start patroni"));
    }
}

/// Starts on fresh ports before a test gives up on a member.
const START_TRIES: usize = 5;

/// Whether a member's log says a port could not be bound: PostgreSQL's
/// "could not bind IPv4 address ...: Address already in use", or Patroni's
/// own for its REST API (`OSError: [Errno 98] Address already in use`).
fn port_taken(log: &str) -> bool {
    log.contains("Address already in use")
}

/// What a member's `patroni.yml` differs in.
struct PatroniYaml<'a> {
    scope: &'a str,
    name: &'a str,
    etcd: &'a str,
    port: u16,
    api: u16,
    data_dir: &'a Path,
    dir: &'a Path,
    bindir: &'a Path,
    options: PatroniOptions,
}

/// Patroni's configuration: trust on loopback, no fsync, replication slots.
fn patroni_yaml(c: &PatroniYaml) -> String {
    let etcd = c.etcd.trim_start_matches("http://");
    format!(
        "scope: {scope}
namespace: /service
name: {name}
restapi:
  listen: 127.0.0.1:{api}
  connect_address: 127.0.0.1:{api}
etcd3:
  hosts: {etcd}
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry_timeout}
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: {rewind}
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
        # pg_rewind (use_pg_rewind) needs it: initdb enables no checksums.
        wal_log_hints: 'on'
  initdb:
  - encoding: UTF8
  - auth: trust
  pg_hba:
  - local all all trust
  - host replication replicator 127.0.0.1/32 trust
  - host all all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:{port}
  connect_address: 127.0.0.1:{port}
  data_dir: {data}
  bin_dir: {bindir}
  pgpass: {dir}/pgpass-{name}
  authentication:
    replication:
      username: replicator
      password: rep
    superuser:
      username: postgres
      password: postgres
  parameters:
    unix_socket_directories: {dir}
    fsync: 'off'
",
        scope = c.scope,
        name = c.name,
        api = c.api,
        port = c.port,
        data = c.data_dir.display(),
        bindir = c.bindir.display(),
        dir = c.dir.display(),
        ttl = c.options.ttl,
        loop_wait = c.options.loop_wait,
        retry_timeout = c.options.retry_timeout,
        rewind = c.options.use_pg_rewind,
    )
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                // The whole group: Patroni and any initdb or pg_basebackup.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
            }
        }
        let dirs: Vec<PathBuf> = self.members.iter().map(|m| m.data_dir.clone()).collect();
        stop_postmasters(&dirs);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops every process started with `-D <dir>` for one of `dirs`: an
/// immediate shutdown (SIGQUIT, which takes the backends with it), then
/// SIGKILL for one still there after 5 s.
fn stop_postmasters(dirs: &[PathBuf]) {
    let running = || processes_using(dirs);
    for pid in running() {
        unsafe { libc::kill(pid, libc::SIGQUIT) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !running().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in running() {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Live processes whose command line names one of `dirs`.
fn processes_using(dirs: &[PathBuf]) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            dirs.iter().any(|d| {
                let d = d.as_os_str().as_encoded_bytes();
                args.iter().any(|a| *a == d || a.ends_with(d))
            })
        })
        .collect()
}

/// The `postgres` OS user's uid and gid when we are root (PostgreSQL
/// refuses to run as root), from `/etc/passwd`.
fn postgres_user() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"));
    let fields: Vec<&str> = line
        .expect("the postgres OS user exists (.ci/run creates it)")
        .split(':')
        .collect();
    Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
}

/// What an operator does by hand: pause and resume Patroni, change its
/// dynamic configuration, stop and start a member's PostgreSQL.
impl PatroniCluster {
    /// `patronictl pause --wait`: Patroni neither fails over nor starts a
    /// stopped PostgreSQL until [`PatroniCluster::resume`].
    pub fn pause(&self) {
        self.patronictl(&["pause", "--wait"])
            .unwrap_or_else(|e| panic!("patronictl pause: {e}"));
    }

    /// `patronictl resume --wait`.
    pub fn resume(&self) {
        self.patronictl(&["resume", "--wait"])
            .unwrap_or_else(|e| panic!("patronictl resume: {e}"));
    }

    /// `patronictl edit-config --force --set <each of set>`, e.g.
    /// `synchronous_mode=true`; Patroni applies it within a loop.
    pub fn edit_config(&self, set: &[&str]) {
        let mut args = vec!["edit-config", "--force", "--quiet"];
        for s in set {
            args.extend(["--set", s]);
        }
        self.patronictl(&args)
            .unwrap_or_else(|e| panic!("patronictl edit-config: {e}"));
    }

    /// `name`'s role as `patronictl list` shows it (`Leader`, `Replica`,
    /// `Sync Standby`); None when it is not listed.
    pub fn role(&self, name: &str) -> Option<String> {
        let members = self.list();
        let m = members.iter().find(|m| m["Member"] == name)?;
        m["Role"].as_str().map(str::to_string)
    }

    /// The processes of `name`'s PostgreSQL: its postmaster and the
    /// postmaster's children (backends, walsenders, ...).
    pub fn postgres_pids(&self, name: &str) -> Vec<i32> {
        let postmasters = processes_using(std::slice::from_ref(&self.member(name).data_dir));
        let mut pids = postmasters.clone();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // After the command name, in parentheses: the state, the parent.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
            if parent.is_some_and(|p| postmasters.contains(&p)) {
                pids.push(pid);
            }
        }
        pids
    }

    /// `pg_ctl stop -m fast` of `name`'s PostgreSQL, as the postgres OS
    /// user; returns once it is stopped.
    pub fn stop_postgres(&self, name: &str) {
        self.pg_ctl(name, &["stop", "-m", "fast"]);
    }

    /// `pg_ctl start` of `name`'s PostgreSQL with the options Patroni last
    /// started it with (its `postmaster.opts`), as the postgres OS user;
    /// returns once it accepts connections. Paused, Patroni leaves it to us.
    pub fn start_postgres(&self, name: &str) {
        let data_dir = &self.member(name).data_dir;
        let opts = std::fs::read_to_string(data_dir.join("postmaster.opts"))
            .expect("postmaster.opts: Patroni started this PostgreSQL before");
        // The postgres binary, then its quoted options (pg_ctl runs them
        // through the shell).
        let (_, options) = opts.trim().split_once(' ').expect("postmaster.opts");
        let log = self.dir.join(format!("{name}-pg_ctl.log"));
        let log = log.to_str().expect("utf-8 path");
        self.pg_ctl(name, &["start", "-l", log, "-o", options]);
    }

    fn pg_ctl(&self, name: &str, args: &[&str]) {
        let mut cmd = Command::new(self.bindir.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.member(name).data_dir)
            .args(["-w", "-t", "60"])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .process_group(0);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output().expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {args:?} for {name}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
