#!/usr/bin/env bash
# The main job, on the embedded defaults: a local fleet on loopback.
# Starts a controller and three agents (each with its own state dir), enrolls
# them with a join token, and lists them with fleetctl. Ctrl-C (or the end of
# the script with --once) stops everything; the work dir with every log stays.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins
bin="$PWD/target/debug"
work="$(mktemp -d /tmp/fleet-local.XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "stopped; logs and state are in $work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }
port="$(free_port)"
mport="$(free_port)"

"$bin/fleet-controller" init --data-dir "$work/controller" --san 127.0.0.1 \
    --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" | tee "$work/init.txt"
fingerprint="$(grep -o 'sha256:[0-9a-f]*' "$work/init.txt" | head -n1)"
# Heartbeats every 2 s instead of 10 s, so the listing shows metrics quickly.
sed -i 's/^heartbeat_interval = .*/heartbeat_interval = "2s"/' "$work/controller/controller.toml"
"$bin/fleet-controller" serve --config "$work/controller/controller.toml" 2>"$work/controller.log" &
pids+=($!)

export FLEET_CONFIG="$work/controller/fleetctl.toml"
for _ in $(seq 50); do "$bin/fleetctl" whoami >/dev/null 2>&1 && break; sleep 0.2; done
"$bin/fleetctl" whoami

token="$("$bin/fleetctl" token create --label env=demo --uses 3 --ttl 10m --description "local fleet")"
for i in 1 2 3; do
    mkdir -p "$work/web-$i"
    cat >"$work/web-$i/agent.toml" <<TOML
controller = "127.0.0.1:$port"
ca_fingerprint = "$fingerprint"
join_token = "$token"
state_dir = "$work/web-$i/state"
hostname = "web-$i"
[labels]
role = "api"
TOML
    "$bin/fleet-agent" run --config "$work/web-$i/agent.toml" 2>"$work/web-$i/agent.log" &
    pids+=($!)
done

echo "waiting for three connected hosts with heartbeats..."
for _ in $(seq 100); do
    n="$("$bin/fleetctl" hosts ls --output json | grep -o '"status":"connected"' | wc -l || true)"
    [ "$n" -ge 3 ] && break
    sleep 0.3
done
sleep 2.5
"$bin/fleetctl" hosts ls
"$bin/fleetctl" token ls --all
echo
echo "metrics: curl -s http://127.0.0.1:$mport/metrics | grep fleet_"
if [ "${1:-}" != "--once" ]; then
    echo "the fleet runs; in another shell: FLEET_CONFIG=$FLEET_CONFIG $bin/fleetctl hosts ls"
    echo "press Ctrl-C to stop"
    wait
fi
