//! Hostile and broken clients: each gets an ErrorResponse with the right
//! SQLSTATE or a clean close, and a well-behaved client still works afterwards.

mod common;

use std::time::Duration;

use common::{error_code, Proxy, Raw};

async fn still_serves(proxy: &Proxy) {
    let c = proxy.client().await;
    c.batch_execute("SELECT 1")
        .await
        .expect("a normal client still works");
}

/// Sends `bytes` as the first thing on a connection; returns the first message's
/// tag and SQLSTATE (if an error) and whether the proxy then closed the socket.
async fn first_reply(proxy: &Proxy, bytes: &[u8]) -> (Option<u8>, String, bool) {
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(bytes).await;
    let reply = raw.recv().await;
    let closed = raw.closed_within(5).await;
    match reply {
        Some((tag, body)) => (
            Some(tag),
            if tag == b'E' {
                error_code(&body)
            } else {
                String::new()
            },
            closed,
        ),
        None => (None, String::new(), closed),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_startup_packets_are_refused_cleanly() {
    let proxy = Proxy::start("auth_type = \"trust\"").await;
    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("zero length", vec![0, 0, 0, 0, 0, 3, 0, 0], "08P01"),
        (
            "negative length",
            vec![0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0],
            "08P01",
        ),
        ("oversized length", vec![0x7f, 0, 0, 0, 0, 3, 0, 0], "08P01"),
        (
            "unknown protocol",
            [
                &12u32.to_be_bytes()[..],
                &(9u32 << 16).to_be_bytes(),
                &[0, 0, 0, 0],
            ]
            .concat(),
            "0A000",
        ),
        (
            "garbage",
            [&12u32.to_be_bytes()[..], b"GET / HTTP/1.1"].concat(),
            "0A000",
        ),
        (
            "no user",
            [&9u32.to_be_bytes()[..], &(3u32 << 16).to_be_bytes(), &[0]].concat(),
            "28000",
        ),
    ];
    for (name, bytes, code) in cases {
        let (tag, got, closed) = first_reply(&proxy, &bytes).await;
        assert_eq!((tag, got.as_str()), (Some(b'E'), code), "{name}");
        assert!(closed, "{name}: connection closed");
    }
    still_serves(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_at_login_is_timed_out() {
    let proxy = Proxy::start("client_login_timeout = \"500ms\"").await;
    // Half a startup packet, then silence.
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(&[0, 0, 0, 40, 0, 3]).await;
    let started = std::time::Instant::now();
    let reply = raw.recv().await;
    assert!(matches!(reply, Some((b'E', _))), "got {reply:?}");
    assert!(raw.closed_within(2).await);
    assert!(started.elapsed() < Duration::from_secs(3));
    // A client that connects and sends nothing at all.
    let mut silent = Raw::connect(proxy.addr).await;
    assert!(silent.closed_within(3).await);
    still_serves(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gssenc_requests_get_n_and_newer_minor_versions_are_negotiated() {
    let proxy = Proxy::start("auth_type = \"trust\"").await;
    for code in [80_877_103u32, 80_877_104] {
        let mut raw = Raw::connect(proxy.addr).await;
        raw.send(&[&8u32.to_be_bytes()[..], &code.to_be_bytes()].concat())
            .await;
        let mut n = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut raw.stream, &mut n)
            .await
            .unwrap();
        assert_eq!(&n, b"N");
        raw.startup(0, "app", "app").await;
        assert_eq!(raw.until_ready().await.1, Some(b'I'));
    }
    let mut raw = Raw::connect(proxy.addr).await;
    raw.startup(2, "app", "app").await;
    let (msgs, status) = raw.until_ready().await;
    assert_eq!(
        msgs.first().map(|m| m.0),
        Some(b'v'),
        "NegotiateProtocolVersion first"
    );
    assert_eq!(&msgs[0].1[..4], &0u32.to_be_bytes(), "we speak 3.0");
    assert_eq!(status, Some(b'I'));
    raw.query("SELECT 1").await;
    assert_eq!(raw.until_ready().await.1, Some(b'I'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_messages_after_login_close_only_that_client() {
    let proxy = Proxy::start("auth_type = \"trust\"\nmax_message_size = 65536").await;
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("length below 4", vec![b'Q', 0, 0, 0, 2], "08P01"),
        (
            "negative length",
            vec![b'Q', 0xff, 0xff, 0xff, 0xff],
            "08P01",
        ),
        (
            "over max_message_size",
            [&[b'Q'][..], &(1u32 << 20).to_be_bytes()].concat(),
            "08P01",
        ),
        ("unknown message type", vec![b'!', 0, 0, 0, 4], "08P01"),
    ];
    let bystander = proxy.client().await;
    for (name, bytes, code) in cases {
        let mut raw = Raw::connect(proxy.addr).await;
        raw.startup(0, "app", "app").await;
        assert_eq!(raw.until_ready().await.1, Some(b'I'));
        raw.send(&bytes).await;
        let reply = raw.recv().await;
        assert_eq!(
            reply.as_ref().map(|r| (r.0, error_code(&r.1))),
            Some((b'E', code.to_string())),
            "{name}"
        );
        assert!(raw.closed_within(5).await, "{name}: closed");
        bystander
            .batch_execute("SELECT 1")
            .await
            .expect("other clients are unaffected");
    }
    // A lying length in the middle of a transaction: the server connection is
    // discarded, not returned dirty, and the pool still works.
    let mut raw = Raw::connect(proxy.addr).await;
    raw.startup(0, "app", "app").await;
    raw.until_ready().await;
    raw.query("BEGIN").await;
    assert_eq!(raw.until_ready().await.1, Some(b'T'));
    raw.send(&[b'Q', 0, 0, 0, 1]).await;
    assert_eq!(
        raw.recv().await.map(|r| error_code(&r.1)),
        Some("08P01".to_string())
    );
    still_serves(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_garbage_connections_leave_the_proxy_healthy() {
    let proxy = Proxy::start("auth_type = \"trust\"\nclient_login_timeout = \"1s\"").await;
    let mut tasks = vec![];
    for i in 0..50u32 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let mut raw = Raw::connect(addr).await;
            let junk: Vec<u8> = (0..64).map(|j| (i * 31 + j * 7) as u8).collect();
            let _ = tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &junk).await;
            raw.closed_within(5).await
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap(), "every garbage connection is closed");
    }
    still_serves(&proxy).await;
}
