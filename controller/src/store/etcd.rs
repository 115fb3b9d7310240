//! The etcd backend of [`Kv`]: the store's spaces as key ranges of an etcd
//! v3 cluster, so that the fleet's state is not on one controller's disk.
//!
//! - A key `k` of space `s` is `<prefix><s.name()>/<k>` in etcd; the prefix
//!   (`[store] prefix`) lets several fleets share one cluster.
//! - [`Kv::commit`] is one etcd `Txn`: a [`Compare`] on a value is
//!   `VALUE == v` (never true of an absent key, as etcd defines it), on an
//!   absent key `VERSION == 0`; the ops are the success branch. etcd returns
//!   once the txn is committed by a majority of members (written to their
//!   logs), so [`Kv::flush_sync`] has nothing to do.
//! - Scans are Range reads in pages of [`PAGE`] keys, every page at the
//!   revision of the first, so a scan is one consistent snapshot however
//!   long it is. Reads are linearizable (a member cut off from the majority
//!   refuses them instead of answering from stale state).
//! - [`Kv`] is blocking. The gRPC client lives on a runtime of its own (one
//!   thread, `fleet-etcd`); a call is spawned there and the caller waits on
//!   a channel, so a caller on the controller's runtime never blocks the
//!   thread that drives the call.
//! - Several endpoints: reads go to the member that answered last and move
//!   on to the next one when it does not answer. A write is sent once: when
//!   it fails after being sent, its outcome is unknown and the error says
//!   so (the next write goes to the next member).
//!
//! The wire types are a subset of etcd's API written for this backend
//! (`controller/proto/etcd.proto`), compiled with protox like the fleet's
//! own protocol: no etcd client library needs a system `protoc`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;

use super::kv::{Committed, Compare, Entry, Kv, Op, Order, Space, Txn};
use super::StoreError;

/// The generated client of etcd's API subset.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod wire {
    tonic::include_proto!("etcdserverpb");
}

use wire::compare::{CompareResult, CompareTarget, TargetUnion};
use wire::kv_client::KvClient;
use wire::range_request::{SortOrder, SortTarget};
use wire::request_op::Request;

/// Keys per Range page of a scan.
pub const PAGE: i64 = 1000;

/// The largest answer accepted from etcd (a page of large values).
const MAX_ANSWER: usize = 64 << 20;

/// TLS to etcd: the CA that signed the members' certificates, and this
/// controller's client certificate and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA certificate(s) the members' certificates are verified against.
    pub ca: PathBuf,
    /// The client certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// Where the store is in etcd, from `[store]` in controller.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// `http://host:port` or `https://host:port`, one per member.
    pub endpoints: Vec<String>,
    /// Every key of this fleet starts with it (ends with `/`).
    pub prefix: String,
    /// Required for `https://` endpoints.
    pub tls: Option<EtcdTls>,
    /// How long one call may take before it is given up.
    pub timeout: Duration,
}

impl EtcdSettings {
    /// The endpoints, comma-separated, for messages.
    pub fn describe(&self) -> String {
        format!("etcd {} (prefix {:?})", self.endpoints.join(","), self.prefix)
    }
}

/// One member: its address (for messages) and the channel to it.
struct Member {
    addr: String,
    channel: Channel,
}

struct Members {
    list: Vec<Member>,
    /// The member the next call goes to first.
    current: AtomicUsize,
    /// `EtcdSettings::describe`, for messages.
    name: String,
    timeout: Duration,
}

/// The etcd backend.
pub struct EtcdKv {
    members: Arc<Members>,
    /// `[store] prefix`.
    prefix: String,
    /// Set once the serving lock is taken (see `lock`): every commit then
    /// compares the lock's value too.
    fence: std::sync::Mutex<Option<lock::Fence>>,
    fenced: std::sync::atomic::AtomicBool,
    /// The honoured certificates and the hosts in memory, kept current by
    /// etcd watches once [`EtcdKv::watch_hot`] started them (see
    /// [`watched`]).
    watched: watched::Shared,
    /// `<prefix><space>/` for each space, by `Space` index.
    bases: Vec<Vec<u8>>,
    /// The client's runtime; taken (and shut down without waiting) on drop.
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

/// The key just after every key that starts with `prefix` (etcd's
/// `range_end` for a prefix); `\0` (etcd: to the end of the keyspace) when
/// there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The key `<base><key>`.
fn join(base: &[u8], key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(base.len() + key.len());
    k.extend_from_slice(base);
    k.extend_from_slice(key);
    k
}

/// etcd's compare for one of ours.
fn compare(base: &[u8], c: &Compare) -> wire::Compare {
    let key = join(base, &c.key);
    match &c.value {
        Some(v) => compare_value(&key, v),
        None => compare_absent(&key),
    }
}

/// `key` holds `value` (never true of an absent key).
fn compare_value(key: &[u8], value: &[u8]) -> wire::Compare {
    wire::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Value as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::Value(value.to_vec())),
    }
}

/// `key` is absent (its version is 0).
fn compare_absent(key: &[u8]) -> wire::Compare {
    wire::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Version as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::Version(0)),
    }
}

/// The etcd `Txn` for `txn`, on the keys under `bases`.
pub fn txn_request(bases: &[Vec<u8>], txn: &Txn) -> wire::TxnRequest {
    let base = |s: Space| bases[Space::ALL.iter().position(|x| *x == s).expect("every space is in ALL")].as_slice();
    wire::TxnRequest {
        compare: txn.compares.iter().map(|c| compare(base(c.space), c)).collect(),
        success: txn
            .ops
            .iter()
            .map(|op| wire::RequestOp {
                request: Some(match op {
                    Op::Put { space, key, value } => Request::RequestPut(wire::PutRequest {
                        key: join(base(*space), key),
                        value: value.clone(),
                        ..Default::default()
                    }),
                    Op::Delete { space, key } => Request::RequestDeleteRange(wire::DeleteRangeRequest {
                        key: join(base(*space), key),
                        ..Default::default()
                    }),
                }),
            })
            .collect(),
        failure: Vec::new(),
    }
}

/// Whether another member may answer what this one could not.
fn try_another(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// What to do about an error etcd itself gave.
fn advice(s: &tonic::Status) -> &'static str {
    let m = s.message();
    if m.contains("request is too large") {
        "; raise etcd's --max-request-bytes (the controller writes a rollout's record in one value)"
    } else if m.contains("too many operations in txn") {
        "; raise etcd's --max-txn-ops"
    } else if m.contains("database space exceeded") {
        "; etcd is over its quota: compact and defragment it, or raise --quota-backend-bytes"
    } else if s.code() == tonic::Code::PermissionDenied || s.code() == tonic::Code::Unauthenticated {
        "; check that etcd accepts the controller's client certificate and grants it the prefix"
    } else {
        ""
    }
}

impl Members {
    /// The member a watch goes to: the one that answered last.
    fn watch_channel(&self) -> Channel {
        let at = self.current.load(Ordering::Relaxed) % self.list.len();
        self.list[at].channel.clone()
    }

    /// The watch's member failed: the next call goes to the next one.
    fn watch_failed(&self) {
        let n = self.list.len();
        let at = self.current.load(Ordering::Relaxed);
        self.current.store((at + 1) % n, Ordering::Relaxed);
    }

    fn error(&self, detail: String) -> StoreError {
        StoreError::Etcd {
            name: self.name.clone(),
            detail,
        }
    }

    /// Runs a read on the current member, then on each other one while they
    /// do not answer.
    async fn read<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.list.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..n {
            let at = (first + i) % n;
            let m = &self.list[at];
            match tokio::time::timeout(self.timeout, call(m.channel.clone())).await {
                Ok(Ok(t)) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(t);
                }
                Ok(Err(s)) if try_another(&s) => failures.push(format!("{}: {}", m.addr, s.message())),
                Ok(Err(s)) => {
                    return Err(self.error(format!("{} refused the read: {}{}", m.addr, s.message(), advice(&s))))
                }
                Err(_) => failures.push(format!("{}: no answer within {:?}", m.addr, self.timeout)),
            }
        }
        Err(self.error(format!(
            "no member answered ({}); check that a majority of etcd's members is up and reachable \
             (etcdctl endpoint health)",
            failures.join("; ")
        )))
    }

    /// Sends a write to the current member, and to the next ones only while
    /// a member cannot be reached at all (the write never left): a write
    /// that was sent is never sent again.
    async fn write<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.list.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut unreachable = Vec::new();
        for i in 0..n {
            let at = (first + i) % n;
            let m = &self.list[at];
            let failed = |detail: String| {
                // The next call starts at the next member.
                self.current.store((at + 1) % n, Ordering::Relaxed);
                self.error(format!(
                    "the write to {} failed and may or may not have been applied ({detail}); check that a \
                     majority of etcd's members is up (etcdctl endpoint health), then try again",
                    m.addr
                ))
            };
            match tokio::time::timeout(self.timeout, call(m.channel.clone())).await {
                Ok(Ok(t)) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(t);
                }
                Ok(Err(s)) if never_sent(&s) => unreachable.push(format!("{}: {}", m.addr, s.message())),
                Ok(Err(s)) if try_another(&s) => return Err(failed(s.message().to_string())),
                Ok(Err(s)) => {
                    return Err(self.error(format!("{} refused the write: {}{}", m.addr, s.message(), advice(&s))))
                }
                Err(_) => return Err(failed(format!("no answer within {:?}", self.timeout))),
            }
        }
        Err(self.error(format!(
            "no member could be reached, so nothing was written ({}); check that etcd's members are up \
             and reachable (etcdctl endpoint health)",
            unreachable.join("; ")
        )))
    }
}

/// Whether the call failed before anything was sent: the connection to the
/// member could not be made (tonic's words for a failed dial).
fn never_sent(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable
        && (s.message().contains("tcp connect error") || s.message().contains("error trying to connect"))
}

fn client(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(MAX_ANSWER)
}

/// A Range on one member.
async fn range_on(channel: Channel, req: wire::RangeRequest) -> Result<wire::RangeResponse, tonic::Status> {
    client(channel).range(req).await.map(tonic::Response::into_inner)
}

/// Reads `[key, end)` in pages, every page at the first page's revision;
/// stops after `limit` entries. Descending pages walk down from `end`.
async fn range(
    members: &Members,
    key: Vec<u8>,
    end: Vec<u8>,
    limit: usize,
    order: Order,
    strip: usize,
) -> Result<Vec<Entry>, StoreError> {
    let (kvs, _) = range_kvs(members, key, end, limit, order).await?;
    Ok(kvs.into_iter().map(|kv| (kv.key[strip..].to_vec(), kv.value)).collect())
}

/// Every key of `[key, end)` at one revision, ascending, with the revision
/// that wrote it; and that revision.
async fn range_at(
    members: &Members,
    key: Vec<u8>,
    end: Vec<u8>,
    strip: usize,
) -> Result<(Vec<(Vec<u8>, Vec<u8>, i64)>, i64), StoreError> {
    let (kvs, revision) = range_kvs(members, key, end, usize::MAX, Order::Ascending).await?;
    let entries = kvs
        .into_iter()
        .map(|kv| (kv.key[strip..].to_vec(), kv.value, kv.mod_revision))
        .collect();
    Ok((entries, revision))
}

/// [`range`]'s pages, as etcd gave them, and the revision they were read at.
async fn range_kvs(
    members: &Members,
    key: Vec<u8>,
    end: Vec<u8>,
    limit: usize,
    order: Order,
) -> Result<(Vec<wire::KeyValue>, i64), StoreError> {
    let mut out: Vec<wire::KeyValue> = Vec::new();
    let (mut from, mut to) = (key, end);
    let mut revision = 0;
    while out.len() < limit {
        let want = ((limit - out.len()).min(PAGE as usize)) as i64;
        let req = wire::RangeRequest {
            key: from.clone(),
            range_end: to.clone(),
            limit: want,
            revision,
            sort_order: match order {
                Order::Ascending => SortOrder::Ascend,
                Order::Descending => SortOrder::Descend,
            } as i32,
            sort_target: SortTarget::Key as i32,
            ..Default::default()
        };
        let resp = members.read(|c| range_on(c, req.clone())).await?;
        if revision == 0 {
            revision = resp.header.as_ref().map_or(0, |h| h.revision);
        }
        let more = resp.more;
        let Some(last) = resp.kvs.last().map(|kv| kv.key.clone()) else {
            break;
        };
        out.extend(resp.kvs);
        if !more {
            break;
        }
        match order {
            Order::Ascending => {
                from = last;
                from.push(0);
            }
            Order::Descending => to = last,
        }
    }
    Ok((out, revision))
}

impl EtcdKv {
    /// Makes the client for `settings`. Nothing is dialled yet: the first
    /// call connects (see [`EtcdKv::check`] for a call that proves the way).
    pub fn connect(settings: &EtcdSettings) -> Result<EtcdKv, StoreError> {
        let name = settings.describe();
        let bad = |detail: String| StoreError::Etcd {
            name: name.clone(),
            detail,
        };
        if settings.endpoints.is_empty() {
            return Err(bad("no endpoints are set ([store] endpoints)".into()));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fleet-etcd")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start the client's thread: {e}")))?;
        let handle = rt.handle().clone();
        let tls = match &settings.tls {
            Some(t) => Some(tls_config(t).map_err(bad)?),
            None => None,
        };
        let list = {
            let _in_rt = rt.enter();
            settings
                .endpoints
                .iter()
                .map(|e| {
                    let channel = if let Some(rest) = e.strip_prefix("https://") {
                        let config = tls.clone().ok_or_else(|| {
                            bad(format!("{e} is https but [store] sets no ca, cert and key for etcd"))
                        })?;
                        fleet_proto::transport::connect_lazy(rest, config).map_err(|err| bad(format!("{e}: {err}")))?
                    } else if e.starts_with("http://") {
                        tonic::transport::Endpoint::from_shared(e.clone())
                            .map_err(|err| bad(format!("{e}: {err}")))?
                            .connect_timeout(settings.timeout)
                            .tcp_nodelay(true)
                            .connect_lazy()
                    } else {
                        return Err(bad(format!(
                            "{e}: an endpoint is http://host:port or https://host:port"
                        )));
                    };
                    Ok(Member {
                        addr: e.clone(),
                        channel,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?
        };
        let bases = Space::ALL
            .iter()
            .map(|s| format!("{}{}/", settings.prefix, s.name()).into_bytes())
            .collect();
        Ok(EtcdKv {
            members: Arc::new(Members {
                list,
                current: AtomicUsize::new(0),
                name,
                timeout: settings.timeout,
            }),
            bases,
            prefix: settings.prefix.clone(),
            fence: std::sync::Mutex::new(None),
            fenced: std::sync::atomic::AtomicBool::new(false),
            watched: watched::Shared::default(),
            rt: Some(rt),
            handle,
        })
    }

    /// Runs `fut` on the client's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| StoreError::Etcd {
            name: self.members.name.clone(),
            detail: "the client's runtime stopped (the controller is shutting down)".into(),
        })?
    }

    fn base(&self, space: Space) -> &[u8] {
        &self.bases[Space::ALL
            .iter()
            .position(|s| *s == space)
            .expect("every space is in ALL")]
    }

    /// Asks the members for their status: proves the endpoints, the TLS and
    /// that a majority elected a leader. Returns the answering member's
    /// etcd version.
    pub fn check(&self) -> Result<String, StoreError> {
        let members = self.members.clone();
        self.run(async move {
            let status = members
                .read(|c| async move {
                    wire::maintenance_client::MaintenanceClient::new(c)
                        .status(wire::StatusRequest {})
                        .await
                        .map(tonic::Response::into_inner)
                })
                .await?;
            if status.leader == 0 {
                return Err(
                    members.error("the cluster has no leader: a majority of its members is down or cut off".into())
                );
            }
            Ok(status.version)
        })
    }
}

/// The rustls client config for etcd's members.
fn tls_config(t: &EtcdTls) -> Result<Arc<rustls::ClientConfig>, String> {
    use fleet_proto::transport::{certs_from_pem, client_config, key_from_pem, ClientIdentity, Trust};
    let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let cas = certs_from_pem("the etcd CA", &read(&t.ca)?).map_err(|e| e.to_string())?;
    let chain = certs_from_pem("the etcd client certificate", &read(&t.cert)?).map_err(|e| e.to_string())?;
    let key = key_from_pem("the etcd client key", &read(&t.key)?).map_err(|e| e.to_string())?;
    client_config(Trust::Cas(cas), Some(ClientIdentity { chain, key })).map_err(|e| e.to_string())
}

impl Drop for EtcdKv {
    fn drop(&mut self) {
        // A runtime may not be dropped where blocking is not allowed (the
        // last Store clone can go away on the controller's runtime).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Kv for EtcdKv {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(answer) = self.in_memory(space, |copy| copy.get(key)) {
            return Ok(answer);
        }
        let members = self.members.clone();
        let req = wire::RangeRequest {
            key: join(self.base(space), key),
            ..Default::default()
        };
        self.run(async move {
            let resp = members.read(|c| range_on(c, req.clone())).await?;
            Ok(resp.kvs.into_iter().next().map(|kv| kv.value))
        })
    }

    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        if let Some(answer) = self.in_memory(space, |copy| copy.scan_prefix(prefix)) {
            return Ok(answer);
        }
        let base = self.base(space);
        let key = join(base, prefix);
        let end = prefix_end(&key);
        let (members, strip) = (self.members.clone(), base.len());
        self.run(async move { range(&members, key, end, usize::MAX, Order::Ascending, strip).await })
    }

    fn scan_from(&self, space: Space, from: &[u8], limit: usize, order: Order) -> Result<Vec<Entry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        if let Some(answer) = self.in_memory(space, |copy| copy.scan_from(from, limit, order)) {
            return Ok(answer);
        }
        let base = self.base(space);
        let (key, end) = (join(base, from), prefix_end(base));
        let (members, strip) = (self.members.clone(), base.len());
        self.run(async move { range(&members, key, end, limit, order, strip).await })
    }

    fn commit(&self, txn: Txn) -> Result<Committed, StoreError> {
        if txn.compares.is_empty() && txn.ops.is_empty() {
            return Ok(Committed::Applied);
        }
        let mut req = txn_request(&self.bases, &txn);
        let outcome = self.commit_request(&mut req);
        let spaces = || {
            txn.ops.iter().map(|op| {
                let (Op::Put { space, .. } | Op::Delete { space, .. }) = op;
                *space
            })
        };
        if spaces().any(Watched::keeps) {
            let mut w = watched::write(&self.watched);
            match &outcome {
                // Read at once by this controller, before the watch brings it.
                Ok((Committed::Applied, rev)) => {
                    for op in &txn.ops {
                        match op {
                            Op::Put { space, key, value } => w.apply(*space, key, Some(value.clone()), *rev),
                            Op::Delete { space, key } => w.apply(*space, key, None, *rev),
                        }
                    }
                }
                Ok((Committed::Conflict, _)) => {}
                // Applied or not: a live watch will tell; without one the
                // copy may be wrong, so it is read again.
                Err(_) => {
                    for space in spaces() {
                        if !w.live(space) {
                            w.give_up(space);
                        }
                    }
                }
            }
        }
        outcome.map(|(c, _)| c)
    }

    fn count(&self, space: Space) -> Result<usize, StoreError> {
        if let Some(answer) = self.in_memory(space, |copy| copy.count()) {
            return Ok(answer);
        }
        let base = self.base(space);
        let req = wire::RangeRequest {
            key: base.to_vec(),
            range_end: prefix_end(base),
            count_only: true,
            ..Default::default()
        };
        let members = self.members.clone();
        self.run(async move {
            let resp = members.read(|c| range_on(c, req.clone())).await?;
            Ok(usize::try_from(resp.count).unwrap_or(0))
        })
    }

    fn flush_sync(&self) -> Result<(), String> {
        // A txn returns once a majority of members has it in their logs.
        Ok(())
    }

    fn max_ops(&self) -> usize {
        // etcd's default --max-txn-ops is 128; a fenced commit adds one op
        // to the failure branch and one compare.
        100
    }

    fn remote(&self) -> Option<String> {
        Some(self.members.name.clone())
    }
}

impl EtcdKv {
    /// Starts the watches that keep the hot spaces in memory (every
    /// controller of a running fleet: the serving one looks a host up at
    /// every RPC, a follower its certificate at every handshake). Once.
    pub fn watch_hot(&self) {
        for space in watched::HOT {
            self.handle.spawn(watched::keep(
                self.members.clone(),
                space,
                self.base(space).to_vec(),
                self.watched.clone(),
            ));
        }
    }

    /// Reads every honoured certificate and every host into memory at once
    /// (the lock holder, as it takes over: the fleet's hosts are about to
    /// reconnect, each looking its certificate and host up; a follower's
    /// watch may not have brought the last holder's last writes yet).
    /// Returns how many.
    pub fn preload_hot(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for space in watched::HOT {
            let base = self.base(space).to_vec();
            let (members, end, strip) = (self.members.clone(), prefix_end(&base), base.len());
            let (entries, rev) = self.run(async move { range_at(&members, base, end, strip).await })?;
            n += entries.len();
            watched::write(&self.watched).load(space, entries, rev);
        }
        Ok(n)
    }

    /// `read` of `space`'s copy in memory, when reads may use it (see
    /// [`Watched::usable`]); None: the read goes to etcd.
    fn in_memory<T>(&self, space: Space, read: impl FnOnce(watched::Usable<'_>) -> T) -> Option<T> {
        if !Watched::keeps(space) {
            return None;
        }
        let fenced = self.fence().is_some();
        watched::read(&self.watched).usable(space, fenced).map(read)
    }

    /// Sends a commit's request, fenced by the serving lock once it is held.
    /// Returns the revision etcd gave the txn.
    fn commit_request(&self, req: &mut wire::TxnRequest) -> Result<(Committed, i64), StoreError> {
        let fence = self.fence();
        if let Some(f) = &fence {
            req.compare.push(compare_value(&f.key, &f.holder));
            req.failure.push(wire::RequestOp {
                request: Some(Request::RequestRange(wire::RangeRequest {
                    key: f.key.clone(),
                    ..Default::default()
                })),
            });
        }
        let members = self.members.clone();
        let req = req.clone();
        self.run(async move {
            let resp = members
                .write(|c| {
                    let req = req.clone();
                    async move { client(c).txn(req).await.map(tonic::Response::into_inner) }
                })
                .await?;
            let rev = resp.header.as_ref().map_or(0, |h| h.revision);
            if resp.succeeded {
                return Ok((Committed::Applied, rev));
            }
            match fence.and_then(|f| lock::fenced_out(&f, &resp, &members.name)) {
                Some(e) => Err(e),
                None => Ok((Committed::Conflict, rev)),
            }
        })
    }
}

mod compact;
mod lock;
mod roster;
mod watched;
pub use compact::COMPACT_EVERY;
pub use lock::{Holder, ServingLock, LOCK_TTL};
pub use roster::{field, Membership, Peer};
use watched::Watched;

#[cfg(test)]
mod tests;
