//! The fleet's serving lock in etcd: one controller at a time serves a
//! fleet's prefix, and one that lost the lock can write nothing.
//!
//! - The lock is the key `<prefix>serving`, put under a lease of
//!   [`LOCK_TTL`] that the holder keeps alive every third of it. A holder
//!   that dies (kill -9, a lost instance) loses it when the lease expires.
//! - Fencing: once the lock is taken, every commit of the backend also
//!   compares the lock's value with the holder's. A controller whose lease
//!   expired (cut off from etcd for longer than the TTL while etcd kept a
//!   majority, a long pause) has every write refused, whoever holds the
//!   lock now, and is told it lost it. While etcd has no majority no lease
//!   expires and nobody can take the lock; the holder keeps trying.
//! - The holder's value names its host, its data dir and its pid. A
//!   controller restarted on the same host and data dir (it holds the data
//!   dir's local lock, so no other process there serves it) takes over the
//!   lock of its dead predecessor at once instead of waiting out the lease.
//!
//! Several controllers serving one fleet at once (an election per rollout,
//! tasks routed between controllers) is later work; until then the lock
//! keeps a second controller on the same prefix from running the same
//! rollouts twice.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::wire::lease_client::LeaseClient;
use super::wire::request_op::Request;
use super::wire::response_op::Response;
use super::{client, compare_absent, compare_value, EtcdKv, Members};
use super::{wire, StoreError};

/// The lock's lease: a dead holder's lock is free after it, so a standby
/// controller takes over within about this long after its holder died.
pub const LOCK_TTL: Duration = Duration::from_secs(6);

/// What the backend compares on every commit once the lock is taken.
#[derive(Debug, Clone)]
pub(super) struct Fence {
    pub key: Vec<u8>,
    pub holder: Vec<u8>,
    /// Told when a fenced write finds the lock gone (as the keep-alive is
    /// when the lease expires).
    pub lost: Arc<watch::Sender<Option<String>>>,
}

/// Who holds the lock: `host=H dir=D pid=P addr=A`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The controller's hostname.
    pub host: String,
    /// Its data dir.
    pub dir: String,
    /// Its process id.
    pub pid: u32,
    /// The address the fleet's other controllers reach it at (a name its
    /// certificate holds; see `server::advertised`).
    pub addr: String,
}

impl Holder {
    /// The lock's value.
    pub fn value(&self) -> String {
        format!(
            "host={} dir={} pid={} addr={}",
            self.host, self.dir, self.pid, self.addr
        )
    }

    /// Whether `value` is the lock of a controller on this host and data
    /// dir (another process, or this one's earlier run).
    pub fn same_place(&self, value: &str) -> bool {
        value.starts_with(&format!("host={} dir={} pid=", self.host, self.dir))
    }
}

/// The lock this controller holds.
pub struct ServingLock {
    members: Arc<Members>,
    handle: tokio::runtime::Handle,
    lease: i64,
    lost: watch::Receiver<Option<String>>,
}

impl ServingLock {
    /// Resolves with the reason when the lock is lost.
    pub async fn lost(&self) -> String {
        let mut rx = self.lost.clone();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                // The keep-alive task ended without a reason: the client is closing.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Gives the lock up (a clean stop), so the next controller need not
    /// wait for the lease: revokes the lease, which deletes the key.
    pub async fn release(&self) {
        let (members, lease) = (self.members.clone(), self.lease);
        let done = self.handle.spawn(async move {
            members
                .write(|c| async move {
                    LeaseClient::new(c)
                        .lease_revoke(wire::LeaseRevokeRequest { id: lease })
                        .await
                        .map(drop)
                })
                .await
        });
        match tokio::time::timeout(Duration::from_secs(3), done).await {
            Ok(Ok(Ok(()))) => tracing::info!("gave up the fleet's serving lock in etcd"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "cannot give up the serving lock; it expires within {LOCK_TTL:?}")
            }
            _ => tracing::warn!("giving up the serving lock did not finish; it expires within {LOCK_TTL:?}"),
        }
    }
}

/// The lock's current value (None: free), from a txn's failure branch.
fn held_by(resp: &wire::TxnResponse) -> Option<String> {
    resp.responses.iter().find_map(|r| match &r.response {
        Some(Response::ResponseRange(range)) => range
            .kvs
            .first()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
        _ => None,
    })
}

pub(super) async fn grant(members: &Members) -> Result<i64, StoreError> {
    let resp = members
        .write(|c| async move {
            LeaseClient::new(c)
                .lease_grant(wire::LeaseGrantRequest {
                    ttl: LOCK_TTL.as_secs() as i64,
                    id: 0,
                })
                .await
                .map(tonic::Response::into_inner)
        })
        .await?;
    if !resp.error.is_empty() {
        return Err(members.error(format!("etcd refused a lease: {}", resp.error)));
    }
    Ok(resp.id)
}

/// The op that puts `key` under `lease`.
pub(super) fn put_op(key: &[u8], value: &[u8], lease: i64) -> wire::RequestOp {
    wire::RequestOp {
        request: Some(Request::RequestPut(wire::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

/// Puts the lock under `lease` when it is free; otherwise its holder.
async fn try_put(members: &Members, key: &[u8], value: &[u8], lease: i64) -> Result<Option<String>, StoreError> {
    let req = wire::TxnRequest {
        compare: vec![compare_absent(key)],
        success: vec![put_op(key, value, lease)],
        failure: vec![wire::RequestOp {
            request: Some(Request::RequestRange(wire::RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })),
        }],
    };
    let resp = members
        .write(|c| {
            let req = req.clone();
            async move { client(c).txn(req).await.map(tonic::Response::into_inner) }
        })
        .await?;
    Ok(if resp.succeeded {
        None
    } else {
        Some(held_by(&resp).unwrap_or_default())
    })
}

/// Deletes the lock if it still holds `value` (a dead predecessor's).
async fn take_over(members: &Members, key: &[u8], value: &str) -> Result<(), StoreError> {
    let req = wire::TxnRequest {
        compare: vec![compare_value(key, value.as_bytes())],
        success: vec![wire::RequestOp {
            request: Some(Request::RequestDeleteRange(wire::DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
    };
    send(members, req).await
}

/// Sends `req` as a write (its outcome, success or not, is not asked).
pub(super) async fn send(members: &Members, req: wire::TxnRequest) -> Result<(), StoreError> {
    members
        .write(|c| {
            let req = req.clone();
            async move { client(c).txn(req).await.map(drop) }
        })
        .await
}

pub(super) async fn revoke(members: &Members, lease: i64) {
    let _ = members
        .write(|c| async move {
            LeaseClient::new(c)
                .lease_revoke(wire::LeaseRevokeRequest { id: lease })
                .await
                .map(drop)
        })
        .await;
}

/// One keep-alive of `lease`: its time to live left, in seconds.
pub(super) async fn keep_alive_once(members: &Members, lease: i64) -> Result<i64, StoreError> {
    members
        .read(|c| async move {
            let mut answers = LeaseClient::new(c)
                .lease_keep_alive(tokio_stream::once(wire::LeaseKeepAliveRequest { id: lease }))
                .await?
                .into_inner();
            match answers.message().await? {
                Some(a) => Ok(a.ttl),
                None => Err(tonic::Status::unavailable(
                    "the keep-alive stream ended without an answer",
                )),
            }
        })
        .await
}

/// Keeps `lease` alive until etcd says it has expired; then says why on
/// `lost`. While etcd does not answer (no majority, cut off) it keeps
/// trying and does not give the lock up by itself: a lease only expires
/// while etcd has a leader, and then another controller can take the lock,
/// after which every write of this one is fenced out (which stops it too).
async fn keep(members: Arc<Members>, lease: i64, lost: Arc<watch::Sender<Option<String>>>) {
    let mut failing_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(LOCK_TTL / 3).await;
        match keep_alive_once(&members, lease).await {
            Ok(ttl) if ttl > 0 => {
                if let Some(t) = failing_since.take() {
                    tracing::info!(after = ?t.elapsed(), "the serving lock's lease is kept alive again");
                }
            }
            Ok(_) => {
                lost.send_replace(Some(format!(
                    "this controller lost the fleet's serving lock in {}: etcd says its lease has expired. Every \
                     write it makes is refused from now on; it stops, and a restart takes the lock again once it \
                     is free",
                    members.name
                )));
                return;
            }
            Err(e) => {
                if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                    tracing::warn!(error = %e, "cannot keep the serving lock's lease alive; trying again (writes are refused meanwhile)");
                }
            }
        }
    }
}

impl EtcdKv {
    /// Takes the fleet's serving lock as `holder`, waiting up to `wait` for
    /// another holder's lock to be given up or to expire (`None`: for as long
    /// as it takes, a standby controller); from then on every commit is
    /// fenced by it. Call it while holding the data dir's local lock: a lock
    /// held by this host and data dir is taken over at once.
    pub fn take_lock(&self, holder: &Holder, wait: Option<Duration>) -> Result<ServingLock, StoreError> {
        let key = format!("{}serving", self.prefix).into_bytes();
        let value = holder.value();
        let members = self.members.clone();
        let me = holder.clone();
        let lease = self.run({
            let (key, value) = (key.clone(), value.clone());
            async move {
                let deadline = wait.map(|w| Instant::now() + w);
                let mut told = false;
                // A follower (no deadline) outlives etcd's outages: it
                // keeps forwarding and tries again (an attempt whose put
                // was applied after all is found as its own next time).
                let mut failing = false;
                let mut retry = |e: StoreError| -> Result<(), StoreError> {
                    if deadline.is_some() {
                        return Err(e);
                    }
                    if !failing {
                        tracing::warn!(error = %e, "cannot try the fleet's serving lock in etcd; following on and trying again");
                        failing = true;
                    }
                    Ok(())
                };
                loop {
                    let attempt = async {
                        let lease = grant(&members).await?;
                        match try_put(&members, &key, value.as_bytes(), lease).await {
                            Ok(None) => Ok(Ok(lease)),
                            Ok(Some(other)) => {
                                revoke(&members, lease).await;
                                if me.same_place(&other) {
                                    tracing::info!(previous = %other, "taking over the serving lock of this controller's previous run");
                                    take_over(&members, &key, &other).await?;
                                }
                                Ok(Err(other))
                            }
                            Err(e) => {
                                revoke(&members, lease).await;
                                Err(e)
                            }
                        }
                    };
                    let other = match attempt.await {
                        Ok(Ok(lease)) => return Ok(lease),
                        Ok(Err(other)) => other,
                        Err(e) => {
                            retry(e)?;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    };
                    if me.same_place(&other) {
                        continue;
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(members.error(format!(
                            "another controller serves this fleet ({other}); one controller at a time serves a \
                             fleet's prefix: stop that one first (if it died, its lock expires within {LOCK_TTL:?})"
                        )));
                    }
                    if !told {
                        if deadline.is_none() {
                            tracing::info!(holder = %other, "following: another controller serves this fleet; this one forwards its clients to it and serves when it is gone (within {LOCK_TTL:?} of its death)");
                        } else {
                            tracing::warn!(holder = %other, "waiting for the fleet's serving lock (it expires within {LOCK_TTL:?} if its holder died)");
                        }
                        told = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        })?;
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        *self.fence.lock().unwrap_or_else(|p| p.into_inner()) = Some(Fence {
            key,
            holder: value.into_bytes(),
            lost: tx.clone(),
        });
        self.fenced.store(true, Ordering::Release);
        self.handle.spawn(keep(self.members.clone(), lease, tx));
        // The holder keeps etcd's history short (see `compact`).
        let probe = format!("{}meta/schema", self.prefix).into_bytes();
        self.handle.spawn(super::compact::keep_compacting(
            self.members.clone(),
            probe,
            super::COMPACT_EVERY,
        ));
        Ok(ServingLock {
            members: self.members.clone(),
            handle: self.handle.clone(),
            lease,
            lost: rx,
        })
    }

    /// The fence commits compare, once the lock is taken.
    pub(super) fn fence(&self) -> Option<Fence> {
        if !self.fenced.load(Ordering::Acquire) {
            return None;
        }
        self.fence.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What a fenced commit's failure branch says: None when the lock is still
/// this holder's (the txn's own compares failed), else the error.
pub(super) fn fenced_out(fence: &Fence, resp: &wire::TxnResponse, name: &str) -> Option<StoreError> {
    let now = resp.responses.last().and_then(|r| match &r.response {
        Some(Response::ResponseRange(range)) => Some(range.kvs.first().map(|kv| kv.value.clone())),
        _ => None,
    })?;
    if now.as_deref() == Some(fence.holder.as_slice()) {
        return None;
    }
    let by = now.map_or("nobody".to_string(), |v| String::from_utf8_lossy(&v).into_owned());
    let detail = format!(
        "this controller no longer holds the fleet's serving lock (held by {by}); the write was refused. \
         The controller stops; a restart takes the lock again once it is free"
    );
    fence.lost.send_replace(Some(format!("{detail} ({name})")));
    Some(StoreError::Etcd {
        name: name.to_string(),
        detail,
    })
}
