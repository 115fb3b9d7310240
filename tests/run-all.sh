#!/usr/bin/env bash
# Every test: unit tests and the end-to-end tests that run the real binaries
# (real TLS, sled, systemd user managers, sshd, packages). Installs the
# Debian packages they need when missing (run as root), builds the binaries
# and the .deb packages the tests use, then runs them all.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
bash tests/deps.sh
cargo build --workspace --bins
bash packaging/build-debs.sh
cargo test --workspace
