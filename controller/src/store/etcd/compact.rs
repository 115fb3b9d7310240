//! etcd keeps every earlier value of every key (its MVCC history) until the
//! history is compacted, and refuses all writes once its database reaches
//! its quota (2 GiB by default). The controller rewrites values often (a
//! rollout's head and changed hosts at every phase save), so it compacts,
//! as Kubernetes' API server does: every [`COMPACT_EVERY`], the history
//! older than the revision it saw one round earlier is dropped. Only the
//! holder of the serving lock does it. Giving the freed space back to the
//! filesystem (`etcdctl defrag`) is the operator's, as for any etcd.

use std::sync::Arc;
use std::time::Duration;

use super::{client, wire, Members, StoreError};

/// How often history is compacted, and how much of it is kept.
pub const COMPACT_EVERY: Duration = Duration::from_secs(300);

impl Members {
    /// The revision etcd is at now.
    pub(super) async fn revision(&self, key: &[u8]) -> Result<i64, StoreError> {
        let req = wire::RangeRequest {
            key: key.to_vec(),
            count_only: true,
            ..Default::default()
        };
        let resp = self
            .read(|c| {
                let req = req.clone();
                async move { client(c).range(req).await.map(tonic::Response::into_inner) }
            })
            .await?;
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// Drops the history before `revision`; a history already compacted
    /// further is no error.
    pub(super) async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let r = self
            .write(|c| async move {
                match client(c)
                    .compact(wire::CompactionRequest {
                        revision,
                        physical: false,
                    })
                    .await
                {
                    Err(s) if s.message().contains("required revision has been compacted") => Ok(()),
                    other => other.map(drop),
                }
            })
            .await;
        r
    }
}

/// Compacts every `every`, up to the revision seen one round earlier.
pub(super) async fn keep_compacting(members: Arc<Members>, probe: Vec<u8>, every: Duration) {
    let mut previous: Option<i64> = None;
    loop {
        tokio::time::sleep(every).await;
        let now = match members.revision(&probe).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read etcd's revision to compact its history");
                continue;
            }
        };
        if let Some(before) = previous {
            match members.compact(before).await {
                Ok(()) => tracing::debug!(revision = before, "compacted etcd's history"),
                Err(e) => tracing::warn!(error = %e, "cannot compact etcd's history"),
            }
        }
        previous = Some(now);
    }
}
