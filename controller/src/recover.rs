//! `fleet-controller admin-token`: a break-glass admin token for whoever
//! can read the data dir's keys on the controller host (root, the
//! `fleet-controller` user). It works while the controller runs: nothing is
//! written, the controller checks the token's MAC (`auth::Recovery`) under
//! a key derived from `mac.key` (from the CA key in data dirs that have not
//! been served since `mac.key` came).

use std::path::Path;

use crate::auth::{Recovery, RECOVERY_PURPOSE, RECOVERY_TTL_MS};
use crate::ca::Ca;
use crate::secrets::{Macs, FILE};

/// A recovery token for the controller of `data_dir`, and when it expires (ms).
pub fn admin_token(data_dir: &Path, now_ms: i64) -> Result<(String, i64), String> {
    let read = |name: &str| {
        let path = data_dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read {}: {e}{}",
                path.display(),
                crate::owner::permission_hint(&e, data_dir)
            )
        })
    };
    let macs = match Macs::load(data_dir).map_err(|e| format!("{}: {e}", data_dir.join(FILE).display()))? {
        Some(m) => m,
        None => {
            let ca = Ca::load(&read("ca.pem")?, &read("ca.key")?).map_err(|e| e.to_string())?;
            Macs::load_or_migrate(data_dir, &ca).map_err(|e| format!("{}: {e}", data_dir.join(FILE).display()))?
        }
    };
    let token = Recovery::new(&macs.derive(RECOVERY_PURPOSE)).mint(now_ms);
    Ok((token, now_ms + RECOVERY_TTL_MS))
}
