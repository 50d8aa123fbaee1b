//! A client that plays a protocol conversation under a byte budget: it sends
//! real messages (a SCRAM or md5 login computed from the proxy's replies,
//! queries, pipelines, COPY) and stops dead after the first `budget` bytes,
//! so a test can then close, reset or stall the connection at that offset.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::{Buf, BufMut, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::startup_packet_with;

/// The byte budget ran out: the connection stopped mid-conversation.
#[derive(Debug)]
pub struct Cut;

/// A connection playing a conversation with at most `left` more bytes to send.
pub struct Scripted {
    pub stream: TcpStream,
    buf: BytesMut,
    left: usize,
    /// Bytes sent so far.
    pub sent: usize,
    /// Offsets where a message (or a group of messages sent at once) ended.
    pub marks: Vec<usize>,
    /// Startup parameters sent after `user` and `database`.
    extra: Vec<(String, String)>,
}

impl Scripted {
    pub async fn connect(addr: std::net::SocketAddr, budget: usize) -> Scripted {
        Scripted {
            stream: TcpStream::connect(addr).await.expect("connect to proxy"),
            buf: BytesMut::new(),
            left: budget,
            sent: 0,
            marks: vec![0],
            extra: vec![],
        }
    }

    /// Sends these startup parameters too, after `user` and `database`.
    pub fn with_params(mut self, params: &[(&str, &str)]) -> Scripted {
        self.extra = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    /// Sends `bytes`, or only as many as the budget allows and then `Cut`.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), Cut> {
        let n = bytes.len().min(self.left);
        if n > 0 {
            self.stream.write_all(&bytes[..n]).await.expect("send");
        }
        self.left -= n;
        self.sent += n;
        if n < bytes.len() {
            return Err(Cut);
        }
        self.marks.push(self.sent);
        Ok(())
    }

    /// Sends messages one after another (each ends at a mark).
    pub async fn send_all(&mut self, msgs: &[BytesMut]) -> Result<(), Cut> {
        for m in msgs {
            self.send(m).await?;
        }
        Ok(())
    }

    /// The next message, (tag, body). Panics on EOF or silence: before the
    /// cut, the conversation is valid and the proxy must answer it.
    pub async fn recv(&mut self) -> (u8, Vec<u8>) {
        loop {
            if let Some(msg) = super::take_message(&mut self.buf) {
                return msg;
            }
            let read =
                tokio::time::timeout(Duration::from_secs(20), self.stream.read_buf(&mut self.buf));
            match read.await {
                Ok(Ok(n)) if n > 0 => {}
                other => panic!("proxy stopped answering a valid conversation: {other:?}"),
            }
        }
    }

    /// One raw byte (the answer to SSLRequest / GSSENCRequest).
    pub async fn recv_byte(&mut self) -> u8 {
        if self.buf.is_empty() {
            self.stream.read_buf(&mut self.buf).await.expect("read");
        }
        let b = self.buf[0];
        self.buf.advance(1);
        b
    }

    /// Reads until a message with `tag`; an ErrorResponse before it panics.
    pub async fn until(&mut self, tag: u8) -> Vec<(u8, Vec<u8>)> {
        let mut seen = vec![];
        loop {
            let (t, body) = self.recv().await;
            assert!(
                t != b'E' || tag == b'E',
                "error in a valid conversation: {}",
                String::from_utf8_lossy(&body)
            );
            seen.push((t, body));
            if t == tag {
                return seen;
            }
        }
    }

    /// Plaintext startup, optionally after an SSLRequest (answered `N`) and a GSSENCRequest.
    pub async fn open(&mut self, negotiate: bool, user: &str, db: &str) -> Result<(), Cut> {
        if negotiate {
            self.send(&encryption_request(80877103)).await?;
            assert_eq!(self.recv_byte().await, b'N');
            self.send(&encryption_request(80877104)).await?;
            assert_eq!(self.recv_byte().await, b'N');
        }
        let mut params = vec![("user", user), ("database", db)];
        params.extend(self.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.send(&startup_packet_with(0, &params)).await
    }

    /// A SCRAM-SHA-256 login through to ReadyForQuery.
    pub async fn login_scram(&mut self, user: &str, password: &str, db: &str) -> Result<(), Cut> {
        self.open(true, user, db).await?;
        let (tag, body) = self.recv().await;
        assert_eq!(
            (tag, &body[..4]),
            (b'R', &10u32.to_be_bytes()[..]),
            "SASL offered"
        );
        let client_nonce = format!("nonce{}", rand_u64());
        let first_bare = format!("n=,r={client_nonce}");
        let mut init = BytesMut::new();
        init.put_slice(b"SCRAM-SHA-256\0");
        init.put_i32(first_bare.len() as i32 + 3);
        init.put_slice(b"n,,");
        init.put_slice(first_bare.as_bytes());
        self.send(&frame(b'p', &init)).await?;
        let (tag, body) = self.recv().await;
        assert_eq!(
            (tag, &body[..4]),
            (b'R', &11u32.to_be_bytes()[..]),
            "SASL continue"
        );
        let server_first = String::from_utf8(body[4..].to_vec()).unwrap();
        let final_msg = scram_final(password, &first_bare, &server_first);
        self.send(&frame(b'p', final_msg.as_bytes())).await?;
        self.until(b'Z').await;
        Ok(())
    }

    /// An md5 login through to ReadyForQuery.
    pub async fn login_md5(&mut self, user: &str, password: &str, db: &str) -> Result<(), Cut> {
        self.open(false, user, db).await?;
        let (tag, body) = self.recv().await;
        assert_eq!(
            (tag, &body[..4]),
            (b'R', &5u32.to_be_bytes()[..]),
            "md5 asked"
        );
        let inner = hex(&md5::Md5::digest(format!("{password}{user}").as_bytes()));
        let mut salted = inner.into_bytes();
        salted.extend_from_slice(&body[4..8]);
        let mut answer = format!("md5{}", hex(&md5::Md5::digest(&salted))).into_bytes();
        answer.push(0);
        self.send(&frame(b'p', &answer)).await?;
        self.until(b'Z').await;
        Ok(())
    }

    /// A simple query through to ReadyForQuery.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<(u8, Vec<u8>)>, Cut> {
        self.send(&query(sql)).await?;
        Ok(self.until(b'Z').await)
    }
}

/// SSLRequest (80877103) or GSSENCRequest (80877104).
fn encryption_request(code: i32) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_i32(8);
    out.put_i32(code);
    out
}

/// A tagged message.
pub fn frame(tag: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u8(tag);
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(body);
    out
}

/// A simple Query message.
pub fn query(sql: &str) -> BytesMut {
    frame(b'Q', &cstr(sql))
}

/// `s` NUL-terminated.
pub fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Parse of `sql` as statement `name`, no parameter types given.
pub fn parse(name: &str, sql: &str) -> BytesMut {
    let mut body = cstr(name);
    body.extend(cstr(sql));
    body.extend(0i16.to_be_bytes());
    frame(b'P', &body)
}

/// Bind of statement `stmt` to the unnamed portal with text parameters.
pub fn bind(stmt: &str, params: &[&str]) -> BytesMut {
    let mut body = cstr("");
    body.extend(cstr(stmt));
    body.extend(0i16.to_be_bytes());
    body.extend((params.len() as i16).to_be_bytes());
    for p in params {
        body.extend((p.len() as i32).to_be_bytes());
        body.extend(p.as_bytes());
    }
    body.extend(0i16.to_be_bytes());
    frame(b'B', &body)
}

/// Describe (`kind` S or P) or Close of `name`.
pub fn target(tag: u8, kind: u8, name: &str) -> BytesMut {
    let mut body = vec![kind];
    body.extend(cstr(name));
    frame(tag, &body)
}

/// Execute of the unnamed portal, all rows.
pub fn execute() -> BytesMut {
    frame(b'E', &[0, 0, 0, 0, 0])
}

fn scram_final(password: &str, first_bare: &str, server_first: &str) -> String {
    let field = |k: &str| {
        server_first
            .split(',')
            .find_map(|f| f.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} in {server_first}"))
            .to_string()
    };
    let (nonce, salt, iterations) = (field("r="), field("s="), field("i="));
    let salted = salted_password(password, &salt, iterations.parse().unwrap());
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{first_bare},{server_first},{without_proof}");
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(&client_key);
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(&signature)
        .map(|(a, b)| a ^ b)
        .collect();
    format!("{without_proof},p={}", STANDARD.encode(proof))
}

/// PBKDF2-HMAC-SHA256, cached: the proxy keeps one salt per user, and a
/// debug build would spend most of a test deriving the same key again.
fn salted_password(password: &str, salt_b64: &str, iterations: u32) -> Vec<u8> {
    type Keys = HashMap<(String, String, u32), Vec<u8>>;
    static CACHE: Mutex<Option<Keys>> = Mutex::new(None);
    let key = (password.to_string(), salt_b64.to_string(), iterations);
    if let Some(v) = CACHE
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .get(&key)
    {
        return v.clone();
    }
    let mut salt = STANDARD.decode(salt_b64).unwrap();
    salt.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password.as_bytes(), &salt);
    let mut out = u.clone();
    for _ in 1..iterations {
        u = hmac(password.as_bytes(), &u);
        out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
    }
    CACHE
        .lock()
        .unwrap()
        .as_mut()
        .unwrap()
        .insert(key, out.clone());
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn rand_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u64) << 32
}
