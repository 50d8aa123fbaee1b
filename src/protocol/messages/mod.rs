//! Messages whose bodies the proxy reads or writes. Everything else is forwarded
//! as opaque frames. Decoders take one isolated, length-checked frame body and
//! never panic on malformed input.

pub mod backend;
pub mod error_response;
pub mod extended;
pub mod password;
pub mod startup;
