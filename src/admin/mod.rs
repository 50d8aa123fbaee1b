//! The admin console: database `switchyard` (alias `pgbouncer`) on the main
//! port, for users in `proxy.admin_users`. Like PgBouncer's, it speaks only
//! the simple query protocol and answers `SHOW ...` with PgBouncer's columns,
//! so existing exporters and runbooks work; it also steers the proxy
//! (`PAUSE`, `RESUME`, `RECONNECT`, `KILL`, `RELOAD`, `SHUTDOWN`) and the
//! topology (`READMIT`).

pub mod command;
pub mod show;
pub mod table;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use crate::client::conn::ClientConn;
use crate::context::Context;
use crate::error::ClientError;
use crate::protocol::frame_len;
use crate::protocol::messages::backend;
use crate::sessions::registry::{ClientState, Registration};
use command::{Command, Show};
use table::{command_complete, notice};

/// Largest admin command accepted.
const MAX_COMMAND: usize = 64 * 1024;

/// Whether `database` names the admin console.
pub fn is_admin_database(database: &str) -> bool {
    matches!(database, "switchyard" | "pgbouncer")
}

/// ParameterStatus values the console reports at login.
pub fn server_params() -> Vec<(String, String)> {
    [
        ("server_version", "15.0 (Switchyard admin console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Serves one admin session until the client leaves.
pub async fn serve(mut conn: ClientConn, ctx: Arc<Context>, reg: Registration) {
    tracing::info!(user = %reg.info.user, "admin console session started");
    loop {
        let frame = match read_message(&mut conn, &ctx, &reg).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(e) => return conn.send_error(&e).await,
        };
        let sql = String::from_utf8_lossy(
            frame
                .get(5..frame.len().saturating_sub(1))
                .unwrap_or_default(),
        )
        .into_owned();
        tracing::info!(user = %reg.info.user, command = %sql, "admin command");
        let mut out = BytesMut::new();
        match command::parse(&sql) {
            Ok(cmd) => {
                reg.info.set(ClientState::Active, None);
                if let Err(e) = execute(&ctx, cmd, &mut out).await {
                    out.clear();
                    error(&mut out, &ctx, &e);
                }
                reg.info.set(ClientState::Idle, None);
            }
            Err(e) => error(
                &mut out,
                &ctx,
                &ClientError::Admin {
                    code: "42601",
                    message: e.0,
                },
            ),
        }
        backend::ready_for_query(&mut out, backend::IDLE);
        if conn.send(&out).await.is_err() {
            return;
        }
    }
}

fn error(out: &mut BytesMut, ctx: &Context, e: &ClientError) {
    ctx.errors().record(e.origin(), e.sqlstate());
    e.encode(out);
}

/// The next Query message; `None` on Terminate or EOF. Anything but a simple
/// query ends the session, as in PgBouncer.
async fn read_message(
    conn: &mut ClientConn,
    ctx: &Context,
    reg: &Registration,
) -> Result<Option<BytesMut>, ClientError> {
    loop {
        match frame_len(&conn.buf, MAX_COMMAND) {
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
            Ok(Some(len)) => {
                let frame = conn.buf.split_to(len);
                return match frame[0] {
                    b'Q' => Ok(Some(frame)),
                    b'X' => Ok(None),
                    _ => Err(ClientError::AdminExtendedQuery),
                };
            }
            Ok(None) => {}
        }
        tokio::select! {
            r = conn.fill() => if !matches!(r, Ok(n) if n > 0) { return Ok(None) },
            _ = ctx.shutdown().cancelled() => return Err(ClientError::Shutdown),
            _ = reg.info.killed() => return Err(ClientError::Killed),
        }
    }
}

/// Runs one command, appending its reply (without ReadyForQuery) to `out`.
async fn execute(ctx: &Context, cmd: Command, out: &mut BytesMut) -> Result<(), ClientError> {
    match cmd {
        Command::Empty => crate::protocol::frame::put_frame(out, b'I', b""),
        Command::Show(Show::Help) => {
            for line in HELP {
                notice(out, line);
            }
            command_complete(out, "SHOW");
        }
        Command::Show(what) => show::table(ctx, what).encode(out, "SHOW"),
        Command::Pause(db) => {
            known_database(ctx, db.as_deref())?;
            ctx.pools().set_paused(db.as_deref(), true);
            ctx.cluster().events.record(
                crate::events::EventKind::Paused,
                None,
                format!("PAUSE {}", db.as_deref().unwrap_or("(all databases)")),
            );
            drained(ctx, db.as_deref()).await;
            command_complete(out, "PAUSE");
        }
        Command::Resume(db) => {
            known_database(ctx, db.as_deref())?;
            ctx.pools().set_paused(db.as_deref(), false);
            ctx.cluster().events.record(
                crate::events::EventKind::Resumed,
                None,
                format!("RESUME {}", db.as_deref().unwrap_or("(all databases)")),
            );
            command_complete(out, "RESUME");
        }
        Command::Reconnect(db) => {
            known_database(ctx, db.as_deref())?;
            for ((name, _), pool) in ctx.pools().all() {
                if db.as_deref().is_none_or(|d| d == name) {
                    pool.reconnect();
                }
            }
            command_complete(out, "RECONNECT");
        }
        Command::Kill(db) => {
            known_database(ctx, Some(&db))?;
            ctx.pools().set_paused(Some(&db), true);
            ctx.clients().kill_database(&db);
            for ((name, _), pool) in ctx.pools().all() {
                if name == db {
                    pool.reconnect();
                }
            }
            command_complete(out, "KILL");
        }
        Command::Shutdown => {
            ctx.cluster().events.record(
                crate::events::EventKind::Shutdown,
                None,
                "SHUTDOWN from the admin console",
            );
            ctx.shutdown().cancel();
            command_complete(out, "SHUTDOWN");
        }
        Command::Reload => {
            let report = ctx.reload().await.map_err(|e| ClientError::Admin {
                code: "F0000",
                message: format!("RELOAD failed, the running configuration is unchanged: {e}"),
            })?;
            for line in report {
                notice(out, &line);
            }
            command_complete(out, "RELOAD");
        }
        Command::Switchover(target) => {
            let new = ctx
                .cluster()
                .switchover(target, "admin SWITCHOVER".into())
                .await
                .map_err(|e| ClientError::Admin {
                    code: e.sqlstate(),
                    message: format!("switchover not done: {e}"),
                })?;
            notice(out, &format!("{new} is the primary now"));
            command_complete(out, "SWITCHOVER");
        }
        Command::Readmit(node) => {
            ctx.cluster()
                .readmit(&node)
                .await
                .map_err(|e| ClientError::Admin {
                    code: e.sqlstate(),
                    message: e.to_string(),
                })?;
            command_complete(out, "READMIT");
        }
    }
    Ok(())
}

/// `PAUSE`/`RESUME`/`RECONNECT`/`KILL` of a database nobody configured or
/// used is most likely a typo.
fn known_database(ctx: &Context, db: Option<&str>) -> Result<(), ClientError> {
    let Some(db) = db else { return Ok(()) };
    let known = ctx.config().databases.contains_key(db)
        || ctx.pools().all().iter().any(|((name, _), _)| name == db);
    if known {
        Ok(())
    } else {
        Err(ClientError::Admin {
            code: "3D000",
            message: format!("no such database: {db}"),
        })
    }
}

/// Waits until no client of `db` (all when `None`) holds a server: PAUSE
/// returns once running transactions have finished, as in PgBouncer.
async fn drained(ctx: &Context, db: Option<&str>) {
    loop {
        let busy = ctx.clients().all().iter().any(|c| {
            db.is_none_or(|d| d == &*c.database)
                && c.state() == ClientState::Active
                && !is_admin_database(&c.database)
        });
        if !busy || ctx.shutdown().is_cancelled() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const HELP: &[&str] = &[
    "Console usage",
    "\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION",
    "\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|LISTS",
    "\tSHOW NODES|EVENTS|PROXIES",
    "\tPAUSE [<db>]",
    "\tRESUME [<db>]",
    "\tRECONNECT [<db>]",
    "\tKILL <db>",
    "\tRELOAD",
    "\tSHUTDOWN",
    "\tREADMIT <node>",
    "\tSWITCHOVER [TO <node>]",
];
