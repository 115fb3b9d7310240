//! Which hosts go by a hostname: an index kept in memory beside the store,
//! so that an enrollment finds the entries it replaces without reading and
//! decoding every host (which made enrolling N hosts quadratic: 359 s for
//! 20,000 simulated hosts).
//!
//! It is built from one scan at its first use and kept current by the
//! store's own host writes (enroll, update, remove). It may hold more ids
//! than are true (a host whose hostname changed stays under its old name
//! too): readers check each host's hostname, never fewer. A backend shared
//! by several controllers would keep it current from its watch instead.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use fleet_proto::Host;

use super::StoreError;

/// Host ids by hostname; `None` until first used.
#[derive(Default)]
pub struct HostNames(Mutex<Option<HashMap<String, BTreeSet<String>>>>);

/// The hostname a host reported ("" when none).
pub fn hostname(h: &Host) -> &str {
    h.facts.as_ref().map(|f| f.hostname.as_str()).unwrap_or_default()
}

impl HostNames {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<HashMap<String, BTreeSet<String>>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `h` was written (after the commit).
    pub fn note(&self, h: &Host) {
        let name = hostname(h);
        if name.is_empty() {
            return;
        }
        if let Some(index) = self.lock().as_mut() {
            index.entry(name.to_string()).or_default().insert(h.id.clone());
        }
    }

    /// `h` was removed (after the commit).
    pub fn forget(&self, h: &Host) {
        if let Some(index) = self.lock().as_mut() {
            let name = hostname(h);
            if let Some(ids) = index.get_mut(name) {
                ids.remove(&h.id);
                if ids.is_empty() {
                    index.remove(name);
                }
            }
        }
    }

    /// The ids that may go by `name`; `all` reads every host, once, for
    /// the first call.
    pub fn ids(
        &self,
        name: &str,
        all: impl FnOnce() -> Result<Vec<Host>, StoreError>,
    ) -> Result<Vec<String>, StoreError> {
        let mut guard = self.lock();
        if guard.is_none() {
            let mut index: HashMap<String, BTreeSet<String>> = HashMap::new();
            for h in all()? {
                if !hostname(&h).is_empty() {
                    index.entry(hostname(&h).to_string()).or_default().insert(h.id);
                }
            }
            *guard = Some(index);
        }
        Ok(guard
            .as_ref()
            .and_then(|index| index.get(name))
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default())
    }
}
