//! End-to-end tests: the real fleet-controller, fleet-agent and fleetctl
//! binaries on loopback, real TLS, real sled. Build the binaries first:
//! `cargo build --workspace --bins && cargo test --workspace`.

mod harness;

mod audit;
mod bootstrap;
mod enrollment;
mod lifecycle;
mod refusals;
mod releases;
mod rollouts;
mod sandbox;
mod watchdog;
