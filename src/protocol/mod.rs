//! The PostgreSQL wire protocol as far as the proxy needs it: framing (tag +
//! length, bounded before anything is buffered), a streaming scanner that lets
//! bytes be forwarded unchanged while only headers are inspected, and the few
//! messages whose bodies the proxy must read or write.
//!
//! Protocol reference: <https://www.postgresql.org/docs/current/protocol-message-formats.html>

pub mod buffer;
pub mod frame;
pub mod messages;
pub mod scanner;

pub use frame::{frame_len, FrameError};
pub use scanner::{whole_if, Hold, Scanner, Visit};
