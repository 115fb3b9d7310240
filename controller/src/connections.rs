//! The connection table of the TLS port: one [`ConnState`] per accepted
//! connection (requests in flight, idle since, the token that closes it),
//! its [`Slot`] in [`Connections`] (counted per source address and in
//! total), and the caps with their eviction rule: at a cap, the connection
//! with no request in flight idle the longest makes room.
//!
//! Below both `listener` (which accepts and watches connections) and `tls`
//! (whose `PeerConn` holds a slot and whose `PeerInfo` carries the state to
//! every request); uses only `config` and `metrics`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ConnectionLimits;
use crate::metrics::Metrics;

/// File descriptors kept for everything but client connections: the store,
/// artifact files being read or written, the metrics port, logs.
pub const FD_RESERVE: u64 = 256;
/// Why the controller closed or refused a connection (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The TLS handshake did not finish in time.
    HandshakeTimeout,
    /// No request within the first-request deadline after the handshake.
    FirstRequestTimeout,
    /// No request in flight for the idle timeout.
    IdleTimeout,
    /// Closed to make room for a new connection at a cap.
    Evicted,
    /// Closed because `accept` ran out of file descriptors.
    EvictedForDescriptors,
    /// Refused at accept: its source address holds the most it may, all busy.
    PerIpCap,
    /// Refused at accept: the controller holds the most it may, all busy.
    TotalCap,
}

impl CloseReason {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::FirstRequestTimeout => "first_request_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Evicted => "evicted",
            CloseReason::EvictedForDescriptors => "evicted_for_descriptors",
            CloseReason::PerIpCap => "per_ip_cap",
            CloseReason::TotalCap => "total_cap",
        }
    }
}

/// One connection's state, shared by its task, its I/O (`tls::PeerConn`)
/// and every request on it (through `tls::PeerInfo`).
pub struct ConnState {
    id: u64,
    ip: IpAddr,
    /// When it was accepted; `idle_ms` counts from here.
    opened: Instant,
    /// Requests in flight.
    streams: AtomicUsize,
    /// Requests ever started.
    pub(crate) requests: AtomicU64,
    /// Milliseconds after `opened` at which `streams` last went to zero.
    idle_ms: AtomicU64,
    /// Wakes the connection's task when `streams` leaves or reaches zero.
    pub(crate) changed: Notify,
    /// Cancelled to close the connection (its I/O fails at the next read),
    /// and when its slot is released.
    pub(crate) close: CancellationToken,
}

impl std::fmt::Debug for ConnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnState")
            .field("id", &self.id)
            .field("ip", &self.ip)
            .field("streams", &self.streams.load(Ordering::Relaxed))
            .finish()
    }
}

impl ConnState {
    /// A connection's state, not yet counted anywhere (tests use this alone).
    pub fn new(id: u64, ip: IpAddr) -> ConnState {
        ConnState {
            id,
            ip,
            opened: Instant::now(),
            streams: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_ms: AtomicU64::new(0),
            changed: Notify::new(),
            close: CancellationToken::new(),
        }
    }

    /// Counts a request until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> StreamGuard {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if self.streams.fetch_add(1, Ordering::SeqCst) == 0 {
            self.changed.notify_one();
        }
        StreamGuard(self.clone())
    }

    /// Requests in flight.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }

    /// When it last had no request in flight (its accept time if never busy).
    pub(crate) fn idle_since(&self) -> Instant {
        self.opened + Duration::from_millis(self.idle_ms.load(Ordering::SeqCst))
    }

    /// The token that closes this connection.
    pub fn close_token(&self) -> &CancellationToken {
        &self.close
    }
}

/// A request in flight on a connection (see [`ConnState::begin`]).
pub struct StreamGuard(Arc<ConnState>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let conn = &self.0;
        conn.idle_ms
            .store(conn.opened.elapsed().as_millis() as u64, Ordering::SeqCst);
        if conn.streams.fetch_sub(1, Ordering::SeqCst) == 1 {
            conn.changed.notify_one();
        }
    }
}

/// The connections the TLS port holds, counted per source address and in
/// total; the one way to admit or close one.
pub struct Connections {
    pub(crate) limits: ConnectionLimits,
    /// `limits.max_total` lowered to what the open-file limit allows.
    pub(crate) max_total: usize,
    table: Mutex<Table>,
    pub(crate) metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    by_id: HashMap<u64, Arc<ConnState>>,
    per_ip: HashMap<IpAddr, usize>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Arc<ConnState>> {
        let conn = self.by_id.remove(&id)?;
        if let Some(n) = self.per_ip.get_mut(&conn.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&conn.ip);
            }
        }
        Some(conn)
    }

    /// The held connection with no request in flight that has been idle the
    /// longest, optionally only among those from `ip`.
    // A linear scan, only when a cap is reached: at 50,000 connections it
    // costs about a millisecond per connection accepted at the cap.
    fn oldest_idle(&self, ip: Option<IpAddr>) -> Option<u64> {
        self.by_id
            .values()
            .filter(|c| ip.is_none_or(|ip| c.ip == ip) && c.streams() == 0)
            .min_by_key(|c| c.idle_since())
            .map(|c| c.id)
    }
}

fn lock(m: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The open-file limit's soft value, if it can be read.
pub fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// `max_total` lowered so that the connections and [`FD_RESERVE`] fit in the
/// open-file limit (at least 1).
pub fn effective_max_total(max_total: usize, nofile: Option<u64>) -> usize {
    match nofile {
        Some(n) => {
            let room = usize::try_from(n.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
            max_total.min(room).max(1)
        }
        None => max_total,
    }
}

impl Connections {
    /// The table for `limits`, with the total cap fitted to the open-file limit.
    pub fn new(limits: ConnectionLimits, metrics: Arc<Metrics>) -> Arc<Connections> {
        let nofile = open_file_limit();
        let max_total = effective_max_total(limits.max_total, nofile);
        if max_total < limits.max_total {
            tracing::warn!(
                configured = limits.max_total,
                max_connections = max_total,
                open_file_limit = nofile.unwrap_or_default(),
                reserve = FD_RESERVE,
                "connections.max_total lowered to fit the open-file limit; raise LimitNOFILE to hold more"
            );
        } else {
            tracing::info!(
                max_connections = max_total,
                max_per_ip = limits.max_per_ip,
                "connection limits"
            );
        }
        Arc::new(Connections {
            limits,
            max_total,
            table: Mutex::new(Table::default()),
            metrics,
        })
    }

    /// The total cap in force.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// Counts a new connection from `ip`, closing the longest-idle one to make
    /// room at a cap; `Err` when every connection in the way is busy.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, CloseReason> {
        let (conn, evicted) = {
            let mut table = lock(&self.table);
            let mut evicted = Vec::new();
            if table.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.max_per_ip {
                let victim = table.oldest_idle(Some(ip)).ok_or(CloseReason::PerIpCap)?;
                evicted.extend(table.remove(victim));
            }
            if table.by_id.len() >= self.max_total {
                match table.oldest_idle(None) {
                    Some(victim) => evicted.extend(table.remove(victim)),
                    None => {
                        // Nothing was taken out for the per-address cap
                        // either, or this cap would not be reached.
                        return Err(CloseReason::TotalCap);
                    }
                }
            }
            table.next_id += 1;
            let conn = Arc::new(ConnState::new(table.next_id, ip));
            table.by_id.insert(conn.id, conn.clone());
            *table.per_ip.entry(ip).or_insert(0) += 1;
            self.metrics.connections_open.set(table.by_id.len() as i64);
            (conn, evicted)
        };
        for victim in evicted {
            self.closed(CloseReason::Evicted);
            victim.close.cancel();
        }
        Ok(Slot {
            conns: self.clone(),
            conn,
        })
    }

    /// Closes the longest-idle connection (when `accept` is out of file
    /// descriptors); false if every connection is busy.
    pub fn evict_one_idle(&self) -> bool {
        let victim = {
            let mut table = lock(&self.table);
            let victim = table.oldest_idle(None).and_then(|id| table.remove(id));
            self.metrics.connections_open.set(table.by_id.len() as i64);
            victim
        };
        match victim {
            Some(v) => {
                self.closed(CloseReason::EvictedForDescriptors);
                v.close.cancel();
                true
            }
            None => false,
        }
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        self.metrics
            .connections_closed
            .get_or_create(&vec![("reason".into(), reason.label().into())])
            .inc();
    }

    fn release(&self, id: u64) {
        let mut table = lock(&self.table);
        table.remove(id);
        self.metrics.connections_open.set(table.by_id.len() as i64);
    }
}

/// A connection's place in [`Connections`], released when dropped (with the
/// socket: the slot lives in the connection's `tls::PeerConn`).
pub struct Slot {
    conns: Arc<Connections>,
    conn: Arc<ConnState>,
}

impl Slot {
    /// The connection's state.
    pub fn conn(&self) -> &Arc<ConnState> {
        &self.conn
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.release(self.conn.id);
        // Ends the connection's task if it still watches.
        self.conn.close.cancel();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Limits with the given caps and generous deadlines.
    pub(crate) fn limits(max_total: usize, max_per_ip: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_total,
            max_per_ip,
            handshake_timeout: Duration::from_secs(10),
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }

    fn table(max_total: usize, max_per_ip: usize) -> Arc<Connections> {
        Arc::new(Connections {
            limits: limits(max_total, max_per_ip),
            max_total,
            table: Mutex::new(Table::default()),
            metrics: Arc::new(Metrics::new()),
        })
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_total_cap_the_longest_idle_connection_makes_room() {
        let conns = table(3, 10);
        let a = conns.admit(ip(1)).expect("a");
        tokio::time::advance(Duration::from_secs(1)).await;
        let b = conns.admit(ip(2)).expect("b");
        tokio::time::advance(Duration::from_secs(1)).await;
        let c = conns.admit(ip(3)).expect("c");
        // `a` is busy (an agent's stream): `b` is the longest idle.
        let _stream = a.conn().begin();
        let d = conns.admit(ip(4)).expect("d takes b's place");
        assert!(b.conn().close_token().is_cancelled(), "b was closed");
        assert!(!a.conn().close_token().is_cancelled() && !c.conn().close_token().is_cancelled());
        assert_eq!(lock(&conns.table).by_id.len(), 3);
        // Dropping the evicted slot later does not free a second place.
        drop(b);
        assert_eq!(lock(&conns.table).by_id.len(), 3);
        let _c_busy = c.conn().begin();
        let _d_busy = d.conn().begin();
        assert_eq!(conns.admit(ip(5)).err(), Some(CloseReason::TotalCap), "all busy");
    }

    #[tokio::test(start_paused = true)]
    async fn the_per_address_cap_takes_room_only_from_that_address() {
        let conns = table(100, 2);
        let a1 = conns.admit(ip(1)).expect("a1");
        tokio::time::advance(Duration::from_secs(1)).await;
        let other = conns.admit(ip(2)).expect("other");
        let a2 = conns.admit(ip(1)).expect("a2");
        let a3 = conns.admit(ip(1)).expect("a3 replaces a1");
        assert!(a1.conn().close_token().is_cancelled());
        assert!(
            !other.conn().close_token().is_cancelled(),
            "another address is untouched"
        );
        let _s2 = a2.conn().begin();
        let _s3 = a3.conn().begin();
        assert_eq!(conns.admit(ip(1)).err(), Some(CloseReason::PerIpCap));
        assert!(conns.admit(ip(2)).is_ok(), "other addresses still get in");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_again_counts_from_its_last_request() {
        let conns = table(2, 10);
        let old = conns.admit(ip(1)).expect("old");
        tokio::time::advance(Duration::from_secs(5)).await;
        let fresh = conns.admit(ip(2)).expect("fresh");
        tokio::time::advance(Duration::from_secs(1)).await;
        // `old` just finished a request, so `fresh` is now the longest idle.
        drop(old.conn().begin());
        let _new = conns.admit(ip(3)).expect("new");
        assert!(fresh.conn().close_token().is_cancelled());
        assert!(!old.conn().close_token().is_cancelled());
    }

    #[test]
    fn the_total_cap_fits_the_open_file_limit() {
        assert_eq!(effective_max_total(50_000, Some(1024)), 1024 - FD_RESERVE as usize);
        assert_eq!(effective_max_total(100, Some(65_536)), 100);
        assert_eq!(effective_max_total(100, Some(10)), 1, "never zero");
        assert_eq!(effective_max_total(100, None), 100);
    }
}
