#!/usr/bin/env bash
# The main job, on the embedded defaults: a local fleet on loopback that does
# real rollouts. A controller and three hosts, each a fleet-agent with its own
# real systemd manager running the sample app (tests/fleet-lib.sh). Then:
#   1. push v1 and roll it out,
#   2. push v2 and roll it out one host at a time, with live progress,
#   3. push a broken v3 (unhealthy on the last host) and watch the rollout
#      fail that host and roll the changed ones back by itself,
#   4. roll the whole fleet back to v1 (one release for every host), restart
#      the controller, and see that the rollback sticks.
# Needs root (mount namespaces) and Debian's systemd, dbus and util-linux.
# Ctrl-C (or the end, with --once) stops everything; the work dir stays.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/deps.sh
cargo build --workspace --bins
source tests/fleet-lib.sh
trap 'fleet_cleanup; echo "stopped; logs and state are in $work"' EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "controller"
start_controller
"$bin/fleetctl" whoami

step "three hosts, each with its own systemd"
start_hosts 3
"$bin/fleetctl" hosts ls

step "the app: unit fleet-app-demo.service, healthy when /health answers 200"
create_app --health-timeout 5s --settle 2s

step "1. push v1 and roll it out"
release 1.0.0
"$bin/fleetctl" rollout demo --release 1.0.0 --batch 100% --wait --watch
serving

step "2. push v2 and roll it out one host at a time"
release 2.0.0
"$bin/fleetctl" rollout demo --release 2.0.0 --batch 1 --wait --watch
serving

step "3. push a broken v3 (unhealthy on web-3) and watch it roll back by itself"
release 3.0.0 "$(cat "$work/host-3/app-port")"
if "$bin/fleetctl" rollout demo --release 3.0.0 --batch 1 --max-failures 0 --wait --watch; then
    echo "the broken release was not caught" >&2
    exit 1
fi
echo "(the rollout failed and rolled back, as it should)"
serving

step "4. roll everything back to 1.0.0, restart the controller: it sticks"
"$bin/fleetctl" rollback demo --to 1.0.0 --wait --watch
serving
restart_controller
sleep 5
serving
"$bin/fleetctl" app show demo
"$bin/fleetctl" app history demo

echo
echo "metrics: curl -s http://127.0.0.1:$mport/metrics | grep fleet_"
if [ "${1:-}" != "--once" ]; then
    echo "the fleet runs; in another shell: FLEET_CONFIG=$FLEET_CONFIG $bin/fleetctl hosts ls"
    echo "press Ctrl-C to stop"
    wait
fi
