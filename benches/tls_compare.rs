//! pgbench over TLS: straight to PostgreSQL (`ssl = on`), through Switchyard
//! (`[proxy.tls] mode = "require"`) and through PgBouncer
//! (`client_tls_sslmode = require`), in the same run.
//!
//! Run with `cargo bench --bench tls_compare` (as root or as a user that may
//! start PostgreSQL; PgBouncer is installed with apt-get when missing, and its
//! column is skipped if that fails). Environment: `BENCH_ROUNDS` (default 3) interleaved rounds,
//! `BENCH_SECS` (default 10) seconds per pgbench run.
//!
//! Workloads (issue #6 targets): select-only (`-S`) with 64 clients, where
//! Switchyard should reach 1.2 × PgBouncer; and select-only with a new
//! connection per transaction (`-C`, 16 clients: a TLS handshake and a SCRAM
//! exchange per transaction), where Switchyard should reach PgBouncer. Every
//! client uses `sslmode=require`. Only the client leg is encrypted: both
//! poolers reach PostgreSQL without TLS (`[cluster.tls] mode = "disable"`,
//! `server_tls_sslmode = disable`), both pool 20 server connections in
//! transaction mode and authenticate clients with SCRAM-SHA-256 against a
//! stored verifier (PgBouncer's `auth_file` holds PostgreSQL's), and both
//! present the same rcgen certificate (ECDSA P-256).
//!
//! Without `--bench` on the command line (e.g. `cargo test --benches`) it does nothing.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use switchyard::local_cluster::{LocalCluster, LocalClusterOptions, APP_DB, APP_USER};

mod common;

use common::os::TempDir;
use common::pgbouncer::{self, PgBouncer};
use common::{env_number, median, pgbench, Switchyard};

/// Server connections per pool, for Switchyard and PgBouncer alike.
const POOL_SIZE: usize = 20;
/// Client connection limit, for both.
const MAX_CLIENT_CONN: usize = 1000;
/// `pgbench -i` scale factor.
const SCALE: u32 = 10;
/// Issue #6: Switchyard / PgBouncer, `-S`, 64 clients, TLS.
const TARGET_SELECT_VS_PGBOUNCER: f64 = 1.2;
/// Issue #6: Switchyard / PgBouncer, `-S -C`, TLS.
const TARGET_CONNECT_VS_PGBOUNCER: f64 = 1.0;

/// A pgbench workload.
struct Workload {
    name: &'static str,
    args: &'static [&'static str],
    clients: u32,
    /// The Switchyard / PgBouncer target.
    target: f64,
}

const WORKLOADS: [Workload; 2] = [
    Workload {
        name: "select-only (-S), 64 clients, TLS",
        args: &["-S"],
        clients: 64,
        target: TARGET_SELECT_VS_PGBOUNCER,
    },
    Workload {
        name: "select-only (-S), connect per transaction (-C), 16 clients, TLS",
        args: &["-S", "-C"],
        clients: 16,
        target: TARGET_CONNECT_VS_PGBOUNCER,
    },
];

/// Where pgbench connects; the tables' columns in this order.
const TARGETS: [&str; 3] = ["direct", "switchyard", "pgbouncer"];

fn main() {
    common::run_main("tls_compare", "tls_compare failed", bench);
}

fn bench() -> anyhow::Result<()> {
    let rounds = env_number("BENCH_ROUNDS", 3)?.max(1) as usize;
    let secs = env_number("BENCH_SECS", 10)?.max(1);
    let tmp = TempDir::create("switchyard-tls-bench")?;
    let (cert, key) = certificate();
    let cert_file = tmp.write("server.crt", &cert)?;
    let key_file = tmp.write("server.key", &key)?;

    eprintln!("starting PostgreSQL (ssl = on, fsync = on, no replica)...");
    let cluster = LocalCluster::start(LocalClusterOptions {
        fsync: true,
        replicas: 0,
        extra_conf: vec![
            "ssl = on".into(),
            "ssl_cert_file = 'server.crt'".into(),
            "ssl_key_file = 'server.key'".into(),
        ],
        data_files: vec![("server.crt".into(), cert), ("server.key".into(), key)],
        ..Default::default()
    })
    .context("starting the local cluster (is PostgreSQL installed?)")?;
    let primary = cluster.primary();
    let pgbench = cluster.bindir().join("pgbench");
    let version = primary.psql("postgres", "SHOW server_version")?;
    eprintln!("pgbench -i -s {SCALE}...");
    let init = pgbench_tls(&pgbench, primary.port())
        .args(["-i", "-s", &SCALE.to_string(), "-q", APP_DB])
        .output()
        .context("running pgbench -i")?;
    if !init.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }

    let addr = primary.addr();
    let proxy = Switchyard::start(|listen| {
        common::proxy_config(
            listen,
            POOL_SIZE,
            &format!(
                "max_client_conn = {MAX_CLIENT_CONN}\nshutdown_timeout = \"5s\"\n\n\
                 [proxy.tls]\nmode = \"require\"\ncert_file = {cert_file:?}\nkey_file = {key_file:?}\n"
            ),
            &format!("nodes = [\"{addr}\"]\n\n[cluster.tls]\nmode = \"disable\"\n"),
        )
    })?;
    eprintln!(
        "switchyard (in-process) listening on 127.0.0.1:{}",
        proxy.port
    );
    // PgBouncer gets PostgreSQL's own SCRAM verifier: no key derivation per
    // login (as Switchyard, which derives its verifier once at start), and it
    // still logs into PostgreSQL with the client's proof (SCRAM pass-through).
    let verifier = primary.psql(
        "postgres",
        &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{APP_USER}'"),
    )?;
    let tls = format!(
        "client_tls_sslmode = require\nclient_tls_cert_file = {cert_file}\n\
         client_tls_key_file = {key_file}\nserver_tls_sslmode = disable\n"
    );
    let settings = pgbouncer::Settings {
        pg_port: primary.port(),
        pool_size: POOL_SIZE,
        max_client_conn: MAX_CLIENT_CONN,
        secret: &verifier,
        extra: &tls,
        files: &[&cert_file, &key_file],
    };
    let bouncer = match pgbouncer::ensure() {
        Ok(bin) => Some(PgBouncer::start(&bin, &tmp, &settings)?),
        Err(e) => {
            eprintln!("PgBouncer unavailable, its column is skipped: {e:#}");
            None
        }
    };
    let ports = [
        Some(primary.port()),
        Some(proxy.port),
        bouncer.as_ref().map(|b| b.port),
    ];

    for (t, port) in TARGETS.iter().zip(ports) {
        let Some(port) = port else { continue };
        eprintln!("warm-up: {t}");
        if let Err(e) = run_pgbench(&pgbench, port, &["-S"], 64, secs.min(3)) {
            eprintln!("warm-up through {t} failed: {e:#}");
        }
    }
    let began = Instant::now();
    // tps[workload][target] = one value per successful round
    let mut tps = vec![vec![Vec::new(); TARGETS.len()]; WORKLOADS.len()];
    for r in 0..rounds {
        for (wi, w) in WORKLOADS.iter().enumerate() {
            let mut order: Vec<usize> = (0..TARGETS.len()).collect();
            order.rotate_left(r % TARGETS.len());
            for ti in order {
                let Some(port) = ports[ti] else { continue };
                eprint!(
                    "{} | round {}/{rounds} | {:<10} ... ",
                    w.name,
                    r + 1,
                    TARGETS[ti]
                );
                match run_pgbench(&pgbench, port, w.args, w.clients, secs) {
                    Ok(v) => {
                        eprintln!("{v:.0} tps");
                        tps[wi][ti].push(v);
                    }
                    Err(e) => eprintln!("FAILED: {e:#}"),
                }
            }
        }
    }
    let header =
        format!(
        "PostgreSQL {version} (ssl = on), scale {SCALE}; pgbench -j 2 -M simple, sslmode=require, \
         {secs}s per run, {rounds} round(s) ({:.1} min); pools: {POOL_SIZE} server connections, \
         transaction mode, server leg without TLS; Switchyard in-process ([proxy] workers = auto: \
         {} worker thread(s); {} cores shared with PostgreSQL and pgbench); {}",
        began.elapsed().as_secs_f64() / 60.0,
        switchyard::runtime::worker_count(0),
        thread::available_parallelism().map_or(0, |n| n.get()),
        bouncer.as_ref().map_or("PgBouncer not available", |b| &b.version),
    );
    println!("\n{}", report(&header, &tps));
    drop(bouncer);
    drop(proxy);
    drop(cluster);
    drop(tmp);
    Ok(())
}

/// A leaf certificate (CA:FALSE) for localhost / 127.0.0.1 signed by a throw-away CA.
fn certificate() -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("CA key");
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf =
        CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("params");
    leaf.is_ca = IsCa::ExplicitNoCa;
    let key = KeyPair::generate().expect("key");
    let cert = leaf.signed_by(&key, &issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

/// pgbench connecting to 127.0.0.1:`port` as the app user, over TLS.
fn pgbench_tls(pgbench_bin: &Path, port: u16) -> Command {
    let mut cmd = pgbench::command(pgbench_bin, port, "tls_compare");
    cmd.env("PGSSLMODE", "require");
    cmd
}

/// One timed run: its tps, or what went wrong.
fn run_pgbench(
    pgbench_bin: &Path,
    port: u16,
    extra: &[&str],
    clients: u32,
    secs: u64,
) -> anyhow::Result<f64> {
    let mut cmd = pgbench_tls(pgbench_bin, port);
    cmd.args(["-n", "-T", &secs.to_string(), "-c", &clients.to_string()])
        .args(["-j", "2", "-M", "simple"])
        .args(extra);
    pgbench::run(cmd, Duration::from_secs(secs + 60)).map_err(anyhow::Error::msg)
}

fn report(header: &str, tps: &[Vec<Vec<f64>>]) -> String {
    let mut out = format!("## pgbench over TLS\n\n{header}\n\n");
    let _ = writeln!(
        out,
        "| workload | direct | switchyard | pgbouncer | switchyard / direct | switchyard / pgbouncer | target | rounds (sy / pgb) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for (w, per_target) in WORKLOADS.iter().zip(tps) {
        let med: Vec<Option<f64>> = per_target.iter().map(|v| median(v.clone())).collect();
        let cell = |x: Option<f64>| x.map_or("–".into(), |v| format!("{v:.0}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let fmt_ratio = |r: Option<f64>| r.map_or("–".into(), |r| format!("{r:.2}"));
        let vs_bouncer = ratio(med[1], med[2]);
        let verdict = match vs_bouncer {
            Some(r) if r >= w.target => format!("≥ {:.1} met", w.target),
            Some(_) => format!("≥ {:.1} NOT met", w.target),
            None => format!("≥ {:.1} (no data)", w.target),
        };
        let per_round: Vec<String> = per_target[1]
            .iter()
            .zip(&per_target[2])
            .map(|(a, b)| format!("{:.2}", a / b))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {verdict} | {} |",
            w.name,
            cell(med[0]),
            cell(med[1]),
            cell(med[2]),
            fmt_ratio(ratio(med[1], med[0])),
            fmt_ratio(vs_bouncer),
            per_round.join(", ")
        );
    }
    out.push_str("\nTPS are medians over the rounds; ratios are of the medians.\n");
    out
}
