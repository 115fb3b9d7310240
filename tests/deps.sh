#!/usr/bin/env bash
# Installs the Debian packages the build, the tests and the main job use,
# only those that are missing (run as root; a no-op when all are there).
set -euo pipefail

# Debian packages the build and tests use: a C compiler and linker (ring,
# sled's deps); dpkg-dev, binutils and lintian for the packages; systemd,
# dbus, polkitd, sudo and openssh-server for the throwaway hosts of the
# package and bootstrap tests, and (with util-linux's unshare and busctl)
# the systemd --user sandboxes of the release and rollout tests; cloud-init
# for `cloud-init schema`; iproute2, python3 and curl for the README-path
# test; chromium and chromium-driver for the dashboard's browser test;
# etcd-server for the etcd store backend's tests.
need=()
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
command -v strip >/dev/null || need+=(binutils)
command -v lintian >/dev/null || need+=(lintian)
[ -x /lib/systemd/systemd ] && command -v busctl >/dev/null || need+=(systemd)
command -v dbus-daemon >/dev/null || need+=(dbus)
[ -x /usr/lib/polkit-1/polkitd ] || need+=(polkitd pkexec)
command -v sudo >/dev/null || need+=(sudo)
command -v /usr/sbin/sshd >/dev/null || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v cloud-init >/dev/null || need+=(cloud-init)
command -v unshare >/dev/null || need+=(util-linux)
# prlimit (util-linux): the connections test runs the controller at a
# 1024 file-descriptor limit.
command -v prlimit >/dev/null || need+=(util-linux)
# The README-path test: hosts in network namespaces of their own (ip, from
# iproute2), and the README's demo app (Debian's python3 serving a release,
# read with curl).
command -v ip >/dev/null || need+=(iproute2)
[ -x /usr/bin/python3 ] || need+=(python3)
[ -x /usr/bin/curl ] || need+=(curl)
# The dashboard's browser test: Debian's chromium, driven by chromedriver.
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
# The controller's etcd store backend: its tests start etcd members of
# their own on loopback (policy-rc.d keeps the packaged one from starting).
command -v etcd >/dev/null || need+=(etcd-server)
if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    # No service of these packages may start on this machine while they
    # install (an sshd on port 22, cloud-init): policy-rc.d refuses, and is
    # removed again afterwards if we made it.
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        made_policy=yes
    fi
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
    # An `if`, not `[ ] && rm`: under set -e the script must not end with
    # the test's failure when the policy file was already there.
    if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
exit 0
