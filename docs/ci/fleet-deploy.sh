#!/usr/bin/env bash
# Pushes a release to fleet and rolls it out, for any CI that runs a shell
# (docs/ci/deploy.yml calls it from GitHub Actions). Exits non-zero when the
# push fails, or when the rollout fails or rolls back (the hosts it changed
# are then back on their previous release); the rollout's record is left in
# rollout.json either way. Tested by tests/it/ci_recipe.rs.
#
# Needs fleetctl on PATH (the fleetctl package: `sudo apt-get install -y
# ./fleetctl_*.deb`) and, in the environment:
#   FLEET_CONTROLLER   the controller's address, e.g. fleet.example.com:7443
#   FLEET_TOKEN        a token of a deployer limited to the app (fleet_op_…;
#                      'fleetctl operator create ci-APP --role deployer --app
#                      APP', then 'fleetctl operator token create ci-APP'):
#                      keep it in the CI's secret store
#   FLEET_CA           a file holding the controller's CA (its ca.pem)
#   APP, VERSION       the app and the release version to push
#   ARTIFACT           the release tarball (.tar.gz or .tar.zst)
# and optionally:
#   META               one key=value recorded with the release (git=SHA)
#   SIGN_KEY           a file holding the release-signing private key
#                      ('fleetctl keys generate'; from the CI's secret store):
#                      the release is signed here, on the runner, and only
#                      the signature reaches the controller
#   ROLLOUT_FLAGS      default: --batch 25% --max-failures 0
set -euo pipefail

for var in FLEET_CONTROLLER FLEET_TOKEN FLEET_CA APP VERSION ARTIFACT; do
    if [ -z "${!var:-}" ]; then
        echo "fleet-deploy: $var is not set; see the top of $0" >&2
        exit 2
    fi
done
command -v fleetctl >/dev/null || {
    echo "fleet-deploy: fleetctl is not on PATH; install the fleetctl package" >&2
    exit 2
}

push=(fleetctl release push "$APP" "$ARTIFACT" --release "$VERSION")
if [ -n "${META:-}" ]; then push+=(--meta "$META"); fi
if [ -n "${SIGN_KEY:-}" ]; then push+=(--sign-key "$SIGN_KEY"); fi
"${push[@]}"

# shellcheck disable=SC2086 # ROLLOUT_FLAGS is a list of flags
fleetctl rollout "$APP" --release "$VERSION" ${ROLLOUT_FLAGS:---batch 25% --max-failures 0} \
    --wait --output json | tee rollout.json
