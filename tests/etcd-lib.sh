# Shared by tests/local-ha.sh and tests/bench/failover.sh (source it, don't
# run it): an etcd cluster of N members on loopback (Debian's etcd-server).
# Needs $work and free_port; appends the members' pids to etcd_pids and sets
# etcd_args (--etcd URL for each member, for fleet-controller init/join).

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
