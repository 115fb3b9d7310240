# Shared by tests/local-fleet.sh and tests/bench/*.sh (source it, don't run it):
# a controller and hosts on loopback; each host is a fleet-agent with its own
# state dir and its own real systemd manager (systemd --user on a private
# D-Bus, in a private mount namespace and cgroup) running the sample app as
# fleet-app-demo.service. Needs root and Debian's systemd, dbus, util-linux.
# Sets: bin, work, FLEET_CONFIG, hosts; functions below. Hosts dial
# $controllers when it is set (several controllers of one fleet), else the
# one start_controller started.

for need in /lib/systemd/systemd dbus-daemon unshare tar gzip; do
    command -v "$need" >/dev/null || [ -x "$need" ] || {
        echo "missing $need: apt-get install -y systemd dbus util-linux tar gzip" >&2
        exit 2
    }
done
[ "$(id -u)" = 0 ] || { echo "run as root: each host's systemd runs in its own mount namespace" >&2; exit 2; }

bin="$PWD/target/debug"
work="$(mktemp -d /tmp/fleet-local.XXXXXX)"
pids=()
hosts=0
fleet_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for f in "$work"/host-*/run/dbus.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
    wait 2>/dev/null || true
    sleep 0.3
    for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
        d="$h/$(basename "$work")"
        if [ -d "$d" ]; then find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true; fi
    done
    return 0
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }

start_controller() {
    port="$(free_port)"
    mport="$(free_port)"
    "$bin/fleet-controller" init --data-dir "$work/controller" --san 127.0.0.1 \
        --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" >"$work/init.txt"
    fingerprint="$(grep -o 'sha256:[0-9a-f]*' "$work/init.txt" | head -n1)"
    sed -i 's/^heartbeat_interval = .*/heartbeat_interval = "2s"/' "$work/controller/controller.toml"
    export FLEET_CONFIG="$work/controller/fleetctl.toml"
    serve_controller
}

serve_controller() {
    "$bin/fleet-controller" serve --config "$work/controller/controller.toml" 2>>"$work/controller.log" &
    controller_pid=$!
    pids+=($!)
    for _ in $(seq 50); do "$bin/fleetctl" whoami >/dev/null 2>&1 && break; sleep 0.2; done
}

restart_controller() { # kill -9, as a crash or an upgrade would, then serve again
    kill -9 "$controller_pid"
    wait "$controller_pid" 2>/dev/null || true
    serve_controller
    wait_connected
}

wait_connected() { # until every started host is connected (30 s at most)
    local n
    for _ in $(seq 100); do
        n="$("$bin/fleetctl" hosts ls --output json | grep -Eo '"status": *"connected"' | wc -l || true)"
        [ "$n" -ge "$hosts" ] && break
        sleep 0.3
    done
}

# Each host's systemd --user manager (and its D-Bus) takes inotify
# instances; the kernel's default of 128 per user runs out near 40 hosts,
# and systemd then fails with a D-Bus error that does not say why. Raise the
# limit for this machine (we are root), or say plainly what is missing.
ensure_inotify() { # hosts
    local have need
    have="$(cat /proc/sys/fs/inotify/max_user_instances 2>/dev/null || echo 0)"
    need=$(($1 * 3 + 64))
    if [ "$have" -lt "$need" ]; then
        if sysctl -qw "fs.inotify.max_user_instances=$need" 2>/dev/null; then
            echo "raised fs.inotify.max_user_instances from $have to $need: each host's systemd --user manager needs its own" >&2
        else
            echo "fs.inotify.max_user_instances is $have; $1 hosts need about $need (each runs a systemd --user manager)." >&2
            echo "raise it: sysctl -w fs.inotify.max_user_instances=$need" >&2
            exit 2
        fi
    fi
}

start_hosts() { # count
    hosts="$1"
    local token i h app_port
    ensure_inotify "$hosts"
    token="$("$bin/fleetctl" token create --label role=web --uses "$hosts" --ttl 10m --description "local fleet")"
    for i in $(seq "$hosts"); do
        h="$work/host-$i"
        mkdir -p "$h/run" "$h/config/systemd/user"
        chmod 700 "$h/run"
        app_port="$(free_port)"
        echo "$app_port" >"$h/app-port"
        cat >"$h/config/systemd/user/fleet-app-demo.service" <<UNIT
[Service]
WorkingDirectory=$h/state/apps/demo/current
ExecStart=$bin/fleet-sample-app $app_port
Restart=on-failure
RestartSec=300ms
UNIT
        XDG_RUNTIME_DIR="$h/run" XDG_CONFIG_HOME="$h/config" CG="$(basename "$work")/host-$i" \
            unshare -m sh -c '
                for c in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
                    [ -f "$c/cgroup.procs" ] && [ -w "$c" ] && mkdir -p "$c/$CG" && echo $$ > "$c/$CG/cgroup.procs" || true
                done
                mount -t tmpfs tmpfs /run/systemd && mkdir -p /run/systemd/system
                dbus-daemon --session --address="unix:path=$XDG_RUNTIME_DIR/bus" --fork --nopidfile --print-pid=3 3>"$XDG_RUNTIME_DIR/dbus.pid"
                export DBUS_SESSION_BUS_ADDRESS="unix:path=$XDG_RUNTIME_DIR/bus"
                exec /lib/systemd/systemd --user' >"$h/systemd.log" 2>&1 &
        pids+=($!)
        cat >"$h/agent.toml" <<TOML
controller = "${controllers:-127.0.0.1:$port}"
ca_fingerprint = "$fingerprint"
join_token = "$token"
state_dir = "$h/state"
hostname = "web-$i"
[systemd]
bus = "session"
TOML
        for _ in $(seq 50); do [ -S "$h/run/bus" ] && break; sleep 0.1; done
        DBUS_SESSION_BUS_ADDRESS="unix:path=$h/run/bus" XDG_RUNTIME_DIR="$h/run" SAMPLE_PORT="$app_port" \
            "${agent_bin:-$bin/fleet-agent}" run --config "$h/agent.toml" 2>"$h/agent.log" &
        pids+=($!)
    done
    wait_connected
}

create_app() { # extra fleetctl app create flags...
    "$bin/fleetctl" app create demo --unit fleet-app-demo.service --selector role=web \
        --health-command "$bin/fleet-sample-app check" "$@"
}

release() { # version [unhealthy-on-port]
    local d="$work/release-$1"
    mkdir -p "$d"
    echo "$1" >"$d/VERSION"
    if [ -n "${2:-}" ]; then echo "$2" >"$d/FAIL_PORTS"; fi
    tar -C "$d" -czf "$work/demo-$1.tar.gz" .
    "$bin/fleetctl" release push demo "$work/demo-$1.tar.gz" --release "$1" --meta built-by=local-fleet
}

version_on() { # port: GET /version with bash's /dev/tcp (no curl needed), three tries
    local v _
    for _ in 1 2 3; do
        v="$({ exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET /version HTTP/1.0\r\n\r\n' >&3 && tail -n1 <&3; } 2>/dev/null || true)"
        [ -n "$v" ] && { echo "$v"; return; }
        sleep 0.3
    done
    echo nothing
}

serving() {
    local i
    for i in $(seq "$hosts"); do
        printf 'web-%s serves %s\n' "$i" "$(version_on "$(cat "$work/host-$i/app-port")")"
    done
}
