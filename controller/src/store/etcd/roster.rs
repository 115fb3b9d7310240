//! Who the fleet's controllers are. Every running controller on etcd, the
//! one serving and the ones following, keeps a key
//! `<prefix>controllers/<host> <addr>` under a lease of its own (as long as
//! the serving lock's), valued as its [`Holder`] plus when it started; the
//! key goes when the controller stops or dies. `fleet-controller members`
//! reads them with the serving lock, so an operator sees who is up and who
//! serves.

use std::time::Duration;

use super::lock::{grant, keep_alive_once, put_op, revoke, send};
use super::{prefix_end, range, wire, EtcdKv, Members, StoreError};
use crate::store::kv::Order;

/// One controller of the fleet, as its key says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// `host=H dir=D pid=P addr=A since=MS`.
    pub value: String,
    /// Whether it holds the serving lock.
    pub serving: bool,
}

impl Peer {
    /// The `name=` field of its value ("" when absent).
    pub fn field(&self, name: &str) -> &str {
        field(&self.value, name)
    }
}

/// `name=` of a `k=v k=v` value ("" when absent). Values have no spaces.
pub fn field<'a>(value: &'a str, name: &str) -> &'a str {
    value
        .split(' ')
        .find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
        .unwrap_or("")
}

/// The members' key space under a fleet's prefix.
fn base(prefix: &str) -> Vec<u8> {
    format!("{prefix}controllers/").into_bytes()
}

async fn put(members: &Members, key: &[u8], value: &[u8], lease: i64) -> Result<(), StoreError> {
    let req = wire::TxnRequest {
        compare: Vec::new(),
        success: vec![put_op(key, value, lease)],
        failure: Vec::new(),
    };
    send(members, req).await
}

/// Keeps the member key alive; puts it again under a new lease when its
/// lease expired (etcd was out of reach for longer than the lease).
async fn keep(
    members: std::sync::Arc<Members>,
    key: Vec<u8>,
    value: Vec<u8>,
    mut lease: i64,
    current: tokio::sync::watch::Sender<i64>,
) {
    let mut warned = false;
    loop {
        tokio::time::sleep(super::LOCK_TTL / 3).await;
        let alive = match keep_alive_once(&members, lease).await {
            Ok(ttl) => ttl > 0,
            Err(e) => {
                if !warned {
                    warned = true;
                    tracing::warn!(error = %e, "cannot keep this controller's member key alive in etcd; trying again");
                }
                continue;
            }
        };
        warned = false;
        if alive {
            continue;
        }
        let again = async {
            let new = grant(&members).await?;
            put(&members, &key, &value, new).await?;
            Ok::<i64, StoreError>(new)
        };
        match again.await {
            Ok(new) => {
                lease = new;
                current.send_replace(new);
            }
            Err(e) => tracing::warn!(error = %e, "cannot put this controller's member key in etcd again; trying again"),
        }
    }
}

/// This controller's place among the members.
pub struct Membership {
    members: std::sync::Arc<Members>,
    handle: tokio::runtime::Handle,
    keeping: tokio::task::JoinHandle<()>,
    lease: tokio::sync::watch::Receiver<i64>,
}

impl Membership {
    /// Leaves at once (a clean stop): stops the keep-alives and revokes the
    /// lease, which deletes the key.
    pub async fn leave(&self) {
        self.keeping.abort();
        let (members, lease) = (self.members.clone(), *self.lease.borrow());
        let done = self.handle.spawn(async move { revoke(&members, lease).await });
        if tokio::time::timeout(Duration::from_secs(3), done).await.is_err() {
            tracing::warn!(
                "cannot take this controller off the members in etcd; it goes within {:?}",
                super::LOCK_TTL
            );
        }
    }
}

impl EtcdKv {
    /// Announces this controller (`holder`, started at `since_ms`) among the
    /// fleet's members and keeps it there until [`Membership::leave`] (or
    /// the process ends: then its lease runs out within [`super::LOCK_TTL`]).
    pub fn join_members(&self, holder: &super::Holder, since_ms: i64) -> Result<Membership, StoreError> {
        let key = [
            base(&self.prefix),
            format!("{} {}", holder.host, holder.addr).into_bytes(),
        ]
        .concat();
        let value = format!("{} since={since_ms}", holder.value()).into_bytes();
        let members = self.members.clone();
        let lease = self.run({
            let (key, value) = (key.clone(), value.clone());
            async move {
                let lease = grant(&members).await?;
                put(&members, &key, &value, lease).await?;
                Ok(lease)
            }
        })?;
        let (tx, rx) = tokio::sync::watch::channel(lease);
        let keeping = self.handle.spawn(keep(self.members.clone(), key, value, lease, tx));
        Ok(Membership {
            members: self.members.clone(),
            handle: self.handle.clone(),
            keeping,
            lease: rx,
        })
    }

    /// The fleet's controllers, by key, each saying whether it serves.
    pub fn members(&self) -> Result<Vec<Peer>, StoreError> {
        let members = self.members.clone();
        let base = base(&self.prefix);
        let lock = format!("{}serving", self.prefix).into_bytes();
        let (listed, serving) = self.run(async move {
            let end = prefix_end(&base);
            let listed = range(&members, base.clone(), end, usize::MAX, Order::Ascending, base.len()).await?;
            let mut lock_end = lock.clone();
            lock_end.push(0);
            let serving = range(&members, lock, lock_end, 1, Order::Ascending, 0).await?;
            Ok((listed, serving))
        })?;
        let holder = serving
            .first()
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        Ok(listed
            .into_iter()
            .map(|(_, v)| {
                let value = String::from_utf8_lossy(&v).into_owned();
                let serving = !holder.is_empty() && value.starts_with(&format!("{holder} "));
                Peer { value, serving }
            })
            .collect())
    }
}
