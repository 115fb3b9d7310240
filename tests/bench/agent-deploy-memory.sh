#!/usr/bin/env bash
# Benchmark (prints figures, asserts nothing): the agent's resident memory
# around a deploy of a large release. The agent as packaged (profile agent,
# built for size), the rest release builds; a controller and one
# host (the agent with its own systemd --user manager, tests/fleet-lib.sh)
# on loopback. Prints the agent's VmRSS when idle, its peak while it
# downloads, verifies, unpacks and activates a release of SIZE_MB (default
# 100) MiB of incompressible data (sampled every 20 ms), and its VmRSS 15 s
# after the deploy ended (when tokio's idle blocking threads have exited).
#   bash tests/bench/agent-deploy-memory.sh            # SIZE_MB=100
# Needs root (as tests/local-fleet.sh does).
set -euo pipefail
cd "$(dirname "$0")/../.."
size_mb="${SIZE_MB:-100}"

cargo build --release -q -p fleet-controller -p fleetctl
cargo build --profile agent -q -p fleet-agent   # as packaged: built for size
cargo build --release -q -p fleet-tests --bin fleet-sample-app
source tests/fleet-lib.sh
bin="$PWD/target/release"
agent_bin="$PWD/target/agent/fleet-agent"
trap fleet_cleanup EXIT

start_controller
start_hosts 1
create_app >/dev/null
agent=$(pgrep -f "fleet-agent run --config $work/host-1/agent.toml")
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$agent/status"; }
# Anonymous (heap, stacks) and file-backed (the binary's pages in use) parts.
parts() { awk '/^RssAnon:/ {a=$2} /^RssFile:/ {f=$2} END {printf "anon %.1f MiB, file %.1f MiB", a/1024, f/1024}' "/proc/$agent/status"; }

# A small release first, so the app exists and runs; then idle.
release 1 >/dev/null
"$bin/fleetctl" deploy demo --release 1 --host web-1 >/dev/null
sleep 12
idle=$(rss)
idle_parts=$(parts)

d="$work/release-big"
mkdir -p "$d"
echo big >"$d/VERSION"
head -c "$((size_mb * 1024 * 1024))" /dev/urandom >"$d/blob"
tar -C "$d" -czf "$work/demo-big.tar.gz" .
"$bin/fleetctl" release push demo "$work/demo-big.tar.gz" --release big >/dev/null

peak_file="$work/peak"
echo 0 >"$peak_file"
(
    peak=0
    while kill -0 "$agent" 2>/dev/null; do
        r=$(awk '/^VmRSS:/ {print $2}' "/proc/$agent/status" 2>/dev/null || echo 0)
        if [ "$r" -gt "$peak" ]; then peak=$r; echo "$peak" >"$peak_file"; fi
        sleep 0.02
    done
) &
sampler=$!
t0=$(date +%s.%N)
"$bin/fleetctl" deploy demo --release big --host web-1 >/dev/null
t1=$(date +%s.%N)
sleep 0.2
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
peak=$(cat "$peak_file")
just_after=$(rss)
sleep 15
after=$(rss)
after_parts=$(parts)

awk -v ip="$idle_parts" -v ap="$after_parts" -v idle="$idle" -v peak="$peak" -v just="$just_after" -v after="$after" -v mb="$size_mb" -v t0="$t0" -v t1="$t1" 'BEGIN {
    printf "fleet-agent around a deploy of a %d MiB release (profile agent, as packaged):\n", mb
    printf "  idle before:          %.1f MiB (%s)\n", idle / 1024, ip
    printf "  peak during deploy:   %.1f MiB (deploy took %.1f s)\n", peak / 1024, t1 - t0
    printf "  right after:          %.1f MiB\n", just / 1024
    printf "  15 s after:           %.1f MiB (%s)\n", after / 1024, ap
}'
