//! A plain socket's reads and writes as bare system calls.
//!
//! glibc's `recv` and `send` are thread cancellation points: in a process
//! with more than one thread, each call switches asynchronous cancellation
//! on and off around the system call, about 60 instructions, and a
//! transaction through the proxy makes four of them. Nothing here cancels
//! threads (tokio never does), so the same system call made through
//! `syscall(2)`, which is no cancellation point, does the same work.
//!
//! The functions keep tokio's contract for `try_io`: a `WouldBlock` error
//! means the socket had nothing (or no room), and tokio clears its
//! readiness.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::task::{ready, Context, Poll};

use bytes::{BufMut, BytesMut};
use tokio::io::{Interest, ReadBuf};
use tokio::net::TcpStream;

/// `recvfrom(fd, buf, len, 0, NULL, NULL)`: bytes read into `buf`.
fn recv(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes (uninitialised
    // bytes may be written); the kernel writes at most that many.
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd,
            buf.as_mut_ptr(),
            buf.len(),
            0,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `sendto(fd, buf, len, MSG_NOSIGNAL, NULL, 0)`: bytes written. Like
/// std's `send`, a peer that closed gives `EPIPE`, not `SIGPIPE`.
fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd,
            buf.as_ptr(),
            buf.len(),
            libc::MSG_NOSIGNAL,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::socklen_t,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// What the socket takes of `bytes` now, without waiting (`WouldBlock`
/// when nothing).
pub fn try_write(tcp: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    tcp.try_io(Interest::WRITABLE, || send(tcp.as_raw_fd(), bytes))
}

/// One read of what the socket holds into `buf`'s spare capacity, without
/// waiting (`WouldBlock` when nothing); see [`read_draining`].
pub fn try_read_buf(tcp: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let n = read_draining(tcp, buf.spare_capacity_mut())?;
    // SAFETY: the kernel initialised the first `n` spare bytes.
    unsafe { buf.advance_mut(n) };
    Ok(n)
}

/// `AsyncRead::poll_read` for a plain socket, as tokio's, through
/// [`read_draining`].
pub fn poll_read(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    loop {
        ready!(tcp.poll_read_ready(cx))?;
        // SAFETY: only the kernel writes the unfilled part, and only the
        // bytes it reports are marked filled.
        match read_draining(tcp, unsafe { buf.unfilled_mut() }) {
            Ok(n) => {
                // SAFETY: as above, the kernel initialised `n` bytes.
                unsafe { buf.assume_init(n) };
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// One `recv` into `into`. A read that came back short drained the
/// kernel's queue, as tokio's own `poll_read` assumes: tokio is told so
/// (it forgets the socket's readiness) and the bytes are kept. Kept, a
/// stale readiness would start the next wait with a read that can only
/// return `WouldBlock`: a wasted system call per transaction. Data
/// arriving after the read raises readiness anew, which this cannot clear.
fn read_draining(tcp: &TcpStream, into: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    let room = into.len();
    let mut short = None;
    let r = tcp.try_io(Interest::READABLE, || {
        let n = recv(tcp.as_raw_fd(), into)?;
        if 0 < n && n < room {
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (r, short) {
        (_, Some(n)) => Ok(n),
        (r, None) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn bytes_written_are_read_on_the_other_side_in_order() {
        let (a, mut b) = pair().await;
        a.writable().await.unwrap();
        assert_eq!(try_write(&a, b"hello").unwrap(), 5);
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");

        b.write_all(b"world!").await.unwrap();
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(b">");
        let mut read = 0;
        while read < 6 {
            a.readable().await.unwrap();
            match try_read_buf(&a, &mut buf) {
                Ok(n) => read += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(&buf[..], b">world!");
    }

    #[tokio::test]
    async fn an_empty_socket_would_block_and_a_closed_peer_reads_zero() {
        let (a, b) = pair().await;
        let mut buf = BytesMut::with_capacity(16);
        let e = try_read_buf(&a, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(b);
        let mut space = [0u8; 16];
        let mut rb = ReadBuf::new(&mut space);
        std::future::poll_fn(|cx| poll_read(&a, cx, &mut rb))
            .await
            .unwrap();
        assert_eq!(rb.filled().len(), 0, "EOF reads as 0 bytes");
    }

    #[tokio::test]
    async fn a_write_to_a_reset_peer_is_an_error_not_a_signal() {
        let (a, b) = pair().await;
        // Close with unread data pending makes the kernel send a reset.
        let _ = socket2::SockRef::from(&b).set_linger(Some(std::time::Duration::ZERO));
        drop(b);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut failed = false;
        for _ in 0..10 {
            a.writable().await.unwrap();
            match try_write(&a, &[0u8; 1024]) {
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "writing to a reset peer fails");
    }

    #[tokio::test]
    async fn poll_read_fills_after_what_the_buffer_holds() {
        let (a, mut b) = pair().await;
        b.write_all(b"abc").await.unwrap();
        let mut space = [0u8; 8];
        let mut rb = ReadBuf::new(&mut space);
        rb.put_slice(b"x");
        while rb.filled().len() < 4 {
            std::future::poll_fn(|cx| poll_read(&a, cx, &mut rb))
                .await
                .unwrap();
        }
        assert_eq!(rb.filled(), b"xabc");
    }
}
