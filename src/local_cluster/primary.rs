//! The primary's setup: `initdb`, `postgresql.conf` / `pg_hba.conf`, and
//! (once it runs) the well-known roles and database.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use super::base_dir::{append_file, write_file};
use super::exec::run;
use super::node::PgNode;
use super::{
    io_at, LocalClusterError, LocalClusterOptions, APP_DB, APP_PASSWORD, APP_USER,
    CLUSTER_PASSWORD, CLUSTER_USER, MD5_PASSWORD, MD5_USER, SUPERUSER, SUPERUSER_PASSWORD,
    TRUST_USER,
};

/// Quotes a value for `postgresql.conf`.
pub(super) fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// `initdb`s the (not yet existing) data directory of `primary` and
/// configures it; `base_dir` holds the temporary password file.
pub(super) fn init(
    primary: &PgNode,
    base_dir: &Path,
    opts: &LocalClusterOptions,
) -> Result<(), LocalClusterError> {
    let pwfile = base_dir.join("pwfile");
    write_file(&pwfile, &format!("{SUPERUSER_PASSWORD}\n"))?;
    primary.exec.chown(&pwfile)?;
    let mut cmd = primary.exec.command("initdb");
    cmd.arg("-D")
        .arg(&primary.data_dir)
        .args([
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .args(["-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]);
    let initdb = run(cmd, None, Duration::from_secs(300));
    let _ = fs::remove_file(&pwfile);
    initdb?;

    // Each replica's pg_basebackup -X stream needs two WAL senders and a
    // (temporary) slot while it runs, its standby one sender afterwards.
    let senders = (2 * opts.replicas + 2).max(10);
    let mut conf = String::from("\n# --- switchyard local cluster ---\n");
    conf.push_str("listen_addresses = '127.0.0.1'\n");
    let _ = writeln!(conf, "port = {}", primary.port);
    let _ = writeln!(
        conf,
        "unix_socket_directories = {}",
        conf_quote(&primary.data_dir.to_string_lossy())
    );
    conf.push_str("max_connections = 300\n");
    conf.push_str("wal_level = replica\n");
    let _ = writeln!(conf, "max_wal_senders = {senders}");
    let _ = writeln!(conf, "max_replication_slots = {senders}");
    conf.push_str("hot_standby = on\n");
    conf.push_str("wal_keep_size = '256MB'\n");
    conf.push_str("password_encryption = 'scram-sha-256'\n");
    conf.push_str("shared_buffers = '128MB'\n");
    if opts.fsync {
        conf.push_str("fsync = on\n");
    } else {
        conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
    }
    if !opts.extra_conf.is_empty() {
        conf.push_str("# --- extra_conf ---\n");
        for line in &opts.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
    }
    append_file(&primary.data_dir.join("postgresql.conf"), &conf)?;

    let hba = format!(
        "# switchyard local cluster\n\
         # TYPE  DATABASE     USER       ADDRESS       METHOD\n\
         local   all          all                      trust\n\
         local   replication  all                      trust\n\
         host    all          {MD5_USER}    127.0.0.1/32  md5\n\
         host    all          {TRUST_USER}  127.0.0.1/32  trust\n\
         host    all          all        127.0.0.1/32  scram-sha-256\n\
         host    replication  all        127.0.0.1/32  scram-sha-256\n"
    );
    write_file(&primary.data_dir.join("pg_hba.conf"), &hba)?;
    for (name, text) in &opts.data_files {
        let path = primary.data_dir.join(name);
        write_file(&path, text)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(io_at(format!("chmod {}", path.display())))?;
        primary.exec.chown(&path)?;
    }
    Ok(())
}

/// Creates the well-known roles and [`APP_DB`] on the running primary.
pub(super) fn create_roles(primary: &PgNode) -> Result<(), LocalClusterError> {
    primary
        .psql(
            "postgres",
            &format!(
                "CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}';\n\
                 CREATE DATABASE {APP_DB} OWNER {APP_USER};\n\
                 CREATE ROLE {CLUSTER_USER} LOGIN SUPERUSER PASSWORD '{CLUSTER_PASSWORD}';\n\
                 CREATE ROLE {TRUST_USER} LOGIN;\n\
                 SET password_encryption = 'md5';\n\
                 CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}';\n\
                 GRANT ALL ON DATABASE {APP_DB} TO {MD5_USER}, {TRUST_USER};\n\
                 \\connect {APP_DB}\n\
                 -- PG15+: the public schema is writable by the database owner only.\n\
                 GRANT ALL ON SCHEMA public TO {MD5_USER}, {TRUST_USER};\n"
            ),
        )
        .map(drop)
}
