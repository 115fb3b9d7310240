//! The hot spaces (honoured certificates, hosts) in memory, kept current by
//! etcd watches: every TLS handshake and agent RPC looks its certificate
//! and its host up, and `hosts ls` reads every host; served from here they
//! are not a round trip to etcd each.
//!
//! - A space's copy is read whole at one revision `R` ([`Watched::load`]),
//!   then a watch from `R + 1` applies every change ([`Watched::apply`]).
//! - This controller's own commits are applied as they return, at the
//!   revision etcd gave them, so it reads its writes at once; the watch
//!   brings the same change again later and it is skipped. Every slot
//!   keeps the revision of what it holds, and only a later revision
//!   replaces it: a watch event and an own commit may arrive in either
//!   order, and a load that raced a commit does not undo it. A deleted key
//!   stays a tombstone until the watch has passed its revision.
//! - A copy is used while its watch is live, or while this controller
//!   holds the serving lock (then it is the fleet's one writer, so with
//!   the watch broken, etcd down, the copy still holds every change). Else
//!   reads go to etcd. A broken watch is made again, after a fresh load.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio_stream::StreamExt;

use super::{wire, Members, MAX_ANSWER};
use crate::store::kv::{Entry, Order, Space};

/// The spaces kept in memory.
pub const HOT: [Space; 2] = [Space::Certs, Space::Hosts];

/// What one key holds, at the revision that wrote it (None: deleted).
#[derive(Debug, Clone)]
struct Slot {
    rev: i64,
    value: Option<Vec<u8>>,
}

/// One space's copy.
#[derive(Debug, Default)]
struct Copy {
    slots: BTreeMap<Vec<u8>, Slot>,
    /// Read whole at least once since it was last given up.
    loaded: bool,
    /// Its watch is created and has not broken since.
    live: bool,
    /// Deleted keys and their revisions, dropped once the watch passed them.
    tombstones: Vec<(Vec<u8>, i64)>,
}

/// The hot spaces' copies, shared by the store and the watch tasks.
#[derive(Debug, Default)]
pub struct Watched {
    copies: [Copy; HOT.len()],
}

/// A space's copy as reads see it (see [`Watched::usable`]).
pub struct Usable<'a>(&'a Copy);

impl Usable<'_> {
    /// What `key` holds.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.slots.get(key).and_then(|s| s.value.clone())
    }

    fn live(&self) -> impl DoubleEndedIterator<Item = (&Vec<u8>, &Vec<u8>)> + '_ {
        self.0
            .slots
            .iter()
            .filter_map(|(k, s)| s.value.as_ref().map(|v| (k, v)))
    }

    /// As [`super::Kv::scan_prefix`].
    pub fn scan_prefix(&self, prefix: &[u8]) -> Vec<Entry> {
        self.0
            .slots
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, s)| s.value.as_ref().map(|v| (k.clone(), v.clone())))
            .collect()
    }

    /// As [`super::Kv::scan_from`].
    pub fn scan_from(&self, from: &[u8], limit: usize, order: Order) -> Vec<Entry> {
        let after = self
            .0
            .slots
            .range(from.to_vec()..)
            .filter_map(|(k, s)| s.value.as_ref().map(|v| (k.clone(), v.clone())));
        match order {
            Order::Ascending => after.take(limit).collect(),
            Order::Descending => after.rev().take(limit).collect(),
        }
    }

    /// How many keys hold a value.
    pub fn count(&self) -> usize {
        self.live().count()
    }
}

fn at(space: Space) -> Option<usize> {
    HOT.iter().position(|s| *s == space)
}

impl Watched {
    /// `space`'s copy, when reads may use it: loaded, and its watch live or
    /// this controller the fleet's one writer (`fenced`).
    pub fn usable(&self, space: Space, fenced: bool) -> Option<Usable<'_>> {
        let c = &self.copies[at(space)?];
        (c.loaded && (c.live || fenced)).then_some(Usable(c))
    }

    /// Whether `space` is kept here.
    pub fn keeps(space: Space) -> bool {
        at(space).is_some()
    }

    /// `space` as etcd held it at revision `rev` (key, value, the revision
    /// that wrote it): what was written later here is kept, what the
    /// snapshot lacks and was written at or before `rev` was deleted.
    pub fn load(&mut self, space: Space, entries: Vec<(Vec<u8>, Vec<u8>, i64)>, rev: i64) {
        let Some(i) = at(space) else { return };
        let c = &mut self.copies[i];
        let mut slots: BTreeMap<Vec<u8>, Slot> = entries
            .into_iter()
            .map(|(k, v, r)| (k, Slot { rev: r, value: Some(v) }))
            .collect();
        for (k, s) in std::mem::take(&mut c.slots) {
            if s.rev > rev && slots.get(&k).is_none_or(|n| n.rev < s.rev) {
                slots.insert(k, s);
            }
        }
        c.tombstones
            .retain(|(k, r)| *r > rev && slots.get(k).is_some_and(|s| s.value.is_none()));
        c.slots = slots;
        c.loaded = true;
    }

    /// `key` of `space` was written at `rev` (None: deleted); ignored when
    /// what is here was written later.
    pub fn apply(&mut self, space: Space, key: &[u8], value: Option<Vec<u8>>, rev: i64) {
        let Some(i) = at(space) else { return };
        let c = &mut self.copies[i];
        if c.slots.get(key).is_some_and(|s| s.rev >= rev) {
            return;
        }
        if value.is_none() {
            c.tombstones.push((key.to_vec(), rev));
        }
        c.slots.insert(key.to_vec(), Slot { rev, value });
    }

    /// The watch of `space` has delivered everything up to `rev`: older
    /// events will not come, so tombstones up to it are no longer needed.
    pub fn watched_to(&mut self, space: Space, rev: i64) {
        let Some(i) = at(space) else { return };
        let c = &mut self.copies[i];
        let slots = &mut c.slots;
        c.tombstones.retain(|(k, r)| {
            if *r > rev {
                return true;
            }
            if slots.get(k).is_some_and(|s| s.value.is_none() && s.rev == *r) {
                slots.remove(k);
            }
            false
        });
    }

    /// The watch of `space` was created (true) or broke (false).
    pub fn set_live(&mut self, space: Space, live: bool) {
        if let Some(i) = at(space) {
            self.copies[i].live = live;
        }
    }

    /// Whether `space`'s watch is live.
    pub fn live(&self, space: Space) -> bool {
        at(space).is_some_and(|i| self.copies[i].live)
    }

    /// Forgets `space` until the next load (a write whose outcome is unknown
    /// while no watch would tell).
    pub fn give_up(&mut self, space: Space) {
        if let Some(i) = at(space) {
            self.copies[i] = Copy::default();
        }
    }
}

/// The copies, shared: read by every handshake and RPC at once, written by
/// the watches and this controller's commits.
pub type Shared = Arc<RwLock<Watched>>;

/// Reads `w`, through a poisoned lock (the copy holds no invariant a panic
/// mid-update could break that a reload would not mend).
pub fn read(w: &Shared) -> RwLockReadGuard<'_, Watched> {
    w.read().unwrap_or_else(|p| p.into_inner())
}

/// Writes `w` (see [`read`]).
pub fn write(w: &Shared) -> RwLockWriteGuard<'_, Watched> {
    w.write().unwrap_or_else(|p| p.into_inner())
}

/// Keeps `space`'s copy current for as long as the client lives: loads it,
/// watches it, and after a broken watch loads and watches again (after
/// 0.5 s, doubling to 4 s while it keeps failing).
pub async fn keep(members: Arc<Members>, space: Space, base: Vec<u8>, copies: Shared) {
    let mut pause = Duration::from_millis(500);
    loop {
        let why = follow(&members, space, &base, &copies).await;
        let was_live = {
            let mut w = write(&copies);
            let was = w.live(space);
            w.set_live(space, false);
            was
        };
        if was_live {
            pause = Duration::from_millis(500);
            tracing::info!(
                space = space.name(),
                "the watch of etcd broke ({why}); reading it again"
            );
        } else {
            tracing::debug!(
                space = space.name(),
                "cannot watch etcd ({why}); trying again in {pause:?}"
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(4));
    }
}

/// One round: the space read whole, then its watch followed until it
/// breaks. Returns why it ended.
async fn follow(members: &Members, space: Space, base: &[u8], copies: &Shared) -> String {
    let end = super::prefix_end(base);
    let (entries, rev) = match super::range_at(members, base.to_vec(), end.clone(), base.len()).await {
        Ok(x) => x,
        Err(e) => return e.to_string(),
    };
    write(copies).load(space, entries, rev);
    let create = wire::WatchRequest {
        request_union: Some(wire::watch_request::RequestUnion::CreateRequest(
            wire::WatchCreateRequest {
                key: base.to_vec(),
                range_end: end,
                start_revision: rev + 1,
                ..Default::default()
            },
        )),
    };
    let channel = members.watch_channel();
    let mut req = tonic::Request::new(tokio_stream::once(create).chain(tokio_stream::pending()));
    // A member that loses its leader ends the watch rather than go quiet.
    req.metadata_mut()
        .insert("hasleader", tonic::metadata::MetadataValue::from_static("true"));
    let mut answers = match wire::watch_client::WatchClient::new(channel)
        .max_decoding_message_size(MAX_ANSWER)
        .watch(req)
        .await
    {
        Ok(a) => a.into_inner(),
        Err(s) => {
            members.watch_failed();
            return s.message().to_string();
        }
    };
    loop {
        let a = match answers.message().await {
            Ok(Some(a)) => a,
            Ok(None) => return "the member ended the watch".into(),
            Err(s) => {
                members.watch_failed();
                return s.message().to_string();
            }
        };
        if a.canceled {
            return if a.compact_revision > 0 {
                format!("revision {} was compacted", a.compact_revision)
            } else {
                format!("etcd cancelled it: {}", a.cancel_reason)
            };
        }
        let mut w = write(copies);
        if a.created {
            w.set_live(space, true);
        }
        let mut last = 0;
        for ev in a.events {
            let Some(kv) = ev.kv else { continue };
            let Some(key) = kv.key.get(base.len()..) else { continue };
            let value = (ev.r#type == wire::event::EventType::Put as i32).then_some(kv.value);
            w.apply(space, key, value, kv.mod_revision);
            last = last.max(kv.mod_revision);
        }
        if last > 0 {
            w.watched_to(space, last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Space = Space::Hosts;

    fn kv(k: &str, v: &str, r: i64) -> (Vec<u8>, Vec<u8>, i64) {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec(), r)
    }

    fn get(w: &Watched, k: &str) -> Option<String> {
        w.usable(S, false)
            .expect("usable")
            .get(k.as_bytes())
            .map(|v| String::from_utf8(v).expect("utf8"))
    }

    fn live(entries: Vec<(Vec<u8>, Vec<u8>, i64)>, rev: i64) -> Watched {
        let mut w = Watched::default();
        w.load(S, entries, rev);
        w.set_live(S, true);
        w
    }

    #[test]
    fn a_copy_is_used_once_loaded_while_watched_or_while_this_controller_is_the_one_writer() {
        let mut w = Watched::default();
        assert!(w.usable(S, false).is_none());
        assert!(w.usable(S, true).is_none(), "not read yet");
        w.load(S, vec![kv("a", "1", 3)], 5);
        assert!(w.usable(S, false).is_none(), "no watch yet");
        assert!(w.usable(S, true).is_some(), "the one writer");
        w.set_live(S, true);
        assert!(w.usable(S, false).is_some());
        assert!(w.usable(Space::Tokens, true).is_none(), "never kept");
        w.give_up(S);
        assert!(w.usable(S, true).is_none());
    }

    #[test]
    fn a_later_revision_wins_whichever_order_the_changes_come_in() {
        let mut w = live(vec![kv("a", "1", 3)], 5);
        // An own commit at 7, then the watch brings 6 and 7.
        w.apply(S, b"a", Some(b"own".to_vec()), 7);
        w.apply(S, b"a", Some(b"old".to_vec()), 6);
        w.apply(S, b"a", Some(b"own".to_vec()), 7);
        assert_eq!(get(&w, "a").as_deref(), Some("own"));
        w.apply(S, b"a", Some(b"next".to_vec()), 8);
        assert_eq!(get(&w, "a").as_deref(), Some("next"));
    }

    #[test]
    fn a_delete_is_not_undone_by_an_older_put_and_its_tombstone_goes_once_watched_past() {
        let mut w = live(vec![kv("a", "1", 3)], 5);
        w.apply(S, b"a", None, 9);
        w.apply(S, b"a", Some(b"stale".to_vec()), 8);
        assert_eq!(get(&w, "a"), None);
        assert_eq!(w.usable(S, false).expect("usable").count(), 0);
        w.watched_to(S, 8);
        assert_eq!(w.copies[1].slots.len(), 1, "kept while older events may come");
        w.watched_to(S, 9);
        assert!(w.copies[1].slots.is_empty());
        assert!(w.copies[1].tombstones.is_empty());
    }

    #[test]
    fn a_load_keeps_what_was_written_after_its_revision_and_drops_what_was_deleted_before() {
        let mut w = live(vec![kv("a", "1", 3), kv("b", "1", 4), kv("c", "1", 4)], 5);
        w.apply(S, b"d", Some(b"own".to_vec()), 12); // after the next load's snapshot
        w.apply(S, b"a", None, 11); // after it too
                                    // The snapshot at 10: b changed, c deleted (at some revision <= 10), a still there.
        w.load(S, vec![kv("a", "1", 3), kv("b", "2", 8)], 10);
        let u = w.usable(S, false).expect("usable");
        let all = u.scan_prefix(b"");
        assert_eq!(
            all,
            vec![(b"b".to_vec(), b"2".to_vec()), (b"d".to_vec(), b"own".to_vec())]
        );
    }

    #[test]
    fn scans_skip_tombstones_and_keep_keys_in_order() {
        let mut w = live(
            vec![kv("h/1", "a", 1), kv("h/2", "b", 2), kv("h/3", "c", 3), kv("i", "d", 3)],
            3,
        );
        w.apply(S, b"h/2", None, 4);
        let u = w.usable(S, false).expect("usable");
        let keys = |e: Vec<Entry>| {
            e.into_iter()
                .map(|(k, _)| String::from_utf8(k).expect("utf8"))
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(u.scan_prefix(b"h/")), ["h/1", "h/3"]);
        assert_eq!(keys(u.scan_from(b"h/2", 5, Order::Ascending)), ["h/3", "i"]);
        assert_eq!(keys(u.scan_from(b"h/", 2, Order::Descending)), ["i", "h/3"]);
        assert_eq!(keys(u.scan_from(b"", 1, Order::Ascending)), ["h/1"]);
        assert_eq!(u.count(), 3);
    }
}
