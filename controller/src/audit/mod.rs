//! The audit log: who called which mutating operator RPC (and who was
//! refused any operator call), when, from where, on what (app, version,
//! hosts, selector, rollout, dry run) and with what outcome, in the store's
//! `audit` space; the ends of deploys and rollouts; `AuditService`, which
//! lists it with filters.
//!
//! Recording happens in [`layer::AuditLayer`] (see there); handlers add
//! what the call touched through [`layer::Note`]. The log keeps at most
//! `[audit] max_entries` (the oldest go first) and forwards each record
//! ([`forward`]). The entries are stored by `crate::store::audit` (key
//! layout there).

use std::sync::Arc;

use fleet_proto::audit_service_server::AuditService;
use fleet_proto::{AuditEntry, ListAuditRequest, ListAuditResponse};
use tonic::{Request, Response, Status};

use crate::config::AuditSettings;
use crate::error::Error;
use crate::store::audit::AuditTrail;
use crate::store::{Store, StoreError};

pub mod forward;
pub mod layer;

pub use layer::{note, AuditLayer, Details, Note};

/// The operator methods that change something, as `Service/Method`: the
/// one list of what is audited.
pub const AUDITED: [&str; 19] = [
    "TokenService/CreateToken",
    "TokenService/RevokeToken",
    "HostService/LabelHost",
    "HostService/RemoveHost",
    "HostService/PruneHosts",
    "AppService/CreateApp",
    "AppService/UpdateApp",
    "AppService/Deploy",
    "ReleaseService/PushRelease",
    "ReleaseService/DeleteRelease",
    "RolloutService/StartRollout",
    "RolloutService/ControlRollout",
    "OperatorService/CreateOperator",
    "OperatorService/RemoveOperator",
    "OperatorService/CreateOperatorToken",
    "OperatorService/RevokeOperatorToken",
    "NotifyService/AddNotifier",
    "NotifyService/RemoveNotifier",
    "NotifyService/TestNotifier",
];

/// The package prefix of every gRPC path.
const PACKAGE: &str = "/fleet.v1.";
/// Who a call without a valid operator token is recorded as.
pub const UNAUTHENTICATED: &str = "unauthenticated";
/// The most entries one ListAudit answers with (the newest ones), so an
/// answer stays well under gRPC's message limit.
pub const MAX_LISTED: usize = 10_000;
/// `Service/Method` of an audited call, or None.
pub fn audited(path: &str) -> Option<&'static str> {
    let method = path.strip_prefix(PACKAGE)?;
    AUDITED.iter().copied().find(|m| *m == method)
}

pub use crate::store::audit::Record;

impl From<Record> for AuditEntry {
    fn from(r: Record) -> AuditEntry {
        AuditEntry {
            at_ms: r.at_ms,
            who: r.who,
            what: r.what,
            from: r.from,
            outcome: r.outcome,
            target: r.target,
            app: r.app,
            version: r.version,
            hosts: r.hosts,
            selector: r.selector,
            rollout_id: r.rollout_id,
            dry_run: r.dry_run,
        }
    }
}

/// The audit log in the store.
pub struct AuditLog {
    trail: AuditTrail,
    forward: forward::Forward,
}

impl AuditLog {
    /// Opens the log; sequence numbers go on from the last entry. Counts
    /// the entries (one read of every key) and trims them to the cap.
    pub fn open(store: &Store, settings: &AuditSettings) -> Result<AuditLog, OpenError> {
        let trail = store.audit_trail(settings.max_entries)?;
        let forward = forward::Forward::open(settings.forward_file.as_deref(), settings.syslog_socket.as_deref())?;
        Ok(AuditLog { trail, forward })
    }

    /// Appends an entry (and forwards it); past the cap, the oldest go.
    pub fn record(&self, r: &Record) -> Result<(), StoreError> {
        self.trail.append(r)?;
        self.forward.send(r);
        Ok(())
    }

    /// Entries at or after `since_ms` that `filter` keeps, oldest first;
    /// the newest `limit` of them when there are more.
    pub fn since(&self, since_ms: i64, limit: usize, filter: &Filter) -> Result<Vec<Record>, StoreError> {
        let found = self.trail.since(since_ms, None, limit, |r| filter.keeps(r))?;
        Ok(found.into_iter().map(|(_, r)| r).collect())
    }

    /// Appends an entry; a failure is logged loudly rather than failing the
    /// operator's call, which already happened.
    pub fn write(&self, r: &Record) {
        if let Err(e) = self.record(r) {
            tracing::error!(error = %e, what = %r.what, who = %r.who, "audit entry not stored");
        }
    }
}

/// Why the audit log cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A forward sink cannot be opened.
    #[error(transparent)]
    Forward(#[from] forward::ForwardError),
}

/// Which entries a listing keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this app's (empty: any).
    pub app: String,
    /// Only this operator's (empty: anyone's).
    pub operator: String,
}

impl Filter {
    /// Whether `r` is kept.
    pub fn keeps(&self, r: &Record) -> bool {
        (self.app.is_empty() || r.app == self.app) && (self.operator.is_empty() || r.who == self.operator)
    }
}

/// `AuditService`: the log for operators.
pub struct AuditLogService(pub Arc<AuditLog>);

#[tonic::async_trait]
impl AuditService for AuditLogService {
    async fn list_audit(&self, req: Request<ListAuditRequest>) -> Result<Response<ListAuditResponse>, Status> {
        let r = req.into_inner();
        let filter = Filter {
            app: r.app,
            operator: r.operator,
        };
        let log = self.0.clone();
        let records = tokio::task::spawn_blocking(move || log.since(r.since_ms, MAX_LISTED, &filter))
            .await
            .map_err(|e| Error::Internal(format!("reading the audit log failed: {e}")))?
            .map_err(Error::Store)?;
        Ok(Response::new(ListAuditResponse {
            entries: records.into_iter().map(AuditEntry::from).collect(),
        }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn log() -> (tempfile::TempDir, Arc<AuditLog>) {
        let (dir, _, log) = log_with(&AuditSettings::default());
        (dir, log)
    }

    /// A log on a store holding alice (admin, `fleet_op_abc123.s3cret`).
    pub(crate) fn log_and_store() -> (tempfile::TempDir, Store, Arc<AuditLog>) {
        log_with(&AuditSettings::default())
    }

    fn log_with(settings: &AuditSettings) -> (tempfile::TempDir, Store, Arc<AuditLog>) {
        let (dir, store) = crate::auth::tests::store_with_alice();
        let log = Arc::new(AuditLog::open(&store, settings).expect("audit log"));
        (dir, store, log)
    }

    fn rec(at_ms: i64, what: &str) -> Record {
        Record {
            at_ms,
            who: "alice".into(),
            what: what.into(),
            from: "127.0.0.1:1".into(),
            outcome: "ok".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_log_keeps_its_cap_dropping_the_oldest() {
        let settings = AuditSettings {
            max_entries: 1000,
            ..Default::default()
        };
        let (_dir, store, log) = log_with(&settings);
        for i in 0..1_100 {
            log.record(&rec(i, &format!("w{i}"))).expect("record");
        }
        // Trimmed in steps: never more than the cap plus 1 %.
        let all = log.since(0, usize::MAX, &Filter::default()).expect("all");
        assert!((1_000..=1_010).contains(&all.len()), "{}", all.len());
        assert_eq!(all.last().map(|r| r.what.as_str()), Some("w1099"), "the newest stay");
        // Reopened with a smaller cap: trimmed at once.
        let small = AuditSettings {
            max_entries: 500,
            ..Default::default()
        };
        let again = AuditLog::open(&store, &small).expect("reopen");
        let kept = again.since(0, usize::MAX, &Filter::default()).expect("all");
        assert_eq!(kept.len(), 500);
        assert_eq!(kept.last().map(|r| r.what.as_str()), Some("w1099"));
    }

    #[test]
    fn listings_filter_by_app_and_operator_before_the_limit() {
        let (_dir, log) = log();
        for i in 0..30 {
            let mut r = rec(i, "AppService/Deploy");
            r.app = if i % 3 == 0 { "web".into() } else { "api".into() };
            r.who = if i % 2 == 0 { "ci".into() } else { "alice".into() };
            log.record(&r).expect("record");
        }
        let web = Filter {
            app: "web".into(),
            ..Default::default()
        };
        assert_eq!(log.since(0, MAX_LISTED, &web).expect("web").len(), 10);
        let ci_web = Filter {
            app: "web".into(),
            operator: "ci".into(),
        };
        let got = log.since(0, 2, &ci_web).expect("newest two");
        let at: Vec<i64> = got.iter().map(|r| r.at_ms).collect();
        assert_eq!(at, [18, 24], "the newest matching, oldest first");
    }

    #[test]
    fn audited_methods_are_recognised_by_path() {
        assert_eq!(
            audited("/fleet.v1.HostService/RemoveHost"),
            Some("HostService/RemoveHost")
        );
        assert_eq!(
            audited("/fleet.v1.RolloutService/StartRollout"),
            Some("RolloutService/StartRollout")
        );
        assert_eq!(audited("/fleet.v1.HostService/ListHosts"), None);
        assert_eq!(audited("/fleet.v1.AuditService/ListAudit"), None);
        assert_eq!(audited("/fleet.v1.AgentService/Stream"), None);
        assert_eq!(audited("/other.v1.HostService/RemoveHost"), None);
    }

    #[test]
    fn entries_come_back_oldest_first_from_a_time() {
        let (_dir, store, log) = log_and_store();
        // Same millisecond twice: the sequence keeps both, in order.
        for (at, what) in [(1_000, "a"), (2_000, "b"), (2_000, "c"), (3_000, "d")] {
            log.record(&rec(at, what)).expect("record");
        }
        let whats = |v: Vec<Record>| v.into_iter().map(|r| r.what).collect::<Vec<_>>();
        assert_eq!(
            whats(log.since(0, MAX_LISTED, &Filter::default()).expect("all")),
            ["a", "b", "c", "d"]
        );
        assert_eq!(
            whats(log.since(2_000, MAX_LISTED, &Filter::default()).expect("since")),
            ["b", "c", "d"]
        );
        assert_eq!(
            whats(log.since(2_001, MAX_LISTED, &Filter::default()).expect("since")),
            ["d"]
        );
        assert_eq!(
            whats(log.since(0, 2, &Filter::default()).expect("newest two")),
            ["c", "d"]
        );
        // Reopened, the sequence goes on after the last key: a new entry in
        // the same millisecond as the last one comes after it.
        let again = AuditLog::open(&store, &AuditSettings::default()).expect("reopen");
        again.record(&rec(3_000, "e")).expect("record");
        assert_eq!(
            whats(again.since(3_000, MAX_LISTED, &Filter::default()).expect("since")),
            ["d", "e"]
        );
    }
}
