#!/usr/bin/env bash
# Runs a script as root inside a throwaway copy of this machine's root
# filesystem: a private mount namespace with an overlay whose lower layer is
# / (read-only to it) and whose upper layer is a tmpfs, then chroot. Packages
# installed there, users added, files purged: none of it reaches the machine,
# and all of it vanishes when the script ends.
#
#   packaging/test/throwaway-root.sh SCRIPT [FILE...]
#
# FILEs are copied to /srv/in/ inside the root first. The script runs with
# /proc, /dev, /sys and a private /run and /tmp.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "throwaway-root: run as root (it mounts an overlay)" >&2; exit 2; }
script=$(realpath "$1"); shift
files=()
for f in "$@"; do files+=("$(realpath "$f")"); done

exec unshare --mount --pid --fork --uts --ipc bash -euo pipefail -s -- "$script" "${files[@]}" <<'INNER'
script=$1; shift
mount --make-rprivate /
base=$(mktemp -d /tmp/fleet-throwaway.XXXXXX)
mount -t tmpfs -o mode=0755 fleet-throwaway "$base"
mkdir "$base/upper" "$base/work" "$base/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
r=$base/root
mount -t proc proc "$r/proc"
mount --rbind /dev "$r/dev"
mount --rbind /sys "$r/sys"
mount -t tmpfs tmpfs "$r/run"
mount -t tmpfs tmpfs "$r/tmp"
hostname fleet-throwaway
mkdir -p "$r/srv/in"
for f in "$@"; do cp "$f" "$r/srv/in/"; done
cp "$script" "$r/srv/in/.script"
chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive bash /srv/in/.script
INNER
