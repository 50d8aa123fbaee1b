//! The `SHOW` tables, with PgBouncer's column names and order so exporters
//! and runbooks written for PgBouncer read them unchanged, plus Switchyard's
//! `SHOW NODES` and `SHOW EVENTS`. Built from the live state on each call.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::command::Show;
use super::table::{Cell, Col, Table};
use crate::context::Context;
use crate::pool::stats::{averages, Totals};
use crate::sessions::registry::{ClientInfo, ClientState};

/// Builds the table `what` asks for. (`SHOW HELP` is sent as notices instead.)
pub fn table(ctx: &Context, what: Show) -> Table {
    match what {
        Show::Pools => pools(ctx),
        Show::Stats => stats(ctx, true, true),
        Show::StatsTotals => stats(ctx, true, false),
        Show::StatsAverages => stats(ctx, false, true),
        Show::Servers => servers(ctx),
        Show::Clients => clients(ctx),
        Show::Databases => databases(ctx),
        Show::Config => config(ctx),
        Show::Lists => lists(ctx),
        Show::Users => users(ctx),
        Show::Version => {
            let mut t = Table::new(&[("version", Col::Text)]);
            t.row(vec![version().into()]);
            t
        }
        Show::Nodes => nodes(ctx),
        Show::Proxies => proxies(ctx),
        Show::Events => events(ctx),
        Show::Help => Table::new(&[]),
    }
}

/// What `SHOW VERSION` says. Exporters look for "PgBouncer x.y.z".
pub fn version() -> String {
    format!(
        "Switchyard {} (PgBouncer 1.24.0 compatible admin console)",
        env!("CARGO_PKG_VERSION")
    )
}

const POOL_COLUMNS: &[(&str, Col)] = &[
    ("database", Col::Text),
    ("user", Col::Text),
    ("cl_active", Col::Int),
    ("cl_waiting", Col::Int),
    ("cl_active_cancel_req", Col::Int),
    ("cl_waiting_cancel_req", Col::Int),
    ("sv_active", Col::Int),
    ("sv_active_cancel", Col::Int),
    ("sv_being_canceled", Col::Int),
    ("sv_idle", Col::Int),
    ("sv_used", Col::Int),
    ("sv_tested", Col::Int),
    ("sv_login", Col::Int),
    ("maxwait", Col::Int),
    ("maxwait_us", Col::Int),
    ("pool_mode", Col::Text),
];

fn pools(ctx: &Context) -> Table {
    let mut t = Table::new(POOL_COLUMNS);
    let clients = ctx.clients().all();
    let now = SystemTime::now();
    let mode = pool_mode(ctx);
    for ((db, user), pool) in ctx.pools().all() {
        let mine = clients
            .iter()
            .filter(|c| *c.database == *db && *c.user == *user);
        let (mut active, mut waiting, mut linked, mut maxwait) = (0u64, 0u64, 0u64, 0u64);
        for c in mine {
            match c.state() {
                ClientState::Waiting => {
                    waiting += 1;
                    maxwait = maxwait.max(micros_since(c.since(), now));
                }
                ClientState::Active => {
                    active += 1;
                    linked += 1;
                }
                ClientState::Idle => active += 1,
            }
        }
        let counts = pool.counts();
        let z = || Cell::Int(0);
        t.row(vec![
            db.into(),
            user.into(),
            active.into(),
            waiting.into(),
            z(),
            z(),
            linked.into(),
            z(),
            z(),
            counts.idle.into(),
            z(),
            z(),
            counts.opening.into(),
            (maxwait / 1_000_000).into(),
            (maxwait % 1_000_000).into(),
            mode.into(),
        ]);
    }
    t
}

const STAT_FIELDS: &[&str] = &[
    "server_assignment_count",
    "xact_count",
    "query_count",
    "received",
    "sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
];

/// PgBouncer's averages name two columns differently from the totals.
fn avg_name(field: &str) -> &str {
    match field {
        "received" => "recv",
        other => other,
    }
}

fn stats(ctx: &Context, totals: bool, avgs: bool) -> Table {
    // Column names must be 'static: built once per variant.
    let mut cols: Vec<(&'static str, Col)> = vec![("database", Col::Text)];
    let leak = |s: String| -> &'static str { intern(s) };
    let prefix = |p: &str, f: &str| -> &'static str {
        if totals && avgs {
            leak(format!("{p}_{f}"))
        } else {
            leak(f.to_string())
        }
    };
    if totals {
        cols.extend(STAT_FIELDS.iter().map(|f| (prefix("total", f), Col::Int)));
    }
    if avgs {
        cols.extend(
            STAT_FIELDS
                .iter()
                .map(|f| (prefix("avg", avg_name(f)), Col::Int)),
        );
    }
    // The full SHOW STATS ends with the proxy's recent latency percentiles,
    // after PgBouncer's columns (so readers of those are unaffected).
    let recent = if totals && avgs {
        recent_latencies(ctx)
    } else {
        Vec::new()
    };
    cols.extend(recent.iter().map(|(name, _)| (*name, Col::Int)));
    let mut t = Table::new(&cols);
    for (db, (total, delta, secs)) in per_database(ctx) {
        let mut row: Vec<Cell> = vec![db.into()];
        if totals {
            row.extend(total.fields().into_iter().map(Cell::from));
        }
        if avgs {
            let a = if secs > 0.0 {
                averages(&Totals::default(), &delta, secs)
            } else {
                Totals::default()
            };
            row.extend(a.fields().into_iter().map(Cell::from));
        }
        row.extend(recent.iter().map(|(_, us)| Cell::from(*us)));
        t.row(row);
    }
    t
}

/// Proxy-wide p50 and p99 of queries, transactions and checkout waits over
/// the last minute and five minutes, µs, as `(column, value)`:
/// `query_p50_1m_us`, `query_p99_1m_us`, ..., `wait_p99_5m_us`.
fn recent_latencies(ctx: &Context) -> Vec<(&'static str, u64)> {
    let short = |series: &str| match series {
        "transaction" => Some("xact"),
        "checkout_wait" => Some("wait"),
        "query" => Some("query"),
        _ => None,
    };
    let mut out = Vec::new();
    for (series, window, p) in ctx.latency_windows() {
        let Some(name) = short(series) else { continue };
        for (q, secs) in [("p50", p.p50), ("p99", p.p99)] {
            let col = intern(format!("{name}_{q}_{window}_us"));
            out.push((col, (secs * 1e6).round() as u64));
        }
    }
    out
}

/// Totals and last-period deltas summed over each database's pools.
fn per_database(ctx: &Context) -> BTreeMap<String, (Totals, Totals, f64)> {
    let mut out: BTreeMap<String, (Totals, Totals, f64)> = BTreeMap::new();
    for ((db, _), pool) in ctx.pools().all() {
        let e = out.entry(db).or_default();
        e.0 = e.0.plus(&pool.stats().totals());
        let (delta, secs) = pool.stats().last_period();
        e.1 = e.1.plus(&delta);
        e.2 = e.2.max(secs);
    }
    out
}

/// Column names built at run time, leaked once each (a handful, ever).
fn intern(s: String) -> &'static str {
    use std::sync::Mutex;
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.iter().find(|n| **n == s) {
        return n;
    }
    let n: &'static str = Box::leak(s.into_boxed_str());
    names.push(n);
    n
}

const CONNECTION_COLUMNS: &[(&str, Col)] = &[
    ("type", Col::Text),
    ("user", Col::Text),
    ("database", Col::Text),
    ("replication", Col::Text),
    ("state", Col::Text),
    ("addr", Col::Text),
    ("port", Col::Int),
    ("local_addr", Col::Text),
    ("local_port", Col::Int),
    ("connect_time", Col::Text),
    ("request_time", Col::Text),
    ("wait", Col::Int),
    ("wait_us", Col::Int),
    ("close_needed", Col::Int),
    ("ptr", Col::Text),
    ("link", Col::Text),
    ("remote_pid", Col::Int),
    ("tls", Col::Text),
    ("application_name", Col::Text),
    ("prepared_statements", Col::Int),
    ("id", Col::Int),
    ("pinned", Col::Text),
];

fn clients(ctx: &Context) -> Table {
    let mut t = Table::new(CONNECTION_COLUMNS);
    let now = SystemTime::now();
    for c in ctx.clients().all() {
        let wait = match c.state() {
            ClientState::Waiting => micros_since(c.since(), now),
            _ => 0,
        };
        let link = c.link().map(|l| server_ptr(l.pid));
        t.row(connection_row(ConnectionRow {
            kind: "C",
            client: &c,
            state: c.state().as_str(),
            addr: c.peer.map(|a| (a.ip().to_string(), a.port())),
            local: c.local,
            connected: c.connected_at,
            request: c.since(),
            wait_us: wait,
            ptr: client_ptr(c.id),
            link,
            remote_pid: 0,
            prepared: 0,
            id: c.id,
        }));
    }
    t
}

fn servers(ctx: &Context) -> Table {
    let mut t = Table::new(CONNECTION_COLUMNS);
    for c in ctx.clients().all() {
        if let Some(l) = c.link() {
            t.row(connection_row(ConnectionRow {
                kind: "S",
                client: &c,
                state: "active",
                addr: split_addr(&l.addr),
                local: l.local,
                connected: l.connected_at,
                request: c.since(),
                wait_us: 0,
                ptr: server_ptr(l.pid),
                link: Some(client_ptr(c.id)),
                remote_pid: l.pid,
                prepared: l.prepared,
                id: l.pid.unsigned_abs().into(),
            }));
        }
    }
    for ((db, user), pool) in ctx.pools().all() {
        for s in pool.idle_servers() {
            let (host, port) = split_addr(&s.addr).unwrap_or_default();
            let local = s.local;
            t.row(vec![
                "S".into(),
                user.clone().into(),
                db.clone().into(),
                "no".into(),
                "idle".into(),
                host.into(),
                i64::from(port).into(),
                local.map(|a| a.ip().to_string()).into(),
                local.map(|a| i64::from(a.port())).into(),
                timestamp(s.connected_at).into(),
                timestamp(s.idle_since).into(),
                Cell::Int(0),
                Cell::Int(0),
                Cell::Int(0),
                server_ptr(s.pid).into(),
                Cell::Null,
                s.pid.into(),
                Cell::Null,
                Cell::Null,
                s.prepared.into(),
                u64::from(s.pid.unsigned_abs()).into(),
                "".into(),
            ]);
        }
    }
    t
}

/// One row of `SHOW CLIENTS` / `SHOW SERVERS` for a client or its server.
struct ConnectionRow<'a> {
    kind: &'static str,
    client: &'a ClientInfo,
    state: &'static str,
    addr: Option<(String, u16)>,
    local: Option<std::net::SocketAddr>,
    connected: SystemTime,
    request: SystemTime,
    wait_us: u64,
    ptr: String,
    link: Option<String>,
    remote_pid: i32,
    prepared: usize,
    id: u64,
}

fn connection_row(r: ConnectionRow<'_>) -> Vec<Cell> {
    let (host, port) = r.addr.unzip();
    vec![
        r.kind.into(),
        r.client.user.to_string().into(),
        r.client.database.to_string().into(),
        "no".into(),
        r.state.into(),
        host.into(),
        port.map(i64::from).into(),
        r.local.map(|a| a.ip().to_string()).into(),
        r.local.map(|a| i64::from(a.port())).into(),
        timestamp(r.connected).into(),
        timestamp(r.request).into(),
        (r.wait_us / 1_000_000).into(),
        (r.wait_us % 1_000_000).into(),
        Cell::Int(0),
        r.ptr.into(),
        r.link.into(),
        r.remote_pid.into(),
        Cell::Null,
        r.client.application_name.clone().into(),
        r.prepared.into(),
        r.id.into(),
        r.client.pin_reason().unwrap_or("").into(),
    ]
}

fn client_ptr(id: u64) -> String {
    format!("0x{id:x}")
}

fn server_ptr(pid: i32) -> String {
    format!("0x5{pid:x}")
}

fn split_addr(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((
        host.trim_matches(['[', ']']).to_string(),
        port.parse().ok()?,
    ))
}

fn databases(ctx: &Context) -> Table {
    let mut t = Table::new(&[
        ("name", Col::Text),
        ("host", Col::Text),
        ("port", Col::Int),
        ("database", Col::Text),
        ("force_user", Col::Text),
        ("pool_size", Col::Int),
        ("min_pool_size", Col::Int),
        ("reserve_pool", Col::Int),
        ("server_lifetime", Col::Int),
        ("pool_mode", Col::Text),
        ("load_balance_hosts", Col::Text),
        ("max_connections", Col::Int),
        ("current_connections", Col::Int),
        ("max_client_connections", Col::Int),
        ("current_client_connections", Col::Int),
        ("paused", Col::Int),
        ("disabled", Col::Int),
    ]);
    let config = ctx.config();
    let pools = ctx.pools().all();
    let clients = ctx.clients().all();
    let mut names: Vec<String> = config.databases.keys().cloned().collect();
    for ((db, _), _) in &pools {
        if !names.contains(db) {
            names.push(db.clone());
        }
    }
    for name in names {
        let (dbname, target, size) = config.database(&name);
        let addr = ctx
            .cluster()
            .route(target)
            .and_then(|r| split_addr(&r.addr));
        let (host, port) = addr.unzip();
        let mine = pools.iter().filter(|((db, _), _)| *db == name);
        let (mut servers, mut paused) = (0usize, false);
        for (_, p) in mine {
            let c = p.counts();
            servers += c.idle + c.opening;
            paused |= c.paused;
        }
        servers += clients
            .iter()
            .filter(|c| *c.database == *name && c.link().is_some())
            .count();
        let client_count = clients.iter().filter(|c| *c.database == *name).count();
        t.row(vec![
            name.into(),
            host.into(),
            port.map(i64::from).into(),
            dbname.into(),
            Cell::Null,
            size.into(),
            Cell::Int(0),
            Cell::Int(0),
            (config.proxy.server_lifetime.as_secs()).into(),
            pool_mode(ctx).into(),
            Cell::Null,
            Cell::Int(0),
            servers.into(),
            Cell::Int(0),
            client_count.into(),
            i64::from(paused).into(),
            Cell::Int(0),
        ]);
    }
    t
}

fn config(ctx: &Context) -> Table {
    let mut t = Table::new(&[
        ("key", Col::Text),
        ("value", Col::Text),
        ("default", Col::Text),
        ("changeable", Col::Text),
    ]);
    for (key, value, default) in crate::config::settings(&ctx.config()) {
        let changeable = if crate::config::needs_restart(&key) {
            "no"
        } else {
            "yes"
        };
        t.row(vec![
            key.into(),
            value.into(),
            default.into(),
            changeable.into(),
        ]);
    }
    t
}

fn lists(ctx: &Context) -> Table {
    let mut t = Table::new(&[("list", Col::Text), ("items", Col::Int)]);
    let pools = ctx.pools().all();
    let clients = ctx.clients().all();
    let idle: usize = pools.iter().map(|(_, p)| p.counts().idle).sum();
    let used = clients.iter().filter(|c| c.link().is_some()).count();
    let mut dbs: Vec<&String> = pools.iter().map(|((db, _), _)| db).collect();
    dbs.sort();
    dbs.dedup();
    let rows: [(&str, usize); 14] = [
        ("databases", dbs.len().max(ctx.config().databases.len())),
        ("users", ctx.config().users.len()),
        ("peers", 0),
        ("pools", pools.len()),
        ("peer_pools", 0),
        ("free_clients", 0),
        ("used_clients", clients.len()),
        ("login_clients", 0),
        ("free_servers", 0),
        ("used_servers", idle + used),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ];
    for (list, n) in rows {
        t.row(vec![list.into(), n.into()]);
    }
    t
}

fn users(ctx: &Context) -> Table {
    let mut t = Table::new(&[
        ("name", Col::Text),
        ("pool_size", Col::Int),
        ("reserve_pool_size", Col::Int),
        ("pool_mode", Col::Text),
        ("max_user_connections", Col::Int),
        ("current_connections", Col::Int),
        ("max_user_client_connections", Col::Int),
        ("current_client_connections", Col::Int),
    ]);
    let clients = ctx.clients().all();
    for u in &ctx.config().users {
        let servers = clients
            .iter()
            .filter(|c| *c.user == *u.name && c.link().is_some())
            .count();
        let connected = clients.iter().filter(|c| *c.user == *u.name).count();
        t.row(vec![
            u.name.clone().into(),
            Cell::Null,
            Cell::Null,
            pool_mode(ctx).into(),
            Cell::Int(0),
            servers.into(),
            Cell::Int(0),
            connected.into(),
        ]);
    }
    t
}

fn nodes(ctx: &Context) -> Table {
    let mut t = Table::new(&[
        ("name", Col::Text),
        ("addr", Col::Text),
        ("role", Col::Text),
        ("state", Col::Text),
        ("timeline", Col::Int),
        ("lsn", Col::Text),
        ("lag_bytes", Col::Int),
        ("lag_seconds", Col::Text),
        ("last_check", Col::Text),
        ("hardware", Col::Text),
        ("patroni_member", Col::Text),
        ("patroni_role", Col::Text),
        ("patroni_state", Col::Text),
    ]);
    let now = SystemTime::now();
    for n in ctx.cluster().status().iter() {
        let state = if n.fenced { "fenced" } else { n.state };
        let last_check = n
            .last_check_seconds_ago
            .map(|ago| timestamp(now - std::time::Duration::from_secs_f64(ago.max(0.0))));
        t.row(vec![
            n.name.clone().into(),
            n.addr.clone().into(),
            n.role.into(),
            state.into(),
            i64::from(n.timeline).into(),
            lsn(n.lsn).into(),
            n.lag_bytes.into(),
            n.lag_seconds.map(|s| format!("{s:.3}")).into(),
            last_check.into(),
            n.hardware.into(),
            n.patroni.as_ref().map(|m| m.member.clone()).into(),
            n.patroni.as_ref().map(patroni_role).into(),
            n.patroni.as_ref().map(|m| m.state.clone()).into(),
        ]);
    }
    t
}

/// Patroni's role of a member: `leader` for the one holding its key.
fn patroni_role(m: &crate::cluster::patroni::MemberStatus) -> String {
    if m.leader {
        "leader".into()
    } else {
        m.role.as_str().into()
    }
}

/// With `[coordination]`: this proxy first, then the other live ones, as
/// their views in etcd say. Without it: no rows.
fn proxies(ctx: &Context) -> Table {
    let mut t = Table::new(&[
        ("proxy", Col::Text),
        ("self", Col::Text),
        ("leader", Col::Text),
        ("primary", Col::Text),
        ("down", Col::Text),
        ("connected", Col::Text),
    ]);
    let Some(c) = ctx.cluster().coordination() else {
        return t;
    };
    let yes = |b: bool| if b { "yes" } else { "no" };
    let leads = |id: &str| yes(c.leader_id.as_deref() == Some(id));
    t.row(vec![
        c.proxy.clone().into(),
        "yes".into(),
        leads(&c.proxy).into(),
        c.primary.clone().into(),
        c.down.join(",").into(),
        yes(c.connected).into(),
    ]);
    for p in &c.peers {
        t.row(vec![
            p.proxy.clone().into(),
            "no".into(),
            leads(&p.proxy).into(),
            p.primary.clone().into(),
            p.down.join(",").into(),
            "yes".into(),
        ]);
    }
    t
}

fn events(ctx: &Context) -> Table {
    let mut t = Table::new(&[
        ("seq", Col::Int),
        ("time", Col::Text),
        ("kind", Col::Text),
        ("node", Col::Text),
        ("message", Col::Text),
    ]);
    for e in ctx.cluster().events.since(0) {
        t.row(vec![
            e.seq.into(),
            timestamp_ms(e.at).into(),
            e.kind.as_str().into(),
            e.node.clone().into(),
            e.message.clone().into(),
        ]);
    }
    t
}

/// A WAL position as PostgreSQL writes it (`16/B374D848`).
fn lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

fn pool_mode(ctx: &Context) -> &'static str {
    match ctx.config().proxy.pool_mode {
        crate::config::PoolMode::Transaction => "transaction",
        crate::config::PoolMode::Session => "session",
    }
}

fn micros_since(t: SystemTime, now: SystemTime) -> u64 {
    now.duration_since(t).map_or(0, |d| d.as_micros() as u64)
}

/// `YYYY-MM-DD HH:MM:SS UTC`, as PgBouncer prints times.
pub fn timestamp(t: SystemTime) -> String {
    let u = crate::events::Utc::of(t);
    let (h, m, s) = u.hms;
    format!(
        "{:04}-{:02}-{:02} {h:02}:{m:02}:{s:02} UTC",
        u.year, u.month, u.day
    )
}

/// As [`timestamp`], with milliseconds: events come close together.
fn timestamp_ms(t: SystemTime) -> String {
    let u = crate::events::Utc::of(t);
    let (h, m, s) = u.hms;
    format!(
        "{:04}-{:02}-{:02} {h:02}:{m:02}:{s:02}.{:03} UTC",
        u.year, u.month, u.day, u.millis
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |s: u64| timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(at(1_795_779_296), "2026-11-27 11:34:56 UTC");
        let ms = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_779_296_042);
        assert_eq!(timestamp_ms(ms), "2026-11-27 11:34:56.042 UTC");
    }

    #[test]
    fn lsn_and_addresses_print_like_postgresql() {
        assert_eq!(lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(split_addr("10.0.0.1:5432"), Some(("10.0.0.1".into(), 5432)));
        assert_eq!(split_addr("[::1]:6432"), Some(("::1".into(), 6432)));
        assert_eq!(split_addr("nonsense"), None);
    }

    #[test]
    fn stats_columns_follow_pgbouncer() {
        let names: Vec<String> = STAT_FIELDS
            .iter()
            .map(|f| format!("avg_{}", avg_name(f)))
            .collect();
        assert!(names.contains(&"avg_recv".to_string()));
        assert_eq!(POOL_COLUMNS.len(), 16);
        assert_eq!(CONNECTION_COLUMNS[0].0, "type");
    }
}
