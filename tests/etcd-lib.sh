# Shared by tests/local-ha.sh and tests/bench/failover.sh (source it, don't
# run it): an etcd cluster of N members on loopback (Debian's etcd-server),
# and three controllers of one fleet on it. Needs $bin, $work, free_port and
# a pids array; appends the members' pids to etcd_pids and sets etcd_args
# (--etcd URL for each member, for fleet-controller init/join).

etcd_pids=()
etcd_args=()
start_etcd_cluster() { # members
    local n="$1" i cluster="" 
    command -v etcd >/dev/null || { echo "missing etcd: apt-get install -y etcd-server (tests/deps.sh does)" >&2; exit 2; }
    etcd_client_ports=()
    etcd_peer_ports=()
    for i in $(seq 0 $((n - 1))); do
        etcd_client_ports[$i]="$(free_port)"
        etcd_peer_ports[$i]="$(free_port)"
        cluster="${cluster:+$cluster,}m$i=http://127.0.0.1:${etcd_peer_ports[$i]}"
        etcd_args+=(--etcd "http://127.0.0.1:${etcd_client_ports[$i]}")
    done
    for i in $(seq 0 $((n - 1))); do
        etcd --name "m$i" --data-dir "$work/etcd-$i" \
            --listen-client-urls "http://127.0.0.1:${etcd_client_ports[$i]}" \
            --advertise-client-urls "http://127.0.0.1:${etcd_client_ports[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${etcd_peer_ports[$i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${etcd_peer_ports[$i]}" \
            --initial-cluster "$cluster" --initial-cluster-token "fleet-$(basename "$work")" \
            --logger zap --log-level warn 2>"$work/etcd-$i.log" &
        etcd_pids+=($!)
    done
    for i in $(seq 0 $((n - 1))); do
        for _ in $(seq 100); do
            { exec 3<>"/dev/tcp/127.0.0.1/${etcd_client_ports[$i]}"; } 2>/dev/null && break
            sleep 0.1
        done
        exec 3>&- 3<&- || true
    done
}

stop_etcd_cluster() {
    for p in "${etcd_pids[@]}"; do kill "$p" 2>/dev/null || true; done
}

# Controllers a (init), b and c (join, from a copy of a's keys, as an
# operator copies them over ssh), under etcd prefix $1, heartbeats every $2,
# each controller.toml ending with $controller_extra (TOML) when set; all
# three running: a serves, b and c follow (forwarding to a). Sets caddr, mport, cpid (by
# name) and fingerprint.
declare -A caddr mport cpid
start_three_controllers() { # prefix heartbeat
    local name
    for name in a b c; do
        caddr[$name]="127.0.0.1:$(free_port)"
        mport[$name]="$(free_port)"
    done
    new_controller a "$1" "$2" init
    fingerprint="$(grep -o 'sha256:[0-9a-f]*' "$work/a-init.txt" | head -n1)"
    mkdir -m 700 "$work/keys-from-a"
    cp "$work/a/ca.pem" "$work/a/ca.key" "$work/a/mac.key" "$work/keys-from-a/"
    new_controller b "$1" "$2" join --from "$work/keys-from-a"
    new_controller c "$1" "$2" join --from "$work/keys-from-a"
    rm -r "$work/keys-from-a"
    # a first, so that it is the one serving; then the followers.
    serve_controller_named a
    for _ in $(seq 300); do grep -q "fleet-controller serving" "$work/a.log" 2>/dev/null && break; sleep 0.1; done
    grep -q "fleet-controller serving" "$work/a.log" || { echo "controller a did not serve; see $work/a.log" >&2; exit 1; }
    serve_controller_named b
    serve_controller_named c
}

new_controller() { # name prefix heartbeat subcommand...
    local name="$1" prefix="$2" heartbeat="$3"
    shift 3
    "$bin/fleet-controller" "$@" --data-dir "$work/$name" --san 127.0.0.1 --listen "${caddr[$name]}" \
        --metrics-listen "127.0.0.1:${mport[$name]}" "${etcd_args[@]}" --etcd-prefix "$prefix" \
        >"$work/$name-init.txt"
    sed -i "s/^heartbeat_interval = .*/heartbeat_interval = \"$heartbeat\"/" "$work/$name/controller.toml"
    if [ -n "${controller_extra:-}" ]; then printf '\n%s\n' "$controller_extra" >>"$work/$name/controller.toml"; fi
}

serve_controller_named() { # name
    "$bin/fleet-controller" serve --config "$work/$1/controller.toml" 2>>"$work/$1.log" &
    cpid[$1]=$!
    pids+=($!)
}
