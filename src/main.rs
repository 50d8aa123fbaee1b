//! The `switchyard` binary: parses the command line, loads the configuration
//! and runs the proxy (or `check-config`, `healthcheck`, `demo`, or `drill`).
//! All logic is in the library.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use switchyard::config::{parse_duration, Config, LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    version,
    about = "PostgreSQL proxy with pooling and transparent failover"
)]
struct Cli {
    /// Configuration file; it must exist. Without it: the first of
    /// config/switchyard.toml and /etc/switchyard/switchyard.toml that exists,
    /// else the SWITCHYARD__... environment alone (docs/configuration.md).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log format; overrides `[log] format` (default text).
    #[arg(long, global = true, value_enum)]
    log_format: Option<FormatArg>,
    /// Log level directives, e.g. `warn,switchyard=debug`; overrides RUST_LOG
    /// and `[log] level` (default info).
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// `--log-format`'s values: the library's type knows nothing of clap.
#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Text,
    Json,
}

impl From<FormatArg> for LogFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Text => LogFormat::Text,
            FormatArg::Json => LogFormat::Json,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the configuration and exit.
    CheckConfig,
    /// GET an HTTP endpoint of a running proxy; exit 0 on a 2xx answer, else 1
    /// (a container HEALTHCHECK without curl).
    Healthcheck {
        /// The endpoint to ask.
        #[arg(long, default_value = "http://127.0.0.1:9930/healthz")]
        url: String,
    },
    /// Start a throw-away primary + replica and the proxy in front of them
    /// (builds with the `local-cluster` feature, the default).
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: String,
    },
    /// Rehearse a failover against a running proxy: a write load of its own
    /// through it, a switchover (or, with --crash-test, a crash), and a
    /// report. Exit 0 within every threshold, 1 past one, 2 when the drill
    /// could not run (docs/observability.md).
    Drill(DrillArgs),
}

#[derive(Args)]
struct DrillArgs {
    /// URL through the proxy for the write load, e.g.
    /// postgres://app:pw@127.0.0.1:6432/app (no TLS).
    #[arg(long)]
    url: String,
    /// URL of the admin console, e.g.
    /// postgres://admin:pw@127.0.0.1:6432/switchyard (no TLS).
    #[arg(long)]
    admin_url: String,
    /// Writers, each on a connection of its own.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    writers: u32,
    /// Load before the first move and after each move.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    settle: Duration,
    /// Run for each node a switchover fenced (via `sh -c`, with
    /// SWITCHYARD_DRILL_NODE[_ADDR] and SWITCHYARD_DRILL_PRIMARY[_ADDR]):
    /// rebuild it as a replica of the primary; the drill then READMITs it.
    #[arg(long, value_name = "SHELL COMMAND", conflicts_with = "crash_test")]
    rebuild_command: Option<String>,
    /// Once the old primary is rebuilt, switch back to it (and rebuild the
    /// other): the cluster ends as it began.
    #[arg(long, requires = "rebuild_command")]
    and_back: bool,
    /// Crash the primary with --crash-command instead of switching over,
    /// and wait for the failover. For disposable clusters.
    #[arg(long, requires = "crash_command")]
    crash_test: bool,
    /// The crash (via `sh -c`, with SWITCHYARD_DRILL_NODE[_ADDR]), e.g.
    /// `pg_ctl -D /data stop -m immediate`.
    #[arg(long, value_name = "SHELL COMMAND", requires = "crash_test")]
    crash_command: Option<String>,
    /// Longest wait for writes after a crash, for a command, and for a
    /// rebuilt node to rejoin.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
    /// One JSON object instead of the text report.
    #[arg(long)]
    json: bool,
    /// Fail when the longest gap between acknowledged writes is longer.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    max_pause: Duration,
    /// Fail past this many client errors [default: 0; unbounded with
    /// --crash-test, where transactions in flight fail by design].
    #[arg(long)]
    max_errors: Option<u64>,
    /// Fail past this many acknowledged commits missing afterwards.
    #[arg(long, default_value_t = 0)]
    max_lost: u64,
    /// Fail when failover_started → writes_resumed takes longer
    /// (--crash-test) [default: 30s].
    #[arg(long, value_parser = parse_duration, requires = "crash_test")]
    max_promote: Option<Duration>,
}

impl DrillArgs {
    fn options(self) -> switchyard::drill::Options {
        use switchyard::drill::{Mode, Options, Thresholds};
        let mode = match self.crash_command {
            Some(command) => Mode::Crash { command },
            None => Mode::Switchover {
                rebuild: self.rebuild_command,
                and_back: self.and_back,
            },
        };
        let crash = matches!(mode, Mode::Crash { .. });
        Options {
            url: self.url,
            admin_url: self.admin_url,
            writers: self.writers,
            settle: self.settle,
            mode,
            timeout: self.timeout,
            thresholds: Thresholds {
                max_pause: self.max_pause,
                max_errors: self.max_errors.or((!crash).then_some(0)),
                max_lost: self.max_lost,
                max_promote: self.max_promote.unwrap_or(Duration::from_secs(30)),
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// Logging starts once the configuration is loaded: its `[log]` section
// decides how. Errors before that go to stderr through `main`.
fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let log = LogFlags {
        format: cli.log_format.map(LogFormat::from),
        level: cli.log_level,
    };
    let done = match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            let (config, path) = load_config(cli.config)?;
            // Also checks the flags and RUST_LOG the proxy would run with.
            log.init(&config.log)?;
            let source = path.map_or_else(|| ENV_SOURCE.to_string(), |p| p.display().to_string());
            println!("{source}: configuration is valid");
            for w in switchyard::config::warnings(&config) {
                println!("warning: {w}");
            }
            Ok(())
        }
        Command::Run => {
            let (config, path) = load_config(cli.config)?;
            log.init(&config.log)?;
            let source = path
                .as_ref()
                .map_or_else(|| ENV_SOURCE.to_string(), |p| p.display().to_string());
            tracing::info!(%source, "configuration loaded");
            for w in switchyard::config::warnings(&config) {
                tracing::warn!("{w}");
            }
            raise_fd_limit(&config);
            let workers = config.proxy.workers;
            runtime(workers)?.block_on(serve(config, path))
        }
        // Logs nothing: no logger, so a stray RUST_LOG cannot fail a probe.
        Command::Healthcheck { url } => {
            let status = switchyard::http::check::get_status(&url, Duration::from_secs(2))
                .with_context(|| url.clone())?;
            anyhow::ensure!((200..300).contains(&status), "{url}: HTTP {status}");
            println!("{url}: HTTP {status}");
            Ok(())
        }
        Command::Demo { listen } => {
            log.init(&LogConfig::default())?;
            demo(&listen)
        }
        // Exit 2 is the drill's "could not run", whatever failed.
        Command::Drill(args) => {
            return Ok(drill(args, &log).unwrap_or_else(|e| {
                eprintln!("drill could not run: {e:#}");
                ExitCode::from(2)
            }))
        }
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// `switchyard drill`: the report on stdout (text or JSON), progress on
/// stderr; the exit status is the verdict's.
fn drill(args: DrillArgs, log: &LogFlags) -> anyhow::Result<ExitCode> {
    log.init(&LogConfig::default())?;
    let json = args.json;
    let opts = args.options();
    let report = runtime(1)?.block_on(switchyard::drill::run(&opts))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(ExitCode::from(report.exit_code()))
}

/// How the configuration's source is named when there is no file.
const ENV_SOURCE: &str = "environment (SWITCHYARD__...)";

/// The configuration and the file it came from: `--config` (which must
/// exist), else the first default file that exists, else (`None`) the
/// environment alone.
fn load_config(explicit: Option<PathBuf>) -> anyhow::Result<(Config, Option<PathBuf>)> {
    match explicit.or_else(switchyard::config::default_file) {
        Some(path) => {
            let config = switchyard::config::load(&path).context(path.display().to_string())?;
            Ok((config, Some(path)))
        }
        None => Ok((switchyard::config::load_env()?, None)),
    }
}

/// Descriptors kept back from clients: listeners, health checks, logs and
/// the like, beside the server connections counted separately.
const FD_RESERVE: u64 = 100;

/// Raises the soft RLIMIT_NOFILE to the hard limit (a soft limit of 1024 is
/// common, far below `max_client_conn`), and says how many clients the
/// limit allows: each needs a descriptor, and server connections (up to
/// `default_pool_size` per user's pool) need theirs.
fn raise_fd_limit(config: &Config) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `lim`, ours.
    let raised = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read RLIMIT_NOFILE");
            return;
        }
        let wanted = libc::rlimit {
            rlim_cur: lim.rlim_max,
            ..lim
        };
        lim.rlim_cur < lim.rlim_max && libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0
    };
    if raised {
        lim.rlim_cur = lim.rlim_max;
    }
    let servers = (config.proxy.default_pool_size * config.users.len().max(1)) as u64;
    let clients = lim.rlim_cur.saturating_sub(FD_RESERVE + servers);
    tracing::info!(
        open_files = lim.rlim_cur,
        max_clients = clients,
        "RLIMIT_NOFILE {}: room for about {clients} clients beside {servers} server connections",
        if raised {
            "raised to the hard limit"
        } else {
            "unchanged"
        }
    );
    if config.proxy.max_client_conn as u64 > clients {
        tracing::warn!(
            max_client_conn = config.proxy.max_client_conn,
            open_files = lim.rlim_cur,
            "proxy.max_client_conn is above the {clients} clients RLIMIT_NOFILE allows: raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower max_client_conn"
        );
    }
}

fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    switchyard::runtime::build(workers).context("cannot start the tokio runtime")
}

async fn serve(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&config.proxy.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.proxy.listen))?;
    let http = tokio::net::TcpListener::bind(&config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {} ([http] listen)", config.http.listen))?;
    tracing::info!(listen = %config.proxy.listen, http = %config.http.listen, "switchyard is accepting connections");
    let opts = switchyard::listener::Options {
        http: Some(http),
        config_path: path,
        reload_on_sighup: true,
    };
    switchyard::listener::serve(config, listener, opts, shutdown_signal()).await?;
    Ok(())
}

/// A production build (`--no-default-features`) keeps the subcommand, so
/// that asking for it gets a reason rather than "unrecognized subcommand".
#[cfg(not(feature = "local-cluster"))]
fn demo(_listen: &str) -> anyhow::Result<()> {
    anyhow::bail!("this build has no demo: it was built without the local-cluster feature")
}

#[cfg(feature = "local-cluster")]
fn demo(listen: &str) -> anyhow::Result<()> {
    use switchyard::local_cluster::{LocalCluster, LocalClusterOptions};

    eprintln!("starting a throw-away PostgreSQL primary + replica (initdb, pg_basebackup)...");
    let cluster = LocalCluster::start(LocalClusterOptions::default())
        .context("could not start the demo cluster")?;
    let config = switchyard::demo::demo_config(&cluster, listen)?;
    let rt = runtime(config.proxy.workers)?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| {
                format!("cannot listen on {listen} (use --listen to pick another address)")
            })?;
        // The endpoints are a bonus in the demo: a busy port only costs them.
        let http = match tokio::net::TcpListener::bind(&config.http.listen).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!(
                    "HTTP endpoints disabled: cannot listen on {}: {e}",
                    config.http.listen
                );
                None
            }
        };
        println!("{}", switchyard::demo::banner(&cluster, listen));
        if http.is_some() {
            println!(
                "  Status: curl http://{0}/status   (also /readyz, /events, /metrics)\n",
                config.http.listen
            );
        }
        switchyard::run_with_http(config, listener, http, shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    drop(cluster);
    eprintln!("demo stopped; cluster removed");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let sigterm = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm => {}
    }
}

/// The logging flags; each beats RUST_LOG and the file.
struct LogFlags {
    format: Option<LogFormat>,
    level: Option<String>,
}

impl LogFlags {
    /// Installs the logger: format from `--log-format`, else `[log] format`;
    /// level from `--log-level`, else RUST_LOG, else `[log] level`
    /// (docs/configuration.md). Colours only when stderr is a terminal: in
    /// a file or a journal escape codes are noise.
    fn init(&self, config: &LogConfig) -> anyhow::Result<()> {
        let (filter, ignored) = log_filter(self.level.as_deref(), &config.level)?;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal());
        match self.format.unwrap_or(config.format) {
            LogFormat::Text => builder.init(),
            // Fields at the top level, so `jq .listen` works.
            LogFormat::Json => builder.json().flatten_event(true).init(),
        }
        if let Some(why) = ignored {
            tracing::warn!("{why}");
        }
        Ok(())
    }
}

/// The level filter, and why RUST_LOG was ignored if it was. A bad flag is
/// an error; a bad RUST_LOG, set for some other program perhaps, only a
/// warning. RUST_LOG keeps `tracing`'s own syntax, bare target names included.
fn log_filter(flag: Option<&str>, configured: &str) -> anyhow::Result<(EnvFilter, Option<String>)> {
    if let Some(level) = flag {
        let filter = switchyard::config::level_filter(level).context("--log-level")?;
        return Ok((filter, None));
    }
    let ignored = match std::env::var("RUST_LOG") {
        Ok(env) if env.trim().is_empty() => None,
        Ok(env) => match EnvFilter::builder().parse(&env) {
            Ok(filter) => return Ok((filter, None)),
            Err(e) => Some(format!("RUST_LOG={env:?} ignored: {e}")),
        },
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => Some("RUST_LOG ignored: not UTF-8".into()),
    };
    let filter = switchyard::config::level_filter(configured).context("log.level")?;
    Ok((filter, ignored))
}
