#!/usr/bin/env bash
# Benchmark (prints figures, asserts nothing): failover between three
# controllers (release build) of one fleet on a 3-member etcd cluster on
# loopback, with N simulated agents (fleet-sim) that know all three:
#   - each controller's RSS: the serving one with N hosts, the followers
#     (which hold and forward the connections of the hosts that dialed them);
#   - kill -9 of the serving controller: when a follower serves (its log),
#     and when all N hosts are connected to it (its fleet_agents_connected).
#   N=1000 bash tests/bench/failover.sh
# Needs Debian's etcd-server (tests/deps.sh installs it) and the open-file
# limit to allow 2N.
set -euo pipefail
cd "$(dirname "$0")/../.."
n="${N:-1000}"
heartbeat="${HEARTBEAT:-10s}"

cargo build --release -q -p fleet-controller -p fleetctl -p fleet-sim
bin="$PWD/target/release"
work="$(mktemp -d /tmp/fleet-failover.XXXXXX)"
pids=()
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
source tests/etcd-lib.sh
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    stop_etcd_cluster
    wait 2>/dev/null || true
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

start_etcd_cluster 3
controller_extra='[limits]
enroll_per_source = { burst = 1000000, per_minute = 10000000 }
enroll_per_token = { burst = 1000000, per_minute = 10000000 }'
start_three_controllers fleet/bench/ "$heartbeat"
export FLEET_CONFIG="$work/a/fleetctl.toml"
for _ in $(seq 100); do "$bin/fleetctl" whoami >/dev/null 2>&1 && break; sleep 0.1; done

connected_on() { # name
    python3 -c 'import sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode()
print(next((l.split()[1] for l in text.splitlines() if l.startswith("fleet_agents_connected ")), "0"))' "${mport[$1]}" 2>/dev/null || echo 0
}
rss_mib() { awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/${cpid[$1]}/status"; }

token="$("$bin/fleetctl" token create --uses "$n" --ttl 1h --label role=sim)"
FLEET_SIM_TOKEN="$token" "$bin/fleet-sim" --controller "${caddr[a]},${caddr[b]},${caddr[c]}" \
    --ca-fingerprint "$fingerprint" --agents "$n" --label role=sim --enroll-concurrency 128 --report-every 1s \
    >"$work/sim.log" 2>&1 &
pids+=($!)
for _ in $(seq 12000); do grep -q "^connected $n hosts" "$work/sim.log" && break; sleep 0.1; done
grep -q "^connected $n hosts" "$work/sim.log" || { echo "fleet-sim did not connect $n hosts:" >&2; tail -5 "$work/sim.log" >&2; exit 1; }
sleep 5
echo "hosts:            $n (heartbeat every $heartbeat), 3 controllers on a 3-member etcd"
forwarded_on() { # name
    python3 -c 'import sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode()
print(next((l.split()[1] for l in text.splitlines() if l.startswith("fleet_controller_forwarded_connections ")), "0"))' "${mport[$1]}" 2>/dev/null || echo 0
}
echo "RSS:              serving a: $(rss_mib a) MiB; followers b: $(rss_mib b) MiB, c: $(rss_mib c) MiB"
echo "forwarded:        b holds $(forwarded_on b) hosts' connections, c $(forwarded_on c) (the rest dialed a)"

kill -9 "${cpid[a]}"
killed=$(date +%s.%N)
next=""
for _ in $(seq 600); do
    for c in b c; do grep -q "fleet-controller serving" "$work/$c.log" && next="$c"; done
    [ -n "$next" ] && break
    sleep 0.05
done
[ -n "$next" ] || { echo "no follower served within 30 s" >&2; exit 1; }
served=$(date +%s.%N)
for _ in $(seq 3000); do
    [ "$(connected_on "$next")" = "$n" ] && break
    sleep 0.1
done
back=$(date +%s.%N)
awk -v k="$killed" -v s="$served" -v b="$back" -v n="$n" -v c="$next" 'BEGIN {
    printf "failover (kill -9 of the serving controller): %s served %.1f s after the kill; all %d hosts connected to it %.1f s after the kill\n", c, s - k, n, b - k }'
echo "RSS after:        $next: $(rss_mib "$next") MiB with $(connected_on "$next") hosts"
