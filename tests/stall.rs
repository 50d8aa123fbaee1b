//! No client can stall the proxy. The proxy runs as it ships (its own
//! process, a configuration file, one worker) in front of a real primary and
//! replica. Clients send part of a valid conversation — every byte offset of
//! a login, a query, a pipeline, a transaction, a COPY, an admin session —
//! and then close, reset or stall. Each time the proxy must end the session
//! (or close it at the login timeout), leak no server connection, go back to
//! idle CPU, and keep answering everyone else at once.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::script::{bind, execute, frame, parse, query, target, Cut, Scripted};
use common::shipped::Shipped;
use futures_util::StreamExt;
use switchyard::local_cluster::{APP_DB, APP_PASSWORD, APP_USER};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Settings every proxy here runs with: a short login timeout, so stalled
/// logins are seen to be closed, and one event loop, where a busy task
/// starves everyone.
const PROXY: &str = "workers = 1\nclient_login_timeout = \"1s\"\ndefault_pool_size = 20";

/// CPU a quiet proxy may use, as a fraction of one core (health checks).
const IDLE_CPU: f64 = 0.05;
/// A probe's `SELECT 1` on a quiet proxy.
const PROBE: Duration = Duration::from_millis(50);

/// What the client does once its bytes are out.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    /// FIN, the way a client process exits.
    Close,
    /// RST (SO_LINGER 0).
    Reset,
    /// Nothing more: the socket stays open and silent.
    Stall,
}

/// A client and the proxy that serves it, checked for a quiet aftermath.
struct Bench {
    proxy: Shipped,
    /// Keeps the shared PostgreSQL cluster running.
    _cluster: std::sync::Arc<switchyard::local_cluster::LocalCluster>,
    probe: tokio_postgres::Client,
    /// Sockets that are neither server connections nor transient.
    baseline: usize,
}

impl Bench {
    async fn start(auth: &str) -> Bench {
        let cluster = common::cluster();
        let proxy = Shipped::start(&cluster, &format!("{PROXY}\nauth_type = \"{auth}\"")).await;
        let (user, pw) = match auth {
            "md5" => ("md5user", "md5pass"),
            _ => (APP_USER, APP_PASSWORD),
        };
        let probe = common::connect(&proxy.url(user, pw, APP_DB))
            .await
            .expect("probe client logs in");
        probe.batch_execute("SELECT 1").await.unwrap();
        let baseline = settled_sockets(&proxy).await;
        Bench {
            proxy,
            _cluster: cluster,
            probe,
            baseline,
        }
    }

    /// After clients went away: every session ended, every server
    /// connection back in its pool, CPU idle, and a probe answered at once.
    async fn assert_quiet(&self, what: &str) {
        self.assert_settled(what).await;
        self.assert_responsive(what).await;
    }

    /// Every session ended and every server connection back in its pool.
    async fn assert_settled(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (others, (open, idle)) =
                (other_sockets(&self.proxy).await, self.proxy.servers().await);
            if others <= self.baseline && open == idle {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: sessions or server connections left behind: {others} client sockets \
                 (baseline {}), {open} server connections of which {idle} idle",
                self.baseline
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// CPU at idle over the next second, and a probe answered at once.
    /// Server logins still under way are real work (a SCRAM key derivation
    /// each): the second starts once none is.
    async fn assert_responsive(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.proxy.server_logins().await > 0 {
            assert!(
                Instant::now() < deadline,
                "{what}: server logins never finished"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cpu = self.proxy.cpu_share_over(Duration::from_secs(1)).await;
        assert!(
            cpu < IDLE_CPU,
            "{what}: the proxy used {:.0}% of a core while idle",
            cpu * 100.0
        );
        self.assert_answers(what).await;
    }

    /// A probe answered at once.
    async fn assert_answers(&self, what: &str) {
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let started = Instant::now();
            let answer =
                tokio::time::timeout(Duration::from_secs(10), self.probe.simple_query("SELECT 1"));
            answer
                .await
                .unwrap_or_else(|_| panic!("{what}: a probe SELECT 1 got no answer in 10 s"))
                .expect("probe query");
            best = best.min(started.elapsed());
        }
        assert!(best < PROBE, "{what}: a probe SELECT 1 took {best:?}");
    }
}

/// Open sockets of the proxy that are not server connections.
/// [`other_sockets`] once the proxy's own connections are all open: the
/// primary's heartbeat gets its check connection only once the primary
/// serves, a tick or two after start. Unchanged for 2 s (at most 15 s).
async fn settled_sockets(proxy: &Shipped) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut last, mut since) = (other_sockets(proxy).await, Instant::now());
    while since.elapsed() < Duration::from_secs(2) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = other_sockets(proxy).await;
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    last
}

async fn other_sockets(proxy: &Shipped) -> usize {
    let sockets = proxy.sockets();
    let (open, _) = proxy.servers().await;
    sockets.saturating_sub(open as usize)
}

/// Ends a connection the way `action` says; a stalled one is handed back.
async fn finish(mut stream: TcpStream, action: Action) -> Option<TcpStream> {
    match action {
        Action::Close => {
            let _ = stream.shutdown().await;
            None
        }
        Action::Reset => {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            None
        }
        Action::Stall => Some(stream),
    }
}

/// A logged-in client sends the header of a 100000-byte Query and 10 bytes
/// of it, then closes. The proxy once spun on the buffered header forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_query_then_close_leaves_the_proxy_idle() {
    let bench = Bench::start("scram-sha-256").await;
    for action in [Action::Close, Action::Reset] {
        let mut c = Scripted::connect(bench.proxy.addr, usize::MAX).await;
        c.login_scram(APP_USER, APP_PASSWORD, APP_DB).await.unwrap();
        let mut msg = vec![b'Q'];
        msg.extend(100_000u32.to_be_bytes());
        msg.extend(b"SELECT 1;\0");
        c.send(&msg).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        finish(c.stream, action).await;
        bench
            .assert_quiet(&format!("truncated Query, then {action:?}"))
            .await;
    }
}

/// Thirty clients each announce a 1000-byte password message, send 10
/// bytes of it and close, before authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_password_messages_then_close_leave_the_proxy_idle() {
    let bench = Bench::start("scram-sha-256").await;
    for _ in 0..30 {
        let mut c = Scripted::connect(bench.proxy.addr, usize::MAX).await;
        c.open(false, APP_USER, APP_DB).await.unwrap();
        assert_eq!(c.recv().await.0, b'R');
        let mut msg = vec![b'p'];
        msg.extend(1000u32.to_be_bytes());
        msg.extend(b"SCRAM-\0");
        c.send(&msg).await.unwrap();
        finish(c.stream, Action::Close).await;
    }
    bench.assert_quiet("30 truncated password messages").await;
}

/// A valid conversation, played up to a byte budget.
#[derive(Debug, Clone, Copy)]
enum Conversation {
    /// SSL and GSSENC refused, startup, SCRAM, a simple query, Terminate.
    ScramQuery,
    /// Startup, md5, a simple query, Terminate.
    Md5Query,
    /// An extended-protocol pipeline with a named statement.
    Pipeline,
    /// A named statement bound with a parameter too large to hold: its
    /// head is rewritten and its body streams.
    LargeBind,
    /// BEGIN, a query, COMMIT.
    Transaction,
    /// COPY FROM STDIN.
    Copy,
    /// The admin console.
    Admin,
}

impl Conversation {
    fn auth(self) -> &'static str {
        match self {
            Conversation::Md5Query => "md5",
            _ => "scram-sha-256",
        }
    }

    /// Plays the conversation; returns where its login ended.
    async fn play(self, c: &mut Scripted) -> Result<usize, Cut> {
        match self {
            Conversation::Md5Query => c.login_md5("md5user", "md5pass", APP_DB).await?,
            Conversation::Admin => c.login_scram("admin", "adminpw", "switchyard").await?,
            _ => c.login_scram(APP_USER, APP_PASSWORD, APP_DB).await?,
        }
        let logged_in = c.sent;
        match self {
            Conversation::ScramQuery | Conversation::Md5Query => {
                c.query("SELECT 1").await?;
            }
            Conversation::Pipeline => {
                c.send_all(&[
                    parse("s1", "SELECT $1::int"),
                    bind("s1", &["7"]),
                    target(b'D', b'P', ""),
                    execute(),
                    parse("", "SELECT 2"),
                    bind("", &[]),
                    execute(),
                    target(b'C', b'S', "s1"),
                    frame(b'S', &[]),
                ])
                .await?;
                c.until(b'Z').await;
            }
            Conversation::LargeBind => {
                c.send_all(&[parse("big", "SELECT length($1)"), frame(b'S', &[])])
                    .await?;
                c.until(b'Z').await;
                let big = "x".repeat(100_000);
                let b = bind("big", &[&big]);
                // In pieces, so that cuts land in its head, while its body
                // streams, and at its end.
                for piece in [&b[..12], &b[12..20_000], &b[20_000..]] {
                    c.send(piece).await?;
                }
                c.send_all(&[execute(), frame(b'S', &[])]).await?;
                c.until(b'Z').await;
            }
            Conversation::Transaction => {
                for sql in ["BEGIN", "SELECT 1", "COMMIT"] {
                    c.query(sql).await?;
                }
            }
            Conversation::Copy => {
                c.send(&query("COPY stall_copy FROM STDIN")).await?;
                c.until(b'G').await;
                for row in ["1\tone\n", "2\ttwo\n", "3\tthree\n"] {
                    c.send(&frame(b'd', row.as_bytes())).await?;
                }
                c.send(&frame(b'c', &[])).await?;
                c.until(b'Z').await;
            }
            Conversation::Admin => {
                c.query("SHOW POOLS").await?;
                c.query("SHOW VERSION").await?;
            }
        }
        c.send(&frame(b'X', &[])).await?;
        Ok(logged_in)
    }
}

/// Plays `conv` whole once: its length, where its login ends, and its marks.
async fn measure(addr: SocketAddr, conv: Conversation) -> (usize, usize, Vec<usize>) {
    let mut c = Scripted::connect(addr, usize::MAX).await;
    let login_end = conv.play(&mut c).await.expect("no budget, no cut");
    (c.sent, login_end, c.marks)
}

/// The offsets to cut at: every byte of the part under test when it is
/// short, else every message boundary ± 3 bytes.
fn offsets(from: usize, total: usize, marks: &[usize]) -> Vec<usize> {
    if total - from <= 400 {
        return (from..=total).collect();
    }
    let mut v: Vec<usize> = marks
        .iter()
        .flat_map(|m| m.saturating_sub(3)..=(m + 3))
        .filter(|k| (from..=total).contains(k))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// One client: the first `k` bytes of `conv`, then `action`. Returns a
/// stalled socket.
async fn cut_at(
    addr: SocketAddr,
    conv: Conversation,
    k: usize,
    action: Action,
) -> Option<(usize, TcpStream)> {
    let mut c = Scripted::connect(addr, k).await;
    let _ = conv.play(&mut c).await;
    Some((k, finish(c.stream, action).await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_offset_of_every_conversation_ends_cleanly() {
    for auth in ["scram-sha-256", "md5"] {
        let bench = Bench::start(auth).await;
        bench
            .probe
            .batch_execute("CREATE TABLE IF NOT EXISTS stall_copy (a int, b text)")
            .await
            .ok();
        let convs = [
            Conversation::ScramQuery,
            Conversation::Md5Query,
            Conversation::Pipeline,
            Conversation::LargeBind,
            Conversation::Transaction,
            Conversation::Copy,
            Conversation::Admin,
        ];
        for conv in convs.into_iter().filter(|c| c.auth() == auth) {
            let addr = bench.proxy.addr;
            let (total, login_end, marks) = measure(addr, conv).await;
            let from = match conv {
                Conversation::ScramQuery | Conversation::Md5Query | Conversation::Admin => 0,
                _ => login_end,
            };
            let ks = offsets(from, total, &marks);
            for action in [Action::Close, Action::Reset] {
                futures_util::stream::iter(ks.iter().copied())
                    .for_each_concurrent(8, |k| async move {
                        cut_at(addr, conv, k, action).await;
                    })
                    .await;
                bench
                    .assert_quiet(&format!(
                        "{conv:?} cut at {}..={} then {action:?}",
                        ks[0], total
                    ))
                    .await;
            }
            let chunks: Vec<&[usize]> = ks.chunks(12).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                let stalled: Vec<_> = futures_util::stream::iter(chunk.iter().copied())
                    .map(|k| cut_at(addr, conv, k, Action::Stall))
                    .buffer_unordered(8)
                    .filter_map(|s| async move { s })
                    .collect()
                    .await;
                let what = format!("{conv:?} stalled at {chunk:?}");
                bench.assert_responsive(&what).await;
                for (k, mut stream) in stalled {
                    if k < login_end {
                        let closed = common::peer_closed(&mut stream, 5).await;
                        assert!(
                            closed,
                            "{what}: a login stalled at byte {k} outlived the login timeout"
                        );
                    }
                    let _ = stream.shutdown().await;
                }
                // The CPU is measured while the next chunk stalls (a loop
                // left by these closes would still spin then) and after
                // the last: one second per chunk, not two.
                let closed = format!("{what}, then closed");
                if i + 1 == chunks.len() {
                    bench.assert_quiet(&closed).await;
                } else {
                    bench.assert_settled(&closed).await;
                    bench.assert_answers(&closed).await;
                }
            }
        }
    }
}
