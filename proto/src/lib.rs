//! fleet's wire contract: the generated gRPC types of `proto/fleet.proto`
//! (package `fleet.v1`), and [`transport`], the TLS every side speaks.
//!
//! The transport lives here, beside the messages, because it is part of the
//! contract: which ALPN, how the CA is pinned, how a connection is dialled.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("fleet.v1");
}

pub mod transport;

pub use v1::*;

/// Milliseconds since the Unix epoch, the unit of every timestamp on the wire.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
