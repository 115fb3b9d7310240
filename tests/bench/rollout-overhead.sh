#!/usr/bin/env bash
# Benchmark (prints figures, asserts nothing): the controller's overhead per
# rollout batch, apart from the app's own time. HOSTS hosts (default 6), each
# with its own real systemd (tests/fleet-lib.sh); v1 is rolled out to all
# (downloads warm), then v2 in batches of BATCH (default 2). Per batch:
#   wall     = batch end - batch start (the controller's clock)
#   agent    = the slowest host's sum of the phase durations its agent
#              measured (fetch .. health: the app's restart and health time)
#   overhead = wall - agent: planning, persisting, sending, reporting.
#   bash tests/bench/rollout-overhead.sh            # HOSTS=6 BATCH=2
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q --workspace --bins
source tests/fleet-lib.sh
trap fleet_cleanup EXIT
start_controller
start_hosts "${HOSTS:-6}"
create_app --health-timeout 5s --settle 500ms >/dev/null
release 1.0.0 >/dev/null
"$bin/fleetctl" rollout demo --release 1.0.0 --batch 100% --wait >/dev/null
release 2.0.0 >/dev/null
"$bin/fleetctl" rollout demo --release 2.0.0 --batch "${BATCH:-2}" --wait --output json >"$work/rollout.json"
python3 - "$work/rollout.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"rollout {r['id']}: {r['state']}, {len(r['batches'])} batches")
print(f"{'batch':>5} {'hosts':>5} {'wall ms':>8} {'agent ms':>9} {'overhead ms':>12}")
over = []
for b in r["batches"]:
    wall = b["ended_at_ms"] - b["started_at_ms"]
    agent = max(sum(p["duration_ms"] for p in h["timeline"]) for h in b["hosts"])
    over.append(wall - agent)
    print(f"{b['index'] + 1:>5} {len(b['hosts']):>5} {wall:>8} {agent:>9} {wall - agent:>12}")
print(f"controller overhead per batch: mean {sum(over) / len(over):.0f} ms, max {max(over)} ms")
PY
