#!/usr/bin/env bash
# Benchmark (prints figures, asserts nothing): the agent's idle resident
# memory and CPU. The agent as packaged (profile agent, built for size); a controller and one enrolled agent on
# loopback with the default 10 s heartbeat; after a 10 s warm-up, samples
# VmRSS every second and utime+stime from /proc over SECONDS (default 60).
#   bash tests/bench/agent-idle.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${1:-60}"

cargo build --release -q -p fleet-controller -p fleetctl
cargo build --profile agent -q -p fleet-agent   # as packaged: built for size
bin="$PWD/target/release"
agent_bin="$PWD/target/agent/fleet-agent"
work="$(mktemp -d /tmp/fleet-idle.XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$((20000 + RANDOM % 20000)); mport=$((port + 1))
"$bin/fleet-controller" init --data-dir "$work/controller" --san 127.0.0.1 \
    --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" >"$work/init.txt"
fingerprint="$(grep -o 'sha256:[0-9a-f]*' "$work/init.txt" | head -n1)"
"$bin/fleet-controller" serve --config "$work/controller/controller.toml" 2>"$work/controller.log" &
pids+=($!)
export FLEET_CONFIG="$work/controller/fleetctl.toml"
for _ in $(seq 50); do "$bin/fleetctl" whoami >/dev/null 2>&1 && break; sleep 0.2; done
token="$("$bin/fleetctl" token create --uses 1)"
cat >"$work/agent.toml" <<TOML
controller = "127.0.0.1:$port"
ca_fingerprint = "$fingerprint"
join_token = "$token"
state_dir = "$work/agent"
TOML
"$agent_bin" run --config "$work/agent.toml" 2>"$work/agent.log" &
agent=$!
pids+=($agent)
for _ in $(seq 50); do "$bin/fleetctl" hosts ls | grep -q connected && break; sleep 0.2; done
sleep 10

tick=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$agent/stat"; }
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$agent/status"; }
c0=$(cpu); t0=$(date +%s.%N); min=$(rss); max=$min
for _ in $(seq "$secs"); do
    sleep 1
    r=$(rss); [ "$r" -lt "$min" ] && min=$r; [ "$r" -gt "$max" ] && max=$r
done
c1=$(cpu); t1=$(date +%s.%N)
awk -v c="$((c1 - c0))" -v tick="$tick" -v t0="$t0" -v t1="$t1" -v min="$min" -v max="$max" 'BEGIN {
    wall = t1 - t0; cpu = c / tick
    printf "fleet-agent idle over %.1f s (profile agent as packaged, heartbeat 10 s):\n", wall
    printf "  resident memory: %.1f MiB min, %.1f MiB max\n", min / 1024, max / 1024
    printf "  CPU: %d ticks of 1/%d s = %.2f s = %.3f %% of one core", c, tick, cpu, 100 * cpu / wall
    if (c == 0) printf " (below one tick: under %.3f %%)", 100 / tick / wall
    printf "\n"
}'
