#!/usr/bin/env bash
# Benchmark (prints figures, asserts nothing): HOSTS simulated hosts
# (default 100) fetch a release of SIZE_MB (default 100) from one
# controller at once: a rollout in one batch, each host downloading the
# artifact with its task's grant and checking its sha256 and size
# (fleet-sim --fetch; nothing is written to disk on the hosts' side).
# Prints the time until every host had it, the throughput, each host's
# fetch phase p50/p99, and the controller's RSS (before, and its peak
# sampled every 100 ms) and CPU during the downloads.
#   bash tests/bench/artifact-serving.sh            # HOSTS=100 SIZE_MB=100
set -euo pipefail
cd "$(dirname "$0")/../.."
hosts="${HOSTS:-100}"
size_mb="${SIZE_MB:-100}"

cargo build --release -q -p fleet-controller -p fleetctl -p fleet-sim
bin="$PWD/target/release"
work="$(mktemp -d /tmp/fleet-artifacts.XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -f "$work/payload" "$work/demo.tar.gz"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port="$(free_port)"
"$bin/fleet-controller" init --data-dir "$work/controller" --san 127.0.0.1 \
    --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$(free_port)" >"$work/init.txt"
fingerprint="$(grep -o 'sha256:[0-9a-f]*' "$work/init.txt" | head -n1)"
conf="$work/controller/controller.toml"
export FLEET_CONFIG="$work/controller/fleetctl.toml"
"$bin/fleet-controller" serve --config "$conf" 2>>"$work/controller.log" &
controller=$!
pids+=("$controller")
for _ in $(seq 100); do "$bin/fleetctl" whoami >/dev/null 2>&1 && break; sleep 0.1; done

token="$("$bin/fleetctl" token create --uses "$hosts" --ttl 1h --label role=sim)"
FLEET_SIM_TOKEN="$token" "$bin/fleet-sim" --controller "127.0.0.1:$port" --ca-fingerprint "$fingerprint" \
    --agents "$hosts" --label role=sim --phase-ms 0 --fetch --report-every 5s >"$work/sim.log" 2>&1 &
pids+=($!)
for _ in $(seq 600); do grep -q "^connected $hosts hosts" "$work/sim.log" && break; sleep 0.1; done
grep -q "^connected $hosts hosts" "$work/sim.log" || { echo "fleet-sim did not connect $hosts hosts:" >&2; tail -5 "$work/sim.log" >&2; exit 1; }

"$bin/fleetctl" app create demo --unit fleet-app-demo.service --selector role=sim --no-health >/dev/null
head -c "$((size_mb << 20))" /dev/urandom >"$work/payload"
tar -cf - -C "$work" payload | gzip -1 >"$work/demo.tar.gz"
artifact_mb=$(awk -v b="$(stat -c %s "$work/demo.tar.gz")" 'BEGIN {printf "%.1f", b / 1048576}')
"$bin/fleetctl" release push demo "$work/demo.tar.gz" --release 1.0.0 >/dev/null

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$controller/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$controller/stat"; }
rss_before=$(rss_kib)
( while kill -0 "$controller" 2>/dev/null; do rss_kib; sleep 0.1; done ) >"$work/rss.txt" 2>/dev/null &
sampler=$!
pids+=("$sampler")
t0=$(cpu_ticks)
start=$(date +%s.%N)
"$bin/fleetctl" rollout demo --release 1.0.0 --batch 100% --wait --output json >"$work/rollout.json" || true
end=$(date +%s.%N)
t1=$(cpu_ticks)
kill "$sampler" 2>/dev/null || true

python3 - "$work/rollout.json" "$hosts" "$artifact_mb" "$start" "$end" "$t0" "$t1" "$(getconf CLK_TCK)" \
    "$rss_before" "$work/rss.txt" <<'PY'
import json, sys
path, hosts, mb, start, end, t0, t1, hz, rss0, rss_file = sys.argv[1:]
r = json.load(open(path))
secs = float(end) - float(start)
fetches = sorted(p["duration_ms"] for b in r["batches"] for h in b["hosts"]
                 for p in h["timeline"] if p["phase"] == "fetch" and p["state"] == "ok")
pick = lambda q: fetches[min(len(fetches) - 1, int(q * len(fetches)))] if fetches else 0
peak = max([int(l) for l in open(rss_file) if l.strip()] or [0])
print("hosts:                  %s, each fetching a %s MB artifact at once (fleet-sim --fetch)" % (hosts, mb))
print("rollout:                %s, %d of %s hosts fetched and checked it" % (r["state"], len(fetches), hosts))
print("all done in:            %.1f s: %.0f MB/s served in all" % (secs, int(hosts) * float(mb) / secs))
print("fetch phase per host:   p50 %.1f s, p99 %.1f s" % (pick(0.5) / 1000, pick(0.99) / 1000))
print("controller RSS:         %d MiB before, %d MiB at its peak during the downloads" % (int(rss0) // 1024, peak // 1024))
print("controller CPU:         %.0f %% of one core over the rollout" % ((int(t1) - int(t0)) / int(hz) / secs * 100))
PY
echo "(logs in $work)"
