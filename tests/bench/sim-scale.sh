#!/usr/bin/env bash
# Benchmark (prints figures, asserts nothing): one controller (release
# build) and N simulated agents (tests/sim, fleet-sim) on loopback, with
# heartbeats every HEARTBEAT (default 10s):
#   - enrollment: N hosts with their own keys and CSRs, and the rate;
#   - the start: all N connected, in seconds;
#   - steady state: the controller's RSS per host, and its CPU over 60 s of
#     heartbeats;
#   - a reconnect storm: the controller killed (-9) and started again, all N
#     back, in seconds;
#   - a rollout to all N hosts in 10 % batches (phases take PHASE_MS,
#     default 0): total time and per batch; the same with nobody watching;
#   - heartbeat delay p50/p99 over the steady state (the controller's
#     fleet_heartbeat_delay_seconds) and task fan-out p50/p99 (a rollout in
#     one batch of every host: each task's arrival, as fleet-sim notes it);
#   - reads at this size: hosts ls, app show, rollout ls/show, dashboard.
#   N=1000 bash tests/bench/sim-scale.sh     # ROLLOUT=0: stop before the rollouts
#   STORE=etcd N=1000 bash tests/bench/sim-scale.sh   # the store on a local
#                                             # one-member etcd (etcd-server)
# Needs nothing but the repository (and the open-file limit to allow 2N);
# STORE=etcd needs Debian's etcd-server (tests/deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/../.."
n="${N:-1000}"
heartbeat="${HEARTBEAT:-10s}"
phase_ms="${PHASE_MS:-0}"

cargo build --release -q -p fleet-controller -p fleetctl -p fleet-sim
bin="$PWD/target/release"
work="$(mktemp -d /tmp/fleet-sim.XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port="$(free_port)"
mport="$(free_port)"
store_args=()
store="${STORE:-sled}"
if [ "$store" = etcd ]; then
    command -v etcd >/dev/null || { echo "STORE=etcd needs etcd: bash tests/deps.sh" >&2; exit 1; }
    eport="$(free_port)"
    epeer="$(free_port)"
    etcd --name bench --data-dir "$work/etcd" \
        --listen-client-urls "http://127.0.0.1:$eport" --advertise-client-urls "http://127.0.0.1:$eport" \
        --listen-peer-urls "http://127.0.0.1:$epeer" --initial-advertise-peer-urls "http://127.0.0.1:$epeer" \
        --initial-cluster "bench=http://127.0.0.1:$epeer" --max-request-bytes 33554432 \
        --logger zap --log-level warn 2>"$work/etcd.log" &
    pids+=($!)
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$eport/health" >/dev/null 2>&1 && break; sleep 0.1; done
    store_args=(--etcd "http://127.0.0.1:$eport")
fi
"$bin/fleet-controller" init --data-dir "$work/controller" --san 127.0.0.1 \
    --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" "${store_args[@]}" >"$work/init.txt"
fingerprint="$(grep -o 'sha256:[0-9a-f]*' "$work/init.txt" | head -n1)"
conf="$work/controller/controller.toml"
sed -i "s/^heartbeat_interval = .*/heartbeat_interval = \"$heartbeat\"/" "$conf"
cat >>"$conf" <<'TOML'

[limits]
enroll_per_source = { burst = 1000000, per_minute = 10000000 }
enroll_per_token = { burst = 1000000, per_minute = 10000000 }
TOML
export FLEET_CONFIG="$work/controller/fleetctl.toml"

serve() {
    "$bin/fleet-controller" serve --config "$conf" 2>>"$work/controller.log" &
    controller=$!
    pids+=("$controller")
    for _ in $(seq 100); do "$bin/fleetctl" whoami >/dev/null 2>&1 && break; sleep 0.1; done
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$controller/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$controller/stat"; }
serve
base_rss=$(rss_kib)

token="$("$bin/fleetctl" token create --uses "$n" --ttl 1h --label role=sim)"
FLEET_SIM_TOKEN="$token" "$bin/fleet-sim" --controller "127.0.0.1:$port" --ca-fingerprint "$fingerprint" \
    --agents "$n" --label role=sim --phase-ms "$phase_ms" --enroll-concurrency 128 --report-every 1s \
    --task-log "$work/tasks.log" \
    >"$work/sim.log" 2>&1 &
sim=$!
pids+=("$sim")
wait_line() { # pattern, seconds
    for _ in $(seq $(($2 * 10))); do grep -q "$1" "$work/sim.log" && return 0; sleep 0.1; done
    echo "fleet-sim printed no '$1' within $2 s:" >&2
    tail -5 "$work/sim.log" >&2
    exit 1
}
wait_line "^connected $n hosts" 1200
enrolled=$(grep "^enrolled" "$work/sim.log")
connected=$(grep "^connected $n hosts" "$work/sim.log")

# Steady state: 60 s of heartbeats.
sleep 5
rss=$(rss_kib)
quantiles=(python3 tests/bench/quantiles.py)
"${quantiles[@]}" histogram "$mport" fleet_heartbeat_delay_seconds >"$work/beats0.json"
t0=$(cpu_ticks)
sleep "${STEADY:-60}"
t1=$(cpu_ticks)
"${quantiles[@]}" histogram "$mport" fleet_heartbeat_delay_seconds >"$work/beats1.json"
beat_delay=$("${quantiles[@]}" between "$work/beats0.json" "$work/beats1.json")
hz=$(getconf CLK_TCK)
cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" -v s="${STEADY:-60}" 'BEGIN {printf "%.1f", (b - a) / hz / s * 100}')
per_host=$(awk -v r="$rss" -v b="$base_rss" -v n="$n" 'BEGIN {printf "%.1f", (r - b) / n}')

# The reconnect storm: the restarted controller's own count of open agent
# streams (it starts at 0) until it is N again.
connected_now() {
    python3 -c 'import sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode()
print(next((l.split()[1] for l in text.splitlines() if l.startswith("fleet_agents_connected ")), "0"))' "$mport" 2>/dev/null || echo 0
}
kill -9 "$controller"
wait "$controller" 2>/dev/null || true
storm_start=$(date +%s.%N)
serve
for _ in $(seq 3000); do
    [ "$(connected_now)" = "$n" ] && break
    sleep 0.2
done
storm=$(awk -v s="$storm_start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')

# What every run prints first.
summary() {
    echo "hosts:                         $n (heartbeat every $heartbeat), store: $store"
    echo "$enrolled" | sed 's/^/enrollment:                    /'
    echo "$connected" | sed 's/^/start:                         /'
    echo "controller RSS:                $((base_rss / 1024)) MiB empty, $((rss / 1024)) MiB with $n hosts: $per_host KiB per host"
    echo "controller CPU, heartbeats:    $cpu % of one core over ${STEADY:-60} s"
    echo "heartbeat delay (sampled to taken in): $beat_delay"
    echo "reconnect storm (kill -9):     all $n back in about $storm s after the restart began"
}

# Reads at this size: each command once, its time, the size of what it
# printed, and its error when it failed.
token_admin=$(sed -n 's/^token = "\(.*\)"$/\1/p' "$FLEET_CONFIG")
ca=$(sed -n 's/^ca = "\(.*\)"$/\1/p' "$FLEET_CONFIG")
read_line() { # label, command...
    local label="$1" t0 t1 rc=0
    shift
    t0=$(date +%s.%N)
    "$@" >"$work/read.out" 2>"$work/read.err" || rc=$?
    t1=$(date +%s.%N)
    printf '%-31s%s\n' "$label" "$(awk -v s="$t0" -v e="$t1" -v b="$(stat -c %s "$work/read.out")" -v rc="$rc" \
        'BEGIN {printf "%.2f s, %.0f KB printed%s", e - s, b / 1000, rc ? ", FAILED (exit " rc "):" : ""}') \
        $( [ "$rc" = 0 ] || head -c 300 "$work/read.err" | tr '\n' ' ')"
}
page() { curl -sS --fail-with-body --cacert "$ca" -b "fleet_ui=$token_admin" "https://127.0.0.1:$port$1"; }
reads() {
    read_line "hosts ls:" "$bin/fleetctl" hosts ls
    read_line "hosts ls --output json:" "$bin/fleetctl" hosts ls --output json
    read_line "app show demo:" "$bin/fleetctl" app show demo
    read_line "rollout ls:" "$bin/fleetctl" rollout ls
    read_line "rollout show (the last):" "$bin/fleetctl" rollout show "$id"
    read_line "dashboard /ui/hosts:" page /ui/hosts
    read_line "dashboard /ui/apps/demo:" page /ui/apps/demo
    read_line "dashboard /ui/rollouts/ID:" page "/ui/rollouts/$id"
}

if [ "${ROLLOUT:-1}" = 0 ]; then
    summary
    read_line "hosts ls:" "$bin/fleetctl" hosts ls
    read_line "hosts ls --output json:" "$bin/fleetctl" hosts ls --output json
    read_line "dashboard /ui/hosts:" page /ui/hosts
    echo "(no rollout: ROLLOUT=0; logs in $work)"
    exit 0
fi

# A rollout to every host in 10 % batches.
"$bin/fleetctl" app create demo --unit fleet-app-demo.service --selector role=sim --no-health >/dev/null
head -c 1024 /dev/urandom >"$work/payload"
tar -czf "$work/demo.tar.gz" -C "$work" payload
"$bin/fleetctl" release push demo "$work/demo.tar.gz" --release 1.0.0 >/dev/null
start=$(date +%s.%N)
"$bin/fleetctl" rollout demo --release 1.0.0 --batch 10% --wait --output json >"$work/rollout.json" || true
rollout_s=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.2f", e - s}')
batches_of() {
    python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
print(r["state"] + "; batches took " + ", ".join("%.1f" % ((b["ended_at_ms"] - b["started_at_ms"]) / 1000) for b in r["batches"]) + " s")' "$1" 2>/dev/null ||
        echo "no record printed (fleetctl failed; see $work)"
}
batches=$(batches_of "$work/rollout.json")

# The same again to 2.0.0 with nobody watching the rollout's stream (its
# end polled once a second): what the watch itself costs.
"$bin/fleetctl" release push demo "$work/demo.tar.gz" --release 2.0.0 >/dev/null
start=$(date +%s.%N)
id=$("$bin/fleetctl" rollout demo --release 2.0.0 --batch 10% --output json | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
while :; do
    "$bin/fleetctl" rollout show "$id" --output json >"$work/rollout2.json" 2>"$work/show.err" || {
        echo "rollout show failed: $(head -c 300 "$work/show.err")" >&2
        break
    }
    python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["ended_at_ms"] else 1)' "$work/rollout2.json" && break
    sleep 1
done
unwatched_s=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.2f", e - s}')
unwatched=$(batches_of "$work/rollout2.json")

# Fan-out: a rollout of 3.0.0 to every host in one batch, each task's
# arrival at its host after the command began.
"$bin/fleetctl" release push demo "$work/demo.tar.gz" --release 3.0.0 >/dev/null
fan_start=$(date +%s%3N)
"$bin/fleetctl" rollout demo --release 3.0.0 --batch 100% --wait --output json >"$work/rollout3.json" 2>"$work/rollout3.err" || true
fanout=$("${quantiles[@]}" arrivals "$work/tasks.log" "$fan_start")

summary
echo "task fan-out, one batch of all: $fanout"
echo "rollout, 10 % batches:         $rollout_s s in all, phases of $phase_ms ms, followed with --wait: $batches"
echo "the same, nobody watching:     about $unwatched_s s in all (polled every 1 s): $unwatched"
reads
echo "(logs in $work)"
