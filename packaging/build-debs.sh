#!/usr/bin/env bash
# Builds the Debian packages of fleet with dpkg-deb (no debhelper, no network
# beyond crates.io for cargo):
#
#   bash packaging/build-debs.sh
#
# leaves target/debian/fleet-agent_<version>_<arch>.deb,
# target/debian/fleet-controller_<version>_<arch>.deb and
# target/debian/fleetctl_<version>_<arch>.deb, where <version> is the
# workspace version plus "-$DEB_REVISION" (default 1). Needs cargo, dpkg-dev
# (dpkg-shlibdeps) and binutils (strip).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo dpkg-deb dpkg-shlibdeps strip gzip; do
    command -v "$tool" >/dev/null || {
        echo "build-debs: $tool is missing; install it (apt-get install dpkg-dev binutils, or rustup for cargo)" >&2
        exit 2
    }
done

upstream=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$upstream" ] || { echo "build-debs: no version in [workspace.package] of Cargo.toml" >&2; exit 2; }
version="$upstream-${DEB_REVISION:-1}"
arch=$(dpkg --print-architecture)
maintainer="fleet maintainers <fleet@example.invalid>"
# Reproducible timestamps: the last commit's, else now.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
target="${CARGO_TARGET_DIR:-target}"

cargo build --release --locked -p fleet-controller -p fleetctl
# The agent in its own profile, built for size (Cargo.toml, [profile.agent]).
cargo build --profile agent --locked -p fleet-agent

# Absolute: dpkg-shlibdeps runs from a scratch dir.
out="$(realpath -m "$target")/debian"
mkdir -p "$out"

# dpkg-shlibdeps wants a debian/control beside it; give it a scratch one.
shlibs_dir=$(mktemp -d)
trap 'rm -rf "$shlibs_dir"' EXIT
mkdir -p "$shlibs_dir/debian"
printf 'Source: fleet\n\nPackage: fleet\nArchitecture: any\n' >"$shlibs_dir/debian/control"

build_one() {
    local pkg=$1 description=$2 long=$3
    local root="$out/stage/$pkg"
    rm -rf "$root"
    install -d "$root/DEBIAN" "$root/usr/bin" "$root/usr/share/doc/$pkg"

    local profile=release
    [ "$pkg" = fleet-agent ] && profile=agent
    install -m 0755 "$target/$profile/$pkg" "$root/usr/bin/$pkg"
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/$pkg"
    install -m 0644 "packaging/deb/$pkg/copyright" "packaging/deb/$pkg/README.Debian" "$root/usr/share/doc/$pkg/"
    # Man pages (one per subcommand) from the binary's own flags.
    install -d "$root/usr/share/man/man1"
    "$root/usr/bin/$pkg" man "$root/usr/share/man/man1"
    gzip -9n "$root/usr/share/man/man1/"*.1
    if [ "$pkg" = fleetctl ]; then
        install -d "$root/usr/share/bash-completion/completions"
        "$root/usr/bin/$pkg" completion bash >"$root/usr/share/bash-completion/completions/fleetctl"
    fi
    printf '%s (%s) unstable; urgency=medium\n\n  * Built from the fleet repository, commit %s.\n\n -- %s  %s\n' \
        "$pkg" "$version" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$maintainer" \
        "$(date -u -R -d "@$SOURCE_DATE_EPOCH")" | gzip -9n >"$root/usr/share/doc/$pkg/changelog.Debian.gz"
    # The daemons: a unit, a system user made by the maintainer scripts.
    local daemon_depends=""
    if [ -f "systemd/$pkg.service" ]; then
        install -d "$root/lib/systemd/system"
        install -m 0644 "systemd/$pkg.service" "$root/lib/systemd/system/$pkg.service"
        install -m 0755 "packaging/deb/$pkg/postinst" "packaging/deb/$pkg/prerm" "packaging/deb/$pkg/postrm" "$root/DEBIAN/"
        daemon_depends=", adduser, init-system-helpers (>= 1.54~)"
    fi

    if [ "$pkg" = fleet-agent ]; then
        install -d "$root/etc/fleet" "$root/usr/share/polkit-1/rules.d" "$root/usr/share/doc/$pkg/examples"
        install -m 0644 packaging/deb/fleet-agent/agent.toml "$root/etc/fleet/agent.toml"
        install -m 0644 packaging/polkit/50-fleet-agent.rules "$root/usr/share/polkit-1/rules.d/"
        install -m 0644 systemd/fleet-app-example.service "$root/usr/share/doc/$pkg/examples/"
        install -m 0644 "systemd/fleet-hook@.service" "$root/lib/systemd/system/fleet-hook@.service"
        echo /etc/fleet/agent.toml >"$root/DEBIAN/conffiles"
    fi
    if [ "$pkg" = fleet-controller ]; then
        # Monitoring to start from: Prometheus alert rules and a Grafana
        # dashboard (tests/it/observability.rs checks them against a
        # running controller).
        install -d "$root/usr/share/doc/$pkg/examples"
        install -m 0644 packaging/prometheus/fleet-alerts.yml packaging/grafana/fleet-dashboard.json \
            "$root/usr/share/doc/$pkg/examples/"
    fi

    # The agent's one privilege is a polkit rule (JavaScript rules: polkit
    # >= 0.106, Debian 12's polkitd, Ubuntu >= 23.10). Recommends, not
    # Depends: without polkitd the agent installs and runs, and may manage no
    # unit at all.
    local recommends=""
    [ "$pkg" = fleet-agent ] && recommends=$'\nRecommends: polkitd'
    local depends
    depends=$(cd "$shlibs_dir" && dpkg-shlibdeps -O "$root/usr/bin/$pkg" | sed -n 's/^shlibs:Depends=//p')
    local size
    size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
    cat >"$root/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: $depends$daemon_depends$recommends
Section: admin
Priority: optional
Homepage: https://example.invalid/fleet
Description: $description
$long
CONTROL
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
        xargs -0 md5sum >DEBIAN/md5sums)
    chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"
    [ -f "$root/DEBIAN/conffiles" ] && chmod 0644 "$root/DEBIAN/conffiles"
    find "$root" -exec touch --no-dereference -d "@$SOURCE_DATE_EPOCH" {} +
    dpkg-deb --root-owner-group -Zxz --build "$root" "$out/${pkg}_${version}_${arch}.deb" >/dev/null
    echo "$out/${pkg}_${version}_${arch}.deb"
}

build_one fleet-agent "fleet host agent: deploys releases and restarts systemd units" \
" The agent of fleet, a fleet manager for services run as systemd units.
 It enrolls with a join token, keeps one mTLS gRPC stream open to the fleet
 controller, installs releases, swaps them in atomically and restarts their
 units. It runs unprivileged; a polkit rule lets it manage only the units
 named fleet-app-*.service."
build_one fleet-controller "fleet controller: desired state, hosts, releases and CA" \
" The controller of fleet, a fleet manager for services run as systemd units.
 It holds the fleet's CA, enrolls hosts, keeps the agents' streams and
 serves the operator API used by fleetctl."
build_one fleetctl "fleet command line: apps, releases, rollouts and hosts" \
" fleetctl drives fleet, a fleet manager for services run as systemd units:
 it logs in to the fleet controller, pushes releases, runs rollouts in
 batches with canaries and automatic rollback, and lists and bootstraps
 hosts. Exit codes and JSON output are made for CI."
