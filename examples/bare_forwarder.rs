//! The floor under any relay: a forwarder that only copies bytes between
//! each client and a PostgreSQL connection of its own. No pooling, no
//! parsing, no metrics: what is left of a transaction's user-space cost is
//! the event loop's and the system calls'. `benches/callgrind.sh` counts it
//! like the proxy (docs/benchmarks.md, "the event loop's floor"):
//!
//! ```text
//! cargo build --release --example bare_forwarder
//! FORWARDER=tokio bash benches/callgrind.sh target/release/examples/bare_forwarder -S
//! FORWARDER=epoll bash benches/callgrind.sh target/release/examples/bare_forwarder -S
//! ```
//!
//! It reads the proxy's config file (`--config FILE`): it listens on
//! `[proxy] listen` and connects each client to the first of
//! `[cluster] nodes`, which then authenticates the client itself.
//! `FORWARDER=tokio` (the default) runs one task per client on a
//! current-thread tokio runtime, the proxy's own runtime with one worker;
//! `FORWARDER=epoll` runs one thread over mio's edge-triggered epoll.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = match args.as_slice() {
        [_, flag, path] if flag == "--config" => path,
        _ => return Err("usage: bare_forwarder --config FILE".into()),
    };
    let config = switchyard::config::load(std::path::Path::new(path))?;
    let node = config
        .cluster
        .nodes
        .first()
        .ok_or("[cluster] nodes is empty")?;
    let (listen, upstream) = (config.proxy.listen.clone(), node.resolve().addr);
    match std::env::var("FORWARDER").as_deref() {
        Ok("epoll") => epoll_loop(&listen, &upstream)?,
        Ok("tokio") | Err(_) => tokio_loop(&listen, &upstream)?,
        Ok(other) => return Err(format!("FORWARDER={other}: tokio or epoll").into()),
    }
    Ok(())
}

/// One task per client, each reading either side and writing what it read
/// to the other: a forwarder written the ordinary way on tokio.
fn tokio_loop(listen: &str, upstream: &str) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (client, _) = listener.accept().await?;
            let upstream = upstream.to_string();
            tokio::spawn(async move {
                if let Ok(server) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio_pair(client, server).await;
                }
            });
        }
    })
}

async fn tokio_pair(
    mut client: tokio::net::TcpStream,
    mut server: tokio::net::TcpStream,
) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut c_rd, mut c_wr) = client.split();
    let (mut s_rd, mut s_wr) = server.split();
    let (mut c_buf, mut s_buf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        tokio::select! {
            biased;
            n = s_rd.read(&mut s_buf) => match n? {
                0 => return Ok(()),
                n => c_wr.write_all(&s_buf[..n]).await?,
            },
            n = c_rd.read(&mut c_buf) => match n? {
                0 => return Ok(()),
                n => s_wr.write_all(&c_buf[..n]).await?,
            },
        }
    }
}

/// A client and its server connection; tokens `2i + 1` and `2i + 2`.
struct Pair {
    client: mio::net::TcpStream,
    server: mio::net::TcpStream,
}

/// One thread over epoll: each readiness event reads its socket until a
/// short read (edge-triggered: a read shorter than the buffer drained it)
/// and writes what it read to the pair's other socket.
fn epoll_loop(listen: &str, upstream: &str) -> io::Result<()> {
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let addr = listen.parse().map_err(io::Error::other)?;
    let mut listener = mio::net::TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, Token(0), Interest::READABLE)?;
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in events.iter() {
            let token = event.token().0;
            if token == 0 {
                while let Ok((mut client, _)) = listener.accept() {
                    let server = std::net::TcpStream::connect(upstream)?;
                    server.set_nonblocking(true)?;
                    let mut server = mio::net::TcpStream::from_std(server);
                    client.set_nodelay(true)?;
                    server.set_nodelay(true)?;
                    let i = pairs.len();
                    let registry = poll.registry();
                    registry.register(&mut client, Token(2 * i + 1), Interest::READABLE)?;
                    registry.register(&mut server, Token(2 * i + 2), Interest::READABLE)?;
                    pairs.push(Some(Pair { client, server }));
                }
                continue;
            }
            let i = (token - 1) / 2;
            let Some(pair) = pairs[i].as_mut() else {
                continue;
            };
            let (from, to) = match token % 2 {
                1 => (&mut pair.client, &mut pair.server),
                _ => (&mut pair.server, &mut pair.client),
            };
            if !drain(from, to, &mut buf) {
                pairs[i] = None;
            }
        }
    }
}

/// Copies what `from` holds to `to`; false when either is done.
fn drain(from: &mut mio::net::TcpStream, to: &mut mio::net::TcpStream, buf: &mut [u8]) -> bool {
    loop {
        match from.read(buf) {
            Ok(0) => return false,
            Ok(n) => {
                if write_all(to, &buf[..n]).is_err() {
                    return false;
                }
                if n < buf.len() {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Writes all of `bytes`; a full socket is waited for with poll(2), which
/// this lab tool's small messages never meet.
fn write_all(to: &mut mio::net::TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match to.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut fd = libc::pollfd {
                    fd: to.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, for the call's duration.
                unsafe { libc::poll(&mut fd, 1, -1) };
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
