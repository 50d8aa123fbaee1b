//! The replicas: each is a `pg_basebackup -R -X stream -c fast` of the
//! running primary (with a replication slot of its own when asked), moved to
//! its own port and socket directory, started, and waited for until it
//! streams. Replicas are set up in parallel.

use std::thread;
use std::time::{Duration, Instant};

use super::base_dir::append_file;
use super::exec::{log_tail, run};
use super::node::PgNode;
use super::primary::conf_quote;
use super::{LocalClusterError, SUPERUSER, SUPERUSER_PASSWORD};

/// How long a replica may take to reach `streaming`.
const STREAMING_TIMEOUT: Duration = Duration::from_secs(30);

/// Creates, starts and waits for every replica of `primary`, in parallel;
/// new ports (after a port clash) avoid `avoid`. With `slots`, each streams
/// through a physical replication slot named after it.
pub(super) fn start_all(
    primary: &PgNode,
    replicas: &mut [PgNode],
    avoid: &[u16],
    slots: bool,
) -> Result<(), LocalClusterError> {
    thread::scope(|s| {
        let handles: Vec<_> = replicas
            .iter_mut()
            .map(|replica| s.spawn(move || start_one(primary, replica, avoid, slots)))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join().unwrap_or_else(|_| {
                Err(LocalClusterError::Setup(
                    "replica setup thread panicked".into(),
                ))
            })
        })
    })
}

fn start_one(
    primary: &PgNode,
    replica: &mut PgNode,
    avoid: &[u16],
    slots: bool,
) -> Result<(), LocalClusterError> {
    let started = Instant::now();
    base_backup(primary, replica, slots)?;
    let t_backup = started.elapsed();
    replica.start_retrying_port(avoid)?;
    let t_start = started.elapsed();
    wait_streaming(primary, replica)?;
    tracing::debug!(
        "{} streaming after {:?} (base backup {t_backup:?}, started {t_start:?})",
        replica.name,
        started.elapsed()
    );
    Ok(())
}

/// `pg_basebackup -R` of `primary` into the replica's data directory, then
/// points the copy at its own port and socket directory. With `slot`, the
/// backup creates a physical slot named after the replica on the primary
/// (`-C -S`) and `-R` writes it as `primary_slot_name`.
fn base_backup(primary: &PgNode, replica: &PgNode, slot: bool) -> Result<(), LocalClusterError> {
    // -R writes standby.signal and primary_conninfo from these connection
    // settings (password included); application_name makes the replica
    // recognisable in pg_stat_replication.
    let conninfo = format!(
        "host=127.0.0.1 port={} user={SUPERUSER} application_name={}",
        primary.port, replica.name
    );
    let mut cmd = replica.exec.command("pg_basebackup");
    cmd.env("PGPASSWORD", SUPERUSER_PASSWORD)
        .arg("-D")
        .arg(&replica.data_dir)
        .args(["-d", &conninfo])
        .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-w"]);
    if slot {
        cmd.args(["-C", "-S", &replica.name]);
    }
    run(cmd, None, Duration::from_secs(300))?;
    // Later lines win over the primary's settings copied with the config.
    append_file(
        &replica.data_dir.join("postgresql.conf"),
        &format!(
            "\n# --- switchyard local cluster: {} ---\nport = {}\nunix_socket_directories = {}\n",
            replica.name,
            replica.port,
            conf_quote(&replica.data_dir.to_string_lossy())
        ),
    )
}

/// Polls until `replica` is in recovery with a streaming WAL receiver.
fn wait_streaming(primary: &PgNode, replica: &PgNode) -> Result<(), LocalClusterError> {
    let deadline = Instant::now() + STREAMING_TIMEOUT;
    let mut delay = Duration::from_millis(5);
    let last = loop {
        let state = replica.psql(
            "postgres",
            "SELECT pg_is_in_recovery(), \
             coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')",
        );
        if matches!(&state, Ok(s) if s == "t|streaming") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            break state;
        }
        thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(100));
    };
    let state = match last {
        Ok(s) => format!("last state (in_recovery|receiver status): {s}"),
        Err(e) => format!("last check failed: {e}"),
    };
    Err(LocalClusterError::Timeout(format!(
        "{} did not start streaming from {} within {}s; {state}\n\
         --- tail of {} ---\n{}\n--- tail of {} ---\n{}",
        replica.name,
        primary.name,
        STREAMING_TIMEOUT.as_secs(),
        replica.log_file.display(),
        log_tail(&replica.log_file, 20),
        primary.log_file.display(),
        log_tail(&primary.log_file, 20),
    )))
}
