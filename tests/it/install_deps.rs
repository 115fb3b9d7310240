//! `tests/deps.sh`, the first thing a fresh machine runs, in a throwaway
//! copy of this machine's root (packaging/test/throwaway-root.sh): with a
//! package it needs missing, it installs it, whether `policy-rc.d` was
//! there before (an image's own, left as it was) or not (made for the
//! install and removed after); with nothing missing it does nothing. Every
//! run must exit 0: `set -e` scripts stop on anything else.

use std::path::Path;
use std::process::Command;

#[test]
fn deps_sh_installs_what_is_missing_with_and_without_a_policy_rc_d() {
    assert!(
        is_root(),
        "this test mounts an overlay root: run the tests as root (CI does)"
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("check-deps.sh");
    std::fs::write(
        &script,
        r#"set -euo pipefail
say() { echo "check-deps: $*"; }
policy=/usr/sbin/policy-rc.d

say "1. curl missing, no policy-rc.d"
rm -f "$policy"
dpkg --remove --force-depends curl >/dev/null
test ! -e /usr/bin/curl
bash /srv/in/deps.sh
test -x /usr/bin/curl || { say "curl was not installed"; exit 1; }
test ! -e "$policy" || { say "the policy-rc.d deps.sh made was left behind"; exit 1; }

say "2. curl missing, the image's own policy-rc.d"
printf '#!/bin/sh\n# the image'"'"'s own\nexit 101\n' >"$policy"
chmod 0755 "$policy"
dpkg --remove --force-depends curl >/dev/null
bash /srv/in/deps.sh
test -x /usr/bin/curl || { say "curl was not installed"; exit 1; }
grep -q "the image's own" "$policy" || { say "the image's policy-rc.d was changed or removed"; exit 1; }

say "3. nothing missing"
bash /srv/in/deps.sh
say "all runs exited 0"
"#,
    )
    .expect("write the check");
    let out = Command::new("bash")
        .arg(repo.join("packaging/test/throwaway-root.sh"))
        .arg(&script)
        .arg(repo.join("tests/deps.sh"))
        .output()
        .expect("run throwaway-root.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("check-deps: all runs exited 0"),
        "deps.sh in a throwaway root failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    for step in ["1. curl missing", "2. curl missing", "3. nothing missing"] {
        assert!(stdout.contains(step), "step {step} did not run:\n{stdout}");
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
