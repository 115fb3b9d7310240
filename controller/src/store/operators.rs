//! Operator identities (space `identities`, key: name, value `1` + JSON
//! [`IdentityRecord`]) and their tokens (space `operators`, key: token id,
//! value `1` + JSON [`OperatorRecord`]).
//!
//! An identity has any number of tokens, each with its own expiry and
//! revocation; removing the identity removes them all in the same
//! transaction. Changes to identities run in one lane and compare on every
//! identity they read, so "the last admin cannot be removed" holds against
//! concurrent removals, here and on another controller sharing the backend.

use super::kv::{Attempt, Entry, Kv, Space, Txn};
use super::{dec_json, decode_all, enc_json, IdentityRecord, OperatorRecord, Store, StoreError};

const IDENTITIES: &str = Space::Identities.name();
const TOKENS: &str = Space::Operators.name();
/// The lane every identity change queues in.
const LANE: &[u8] = b"identities";

fn dec_identity(k: &[u8], v: &[u8]) -> Result<IdentityRecord, StoreError> {
    dec_json(IDENTITIES, k, v)
}

fn dec_token(k: &[u8], v: &[u8]) -> Result<OperatorRecord, StoreError> {
    dec_json(TOKENS, k, v)
}

/// Why an identity was not removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveIdentityError {
    /// It is the last admin.
    #[error(
        "operator '{0}' is the last admin; create another admin first ('fleetctl operator create NAME \
         --role admin'), or nobody could manage the fleet without the controller host's recovery \
         ('fleet-controller admin-token')"
    )]
    LastAdmin(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Adds an operator token.
    pub fn put_operator(&self, rec: &OperatorRecord) -> Result<(), StoreError> {
        self.put(Space::Operators, rec.id.as_bytes(), enc_json(rec))
    }

    /// An operator token by id.
    pub fn operator(&self, id: &str) -> Result<Option<OperatorRecord>, StoreError> {
        self.get_with(Space::Operators, id.as_bytes(), dec_token)
    }

    /// Every operator token.
    pub fn operator_tokens(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        decode_all(self.kv.as_ref(), Space::Operators, b"", dec_token)
    }

    /// An identity by name.
    pub fn identity(&self, name: &str) -> Result<Option<IdentityRecord>, StoreError> {
        self.get_with(Space::Identities, name.as_bytes(), dec_identity)
    }

    /// Every identity, by name.
    pub fn identities(&self) -> Result<Vec<IdentityRecord>, StoreError> {
        decode_all(self.kv.as_ref(), Space::Identities, b"", dec_identity)
    }

    /// Adds an identity; false (and nothing written) when the name is taken.
    pub fn create_identity(&self, rec: &IdentityRecord) -> Result<bool, StoreError> {
        self.rmw(LANE, "creating an operator identity", |kv| {
            if kv.get(Space::Identities, rec.name.as_bytes())?.is_some() {
                return Ok(Attempt::Done(false));
            }
            let txn =
                Txn::new()
                    .when_absent(Space::Identities, &rec.name)
                    .put(Space::Identities, &rec.name, enc_json(rec));
            Ok(Attempt::Commit(txn, true))
        })
    }

    /// Removes an identity and every token it has, unless it is the last
    /// admin. None when there is no such identity.
    pub fn remove_identity(&self, name: &str) -> Result<Option<(IdentityRecord, usize)>, RemoveIdentityError> {
        self.rmw(LANE, "removing an operator identity", |kv| {
            let Some(v) = kv.get(Space::Identities, name.as_bytes())? else {
                return Ok(Attempt::Done(None));
            };
            let rec = dec_identity(name.as_bytes(), &v)?;
            let mut txn = Txn::new()
                .when_equals(Space::Identities, name, &v)
                .delete(Space::Identities, name);
            if rec.role == "admin" {
                let others = other_admins(kv, name)?;
                if others.is_empty() {
                    return Err(RemoveIdentityError::LastAdmin(name.to_string()));
                }
                // Still admins when this commits.
                for (k, ov) in others {
                    txn = txn.when_equals(Space::Identities, &k, &ov);
                }
            }
            let mut removed = 0;
            for (k, tv) in kv.scan_prefix(Space::Operators, b"")? {
                if dec_token(&k, &tv)?.name == name {
                    txn = txn.when_equals(Space::Operators, &k, &tv).delete(Space::Operators, &k);
                    removed += 1;
                }
            }
            Ok(Attempt::Commit(txn, Some((rec, removed))))
        })
    }

    /// Adds a token for its identity, in the identities' lane and only if
    /// the identity is still what it was when read: a token never outlives
    /// a concurrent removal of its identity. False when there is no such
    /// identity.
    pub fn add_operator_token(&self, rec: &OperatorRecord) -> Result<bool, StoreError> {
        self.rmw(LANE, "adding an operator token", |kv| {
            let Some(v) = kv.get(Space::Identities, rec.name.as_bytes())? else {
                return Ok(Attempt::Done(false));
            };
            let txn = Txn::new()
                .when_equals(Space::Identities, &rec.name, &v)
                .when_absent(Space::Operators, &rec.id)
                .put(Space::Operators, &rec.id, enc_json(rec));
            Ok(Attempt::Commit(txn, true))
        })
    }

    /// Marks an operator token revoked; returns it, or None when unknown.
    pub fn revoke_operator_token(&self, id: &str, now: i64) -> Result<Option<OperatorRecord>, StoreError> {
        self.rmw(id.as_bytes(), "revoking an operator token", |kv| {
            let Some(v) = kv.get(Space::Operators, id.as_bytes())? else {
                return Ok(Attempt::Done(None));
            };
            let mut rec = dec_token(id.as_bytes(), &v)?;
            if rec.revoked_at_ms != 0 {
                return Ok(Attempt::Done(Some(rec)));
            }
            rec.revoked_at_ms = now;
            let txn = Txn::new()
                .when_equals(Space::Operators, id, &v)
                .put(Space::Operators, id, enc_json(&rec));
            Ok(Attempt::Commit(txn, Some(rec)))
        })
    }

    /// Gives every token of a store written before identities existed the
    /// identity it named, with the role it carried (`init`'s `admin`).
    /// Idempotent; run at open.
    pub(super) fn upgrade_operators(&self) -> Result<(), StoreError> {
        for token in self.operator_tokens()? {
            if token.role.is_empty() || self.identity(&token.name)?.is_some() {
                continue;
            }
            let rec = IdentityRecord {
                name: token.name.clone(),
                role: token.role.clone(),
                apps: Vec::new(),
                selector: String::new(),
                created_at_ms: token.created_at_ms,
                created_by: "upgrade".into(),
                description: "made from a token of an earlier version".into(),
            };
            if self.create_identity(&rec)? {
                tracing::info!(operator = %rec.name, role = %rec.role, "operator identity made for an existing token");
            }
        }
        Ok(())
    }
}

/// Every admin identity but `name`, with its stored bytes.
fn other_admins(kv: &dyn Kv, name: &str) -> Result<Vec<Entry>, StoreError> {
    let mut out = Vec::new();
    for (k, v) in kv.scan_prefix(Space::Identities, b"")? {
        if k != name.as_bytes() && dec_identity(&k, &v)?.role == "admin" {
            out.push((k, v));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(name: &str, role: &str) -> IdentityRecord {
        IdentityRecord {
            name: name.into(),
            role: role.into(),
            apps: vec![],
            selector: String::new(),
            created_at_ms: 1,
            created_by: "t".into(),
            description: String::new(),
        }
    }

    fn token(id: &str, name: &str) -> OperatorRecord {
        OperatorRecord {
            id: id.into(),
            name: name.into(),
            secret_sha256: "x".into(),
            created_at_ms: 1,
            ..Default::default()
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store")).expect("store");
        (dir, store)
    }

    #[test]
    fn names_are_unique_and_removal_takes_every_token() {
        let (_dir, store) = store();
        assert!(store.create_identity(&identity("root", "admin")).expect("root"));
        assert!(store.create_identity(&identity("ci", "deployer")).expect("ci"));
        assert!(!store.create_identity(&identity("ci", "viewer")).expect("taken"));
        assert_eq!(store.identity("ci").expect("get").expect("ci").role, "deployer");
        for (id, name) in [("t1", "ci"), ("t2", "ci"), ("t3", "root")] {
            store.put_operator(&token(id, name)).expect("token");
        }
        assert!(store.add_operator_token(&token("t4", "ci")).expect("add"));
        assert!(!store.add_operator_token(&token("t5", "nobody")).expect("no identity"));
        let (rec, n) = store.remove_identity("ci").expect("remove").expect("ci");
        assert_eq!((rec.name.as_str(), n), ("ci", 3));
        let left: Vec<String> = store
            .operator_tokens()
            .expect("tokens")
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(left, ["t3"]);
        assert!(store.remove_identity("ci").expect("again").is_none());
    }

    #[test]
    fn the_last_admin_stays() {
        let (_dir, store) = store();
        store.create_identity(&identity("a", "admin")).expect("a");
        store.create_identity(&identity("v", "viewer")).expect("v");
        assert!(matches!(
            store.remove_identity("a"),
            Err(RemoveIdentityError::LastAdmin(n)) if n == "a"
        ));
        store.create_identity(&identity("b", "admin")).expect("b");
        assert!(store.remove_identity("a").expect("a").is_some());
        assert!(matches!(
            store.remove_identity("b"),
            Err(RemoveIdentityError::LastAdmin(_))
        ));
    }

    #[test]
    fn revoking_is_recorded_once() {
        let (_dir, store) = store();
        store.put_operator(&token("t1", "ci")).expect("token");
        assert_eq!(
            store
                .revoke_operator_token("t1", 5)
                .expect("revoke")
                .expect("t1")
                .revoked_at_ms,
            5
        );
        assert_eq!(
            store
                .revoke_operator_token("t1", 9)
                .expect("again")
                .expect("t1")
                .revoked_at_ms,
            5
        );
        assert!(store.revoke_operator_token("nope", 9).expect("unknown").is_none());
    }

    #[test]
    fn tokens_of_an_earlier_version_get_their_identity() {
        let (_dir, store) = store();
        // What `init` wrote before identities: a token carrying the role.
        let mut legacy = token("t1", "admin");
        legacy.role = "admin".into();
        store.put_operator(&legacy).expect("token");
        store.upgrade_operators().expect("upgrade");
        assert_eq!(store.identity("admin").expect("get").expect("made").role, "admin");
        store.upgrade_operators().expect("idempotent");
        assert_eq!(store.identities().expect("all").len(), 1);
    }
}
