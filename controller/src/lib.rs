//! fleet-controller: holds the fleet's state, enrolls agents, keeps a live
//! mTLS stream to each, and serves the operator API. See ARCHITECTURE.md.

pub mod access;
pub mod apps;
pub mod artifacts;
pub mod audit;
pub mod auth;
pub mod authority;
pub mod ca;
pub mod check;
pub mod config;
pub mod connections;
pub mod dashboard;
pub mod dispatch;
pub mod enroll;
pub mod error;
pub mod events;
pub mod fleet;
pub mod forward;
pub mod grants;
pub mod init;
#[cfg(test)]
mod layering;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod operators;
pub mod ops;
pub mod owner;
pub mod paging;
pub mod peers;
pub mod process_stats;
pub mod ratelimit;
pub mod recover;
pub mod registry;
pub mod releases;
pub mod retire;
pub mod rollout_hub;
pub mod rollouts;
pub mod rotation;
pub mod secrets;
pub mod selector;
pub mod server;
pub mod store;
pub mod stream;
pub mod tasks;
pub mod tls;
pub mod watchdog;

pub use check::{check, CheckReport};
pub use config::Config;
pub use init::{init, InitOptions, InitReport};
pub use server::serve;

/// `N` bytes from the system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    // Invariant: the OS random source does not fail on Linux once booted;
    // if it did, continuing with zeros would be worse than stopping.
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .expect("system random source");
    out
}

/// `n` random bytes as lowercase hex (ids and secrets).
pub fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| random_bytes::<1>()[0]).collect();
    fleet_proto::transport::hex(&bytes)
}
