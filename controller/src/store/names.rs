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

/// For every host whose hostname another entry shares: the ids of those
/// others, sorted. Hosts without a hostname share nothing.
pub fn same_hostname(hosts: &[Host]) -> HashMap<String, Vec<String>> {
    let mut by_name: HashMap<&str, Vec<&str>> = HashMap::new();
    for h in hosts {
        if !hostname(h).is_empty() {
            by_name.entry(hostname(h)).or_default().push(&h.id);
        }
    }
    let mut out = HashMap::new();
    for ids in by_name.values().filter(|ids| ids.len() > 1) {
        for id in ids {
            let mut others: Vec<String> = ids.iter().filter(|o| *o != id).map(|o| o.to_string()).collect();
            others.sort();
            out.insert(id.to_string(), others);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use fleet_proto::HostFacts;

    use super::*;

    fn host(id: &str, name: &str) -> Host {
        Host {
            id: id.into(),
            facts: Some(HostFacts {
                hostname: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn shared_hostnames_name_the_other_entries() {
        let hosts = [
            host("a1", "web-1"),
            host("b2", "web-2"),
            host("c3", "web-1"),
            host("d4", "web-1"),
        ];
        let shared = same_hostname(&hosts);
        assert_eq!(shared.get("a1"), Some(&vec!["c3".to_string(), "d4".to_string()]));
        assert_eq!(shared.get("c3"), Some(&vec!["a1".to_string(), "d4".to_string()]));
        assert_eq!(shared.get("d4"), Some(&vec!["a1".to_string(), "c3".to_string()]));
        assert_eq!(shared.get("b2"), None, "a unique hostname is not marked");
        assert_eq!(shared.len(), 3);
    }

    #[test]
    fn hosts_without_a_hostname_share_nothing() {
        let hosts = [
            host("a1", ""),
            host("b2", ""),
            Host {
                id: "c3".into(),
                ..Default::default()
            },
        ];
        assert!(same_hostname(&hosts).is_empty());
    }
}
