//! What a host that pins release-signing keys checks before it changes
//! anything (the decisions are `crate::trust`'s): a release's signature in
//! the `signature` phase, before a byte is fetched; that the app's
//! definition runs no unsigned command; that a rollback goes to a release
//! accepted under the keys. Hosts without pinned keys skip all of it.

use fleet_proto::phase::Phase;
use fleet_proto::{AppSpec, FailureCause, ReleaseRef};

use super::report::Run;
use super::worker::Worker;
use super::{blocking, fail, io_cause, Failed};
use crate::trust;

impl Worker {
    /// The signature phase, on hosts that pin keys: `rel` must be signed by
    /// one of them and not be a replay (`crate::trust`). What the host
    /// accepted is durable before a byte is fetched. Hosts without pinned
    /// keys skip it (no phase reported).
    pub(super) async fn check_signature(&self, run: &Run<'_>, rel: &ReleaseRef) -> Result<(), Failed> {
        if self.trusted_keys.is_empty() {
            return Ok(());
        }
        let t = run.started(Phase::Signature);
        let failed = |f: Failed| {
            run.phase_failed(&f, t);
            f
        };
        let dir = run.app.root().to_path_buf();
        let read = dir.clone();
        let accepted = blocking(move || trust::load(&read)).await.map_err(|e| {
            failed(fail(
                Phase::Signature,
                io_cause(&e),
                format!("cannot read what this host accepted: {e}"),
            ))
        })?;
        let sequence = match trust::decide(&self.trusted_keys, &run.app.app, rel, &accepted) {
            Ok(Some(sequence)) => sequence,
            Ok(None) => return Ok(()),
            Err(refusal) => {
                return Err(failed(fail(
                    Phase::Signature,
                    FailureCause::Signature,
                    refusal.to_string(),
                )))
            }
        };
        let next = trust::accept(accepted, rel, sequence);
        blocking(move || trust::save(&dir, &next)).await.map_err(|e| {
            failed(fail(
                Phase::Signature,
                io_cause(&e),
                format!("cannot record the accepted release: {e}"),
            ))
        })?;
        let by = rel.signature.as_ref().map(|s| s.key.as_str()).unwrap_or_default();
        let by = fleet_proto::signing::PublicKey::parse(by)
            .map(|k| k.short())
            .unwrap_or_default();
        run.succeeded(
            Phase::Signature,
            t,
            format!("signed by {by} (sequence {sequence}), a key this host trusts"),
        );
        Ok(())
    }

    /// Refuses, before anything, an app definition that would run an
    /// unsigned command on a host that pins keys.
    pub(super) fn check_spec(&self, spec: &AppSpec) -> Result<(), Failed> {
        trust::check_spec(&self.trusted_keys, spec)
            .map_err(|r| fail(Phase::Start, FailureCause::Signature, r.to_string()))
    }

    /// Refuses a rollback to a release the host never accepted under its keys.
    pub(super) async fn check_rollback_target(&self, run: &Run<'_>, version: &str) -> Result<(), Failed> {
        if self.trusted_keys.is_empty() {
            return Ok(());
        }
        let dir = run.app.root().to_path_buf();
        let accepted = blocking(move || trust::load(&dir)).await.map_err(|e| {
            fail(
                Phase::Start,
                io_cause(&e),
                format!("cannot read what this host accepted: {e}"),
            )
        })?;
        trust::check_rollback(&self.trusted_keys, &accepted, version)
            .map_err(|r| fail(Phase::Start, FailureCause::Signature, r.to_string()))
    }
}
