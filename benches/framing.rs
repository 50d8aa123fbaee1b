//! Micro-benchmarks of the relay's framing code: `frame_len` and
//! `Scanner::scan` over server reply streams. Run with
//! `cargo bench --bench framing`; throughput is reported in bytes/s.
//!
//! Three cases:
//! - `frame_len/pgbench_select`: split a buffer of many small frames (the
//!   replies pgbench `-S` gets: RowDescription, DataRow, CommandComplete,
//!   ReadyForQuery) frame by frame.
//! - `scan/pgbench_select`: the same stream through one `Scanner::scan` call
//!   that holds ReadyForQuery back whole and streams everything else.
//! - `scan/datarow_8k_stream`: 1 MiB of 8 KiB DataRows arriving in 16 KiB
//!   reads, the streaming case (headers straddle read boundaries).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchyard::protocol::{frame_len, Scanner, Visit};

/// Largest frame accepted, as the proxy's default `max_message_size`.
const MAX: usize = 256 * 1024 * 1024;
/// Replies in the small-frame buffer.
const REPLIES: usize = 1000;
/// Size of the streaming case's input.
const STREAM_BYTES: usize = 1024 * 1024;
/// Size of one DataRow's column value in the streaming case.
const ROW_VALUE: usize = 8 * 1024;
/// Size of one simulated socket read in the streaming case.
const READ_CHUNK: usize = 16 * 1024;

fn frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// RowDescription for one int4 column named `abalance`.
fn row_description() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&1i16.to_be_bytes()); // field count
    b.extend_from_slice(b"abalance\0");
    b.extend_from_slice(&16_397i32.to_be_bytes()); // table oid
    b.extend_from_slice(&3i16.to_be_bytes()); // column number
    b.extend_from_slice(&23i32.to_be_bytes()); // int4
    b.extend_from_slice(&4i16.to_be_bytes()); // type size
    b.extend_from_slice(&(-1i32).to_be_bytes()); // type modifier
    b.extend_from_slice(&0i16.to_be_bytes()); // text format
    b
}

/// A DataRow with one text column holding `value`.
fn data_row(value: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(6 + value.len());
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&(value.len() as i32).to_be_bytes());
    b.extend_from_slice(value);
    b
}

/// `REPLIES` replies to `SELECT abalance FROM pgbench_accounts WHERE aid = N`.
fn select_replies() -> Vec<u8> {
    let rd = row_description();
    let dr = data_row(b"-4172");
    let mut out = Vec::new();
    for _ in 0..REPLIES {
        frame(&mut out, b'T', &rd);
        frame(&mut out, b'D', &dr);
        frame(&mut out, b'C', b"SELECT 1\0");
        frame(&mut out, b'Z', b"I");
    }
    out
}

/// About 1 MiB of DataRows with 8 KiB values, then CommandComplete and ReadyForQuery.
fn big_row_stream() -> Vec<u8> {
    let dr = data_row(&[b'x'; ROW_VALUE]);
    let mut out = Vec::with_capacity(STREAM_BYTES + 64);
    while out.len() + dr.len() + 5 <= STREAM_BYTES {
        frame(&mut out, b'D', &dr);
    }
    frame(&mut out, b'C', b"SELECT 127\0");
    frame(&mut out, b'Z', b"I");
    out
}

/// Splits `buf` frame by frame; returns the number of frames.
fn split_all(buf: &[u8]) -> usize {
    let mut pos = 0;
    let mut frames = 0;
    while let Ok(Some(n)) = frame_len(&buf[pos..], MAX) {
        pos += n;
        frames += 1;
    }
    assert_eq!(pos, buf.len(), "stream must split exactly");
    frames
}

/// One `scan` over the whole buffer; returns (bytes forwarded, ReadyForQuery seen).
fn scan_once(buf: &[u8]) -> (usize, usize) {
    let mut scanner = Scanner::default();
    let mut ready = 0;
    let n = scanner
        .scan(
            buf,
            MAX,
            |t, _| switchyard::protocol::whole_if(t == b'Z'),
            |t, whole| {
                if t == b'Z' && whole.is_some() {
                    ready += 1;
                }
                Visit::Forward
            },
        )
        .unwrap_or(0);
    (n, ready)
}

/// Feeds `stream` in `READ_CHUNK` reads as the relay does: scan what has
/// arrived and is not yet forwarded, forward what the scanner allows.
fn scan_streaming(stream: &[u8]) -> usize {
    let mut scanner = Scanner::default();
    let mut forwarded = 0;
    let mut received = 0;
    let mut headers = 0;
    while forwarded < stream.len() {
        received = (received + READ_CHUNK).min(stream.len());
        let n = scanner
            .scan(
                &stream[forwarded..received],
                MAX,
                |t, _| switchyard::protocol::whole_if(t == b'Z'),
                |_, _| {
                    headers += 1;
                    Visit::Forward
                },
            )
            .unwrap_or(0);
        forwarded += n;
    }
    assert!(scanner.at_boundary());
    headers
}

fn framing(c: &mut Criterion) {
    let replies = select_replies();
    let stream = big_row_stream();
    assert_eq!(split_all(&replies), 4 * REPLIES);
    assert_eq!(scan_once(&replies), (replies.len(), REPLIES));
    assert_eq!(scan_streaming(&stream), split_all(&stream));

    let mut g = c.benchmark_group("frame_len");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(replies.len() as u64));
    g.bench_function("pgbench_select", |b| {
        b.iter(|| split_all(black_box(&replies)))
    });
    g.finish();

    let mut g = c.benchmark_group("scan");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(replies.len() as u64));
    g.bench_function("pgbench_select", |b| {
        b.iter(|| scan_once(black_box(&replies)))
    });
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("datarow_8k_stream", |b| {
        b.iter(|| scan_streaming(black_box(&stream)))
    });
    g.finish();
}

criterion_group!(benches, framing);
criterion_main!(benches);
