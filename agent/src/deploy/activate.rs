//! From the swap to done: `pre_activate`, the swap (recorded first as an
//! intent), restart, settle, `post_activate`, health, `validate`; and on a
//! failure after the swap, the revert. A deploy gets there after fetching
//! its release and runs the release's hooks; a rollback goes to a release
//! already on disk and runs none.

use std::time::{Duration, Instant};

use fleet_proto::phase::Phase;
use fleet_proto::{AppSpec, FailureCause, FetchGrant, HealthResult, ReleaseRef};

use super::report::Run;
use super::worker::Worker;
use super::{blocking, fail, io_cause, list, After, Failed, Failure, Outcome};
use super::{JOURNAL_LINES, RESTART_TIMEOUT, SETTLE_POLL};
use crate::hooks::{self, Hook, HookMode, Manifest};
use crate::layout::{self, Intent};
use crate::systemd::{FullState, SystemdError};

impl Worker {
    /// Deploys `rel`: fetch, verify, unpack when not on disk, then activate
    /// it with its hooks.
    pub(super) async fn deploy(
        &self,
        run: &Run<'_>,
        spec: &AppSpec,
        rel: &ReleaseRef,
        grant: Option<&FetchGrant>,
    ) -> Outcome {
        layout::check_name("version", &rel.version)
            .map_err(|e| fail(Phase::Start, FailureCause::Invalid, e).unchanged())?;
        self.check_spec(spec).map_err(Failed::unchanged)?;
        self.check_signature(run, rel).await.map_err(Failed::unchanged)?;
        self.obtain(run, &spec.name, rel, grant)
            .await
            .map_err(Failed::unchanged)?;
        let manifest = Manifest::load(&run.app.release(&rel.version))
            .map_err(|e| fail(Phase::PreActivate, FailureCause::Hook, e).unchanged())?;
        self.activate(run, spec, &rel.version, &manifest).await
    }

    /// Rolls back to `to`, or to the previous release when empty: a release
    /// already on disk, activated without hooks.
    pub(super) async fn rollback(&self, run: &Run<'_>, spec: &AppSpec, to: &str) -> Outcome {
        let target = match (to, run.app.previous()) {
            ("", Some(previous)) => previous,
            ("", None) => {
                return Err(fail(
                    Phase::Start,
                    FailureCause::Invalid,
                    format!(
                        "{} has no previous release on this host (releases on disk: {}); roll back to a release with --release",
                        run.app.app,
                        list(&run.app.releases())
                    ),
                )
                .unchanged())
            }
            (to, _) => to.to_string(),
        };
        if layout::check_name("version", &target).is_err() || !run.app.release(&target).is_dir() {
            return Err(fail(
                Phase::Start,
                FailureCause::Invalid,
                format!(
                    "release {target} of {} is not on this host (on disk: {}); deploy it instead",
                    run.app.app,
                    list(&run.app.releases())
                ),
            )
            .unchanged());
        }
        self.check_spec(spec).map_err(Failed::unchanged)?;
        self.check_rollback_target(run, &target)
            .await
            .map_err(Failed::unchanged)?;
        self.activate(run, spec, &target, &Manifest::default()).await
    }

    /// Runs one of the manifest's hooks, when it names one.
    async fn hook(&self, run: &Run<'_>, manifest: &Manifest, h: Hook, ctx: &HookContext) -> Result<(), Failed> {
        let Some(path) = manifest.hook(h) else { return Ok(()) };
        let phase = hook_phase(h);
        let t = run.started(phase);
        let r = match self.hook_mode {
            HookMode::Process => hooks::process::run(path, &ctx.release, &ctx.env, ctx.user, manifest.timeout).await,
            HookMode::Unit => {
                let req = hooks::unit::Request {
                    state_dir: &self.state_dir,
                    template_state_dir: &self.hook_template_state_dir,
                    app: &run.app,
                    hook: path,
                    release: &ctx.release,
                    env: &ctx.env,
                    run_as: &ctx.run_as,
                    timeout: manifest.timeout,
                };
                hooks::unit::run(&*self.units, &req).await
            }
        };
        if r.ok {
            run.succeeded(phase, t, r.detail);
            Ok(())
        } else {
            let f = fail(phase, FailureCause::Hook, r.detail);
            run.phase_failed(&f, t);
            Err(f)
        }
    }

    /// Everything from `pre_activate` on, with the revert when a step after
    /// the swap fails.
    async fn activate(&self, run: &Run<'_>, spec: &AppSpec, version: &str, manifest: &Manifest) -> Outcome {
        let from = run.app.current();
        let ctx = HookContext::new(run, spec, version, from.as_deref(), manifest, self.hook_mode)
            .map_err(|e| fail(Phase::PreActivate, FailureCause::Hook, e).unchanged())?;
        self.hook(run, manifest, Hook::PreActivate, &ctx)
            .await
            .map_err(Failed::unchanged)?;

        // Only a manager that answers is worth swapping for.
        if let Err(e @ SystemdError::Connect { .. }) = self.units.state(&spec.unit).await {
            return Err(fail(Phase::Restart, FailureCause::Agent, e.to_string()).unchanged());
        }

        // From here on, a failure swaps back.
        let intent = Intent {
            from: from.clone(),
            to: version.to_string(),
            unit: spec.unit.clone(),
        };
        let app = run.app.clone();
        blocking(move || app.write_intent(&intent))
            .await
            .map_err(|e| fail(Phase::Swap, io_cause(&e), format!("cannot record the change: {e}")).unchanged())?;
        let t = run.started(Phase::Swap);
        let (app, to) = (run.app.clone(), version.to_string());
        if let Err(e) = blocking(move || app.swap(&to)).await {
            let app = run.app.clone();
            let _ = blocking(move || app.clear_intent()).await;
            let f = fail(Phase::Swap, io_cause(&e), format!("cannot swap current: {e}"));
            run.phase_failed(&f, t);
            return Err(f.unchanged());
        }
        run.succeeded(
            Phase::Swap,
            t,
            format!("current → {version} (was {})", from.as_deref().unwrap_or("none")),
        );

        let checked = async {
            self.restart_and_settle(run, spec).await?;
            self.hook(run, manifest, Hook::PostActivate, &ctx).await?;
            let t = run.started(Phase::Health);
            let health = self.check_health(run, spec).await;
            if !health.ok {
                let f = fail(Phase::Health, FailureCause::Health, health.detail.clone());
                run.phase_failed(&f, t);
                return Err(f);
            }
            run.succeeded(Phase::Health, t, &health.detail);
            self.hook(run, manifest, Hook::Validate, &ctx).await
        }
        .await;

        let app = run.app.clone();
        let outcome = match checked {
            Ok(()) => {
                if from.as_deref() != Some(version) {
                    let (app, from) = (run.app.clone(), from.clone());
                    if let Err(e) = blocking(move || app.set_previous(from.as_deref())).await {
                        tracing::warn!(app = %run.app.app, error = %e, "cannot record the previous release");
                    }
                }
                Ok(format!(
                    "{} {version} is active and healthy (was {})",
                    spec.name,
                    from.as_deref().unwrap_or("none")
                ))
            }
            Err(mut failed) => {
                let journal = self.units.journal_tail(&spec.unit, JOURNAL_LINES).await;
                if !journal.is_empty() {
                    failed.detail = format!("{}\n--- journal of {} ---\n{journal}", failed.detail, spec.unit);
                }
                let (after, detail) = match self.revert(run, spec, from.as_deref()).await {
                    Ok(detail) => (After::Reverted, detail),
                    Err(detail) => (After::NotReverted, detail),
                };
                failed.detail = format!("{}\n--- revert ---\n{detail}", failed.detail);
                Err(Failure { failed, after })
            }
        };
        let _ = blocking(move || app.clear_intent()).await;
        outcome
    }

    /// Runs the app's health check and records its result.
    pub(super) async fn check_health(&self, run: &Run<'_>, spec: &AppSpec) -> HealthResult {
        let health = self
            .health
            .check(spec.health.as_ref().unwrap_or(&Default::default()))
            .await;
        let (app, saved) = (run.app.clone(), health.clone());
        if let Err(e) = blocking(move || app.save_health(&saved)).await {
            tracing::warn!(app = %run.app.app, error = %e, "cannot store the health result");
        }
        health
    }

    async fn restart_and_settle(&self, run: &Run<'_>, spec: &AppSpec) -> Result<(), Failed> {
        let t = run.started(Phase::Restart);
        let failed = |f: Failed, t: Instant| {
            run.phase_failed(&f, t);
            f
        };
        match self.units.restart(&spec.unit, RESTART_TIMEOUT).await {
            Ok(result) if result == "done" => run.succeeded(Phase::Restart, t, format!("job {result}")),
            Ok(result) => {
                return Err(failed(
                    fail(
                        Phase::Restart,
                        FailureCause::Unit,
                        format!("the restart job of {} ended '{result}'", spec.unit),
                    ),
                    t,
                ))
            }
            Err(e) => return Err(failed(fail(Phase::Restart, FailureCause::Unit, e.to_string()), t)),
        }
        let t = run.started(Phase::Settle);
        let settle = Duration::from_millis(spec.settle_ms);
        let read = |state: Result<FullState, SystemdError>| {
            state.map_err(|e| failed(fail(Phase::Settle, FailureCause::Unit, e.to_string()), t))
        };
        let mut last = read(self.units.state(&spec.unit).await)?;
        let start_restarts = last.unit.n_restarts;
        let deadline = Instant::now() + settle;
        loop {
            let u = &last.unit;
            if u.active_state != "active" || u.n_restarts != start_restarts {
                let detail = format!(
                    "{} did not stay up: ActiveState={} SubState={} NRestarts {}→{} MainPID={} within {:.1}s of the restart",
                    spec.unit,
                    u.active_state,
                    u.sub_state,
                    start_restarts,
                    u.n_restarts,
                    u.main_pid,
                    t.elapsed().as_secs_f64()
                );
                return Err(failed(fail(Phase::Settle, FailureCause::Unit, detail), t));
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(SETTLE_POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
            last = read(self.units.state(&spec.unit).await)?;
        }
        run.succeeded(
            Phase::Settle,
            t,
            format!(
                "{} active ({}) for {:.1}s, MainPID {}, NRestarts {}",
                spec.unit,
                last.unit.sub_state,
                settle.as_secs_f64(),
                last.unit.main_pid,
                last.unit.n_restarts
            ),
        );
        Ok(())
    }
}

/// The phase a hook reports as.
fn hook_phase(h: Hook) -> Phase {
    match h {
        Hook::PreActivate => Phase::PreActivate,
        Hook::PostActivate => Phase::PostActivate,
        Hook::Validate => Phase::Validate,
    }
}

/// What every hook of one activation gets: the release as its working
/// directory, the environment, and the user it runs as.
struct HookContext {
    release: std::path::PathBuf,
    env: Vec<(&'static str, String)>,
    /// The user a child process switches to ([`HookMode::Process`]).
    user: Option<(u32, u32)>,
    /// The app's `run_as`, which a hook unit must run as ([`HookMode::Unit`]).
    run_as: String,
}

impl HookContext {
    fn new(
        run: &Run<'_>,
        spec: &AppSpec,
        version: &str,
        from: Option<&str>,
        manifest: &Manifest,
        mode: HookMode,
    ) -> Result<HookContext, String> {
        let release = run.app.release(version);
        let any_hook = [Hook::PreActivate, Hook::PostActivate, Hook::Validate]
            .iter()
            .any(|h| manifest.hook(*h).is_some());
        let user = if any_hook && mode == HookMode::Process {
            hooks::process::resolve_user(&spec.run_as)?
        } else {
            None
        };
        let env = vec![
            ("FLEET_APP", spec.name.clone()),
            ("FLEET_VERSION", version.to_string()),
            ("FLEET_PREVIOUS_VERSION", from.unwrap_or_default().to_string()),
            ("FLEET_RELEASE_DIR", release.display().to_string()),
            ("FLEET_UNIT", spec.unit.clone()),
        ];
        Ok(HookContext {
            release,
            env,
            user,
            run_as: spec.run_as.clone(),
        })
    }
}
