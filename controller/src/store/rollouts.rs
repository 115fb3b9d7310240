//! The rollouts' durable records (the store side of `rollouts`): the rollouts themselves, the desired
//! release of each (app, host), and each app's release for new hosts.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `rollouts` | rollout id | `3` + protobuf `fleet.v1.Rollout` without its hosts (the head: each batch's `hosts` empty); `2` + the whole record (written by earlier releases, read as it is, rewritten as `3` by the next write); `1` + the string-state record of earlier releases, migrated at open |
//! | `rollout_hosts` | rollout id, `\0`, batch (u32 big-endian), host's index in it (u32 big-endian) | `1` + protobuf `fleet.v1.RolloutHost` |
//! | `desired` | `<app>\0<host id>` | `1` + the version that host should run |
//! | `app_release` | app name | `1` + the app's release for new hosts |
//!
//! A rollout's hosts are keys of their own, and a write of the record
//! ([`RolloutStore::put`]) writes only the hosts that changed since this
//! process last wrote them, then the head: writing the whole record at
//! every save made a rollout quadratic in its hosts, and a record of
//! thousands of hosts is larger than etcd takes in one value. The hosts'
//! writes go in txns of at most `Kv::max_ops` (etcd: 100), before the head;
//! a crash between them leaves some hosts newer than the head, as if the
//! controller had died a moment later (the engine's restart rules hold:
//! nothing was sent before the flush that follows the whole write).
//!
//! Releases before per-host desired state kept one version per app in
//! `desired` under the bare app name; [`RolloutStore::open`] migrates it:
//! it becomes the app's release for new hosts, and each host that runs the
//! app gets its current release as its desired one, so the migration
//! changes no host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fleet_proto::{
    BatchState, FailureCause, Host, HostState, Rollout, RolloutBatch, RolloutHost, RolloutKind, RolloutState,
    StartRolloutRequest, StopCause, TaskProgress,
};

use super::codec;
use super::kv::{optimistic, Attempt, Kv, Space, Txn};
use super::{Store, StoreError};

const RECORD_V1: u8 = 1;
const RECORD_V2: u8 = 2;
/// The head of a record whose hosts are in `rollout_hosts`.
const RECORD_V3: u8 = 3;
const VALUE_V1: u8 = 1;

fn corrupt(tree: &'static str, key: &[u8], detail: impl Into<String>) -> StoreError {
    codec::corrupt(tree, key, detail)
}

/// The rollouts' key spaces (`rollouts`, `rollout_hosts`, `desired`,
/// `app_release`).
pub struct RolloutStore {
    kv: Arc<dyn Kv>,
    /// What this process last wrote of each running rollout's hosts, by
    /// rollout id, batch and index: a write skips the hosts that are equal.
    written: Mutex<HashMap<String, Written>>,
}

/// Which hosts may have changed since a record was last written: whole
/// batches, or single hosts by batch and index. [`RolloutStore::put_touched`]
/// compares only those with what it wrote (comparing every host at every
/// write made a rollout quadratic in its hosts, and comparing a whole batch
/// at every write made one batch of 10,000 hosts take 38 s to send). A
/// batch it has not written yet is always compared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    all: bool,
    batches: std::collections::BTreeSet<usize>,
    hosts: std::collections::BTreeSet<(usize, usize)>,
}

impl Touched {
    /// Every batch.
    pub fn all() -> Touched {
        Touched {
            all: true,
            ..Touched::default()
        }
    }

    /// Batch `b`'s hosts may have changed.
    pub fn batch(&mut self, b: usize) {
        self.batches.insert(b);
    }

    /// Host `i` of batch `b` may have changed.
    pub fn host(&mut self, b: usize, i: usize) {
        self.hosts.insert((b, i));
    }

    /// Any host may have changed.
    pub fn everything(&mut self) {
        self.all = true;
    }

    /// Written: nothing has changed since.
    pub fn clear(&mut self) {
        *self = Touched::default();
    }

    fn covers(&self, b: usize) -> bool {
        self.all || self.batches.contains(&b)
    }

    /// The single hosts of batch `b` noted.
    fn hosts_of(&self, b: usize) -> impl Iterator<Item = usize> + '_ {
        self.hosts.range((b, 0)..=(b, usize::MAX)).map(|(_, i)| *i)
    }
}

/// What this process last wrote of a running rollout.
#[derive(Default)]
struct Written {
    /// Its hosts, by batch and index.
    hosts: Vec<Vec<RolloutHost>>,
    /// Its head without the plan (see `head_of`), and the plan.
    head: Option<(Rollout, String)>,
}

/// The key of a rollout's host.
fn host_key(id: &str, batch: usize, index: usize) -> Vec<u8> {
    let mut k = host_prefix(id);
    k.extend_from_slice(&(batch as u32).to_be_bytes());
    k.extend_from_slice(&(index as u32).to_be_bytes());
    k
}

/// `<id>\0`: every host key of a rollout starts with it.
fn host_prefix(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 9);
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k
}

/// The rollout id, batch and index of a host key.
fn parse_host_key(key: &[u8]) -> Option<(&[u8], usize, usize)> {
    let nul = key.iter().position(|b| *b == 0)?;
    let rest = &key[nul + 1..];
    if rest.len() != 8 {
        return None;
    }
    let batch = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
    let index = u32::from_be_bytes(rest[4..].try_into().ok()?) as usize;
    Some((&key[..nul], batch, index))
}

/// Puts the decoded hosts into their batches of `r`, in key order.
fn fill(r: &mut Rollout, hosts: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
    for (k, v) in hosts {
        let (_, batch, index) =
            parse_host_key(&k).ok_or_else(|| corrupt("rollout_hosts", &k, "not <id>\\0<batch><index>"))?;
        let h: RolloutHost = codec::from_proto("rollout_hosts", &k, &v, VALUE_V1)?;
        let b = r
            .batches
            .get_mut(batch)
            .ok_or_else(|| corrupt("rollout_hosts", &k, format!("batch {batch} is not in the record")))?;
        if b.hosts.len() != index {
            return Err(corrupt(
                "rollout_hosts",
                &k,
                format!("host {index} of batch {batch} follows {} hosts", b.hosts.len()),
            ));
        }
        b.hosts.push(h);
    }
    Ok(())
}

fn desired_key(app: &str, host: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(app.len() + 1 + host.len());
    k.extend_from_slice(app.as_bytes());
    k.push(0);
    k.extend_from_slice(host.as_bytes());
    k
}

fn enc_version(v: &str) -> Vec<u8> {
    codec::text(VALUE_V1, v)
}

fn dec_version(tree: &'static str, key: &[u8], bytes: &[u8]) -> Result<String, StoreError> {
    codec::from_text(tree, key, bytes, VALUE_V1)
}

/// A record or a head (a `3` record: its hosts are elsewhere).
fn decode_rollout(key: &[u8], bytes: &[u8]) -> Result<Rollout, StoreError> {
    match codec::split("rollouts", key, bytes)? {
        (RECORD_V3, _) => codec::from_proto("rollouts", key, bytes, RECORD_V3),
        (RECORD_V2, _) => codec::from_proto("rollouts", key, bytes, RECORD_V2),
        (RECORD_V1, _) => {
            codec::from_proto::<legacy::RolloutV1>("rollouts", key, bytes, RECORD_V1).map(legacy::upgrade)
        }
        (v, _) => Err(corrupt("rollouts", key, format!("version byte {v}"))),
    }
}

fn encode_rollout(r: &Rollout) -> Vec<u8> {
    codec::proto(RECORD_V2, r)
}

/// The head of `r`: the record with every batch's hosts left out, and
/// without the plan unless `with_plan` (the plan names every host: at
/// 5,000 hosts it is 220 KB, and writing it with every write of the head
/// filled etcd's 2 GiB quota within one rollout).
fn head_of(r: &Rollout, with_plan: bool) -> Rollout {
    // Every field named, none with `..`: a field added to Rollout stops the
    // build here instead of being left out of the head.
    let Rollout {
        id,
        app,
        version,
        params,
        batches,
        reason,
        created_at_ms,
        ended_at_ms,
        created_by,
        failure_budget,
        current_batch,
        plan,
        state,
        kind,
        whole_selection,
        canary_approved,
        stop,
        batch_size,
    } = r;
    let head = Rollout {
        id: id.clone(),
        app: app.clone(),
        version: version.clone(),
        params: params.clone(),
        batches: batches
            .iter()
            .map(|b| {
                let RolloutBatch {
                    hosts: _,
                    canary,
                    started_at_ms,
                    ended_at_ms,
                    state,
                    // Set in answers only (ListRollouts' summaries).
                    counts: _,
                } = b;
                RolloutBatch {
                    hosts: Vec::new(),
                    canary: *canary,
                    started_at_ms: *started_at_ms,
                    ended_at_ms: *ended_at_ms,
                    state: *state,
                    counts: None,
                }
            })
            .collect(),
        reason: reason.clone(),
        created_at_ms: *created_at_ms,
        ended_at_ms: *ended_at_ms,
        created_by: created_by.clone(),
        failure_budget: *failure_budget,
        current_batch: *current_batch,
        plan: if with_plan { plan.clone() } else { String::new() },
        state: *state,
        kind: *kind,
        whole_selection: *whole_selection,
        canary_approved: *canary_approved,
        stop: *stop,
        batch_size: *batch_size,
    };
    head
}

/// A host's current release of an app, from its last inventory.
pub fn current_of(host: &Host, app: &str) -> String {
    host.inventory
        .as_ref()
        .and_then(|i| i.apps.iter().find(|a| a.app == app))
        .map(|a| a.current.clone())
        .unwrap_or_default()
}

impl RolloutStore {
    /// Opens the key spaces and migrates records of earlier releases (see
    /// the module's doc); `hosts` are the enrolled hosts, for the migration.
    pub fn open(store: &Store, hosts: &[Host]) -> Result<RolloutStore, StoreError> {
        let s = RolloutStore {
            kv: store.kv().clone(),
            written: Mutex::new(HashMap::new()),
        };
        s.migrate(hosts)?;
        Ok(s)
    }

    fn migrate(&self, hosts: &[Host]) -> Result<(), StoreError> {
        for (k, v) in self.kv.scan_prefix(Space::Rollouts, b"")? {
            if v.first() == Some(&RECORD_V1) {
                let r = decode_rollout(&k, &v)?;
                let txn = Txn::new()
                    .when_equals(Space::Rollouts, &k, &v)
                    .put(Space::Rollouts, &k, encode_rollout(&r));
                // Changed meanwhile: a newer record was written, nothing to migrate.
                let _ = self.kv.commit(txn)?;
                tracing::info!(rollout_id = %r.id, "rollout record migrated to typed states");
            }
        }
        let legacy: Vec<(Vec<u8>, Vec<u8>)> = self
            .kv
            .scan_prefix(Space::Desired, b"")?
            .into_iter()
            .filter(|(k, _)| !k.contains(&0))
            .collect();
        for (k, v) in legacy {
            let app = String::from_utf8_lossy(&k).into_owned();
            let version = String::from_utf8_lossy(&v).into_owned();
            // One app's migration is one transaction: the app's release for
            // new hosts and each host's desired release where none is set,
            // and the legacy record gone.
            optimistic(self.kv.as_ref(), "migrating a desired version", |kv| {
                let mut txn = Txn::new()
                    .when_equals(Space::Desired, &k, &v)
                    .delete(Space::Desired, &k);
                if kv.get(Space::AppRelease, &k)?.is_none() {
                    txn = txn
                        .when_absent(Space::AppRelease, &k)
                        .put(Space::AppRelease, &k, enc_version(&version));
                }
                for h in hosts {
                    let current = current_of(h, &app);
                    let key = desired_key(&app, &h.id);
                    if !current.is_empty() && kv.get(Space::Desired, &key)?.is_none() {
                        txn = txn
                            .when_absent(Space::Desired, &key)
                            .put(Space::Desired, &key, enc_version(&current));
                    }
                }
                Ok::<_, StoreError>(Attempt::Commit(txn, ()))
            })?;
            tracing::info!(
                app,
                version,
                "app-wide desired version migrated to per-host desired releases"
            );
        }
        Ok(())
    }

    /// Writes a rollout record (the caller makes it durable): the hosts
    /// that changed since this process last wrote them, then the head.
    pub fn put(&self, r: &Rollout) -> Result<(), StoreError> {
        self.put_touched(r, &Touched::all())
    }

    /// [`RolloutStore::put`], comparing only the hosts of the batches in
    /// `touched` (and of batches not written yet): the caller vouches that
    /// no other host changed since its last write.
    pub fn put_touched(&self, r: &Rollout, touched: &Touched) -> Result<(), StoreError> {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        // Taken out while writing: on an error it stays gone, so the next
        // write is whole.
        let Written {
            hosts: mut cache,
            head: last_head,
        } = written.remove(&r.id).unwrap_or_default();
        let mut ops: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let known = cache.len();
        cache.resize_with(cache.len().max(r.batches.len()), Vec::new);
        for (b, batch) in r.batches.iter().enumerate() {
            if b < known && !touched.covers(b) && cache[b].len() == batch.hosts.len() {
                let had = &mut cache[b];
                for i in touched.hosts_of(b) {
                    let (Some(h), Some(slot)) = (batch.hosts.get(i), had.get_mut(i)) else {
                        continue; // no such host: nothing to write
                    };
                    if slot != h {
                        ops.push((host_key(&r.id, b, i), Some(codec::proto(VALUE_V1, h))));
                        *slot = h.clone();
                    }
                }
                continue;
            }
            let had = &mut cache[b];
            for (i, h) in batch.hosts.iter().enumerate() {
                if had.get(i) != Some(h) {
                    ops.push((host_key(&r.id, b, i), Some(codec::proto(VALUE_V1, h))));
                    match had.get_mut(i) {
                        Some(slot) => *slot = h.clone(),
                        None => had.push(h.clone()),
                    }
                }
            }
            // Hosts a batch no longer has (never, today): gone too.
            for i in batch.hosts.len()..had.len() {
                ops.push((host_key(&r.id, b, i), None));
            }
            had.truncate(batch.hosts.len());
        }
        for (b, had) in cache.iter().enumerate().skip(r.batches.len()) {
            for i in 0..had.len() {
                ops.push((host_key(&r.id, b, i), None));
            }
        }
        cache.truncate(r.batches.len());
        // The head is written when it changed (most writes change hosts only).
        let head = head_of(r, false);
        let head_changed = last_head.as_ref().is_none_or(|(h, plan)| *h != head || *plan != r.plan);
        if ops.is_empty() && !head_changed {
            written.insert(
                r.id.clone(),
                Written {
                    hosts: cache,
                    head: last_head,
                },
            );
            return Ok(());
        }
        // Txns of at most max_ops writes; the head goes with the last hosts
        // (or alone after them), after every other one.
        let max = self.kv.max_ops().max(1);
        let mut ops = ops.into_iter().peekable();
        loop {
            let mut txn = Txn::new();
            while txn.ops.len() < max {
                let Some((key, value)) = ops.next() else { break };
                txn = match value {
                    Some(v) => txn.put(Space::RolloutHosts, key, v),
                    None => txn.delete(Space::RolloutHosts, key),
                };
            }
            let last = ops.peek().is_none() && (txn.ops.len() < max || !head_changed);
            if last && head_changed {
                txn = txn.put(
                    Space::Rollouts,
                    r.id.as_bytes(),
                    codec::proto(RECORD_V3, &head_of(r, true)),
                );
            }
            // On an error the cache entry stays gone: the next write is whole.
            let _ = self.kv.commit(txn)?;
            if last {
                break;
            }
        }
        if !r.state().ended() {
            let plan = match last_head {
                Some((_, plan)) if !head_changed => plan,
                _ => r.plan.clone(),
            };
            written.insert(
                r.id.clone(),
                Written {
                    hosts: cache,
                    head: Some((head, plan)),
                },
            );
        }
        Ok(())
    }

    fn write(&self, space: Space, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        let _ = self.kv.commit(Txn::new().put(space, key, value))?;
        Ok(())
    }

    /// One rollout.
    pub fn get(&self, id: &str) -> Result<Option<Rollout>, StoreError> {
        let Some(bytes) = self.kv.get(Space::Rollouts, id.as_bytes())? else {
            return Ok(None);
        };
        let mut r = decode_rollout(id.as_bytes(), &bytes)?;
        if bytes.first() == Some(&RECORD_V3) {
            fill(&mut r, self.kv.scan_prefix(Space::RolloutHosts, &host_prefix(id))?)?;
        }
        Ok(Some(r))
    }

    /// Every rollout without its hosts (heads; a record of an earlier
    /// release has them), newest first: what lists need.
    pub fn heads(&self) -> Result<Vec<Rollout>, StoreError> {
        let mut out = Vec::new();
        for (k, v) in self.kv.scan_prefix(Space::Rollouts, b"")? {
            out.push(decode_rollout(&k, &v)?);
        }
        out.sort_by_key(|r| std::cmp::Reverse((r.created_at_ms, r.id.clone())));
        Ok(out)
    }

    /// Every rollout, whole, newest first.
    pub fn all(&self) -> Result<Vec<Rollout>, StoreError> {
        let mut heads = Vec::new();
        for (k, v) in self.kv.scan_prefix(Space::Rollouts, b"")? {
            let split = v.first() == Some(&RECORD_V3);
            heads.push((decode_rollout(&k, &v)?, split));
        }
        let mut hosts: HashMap<Vec<u8>, Vec<super::kv::Entry>> = HashMap::new();
        for (k, v) in self.kv.scan_prefix(Space::RolloutHosts, b"")? {
            let id = parse_host_key(&k)
                .ok_or_else(|| corrupt("rollout_hosts", &k, "not <id>\\0<batch><index>"))?
                .0
                .to_vec();
            hosts.entry(id).or_default().push((k, v));
        }
        let mut out = Vec::with_capacity(heads.len());
        for (mut r, split) in heads {
            if split {
                let found = hosts.remove(r.id.as_bytes()).unwrap_or_default();
                fill(&mut r, found)?;
            }
            out.push(r);
        }
        out.sort_by_key(|r| std::cmp::Reverse((r.created_at_ms, r.id.clone())));
        Ok(out)
    }

    /// Whether a rollout of `app` has not ended (heads only).
    pub fn has_active(&self, app: &str) -> Result<bool, StoreError> {
        Ok(self.heads()?.iter().any(|r| r.app == app && !r.state().ended()))
    }

    /// The rollout of `app` that has not ended, if any, whole.
    pub fn active(&self, app: &str) -> Result<Option<Rollout>, StoreError> {
        match self.heads()?.into_iter().find(|r| r.app == app && !r.state().ended()) {
            Some(head) => self.get(&head.id),
            None => Ok(None),
        }
    }

    /// The release `host` should run of `app`, when one was decided for it.
    pub fn desired(&self, app: &str, host: &str) -> Result<Option<String>, StoreError> {
        let key = desired_key(app, host);
        self.kv
            .get(Space::Desired, &key)?
            .map(|v| dec_version("desired", &key, &v))
            .transpose()
    }

    /// Every host's desired release of `app`, by host id.
    pub fn desired_of_app(&self, app: &str) -> Result<HashMap<String, String>, StoreError> {
        let mut prefix = app.as_bytes().to_vec();
        prefix.push(0);
        let mut out = HashMap::new();
        for (k, v) in self.kv.scan_prefix(Space::Desired, &prefix)? {
            let host = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            out.insert(host, dec_version("desired", &k, &v)?);
        }
        Ok(out)
    }

    /// Records what `host` should run of `app` (the caller makes it durable).
    pub fn set_desired(&self, app: &str, host: &str, version: &str) -> Result<(), StoreError> {
        self.write(Space::Desired, &desired_key(app, host), enc_version(version))
    }

    /// The app's release for new hosts.
    pub fn app_release(&self, app: &str) -> Result<Option<String>, StoreError> {
        self.kv
            .get(Space::AppRelease, app.as_bytes())?
            .map(|v| dec_version("app_release", app.as_bytes(), &v))
            .transpose()
    }

    /// Records the app's release for new hosts (the caller makes it durable).
    pub fn set_app_release(&self, app: &str, version: &str) -> Result<(), StoreError> {
        self.write(Space::AppRelease, app.as_bytes(), enc_version(version))
    }

    /// What `host` should run of `app`: its own desired release, else the
    /// app's release for new hosts.
    pub fn target(&self, app: &str, host: &str) -> Result<Option<String>, StoreError> {
        match self.desired(app, host)? {
            Some(v) => Ok(Some(v)),
            None => self.app_release(app),
        }
    }
}

/// Records in the host's stored inventory that `current` of `app` is now
/// `version` (the task that did it said so), so operators see it before the
/// agent's next inventory report arrives.
pub fn note_current(store: &Store, host: &str, app: &str, version: &str) -> Result<(), StoreError> {
    store.update_host(host, |h| {
        let inv = h.inventory.get_or_insert_with(Default::default);
        match inv.apps.iter_mut().find(|a| a.app == app) {
            Some(a) if a.current != version => {
                a.previous = std::mem::replace(&mut a.current, version.to_string());
            }
            Some(_) => {}
            None => inv.apps.push(fleet_proto::AppInventory {
                app: app.to_string(),
                current: version.to_string(),
                ..Default::default()
            }),
        }
    })?;
    Ok(())
}

mod legacy;

#[cfg(test)]
mod tests;
