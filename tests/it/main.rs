//! End-to-end tests: the real fleet-controller, fleet-agent and fleetctl
//! binaries on loopback, real TLS, real sled, real systemd managers, a real
//! sshd. Run them all with `bash tests/run-all.sh` (it builds the binaries
//! and the packages they use first).

mod container;
mod harness;

mod access;
mod artifact_store;
mod artifacts;
mod audit;
mod bootstrap;
mod ci_recipe;
mod connections;
mod dashboard;
mod desired;
mod durability;
mod edge;
mod enrollment;
mod etcd_store;
mod events;
mod ha;
mod hook_units;
mod install_deps;
mod introspection;
mod labels;
mod lifecycle;
mod limits;
mod notify;
mod observability;
mod quotas;
mod readme_path;
mod refusals;
mod releases;
mod rollouts;
mod rotation;
mod sandbox;
mod signing;
mod sim;
mod stress;
mod watchdog;
