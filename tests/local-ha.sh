#!/usr/bin/env bash
# Three controllers of one fleet on a 3-member etcd cluster, on loopback:
#   1. a 3-member etcd cluster (Debian's etcd-server),
#   2. controller A (init --etcd) and B, C (join: A's CA and keys, their own
#      certificates); B and C follow: they forward what they are asked to A and copy its releases,
#   3. four hosts, each with its own systemd, that know all three controllers,
#   4. roll v1 out, then v2 one host at a time, watched live, and kill -9 the
#      serving controller in the middle: a follower takes over, the hosts and
#      the watch follow it, and the rollout finishes, each host once.
# Needs root and Debian's systemd, dbus, util-linux, etcd-server.
# Ctrl-C (or the end, with --once) stops everything; the work dir stays.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/deps.sh
cargo build --workspace --bins
source tests/fleet-lib.sh
source tests/etcd-lib.sh
trap 'stop_etcd_cluster; fleet_cleanup; echo "stopped; logs and state are in $work"' EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. a 3-member etcd cluster"
start_etcd_cluster 3
echo "etcd members on ports ${etcd_client_ports[*]}"

step "2. controller A (init), B and C (join), on the same etcd"
start_three_controllers fleet/local-ha/ 2s
controllers="${caddr[a]},${caddr[b]},${caddr[c]}"
sed "s|^controller = .*|controller = \"$controllers\"|" "$work/a/fleetctl.toml" >"$work/fleetctl.toml"
chmod 600 "$work/fleetctl.toml"
export FLEET_CONFIG="$work/fleetctl.toml"
for _ in $(seq 50); do "$bin/fleetctl" whoami >/dev/null 2>&1 && break; sleep 0.2; done
sleep 1
"$bin/fleet-controller" members --config "$work/a/controller.toml"

step "3. four hosts, each with its own systemd, knowing all three controllers"
start_hosts 4
"$bin/fleetctl" hosts ls
create_app --health-timeout 5s --settle 2s

step "4. v1 everywhere, then v2 one host at a time; the serving controller is killed mid-rollout"
release 1.0.0
"$bin/fleetctl" rollout demo --release 1.0.0 --batch 100% --wait
release 2.0.0
"$bin/fleetctl" rollout demo --release 2.0.0 --batch 1 --wait --watch &
watch_pid=$!
sleep 5
serving_name=""
for n in a b c; do
    if "$bin/fleet-controller" members --json --config "$work/$n/controller.toml" 2>/dev/null |
        grep '"role":"serving"' | grep -q "\"addr\":\"${caddr[$n]}\""; then
        serving_name="$n"
    fi
done
[ -n "$serving_name" ] || { echo "no controller serves" >&2; exit 1; }
echo ">>> kill -9 controller $serving_name (${caddr[$serving_name]}, the one serving) at $(date +%T.%N | cut -c1-12)"
kill -9 "${cpid[$serving_name]}"
killed_at=$(date +%s%N)
for _ in $(seq 200); do
    n="$("$bin/fleetctl" hosts ls --output json 2>/dev/null | grep -Eo '"status": *"connected"' | wc -l || true)"
    [ "$n" -ge "$hosts" ] && break
    sleep 0.2
done
echo ">>> all $hosts hosts connected to the new controller $(( ($(date +%s%N) - killed_at) / 1000000 )) ms after the kill"
wait "$watch_pid"
serving
others=(a b c)
for n in "${others[@]}"; do [ "$n" != "$serving_name" ] && config_of_live="$work/$n/controller.toml"; done
"$bin/fleet-controller" members --config "$config_of_live"
echo ">>> the rollout, finished by the controller that took over:"
"$bin/fleetctl" rollout status demo

echo
if [ "${1:-}" != "--once" ]; then
    echo "the fleet runs; in another shell: FLEET_CONFIG=$FLEET_CONFIG $bin/fleetctl hosts ls"
    echo "press Ctrl-C to stop"
    wait
fi
