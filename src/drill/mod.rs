//! `switchyard drill`: a failover rehearsal against a running proxy. It
//! runs a light write load of its own through the proxy, moves the primary
//! through the admin console (`SWITCHOVER TO`, or a crash command the
//! operator supplies), and reports what the load saw: the longest write
//! pause, client errors, commits acknowledged and then lost, and the
//! timeline the proxy recorded meanwhile.
//!
//! I/O stays at the edges: `console.rs` (the admin console), `load.rs` (the
//! writers and their ledger), `shell.rs` (the operator's commands); the
//! decisions are pure: `plan.rs` (which nodes to move between, when a
//! rebuilt node is back), `report.rs` (the numbers, from the ledger,
//! timings and events), `verdict.rs` (thresholds and the exit status).
//!
//! A switchover leaves the old primary read-only and fenced until it is
//! rebuilt as a replica and re-admitted, so the drill cannot simply switch
//! back: with `--rebuild-command` it runs the operator's rebuild for each
//! node it fenced and `READMIT`s it, and only then may `--and-back` move
//! the primary home.

mod console;
mod load;
mod plan;
mod report;
mod shell;
mod verdict;

use std::time::{Duration, Instant, SystemTime};

use tokio_postgres::Client;

use console::{connect, load_config, Console, Node};
use load::Load;
use plan::Rebuilt;
use report::{CrashTiming, Exercise, MoveTiming, RebuildTiming};

pub use report::Report;
pub use verdict::Thresholds;

/// How often the admin console is asked while the drill waits for
/// something (writes resuming, a rebuilt node rejoining).
const POLL: Duration = Duration::from_millis(100);

/// Longest wait for the final read-back and the table's removal.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// What to rehearse and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// libpq-style URL through the proxy for the write load.
    pub url: String,
    /// URL of the proxy's admin console.
    pub admin_url: String,
    /// Concurrent writers, each on a connection of its own.
    pub writers: u32,
    /// Load before the first move, and after each move.
    pub settle: Duration,
    /// Switchover or crash.
    pub mode: Mode,
    /// Longest wait for writes to resume after a crash, for an operator's
    /// command, and for a rebuilt node to rejoin.
    pub timeout: Duration,
    /// When the drill fails.
    pub thresholds: Thresholds,
}

/// How the primary is moved.
#[derive(Debug, Clone)]
pub enum Mode {
    /// `SWITCHOVER TO` a healthy replica.
    Switchover {
        /// Run (via `sh -c`) for each node the drill fenced, which it then
        /// re-admits; `None` leaves the old primary fenced.
        rebuild: Option<String>,
        /// Once the old primary is rebuilt, switch back to it (without a
        /// rebuild command there is nothing to switch back to).
        and_back: bool,
    },
    /// Crash the primary with an operator's command (via `sh -c`) and wait
    /// for the failover. For disposable clusters.
    Crash {
        /// The command, e.g. `pg_ctl -D ... stop -m immediate`.
        command: String,
    },
}

/// Why the drill could not run (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// A URL did not parse.
    #[error("{what}: invalid URL: {error}")]
    Url {
        /// `--url` or `--admin-url`.
        what: &'static str,
        /// The parser's complaint (its causes included, so not a source).
        error: tokio_postgres::Error,
    },
    /// A connection could not be opened.
    #[error("cannot connect to {what}: {error}")]
    Connect {
        /// The admin console or the proxy.
        what: &'static str,
        /// What tokio-postgres said.
        error: tokio_postgres::Error,
    },
    /// The admin console refused or failed a command.
    #[error("admin console: {0}")]
    Console(String),
    /// No single healthy primary.
    #[error("no primary to move: {0}")]
    NoPrimary(String),
    /// No healthy unfenced replica to switch over or fail over to.
    #[error("no healthy unfenced replica to take over (SHOW NODES: {0})")]
    NoReplica(String),
    /// The drill's table could not be created.
    #[error("cannot create the drill table {table}: {error}")]
    Table {
        /// Its name.
        table: String,
        /// Why.
        error: tokio_postgres::Error,
    },
}

/// Why the exercise ended before its last step. The drill still reports
/// what it measured.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stop {
    /// The proxy refused or failed a switchover: a finding (exit 1).
    MoveFailed(String),
    /// After the crash, writes did not resume in time: a finding (exit 1).
    NotResumed(Duration),
    /// The drill's own tooling failed (an operator's command, the admin
    /// connection): the rehearsal is incomplete (exit 2).
    Tooling(String),
}

impl Stop {
    fn reason(&self) -> String {
        match self {
            Stop::MoveFailed(why) | Stop::Tooling(why) => why.clone(),
            Stop::NotResumed(limit) => format!("writes did not resume within {limit:?}"),
        }
    }
}

/// Runs the drill and reports. `Err` only when it could not start; once the
/// load runs, a failure ends the exercise and is part of the report.
pub async fn run(opts: &Options) -> Result<Report, DrillError> {
    let load_cfg = load_config(&opts.url, "--url")?;
    let console = Console::open(&opts.admin_url).await?;
    let (primary, target) = plan::choose(&console.nodes().await?)?;
    let baseline = console.last_seq().await?;
    let (setup, table) = create_table(&load_cfg).await?;
    let load = match Load::start(&load_cfg, &table, opts.writers).await {
        Ok(load) => load,
        Err(e) => {
            drop_table(Some(setup), &load_cfg, &table).await;
            return Err(e);
        }
    };
    tracing::info!(%table, writers = opts.writers, "drill: the write load runs");
    let epoch = Instant::now();
    tokio::time::sleep(opts.settle).await;
    let mut drill = Drill {
        opts,
        console,
        load: &load,
        epoch,
        exercise: Exercise::default(),
    };
    let stopped = drill.exercise(&primary, &target).await;
    let Drill {
        console,
        mut exercise,
        ..
    } = drill;
    exercise.stop = stopped.err();
    exercise.end = epoch.elapsed();
    let ledger = load.finish().await;
    let (lost, setup) = read_back(setup, &load_cfg, &table, &ledger).await;
    drop_table(setup, &load_cfg, &table).await;
    let input = report::Input {
        mode: &opts.mode,
        table,
        writers: opts.writers,
        ledger: ledger.offsets(epoch),
        lost,
        exercise,
        events: console.events_after(baseline).await.unwrap_or_default(),
        after: &console.nodes().await.unwrap_or_default(),
    };
    Ok(Report::build(input, &opts.thresholds))
}

/// The drill's table, with a name of its own, created through the proxy;
/// and the connection that created it (it reads it back and drops it).
async fn create_table(cfg: &tokio_postgres::Config) -> Result<(Client, String), DrillError> {
    let table = format!("switchyard_drill_{:016x}", rand::random::<u64>());
    let setup = connect(cfg, "the proxy (--url)").await?;
    let create = format!("CREATE TABLE {table} (id bigint PRIMARY KEY, writer int NOT NULL)");
    match setup.simple_query(&create).await {
        Ok(_) => Ok((setup, table)),
        Err(error) => Err(DrillError::Table { table, error }),
    }
}

/// The drill once its load runs: moves the primary, recording what it did.
struct Drill<'a> {
    opts: &'a Options,
    console: Console,
    load: &'a Load,
    /// When the load started; every offset in the report counts from here.
    epoch: Instant,
    exercise: Exercise,
}

impl Drill<'_> {
    /// Moves the primary as `--crash-test` or the switchover flags say.
    async fn exercise(&mut self, primary: &Node, target: &Node) -> Result<(), Stop> {
        match &self.opts.mode {
            Mode::Switchover { rebuild, and_back } => {
                let rebuild = rebuild.as_deref();
                self.switchovers(primary, target, rebuild, *and_back).await
            }
            Mode::Crash { command } => self.crash(command, primary).await,
        }
    }

    /// Switch over to `target`; with a rebuild command, rebuild and
    /// re-admit the old primary; with `and_back`, switch back and rebuild
    /// the node that leaves.
    async fn switchovers(
        &mut self,
        primary: &Node,
        target: &Node,
        rebuild: Option<&str>,
        and_back: bool,
    ) -> Result<(), Stop> {
        self.exercise.start = self.epoch.elapsed();
        self.switch(primary, target).await?;
        tokio::time::sleep(self.opts.settle).await;
        let Some(command) = rebuild else {
            return Ok(());
        };
        self.rebuild(command, primary, target).await?;
        if !and_back {
            return Ok(());
        }
        self.switch(target, primary).await?;
        tokio::time::sleep(self.opts.settle).await;
        self.rebuild(command, target, primary).await
    }

    /// `SWITCHOVER TO <to>`, timed as the admin command took it.
    async fn switch(&mut self, from: &Node, to: &Node) -> Result<(), Stop> {
        tracing::info!(from = %from.name(), to = %to.name(), "drill: SWITCHOVER");
        let t = Instant::now();
        let outcome = self.console.switchover(to.name()).await;
        self.exercise.moves.push(MoveTiming {
            from: from.name().to_string(),
            to: to.name().to_string(),
            command: t.elapsed(),
            error: outcome.as_ref().err().map(Stop::reason),
        });
        outcome
    }

    /// Runs the rebuild command for `node`, fenced since it left, with
    /// `primary` serving; re-admits it and waits until it is a healthy
    /// replica again.
    async fn rebuild(&mut self, command: &str, node: &Node, primary: &Node) -> Result<(), Stop> {
        tracing::info!(node = %node.name(), "drill: running the rebuild command");
        let t = Instant::now();
        let env = [
            ("SWITCHYARD_DRILL_NODE", node.name()),
            ("SWITCHYARD_DRILL_NODE_ADDR", node.addr()),
            ("SWITCHYARD_DRILL_PRIMARY", primary.name()),
            ("SWITCHYARD_DRILL_PRIMARY_ADDR", primary.addr()),
        ];
        shell::run(command, &env, self.opts.timeout)
            .await
            .map_err(|e| Stop::Tooling(format!("the rebuild command for {}: {e}", node.name())))?;
        let took = t.elapsed();
        self.await_rejoined(node, t + self.opts.timeout).await?;
        self.exercise.rebuilds.push(RebuildTiming {
            node: node.name().to_string(),
            command: took,
            rejoined: t.elapsed(),
        });
        Ok(())
    }

    /// Re-admits `node` once the proxy sees it as a replica (unless the
    /// rebuild command did), then waits until it is a healthy one. A node
    /// fenced again after that one `READMIT` stays fenced.
    async fn await_rejoined(&self, node: &Node, deadline: Instant) -> Result<(), Stop> {
        let mut readmitted = false;
        loop {
            let nodes = self.console.nodes().await.map_err(tooling)?;
            match plan::after_rebuild(&nodes, node.name()) {
                Rebuilt::Rejoined => return Ok(()),
                Rebuilt::Readmit if !readmitted => {
                    self.console.readmit(node.name()).await.map_err(tooling)?;
                    readmitted = true;
                }
                Rebuilt::Readmit | Rebuilt::Waiting => {}
            }
            if Instant::now() >= deadline {
                let why = format!(
                    "{} was not a healthy replica within {:?} of its rebuild",
                    node.name(),
                    self.opts.timeout
                );
                return Err(Stop::Tooling(why));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Crashes `primary` with the operator's command and waits until writes
    /// are acknowledged again with another node as the primary.
    async fn crash(&mut self, command: &str, primary: &Node) -> Result<(), Stop> {
        let before = self.console.last_seq().await.map_err(tooling)?;
        tracing::info!(node = %primary.name(), "drill: running the crash command");
        self.exercise.start = self.epoch.elapsed();
        let t = Instant::now();
        self.exercise.crash = Some(CrashTiming {
            node: primary.name().to_string(),
            at_unix_ms: unix_ms(SystemTime::now()),
        });
        let env = [
            ("SWITCHYARD_DRILL_NODE", primary.name()),
            ("SWITCHYARD_DRILL_NODE_ADDR", primary.addr()),
        ];
        shell::run(command, &env, self.opts.timeout)
            .await
            .map_err(|e| Stop::Tooling(format!("the crash command: {e}")))?;
        self.await_writes(primary, before, t + self.opts.timeout)
            .await?;
        tokio::time::sleep(self.opts.settle).await;
        Ok(())
    }

    /// Waits for `writes_resumed` after event `before`, another node
    /// serving, and then one more write of the load acknowledged.
    async fn await_writes(
        &mut self,
        old: &Node,
        before: u64,
        deadline: Instant,
    ) -> Result<(), Stop> {
        let mut acked_at_resume = None;
        loop {
            if acked_at_resume.is_none() {
                let events = self.console.events_after(before).await.map_err(tooling)?;
                let nodes = self.console.nodes().await.map_err(tooling)?;
                if plan::resumed_elsewhere(&events, &nodes, old.name()) {
                    acked_at_resume = Some(self.load.acked());
                }
            }
            if acked_at_resume.is_some_and(|n| self.load.acked() > n) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Stop::NotResumed(self.opts.timeout));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

fn tooling(e: DrillError) -> Stop {
    Stop::Tooling(e.to_string())
}

/// Milliseconds since the Unix epoch.
fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The acknowledged ids missing from the table, read back through the
/// proxy (on a fresh connection if the setup one broke); `None` when it
/// could not be read. Returns the connection for the cleanup.
async fn read_back(
    setup: Client,
    cfg: &tokio_postgres::Config,
    table: &str,
    ledger: &load::Ledger,
) -> (Option<u64>, Option<Client>) {
    let client = if setup.is_closed() {
        match connect(cfg, "the proxy (--url)").await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("drill: cannot read the table back: {e}");
                return (None, None);
            }
        }
    } else {
        setup
    };
    let sql = format!("SELECT id FROM {table}");
    let rows = tokio::time::timeout(CLEANUP_TIMEOUT, client.simple_query(&sql)).await;
    let ids = match rows {
        Ok(Ok(rows)) => console::column_i64(&rows, "id"),
        Ok(Err(e)) => {
            tracing::warn!("drill: cannot read the table back: {e}");
            return (None, Some(client));
        }
        Err(_) => {
            tracing::warn!("drill: reading the table back timed out");
            return (None, Some(client));
        }
    };
    (Some(ledger.missing(&ids)), Some(client))
}

/// Drops the drill's table; a failure is only a warning (the name is in
/// the report).
async fn drop_table(client: Option<Client>, cfg: &tokio_postgres::Config, table: &str) {
    let client = match client.filter(|c| !c.is_closed()) {
        Some(c) => c,
        None => match connect(cfg, "the proxy (--url)").await {
            Ok(c) => c,
            Err(e) => return tracing::warn!("drill: table {table} not dropped: {e}"),
        },
    };
    let sql = format!("DROP TABLE IF EXISTS {table}");
    match tokio::time::timeout(CLEANUP_TIMEOUT, client.simple_query(&sql)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("drill: table {table} not dropped: {e}"),
        Err(_) => tracing::warn!("drill: table {table} not dropped: timed out"),
    }
}
