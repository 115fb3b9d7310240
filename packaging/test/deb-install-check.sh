#!/usr/bin/env bash
# Runs inside packaging/test/throwaway-root.sh with the two .debs in /srv/in.
# Installs, reconfigures, upgrades and purges them for real (dpkg, adduser,
# the maintainer scripts) and checks what a host would see. systemd is not
# running here, so the postinst takes its "no systemd" branch: enabling is
# checked through the symlink deb-systemd-helper makes; starting is not
# (tests/it/bootstrap.rs starts the unit under a real systemd).
# Then exercises the polkit rule with a real polkitd on a private system bus.
set -euo pipefail

fail() { echo "deb-check: FAILED: $*" >&2; exit 1; }
check() { local what=$1; shift; if "$@"; then echo "ok: $what"; else fail "$what"; fi; }
mode_owner() { stat -c '%a %U:%G' "$1"; }

agent=$(ls /srv/in/fleet-agent_*.deb)
controller=$(ls /srv/in/fleet-controller_*.deb)
conf=/etc/fleet/agent.toml
wants=/etc/systemd/system/multi-user.target.wants/fleet-agent.service

# A copy of a package with another version (and, optionally, a changed
# default agent.toml), to upgrade to.
repack() {
    local deb=$1 version=$2 change_conf=$3 dir
    dir=$(mktemp -d)
    dpkg-deb -R "$deb" "$dir/p"
    sed -i "s/^Version: .*/Version: $version/" "$dir/p/DEBIAN/control"
    if [ "$change_conf" = yes ]; then
        echo "# a line added by the next upstream version" >>"$dir/p/etc/fleet/agent.toml"
        (cd "$dir/p" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
            xargs -0 md5sum >DEBIAN/md5sums)
    fi
    dpkg-deb --root-owner-group --build "$dir/p" "/srv/in/fleet-agent_${version}.deb" >/dev/null
    echo "/srv/in/fleet-agent_${version}.deb"
}

echo "== fleet-agent: first install (config names no controller)"
getent passwd fleet-agent >/dev/null && fail "user fleet-agent exists before the install"
dpkg -i "$agent" 2>&1 | tee /tmp/install.log
check "the postinst says why the agent was not started" grep -q "names no controller yet" /tmp/install.log
check "/usr/bin/fleet-agent runs" /usr/bin/fleet-agent --version
check "fleet-agent's man pages are shipped" test -f /usr/share/man/man1/fleet-agent.1.gz -a -f /usr/share/man/man1/fleet-agent-run.1.gz
check "unit file installed" test -f /lib/systemd/system/fleet-agent.service
check "polkit rule installed" test -f /usr/share/polkit-1/rules.d/50-fleet-agent.rules
check "hook template unit installed" test -f "/lib/systemd/system/fleet-hook@.service"
check "example app unit shipped" test -f /usr/share/doc/fleet-agent/examples/fleet-app-example.service
check "agent.toml is a conffile" sh -c "dpkg-query -W -f='\${Conffiles}' fleet-agent | grep -q '$conf'"
uid=$(getent passwd fleet-agent | cut -d: -f3)
check "system user fleet-agent made (uid $uid)" test "$uid" -lt 1000
check "fleet-agent has no login shell" sh -c "getent passwd fleet-agent | grep -Eq ':/usr/sbin/nologin$|:/bin/false$'"
check "fleet-agent has no password" sh -c "getent shadow fleet-agent | cut -d: -f2 | grep -Eq '^[!*]'"
check "state dir is fleet-agent's, 0711" test "$(mode_owner /var/lib/fleet-agent)" = "711 fleet-agent:fleet-agent"
check "agent.toml is root:fleet-agent 0640" test "$(mode_owner $conf)" = "640 root:fleet-agent"
check "the agent can read agent.toml, others cannot" sh -c \
    "setpriv --reuid fleet-agent --regid fleet-agent --init-groups cat $conf >/dev/null &&
     ! setpriv --reuid nobody --regid nogroup --clear-groups cat $conf 2>/dev/null"
check "unit not enabled without a controller" test ! -e "$wants"
for unit in /lib/systemd/system/fleet-agent.service /usr/share/doc/fleet-agent/examples/fleet-app-example.service; do
    check "systemd-analyze verify $(basename $unit)" sh -c \
        "systemd-analyze verify $unit 2>&1 | grep -v 'current/bin/example is not executable' | (! grep .)"
done
exposure=$(systemd-analyze security --offline=true /lib/systemd/system/fleet-agent.service | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
echo "exposure of fleet-agent.service: $exposure"
check "exposure $exposure <= 3.0" awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 3.0) }'

echo "== fleet-agent: configured, reinstalled: the postinst enables the unit"
cat >$conf <<'TOML'
controller = "controller.example.com:7443"
ca_fingerprint = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
join_token = "fleet_jt_abc.def"
[labels]
env = "test"
TOML
echo "a host identity" >/var/lib/fleet-agent/identity.pem
dpkg -i "$agent"
check "unit enabled once agent.toml names a controller" test -L "$wants"

echo "== fleet-agent: upgrade with the same default config"
v2=$(repack "$agent" 0.1.0-2 no)
dpkg -i "$v2" </dev/null
check "upgraded to 0.1.0-2" test "$(dpkg-query -W -f='${Version}' fleet-agent)" = 0.1.0-2
check "the operator's agent.toml is kept" grep -q 'controller.example.com:7443' $conf
check "the identity is kept" grep -q 'a host identity' /var/lib/fleet-agent/identity.pem

echo "== fleet-agent: upgrade whose default config changed (--force-confold, as cloud-init and bootstrap use)"
v3=$(repack "$agent" 0.1.0-3 yes)
dpkg --force-confold -i "$v3" </dev/null
check "upgraded to 0.1.0-3" test "$(dpkg-query -W -f='${Version}' fleet-agent)" = 0.1.0-3
check "the operator's agent.toml is kept" grep -q 'controller.example.com:7443' $conf
check "the new default is beside it as .dpkg-dist" grep -q 'next upstream version' $conf.dpkg-dist
check "the identity is kept" grep -q 'a host identity' /var/lib/fleet-agent/identity.pem
check "still enabled" test -L "$wants"

echo "== polkit: the rule, evaluated by a real polkitd on a private system bus"
mkdir -p /run/dbus
dbus-daemon --system --fork --nopidfile
/usr/lib/polkit-1/polkitd --no-debug >/tmp/polkitd.log 2>&1 &
polkitd=$!
for _ in $(seq 50); do
    busctl --system status org.freedesktop.PolicyKit1 >/dev/null 2>&1 && break
    sleep 0.2
done
busctl --system status org.freedesktop.PolicyKit1 >/dev/null 2>&1 || { cat /tmp/polkitd.log; fail "polkitd did not start"; }
setpriv --reuid fleet-agent --regid fleet-agent --clear-groups sleep 300 &
as_agent=$!
setpriv --reuid nobody --regid nogroup --clear-groups sleep 300 &
as_nobody=$!
sleep 0.5
# pkcheck exit codes: 0 authorized, 1 not authorized, 2 authentication needed.
pk() {
    local pid=$1 action=$2 unit=$3 verb=$4 rc=0
    pkcheck --process "$pid" --action-id "$action" --detail unit "$unit" --detail verb "$verb" >/dev/null 2>&1 || rc=$?
    echo $rc
}
m=org.freedesktop.systemd1.manage-units
for verb in start stop restart reload try-restart reload-or-restart; do
    check "fleet-agent may $verb fleet-app-web.service" test "$(pk $as_agent $m fleet-app-web.service $verb)" = 0
done
check "fleet-agent may restart fleet-app-api-v2.service" test "$(pk $as_agent $m fleet-app-api-v2.service restart)" = 0
check "fleet-agent may not restart ssh.service" test "$(pk $as_agent $m ssh.service restart)" = 1
check "fleet-agent may not stop fleet-agent.service" test "$(pk $as_agent $m fleet-agent.service stop)" = 1
check "fleet-agent may not start fleet-app-.service" test "$(pk $as_agent $m fleet-app-.service start)" = 1
check "fleet-agent may not start fleet-app-Web.service" test "$(pk $as_agent $m fleet-app-Web.service start)" = 1
check "fleet-agent may not start fleet-app-web.socket" test "$(pk $as_agent $m fleet-app-web.socket start)" = 1
check "fleet-agent may not kill fleet-app-web.service" test "$(pk $as_agent $m fleet-app-web.service kill)" = 1
check "fleet-agent may not set properties of fleet-app-web.service" test "$(pk $as_agent $m fleet-app-web.service set-property)" = 1
check "fleet-agent may not enable unit files" test "$(pk $as_agent org.freedesktop.systemd1.manage-unit-files fleet-app-web.service enable)" = 1
check "fleet-agent may not reload systemd" test "$(pk $as_agent org.freedesktop.systemd1.reload-daemon x x)" = 1
for unit in fleet-hook@web.service fleet-hook@api-v2.service fleet-hook@my_app.v2.service; do
    check "fleet-agent may start $unit" test "$(pk $as_agent $m $unit start)" = 0
    check "fleet-agent may stop $unit" test "$(pk $as_agent $m $unit stop)" = 0
done
check "fleet-agent may not restart fleet-hook@web.service" test "$(pk $as_agent $m fleet-hook@web.service restart)" = 1
check "fleet-agent may not set properties of fleet-hook@web.service" test "$(pk $as_agent $m fleet-hook@web.service set-property)" = 1
check "fleet-agent may not start fleet-hook@.service" test "$(pk $as_agent $m fleet-hook@.service start)" = 1
check "fleet-agent may not start fleet-hook@-x.service" test "$(pk $as_agent $m fleet-hook@-x.service start)" = 1
check "fleet-agent may not start fleet-hook@a/b.service" test "$(pk $as_agent $m fleet-hook@a/b.service start)" = 1
check "fleet-agent may not start fleet-hook@Web.service" test "$(pk $as_agent $m fleet-hook@Web.service start)" = 1
check "fleet-agent may not start fleet-hook-web.service" test "$(pk $as_agent $m fleet-hook-web.service start)" = 1
check "fleet-agent may not manage units without a unit named (transient units)" \
    test "$(pkcheck --process $as_agent --action-id $m >/dev/null 2>&1; echo $?)" = 1
check "another user is not let in by the rule" test "$(pk $as_nobody $m fleet-app-web.service restart)" != 0
kill $as_agent $as_nobody $polkitd

echo "== fleet-agent: purge"
dpkg --purge fleet-agent
check "binary removed" test ! -e /usr/bin/fleet-agent
check "unit removed" test ! -e /lib/systemd/system/fleet-agent.service
check "hook template unit removed" test ! -e "/lib/systemd/system/fleet-hook@.service"
check "identity and state removed" test ! -e /var/lib/fleet-agent
check "config removed" test ! -e $conf -a ! -e $conf.dpkg-dist
check "enablement removed" test ! -e "$wants"
check "package purged" sh -c "! dpkg-query -W -f='\${Status}' fleet-agent 2>/dev/null | grep -q installed"

echo "== fleet-controller: init as root before the package is installed"
dpkg-deb -x "$controller" /tmp/controller-pkg
rc=0
/tmp/controller-pkg/usr/bin/fleet-controller init --data-dir /var/lib/fleet-controller --san controller.test \
    >/tmp/init.log 2>&1 || rc=$?
cat /tmp/init.log
check "init into the packaged data dir without its user is refused (exit 2)" test "$rc" = 2
check "the refusal says to install the package first" grep -q "install the fleet-controller package first" /tmp/init.log
check "nothing was made" test ! -e /var/lib/fleet-controller

echo "== fleet-controller: install, upgrade keeps the data dir, purge"
dpkg -i "$controller" 2>&1 | tee /tmp/install.log
check "the postinst says how to initialise" grep -q "fleet-controller init" /tmp/install.log
check "/usr/bin/fleet-controller runs" /usr/bin/fleet-controller --version
check "fleet-controller's man pages are shipped" test -f /usr/share/man/man1/fleet-controller.1.gz -a -f /usr/share/man/man1/fleet-controller-ca-rotate.1.gz
check "the alert rules and Grafana dashboard are shipped" test -f /usr/share/doc/fleet-controller/examples/fleet-alerts.yml -a -f /usr/share/doc/fleet-controller/examples/fleet-dashboard.json
check "system user fleet-controller made" test "$(getent passwd fleet-controller | cut -d: -f3)" -lt 1000
check "data dir is fleet-controller's, 0700" test "$(mode_owner /var/lib/fleet-controller)" = "700 fleet-controller:fleet-controller"
cwants=/etc/systemd/system/multi-user.target.wants/fleet-controller.service
# As the README says: init as root (sudo), into the packaged data dir.
fleet-controller init --data-dir /var/lib/fleet-controller --san controller.test | tee /tmp/init.log
check "init says whose the files are" grep -q "its files are fleet-controller's" /tmp/init.log
check "init run as root leaves every file to fleet-controller" test -z "$(find /var/lib/fleet-controller ! -user fleet-controller)"
check "ca.key stays 0600" test "$(mode_owner /var/lib/fleet-controller/ca.key)" = "600 fleet-controller:fleet-controller"
check "init's next step is the service" grep -q "systemctl enable --now fleet-controller" /tmp/init.log

echo "== fleet-controller: a data dir the service user cannot use is not started"
chown root:root /var/lib/fleet-controller/ca.key
dpkg -i "$controller" 2>&1 | tee /tmp/install.log
check "the postinst names the foreign file and the fix" \
    grep -q "ca.key is owned by root.*sudo chown -R fleet-controller: /var/lib/fleet-controller" /tmp/install.log
check "the unit is not enabled" test ! -e "$cwants"
chown fleet-controller:fleet-controller /var/lib/fleet-controller/ca.key
dpkg -i "$controller"
check "unit enabled once the data dir is initialised and the service's" test -L "$cwants"
check "the CA survives a reinstall" test -f /var/lib/fleet-controller/ca.key
exposure=$(systemd-analyze security --offline=true /lib/systemd/system/fleet-controller.service | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
echo "exposure of fleet-controller.service: $exposure"
check "controller exposure $exposure <= 1.5" awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 1.5) }'
check "controller unit is Type=notify with a watchdog" sh -c \
    "grep -qx 'Type=notify' /lib/systemd/system/fleet-controller.service && grep -q '^WatchdogSec=' /lib/systemd/system/fleet-controller.service"
check "controller unit: LimitNOFILE, no restart on exit 2" sh -c \
    "grep -qx 'LimitNOFILE=65536' /lib/systemd/system/fleet-controller.service && grep -qx 'RestartPreventExitStatus=2' /lib/systemd/system/fleet-controller.service"
dpkg --purge fleet-controller
check "controller data dir removed on purge" test ! -e /var/lib/fleet-controller
check "controller binary removed" test ! -e /usr/bin/fleet-controller

echo "== fleetctl: install, purge"
fleetctl_deb=$(ls /srv/in/fleetctl_*.deb)
dpkg -i "$fleetctl_deb"
check "/usr/bin/fleetctl runs" /usr/bin/fleetctl --version
check "fleetctl's README is shipped" test -f /usr/share/doc/fleetctl/README.Debian
check "fleetctl's man pages are shipped" test -f /usr/share/man/man1/fleetctl.1.gz -a -f /usr/share/man/man1/fleetctl-rollout.1.gz
check "fleetctl's man page names its commands" sh -c "zcat /usr/share/man/man1/fleetctl.1.gz | grep -q rollout"
check "fleetctl's bash completion is shipped" sh -c "grep -q _fleetctl /usr/share/bash-completion/completions/fleetctl"
check "fleetctl makes no user" sh -c "! getent passwd fleetctl >/dev/null"
dpkg --purge fleetctl
check "fleetctl removed" test ! -e /usr/bin/fleetctl

echo "deb-check: all checks passed"
