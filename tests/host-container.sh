#!/usr/bin/env bash
# A throwaway "host" for tests of fleetctl bootstrap: this machine's own
# Debian root as the lower layer of an overlay (writes go to a tmpfs and
# vanish), booted by a real systemd as PID 1 of a private PID, mount, UTS,
# IPC and cgroup namespace, with Debian's OpenSSH sshd listening on a
# loopback port. It shares the machine's network namespace, so the host's
# agent reaches a controller on 127.0.0.1 and the test reaches sshd.
#
#   host-container.sh start DIR PORT USER AUTHORIZED_KEY_FILE HOST_KEY_FILE
#   host-container.sh exec DIR COMMAND...     # a command inside, as root
#   host-container.sh stop DIR
#
# start returns once sshd answers; DIR/pid is the container's PID 1 as the
# machine sees it, DIR/console.log systemd's own output. Optional, in the
# environment of start: FLEET_HOST_NAME (the host's name, default
# fleet-host) and FLEET_HOST_NET=N (1-250: the host gets its own network
# namespace, reached over a veth pair as 10.88.N.2, with the machine as
# 10.88.N.1; without it the host shares the machine's network, and sshd,
# apps and agents of every such host share one loopback). USER gets
# passwordless sudo, as on an EC2 Ubuntu image. Needs root, unshare,
# nsenter, systemd, openssh-server and sudo on the machine.
#
# What is kept away from the machine: systemd boots fleet-test.target, not
# multi-user.target, so the machine's enabled services do not start twice;
# units that would touch the shared kernel (sysctl, binfmt, modules, clock,
# udev) and gettys on the machine's consoles are masked; its cgroups are a
# subtree of the caller's; stop kills the whole PID namespace and removes
# the subtree.
set -euo pipefail

die() { echo "host-container: $*" >&2; exit 1; }

# A subtree named $1 under the caller's own cgroup in every hierarchy, one
# directory per line: systemd mounts every controller it finds, so each one
# must be rooted below us when the cgroup namespace is made.
cgroup_dirs() {
    local name=$1 id controllers path mnt
    while IFS=: read -r id controllers path; do
        if [ -z "$controllers" ]; then
            if [ -d /sys/fs/cgroup/unified ]; then mnt=/sys/fs/cgroup/unified; else mnt=/sys/fs/cgroup; fi
        else
            mnt=/sys/fs/cgroup/${controllers#name=}
            [ -d "$mnt" ] || mnt=/sys/fs/cgroup/${controllers%%,*}
        fi
        [ -d "$mnt" ] && echo "$mnt${path%/}/$name"
    done </proc/self/cgroup
}

start() {
    local dir=$1 port=$2 user=$3 authorized=$4 hostkey=$5
    [ "$(id -u)" = 0 ] || die "run as root (it mounts an overlay and boots systemd)"
    for tool in unshare nsenter /lib/systemd/systemd /usr/sbin/sshd sudo useradd; do
        command -v "$tool" >/dev/null || die "$tool is missing; install systemd, openssh-server, sudo and util-linux (.ci/run does)"
    done
    dir=$(realpath "$dir")
    mkdir -p "$dir"
    local name
    name="fleet-it-$(basename "$dir")-$$"
    echo "$name" >"$dir/cgroup-name"
    cgroup_dirs "$name" >"$dir/cgroups"
    while read -r cg; do
        mkdir -p "$cg"
        # A new cpuset has no CPUs or memory nodes until given its parent's.
        if [ -f "$cg/cpuset.cpus" ]; then
            cat "$cg/../cpuset.cpus" >"$cg/cpuset.cpus"
            cat "$cg/../cpuset.mems" >"$cg/cpuset.mems"
        fi
    done <"$dir/cgroups"

    # Runs in the new namespaces; ends by exec'ing systemd as PID 1.
    cat >"$dir/boot.sh" <<'BOOT'
set -euo pipefail
dir=$1 port=$2 user=$3 authorized=$4 hostkey=$5 name=$6 net=$7
mount --make-rprivate /
# In a network namespace of its own, loopback starts down.
if [ -n "$net" ]; then ip link set lo up; fi
base="$dir/fs"
mkdir -p "$base"
mount -t tmpfs -o mode=0755 fleet-host "$base"
mkdir "$base/upper" "$base/work" "$base/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
r=$base/root
mount -t proc proc "$r/proc"
mount --rbind /sys "$r/sys"
# A cgroup view rooted at our subtree (we are in a new cgroup namespace).
mount -t tmpfs -o mode=0755 cgroup "$r/sys/fs/cgroup"
if [ -d /sys/fs/cgroup/systemd ]; then
    mkdir "$r/sys/fs/cgroup/systemd" "$r/sys/fs/cgroup/unified"
    mount -t cgroup -o none,name=systemd,xattr cgroup "$r/sys/fs/cgroup/systemd"
    mount -t cgroup2 cgroup2 "$r/sys/fs/cgroup/unified"
else
    mount -t cgroup2 cgroup2 "$r/sys/fs/cgroup"
fi
mount --rbind /dev "$r/dev"
mount -t tmpfs -o mode=0755 tmpfs "$r/run"
mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
hostname "$name"

# The host's setup, written into the overlay before boot.
etc=$r/etc/systemd/system
for unit in getty@.service serial-getty@.service console-getty.service container-getty@.service \
    systemd-sysctl.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount \
    systemd-modules-load.service kmod-static-nodes.service systemd-udevd.service \
    systemd-udev-trigger.service systemd-udev-settle.service systemd-timesyncd.service \
    systemd-remount-fs.service systemd-hwdb-update.service systemd-firstboot.service \
    sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount sys-fs-fuse-connections.mount \
    dev-hugepages.mount systemd-random-seed.service systemd-pstore.service apt-daily.timer \
    apt-daily-upgrade.timer cloud-init.service cloud-init-local.service cloud-config.service cloud-final.service; do
    ln -sf /dev/null "$etc/$unit"
done
cat >"$etc/fleet-test.target" <<'UNIT'
[Unit]
Description=fleet test host: journald, D-Bus, sshd
Requires=basic.target
Wants=ssh.service dbus.service systemd-logind.service systemd-user-sessions.service
After=basic.target
AllowIsolate=yes
UNIT
mkdir -p "$r/etc/ssh/sshd_config.d"
install -m 0600 "$hostkey" "$r/etc/ssh/fleet_test_host_key"
cat >"$r/etc/ssh/sshd_config.d/fleet-test.conf" <<SSHD
Port $port
ListenAddress 127.0.0.1
HostKey /etc/ssh/fleet_test_host_key
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM yes
SSHD
# Only our port and key: the machine's own sshd_config lines are kept, but
# the Port/HostKey defaults must not be added on top of ours.
sed -i -E 's/^(Port|ListenAddress|HostKey) /#&/' "$r/etc/ssh/sshd_config"
chroot "$r" useradd --create-home --shell /bin/bash "$user"
install -d -m 0700 "$r/home/$user/.ssh"
install -m 0600 "$authorized" "$r/home/$user/.ssh/authorized_keys"
chroot "$r" chown -R "$user:$user" "/home/$user/.ssh"
echo "$user ALL=(ALL) NOPASSWD:ALL" >"$r/etc/sudoers.d/90-fleet-test"
chmod 0440 "$r/etc/sudoers.d/90-fleet-test"
# systemd sets the hostname from /etc/hostname at boot; the name resolves
# locally, as on a Debian or Ubuntu install (sudo looks it up, and a host in
# its own network namespace has no DNS).
echo "$name" >"$r/etc/hostname"
echo "127.0.1.1 $name" >>"$r/etc/hosts"
rm -f "$r/etc/machine-id"
: >"$r/etc/machine-id"
# A build image's "start no services" switch; a real host has none.
rm -f "$r/usr/sbin/policy-rc.d"
# pivot_root, not chroot: the kernel refuses user namespaces (PrivateUsers=)
# to a chrooted process.
mkdir "$r/.old-root"
cd "$r"
pivot_root . .old-root
umount -l /.old-root
rmdir /.old-root
exec env -i container=fleet-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    /lib/systemd/systemd --unit=fleet-test.target --log-target=console --log-level=notice
BOOT

    # Into our cgroup subtree, then the namespaces; systemd becomes PID 1.
    local name=${FLEET_HOST_NAME:-fleet-host} net=${FLEET_HOST_NET:-}
    local netns=()
    if [ -n "$net" ]; then
        [[ "$net" =~ ^[0-9]+$ ]] && [ "$net" -ge 1 ] && [ "$net" -le 250 ] || die "FLEET_HOST_NET must be 1-250, not '$net'"
        command -v ip >/dev/null || die "ip is missing; install iproute2 (.ci/run does)"
        netns=(--net)
        echo "$net" >"$dir/net"
    fi
    (
        while read -r cg; do echo "$BASHPID" >"$cg/cgroup.procs"; done <"$dir/cgroups"
        exec unshare --mount --pid --fork --uts --ipc --cgroup "${netns[@]}" --kill-child \
            bash "$dir/boot.sh" "$dir" "$port" "$user" "$(realpath "$authorized")" "$(realpath "$hostkey")" "$name" "$net"
    ) </dev/null >"$dir/console.log" 2>&1 &
    local unshare_pid=$!
    echo "$unshare_pid" >"$dir/unshare-pid"

    # systemd is the child of unshare.
    local init=""
    for _ in $(seq 100); do
        init=$(cat "/proc/$unshare_pid/task/$unshare_pid/children" 2>/dev/null | awk '{print $1}')
        if [ -n "$init" ] && [ "$(cat "/proc/$init/comm" 2>/dev/null)" = systemd ]; then break; fi
        kill -0 "$unshare_pid" 2>/dev/null || { cat "$dir/console.log" >&2; die "the container ended while booting"; }
        sleep 0.1
    done
    [ "$(cat "/proc/$init/comm" 2>/dev/null)" = systemd ] || { cat "$dir/console.log" >&2; die "systemd did not start"; }
    echo "$init" >"$dir/pid"

    if [ -n "$net" ]; then
        local veth="fleet-h$net"
        ip link del "$veth" 2>/dev/null || true
        ip link add "$veth" type veth peer name eth0 netns "$init"
        ip addr add "10.88.$net.1/24" dev "$veth"
        ip link set "$veth" up
        nsenter --target "$init" --net sh -c \
            "ip addr add 10.88.$net.2/24 dev eth0 && ip link set eth0 up && ip route add default via 10.88.$net.1"
    fi

    for _ in $(seq 300); do
        if inside "$dir" systemctl is-active --quiet ssh.service 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    inside "$dir" systemctl status ssh.service --no-pager >&2 || true
    cat "$dir/console.log" >&2
    die "sshd did not come up on 127.0.0.1:$port within 30 s"
}

inside() {
    local dir=$1; shift
    nsenter --target "$(cat "$dir/pid")" --mount --uts --ipc --pid --cgroup --net --root --wd "$@"
}

stop() {
    local dir
    dir=$(realpath "$1")
    if [ -f "$dir/pid" ]; then
        local init
        init=$(cat "$dir/pid")
        # SIGKILL of a PID namespace's init ends every process in it.
        kill -KILL "$init" 2>/dev/null || true
    fi
    if [ -f "$dir/unshare-pid" ]; then
        local u
        u=$(cat "$dir/unshare-pid")
        for _ in $(seq 50); do kill -0 "$u" 2>/dev/null || break; sleep 0.1; done
    fi
    if [ -f "$dir/cgroups" ]; then
        while read -r cg; do
            [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
        done <"$dir/cgroups"
    fi
    if [ -f "$dir/net" ]; then
        ip link del "fleet-h$(cat "$dir/net")" 2>/dev/null || true
    fi
    rm -f "$dir/pid" "$dir/unshare-pid" "$dir/net"
}

case "${1:-}" in
    start) shift; [ $# = 5 ] || die "usage: start DIR PORT USER AUTHORIZED_KEY_FILE HOST_KEY_FILE"; start "$@" ;;
    exec) shift; [ $# -ge 2 ] || die "usage: exec DIR COMMAND..."; dir=$(realpath "$1"); shift; inside "$dir" "$@" ;;
    stop) shift; [ $# = 1 ] || die "usage: stop DIR"; stop "$1" ;;
    *) die "usage: host-container.sh start|exec|stop DIR ..." ;;
esac
