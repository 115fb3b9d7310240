//! `fleetctl rollout …` and the fleet-wide `fleetctl rollback APP`: starting
//! a rollout (or planning it with --dry-run), listing, showing, pausing,
//! resuming and aborting rollouts (`RolloutService`). Following one live is
//! in `watch`; everything that renders a rollout is a pure function in
//! [`render`].

use std::fmt::Write as _;
use std::time::Duration;

use fleet_proto::rollout::short_id;
use fleet_proto::{
    ControlAction, ControlRolloutRequest, GetRolloutRequest, HostState, ListRolloutsRequest, Rollout, RolloutBatch,
    RolloutHost, RolloutKind, RolloutState, StartRolloutRequest, TaskProgress, TaskState,
};
use serde_json::{json, Value};

use crate::apps::or_dash;
use crate::args::{RollbackArgs, RolloutFlags, StartArgs};
use crate::client::Client;
use crate::deploy::cause_name;
use crate::error::Error;
use crate::output::{self, Block, Format, Report, Table};
use crate::watch;

use fleet_proto::rollout::{BatchSpec, DEFAULT_BATCH, DEFAULT_MAX_FAILURES, DEFAULT_OFFLINE, DEFAULT_ROLLBACK_BATCH};

/// Whether a rollout has ended.
pub fn has_ended(r: &Rollout) -> bool {
    r.state().ended()
}

/// A host as people read it: "web-1 (0123456789ab)", or the short id alone.
pub fn host_label(host_id: &str, hostname: &str) -> String {
    if hostname.is_empty() {
        short_id(host_id).to_string()
    } else {
        format!("{hostname} ({})", short_id(host_id))
    }
}

fn label(h: &RolloutHost) -> String {
    host_label(&h.host_id, &h.hostname)
}

fn millis(d: Option<Duration>) -> u64 {
    d.map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn apply_flags(req: &mut StartRolloutRequest, flags: &RolloutFlags, default_batch: BatchSpec) {
    req.selector = flags.selector.clone().unwrap_or_default();
    req.batch = flags.batch.clone().unwrap_or_else(|| default_batch.to_string());
    req.pause_between_ms = millis(flags.pause_between);
    req.max_failures = flags
        .max_failures
        .clone()
        .unwrap_or_else(|| DEFAULT_MAX_FAILURES.to_string());
    req.offline = flags.offline.clone().unwrap_or_else(|| DEFAULT_OFFLINE.to_string());
    req.batch_deadline_ms = millis(flags.batch_deadline);
    req.dry_run = flags.dry_run;
}

/// The request of `rollout APP ...`.
pub fn start_request(args: &StartArgs) -> Result<StartRolloutRequest, Error> {
    let app = args
        .app
        .clone()
        .ok_or_else(|| Error::Usage("name the app to roll out: fleetctl rollout APP --release V".into()))?;
    let version = args.release.get().unwrap_or_default();
    if version.is_empty() && !args.latest {
        return Err(Error::Usage(format!(
            "say which release to roll out: --release V, or --latest for the newest ('fleetctl release ls {app}' lists them)"
        )));
    }
    let mut req = StartRolloutRequest {
        app,
        version,
        latest: args.latest,
        canary: args.canary.unwrap_or(0),
        canary_wait_ms: millis(args.canary_wait),
        canary_approve: args.canary_approve,
        no_auto_rollback: args.no_auto_rollback,
        ..Default::default()
    };
    apply_flags(&mut req, &args.flags, DEFAULT_BATCH);
    Ok(req)
}

/// The request of the fleet-wide `rollback APP` (no --host): every host of
/// the selection to one earlier release (`--to`, or the one before the
/// app's current release in its history), no canary, large batches.
pub fn rollback_request(args: &RollbackArgs) -> StartRolloutRequest {
    let mut req = StartRolloutRequest {
        app: args.app.clone(),
        version: crate::args::ReleaseFlag {
            value: args.to.clone(),
            old: args.old_to.clone(),
        }
        .get()
        .unwrap_or_default(),
        rollback: true,
        ..Default::default()
    };
    apply_flags(&mut req, &args.flags, DEFAULT_ROLLBACK_BATCH);
    req
}

/// Starts a rollout (or plans it with --dry-run); with --wait or --watch,
/// follows it to its end and reports the outcome.
pub async fn start(
    client: &Client,
    req: StartRolloutRequest,
    flags: &RolloutFlags,
    format: Format,
) -> Result<Report, Error> {
    let rollout = client
        .rollouts()
        .start_rollout(req)
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    if flags.dry_run {
        return Ok(match format {
            Format::Json => Report::json(&rollout_json(&rollout)),
            Format::Table => {
                let mut report = Report::out(plan_text(&rollout));
                if !rollout.plan.trim().is_empty() {
                    report.stderr = format!("the controller's plan:\n{}\n", rollout.plan.trim_end());
                }
                report
            }
        });
    }
    if flags.wait || flags.watch {
        if !flags.watch {
            // A CI log shows what it is waiting for; the result stays on stdout.
            eprintln!(
                "fleetctl: rollout {} started ({}); waiting for it to end",
                rollout.id,
                headline(&rollout)
            );
        }
        let ended = watch::follow(client, &rollout.id, flags.watch, format).await?;
        return outcome(&ended, format);
    }
    Ok(match format {
        Format::Json => Report::json(&rollout_json(&rollout)),
        Format::Table => Report::out(format!(
            "rollout {} started: {}\nfollow it with 'fleetctl rollout status {} --watch'\n",
            rollout.id,
            headline(&rollout),
            rollout.id
        )),
    })
}

/// `rollout ls [APP]`.
pub async fn list(client: &Client, app: Option<&str>, format: Format) -> Result<Report, Error> {
    let rollouts = client
        .rollouts()
        .list_rollouts(ListRolloutsRequest {
            app: app.unwrap_or_default().to_string(),
            // The table needs counts, not every host (a 10,000-host rollout
            // is about 4 MB whole); JSON keeps its shape for scripts.
            summaries: format == Format::Table,
        })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner()
        .rollouts;
    Ok(match format {
        Format::Json => Report::json(&Value::Array(rollouts.iter().map(rollout_json).collect())),
        Format::Table => {
            let mut report = Report::out(list_table(&rollouts, fleet_proto::now_ms()));
            if rollouts.is_empty() {
                report.stderr = "no rollouts yet; start one with 'fleetctl rollout APP --release V'\n".into();
            }
            report
        }
    })
}

async fn get(client: &Client, id: &str) -> Result<Rollout, Error> {
    client
        .rollouts()
        .get_rollout(GetRolloutRequest { id: id.to_string() })
        .await
        .map_err(|s| client.fail(s))
        .map(|r| r.into_inner())
}

/// `rollout show ID`: batches and a timeline per host.
pub async fn show(client: &Client, id: &str, format: Format) -> Result<Report, Error> {
    let rollout = get(client, id).await?;
    Ok(match format {
        Format::Json => Report::json(&rollout_json(&rollout)),
        Format::Table => Report::out(show_text(&rollout, fleet_proto::now_ms())),
    })
}

/// A rollout id, or an app name for that app's latest rollout.
async fn resolve(client: &Client, id_or_app: &str) -> Result<Rollout, Error> {
    if id_or_app.starts_with("r-") {
        return get(client, id_or_app).await;
    }
    let rollouts = client
        .rollouts()
        .list_rollouts(ListRolloutsRequest {
            app: id_or_app.to_string(),
            summaries: true,
        })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner()
        .rollouts;
    let latest = rollouts.into_iter().next().ok_or_else(|| Error::Rpc {
        code: tonic::Code::NotFound,
        message: format!(
            "no rollout '{id_or_app}', and no app of that name has any; list them with 'fleetctl rollout ls'"
        ),
    })?;
    get(client, &latest.id).await
}

/// `rollout status ID|APP [--watch]`: where it stands. Exits like --wait:
/// 0 only for a rollout that succeeded, 1 when it ended otherwise; one
/// still going exits 0 (--watch follows it to its end).
pub async fn status(client: &Client, id: &str, follow: bool, format: Format) -> Result<Report, Error> {
    let rollout = resolve(client, id).await?;
    if follow {
        let ended = watch::follow(client, &rollout.id, true, format).await?;
        return outcome(&ended, format);
    }
    if has_ended(&rollout) && rollout.state() != RolloutState::Succeeded {
        if format == Format::Table {
            use std::io::Write;
            let _ = std::io::stdout().write_all(status_text(&rollout).as_bytes());
        }
        return outcome(&rollout, format);
    }
    Ok(match format {
        Format::Json => Report::json(&rollout_json(&rollout)),
        Format::Table => Report::out(status_text(&rollout)),
    })
}

/// `rollout pause|resume|abort ID`.
pub async fn control(client: &Client, id: &str, action: &str, rollback: bool, format: Format) -> Result<Report, Error> {
    let rollout = client
        .rollouts()
        .control_rollout(ControlRolloutRequest {
            id: id.to_string(),
            action: match action {
                "pause" => ControlAction::Pause,
                "resume" => ControlAction::Resume,
                _ => ControlAction::Abort,
            }
            .into(),
            rollback,
        })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    Ok(match format {
        Format::Json => Report::json(&rollout_json(&rollout)),
        Format::Table => {
            let verb = match (action, rollback) {
                ("pause", _) => "pause asked",
                ("resume", _) => "resumed",
                (_, true) => "aborted; rolling changed hosts back",
                _ => "aborted",
            };
            Report::out(format!("rollout {} {verb}\n{}", rollout.id, status_text(&rollout)))
        }
    })
}

/// The result of --wait / --watch: Ok when the rollout succeeded, else a
/// failure (exit 1) with the reason; with JSON the record is printed either way.
pub fn outcome(rollout: &Rollout, format: Format) -> Result<Report, Error> {
    if rollout.state() == RolloutState::Succeeded {
        return Ok(match format {
            Format::Json => Report::json(&rollout_json(rollout)),
            Format::Table => Report::out(format!(
                "rollout {} succeeded: {}\n",
                rollout.id,
                Counts::of(rollout.batches.iter()).summary()
            )),
        });
    }
    if format == Format::Json {
        // CI reads the record on stdout; the exit code says it did not succeed.
        use std::io::Write;
        let _ = std::io::stdout().write_all(format!("{:#}\n", rollout_json(rollout)).as_bytes());
    }
    Err(Error::Failed(failure_text(rollout)))
}

mod render;

pub use render::*;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use fleet_proto::FailureCause;

    fn host_state(word: &str) -> HostState {
        HostState::from_str_name(&format!("HOST_STATE_{}", word.to_uppercase())).expect("a host state")
    }

    fn batch(hosts: Vec<RolloutHost>, state: &str, canary: bool) -> RolloutBatch {
        let mut b = RolloutBatch {
            hosts,
            canary,
            ..Default::default()
        };
        b.set_state(
            fleet_proto::BatchState::from_str_name(&format!("BATCH_STATE_{}", state.to_uppercase())).expect("state"),
        );
        b
    }

    fn host(id: &str, from: &str, state: &str) -> RolloutHost {
        let mut h = RolloutHost {
            host_id: id.into(),
            from_version: from.into(),
            to_version: "2.0".into(),
            ..Default::default()
        };
        h.set_state(host_state(state));
        h
    }

    fn step(phase: &str, state: TaskState, ms: u64, detail: &str) -> TaskProgress {
        TaskProgress {
            phase: phase.into(),
            state: state as i32,
            duration_ms: ms,
            detail: detail.into(),
            ..Default::default()
        }
    }

    /// A rollout of api 2.0 over four hosts: a canary batch done, a second
    /// batch with one host in `health` and one failed, a third pending.
    pub(crate) fn sample() -> Rollout {
        let mut ok = host("web-1", "1.0", "succeeded");
        ok.timeline = vec![
            step("fetch", TaskState::Running, 0, ""),
            step("fetch", TaskState::Succeeded, 300, ""),
            step("swap", TaskState::Succeeded, 10, ""),
            step("health", TaskState::Succeeded, 1200, "HTTP 200"),
            step("done", TaskState::Succeeded, 1510, ""),
        ];
        let mut running = host("web-2", "1.0", "running");
        running.phase = "health".into();
        let mut failed = host("web-3", "", "failed");
        failed.cause = FailureCause::Health as i32;
        failed.detail = "HTTP 500 from /health\nbody: boom".into();
        failed.timeline = vec![step("health", TaskState::Failed, 30_000, "HTTP 500 from /health")];
        let mut r = Rollout {
            id: "r-42".into(),
            app: "api".into(),
            version: "2.0".into(),
            params: Some(StartRolloutRequest {
                app: "api".into(),
                version: "2.0".into(),
                batch: "2".into(),
                canary: 1,
                canary_wait_ms: 60_000,
                max_failures: "1".into(),
                offline: "skip".into(),
                ..Default::default()
            }),
            batches: vec![
                batch(vec![ok], "done", true),
                batch(vec![running, failed], "running", false),
                batch(vec![host("web-4", "1.0", "pending")], "pending", false),
            ],
            created_at_ms: 1_700_000_000_000,
            created_by: "admin".into(),
            failure_budget: 1,
            current_batch: 1,
            ..Default::default()
        };
        r.set_state(RolloutState::Running);
        r
    }

    #[test]
    fn counts_sort_hosts_by_where_they_stand() {
        let c = Counts::of(sample().batches.iter());
        assert_eq!(
            c,
            Counts {
                done: 1,
                failed: 1,
                rolled_back: 0,
                skipped: 0,
                pending: 2,
                running: 1
            }
        );
        assert_eq!(c.summary(), "1 done, 1 failed, 2 pending");
        assert_eq!((c.total(), c.finished()), (4, 2));
        let mut r = sample();
        r.batches[0].hosts[0].set_state(HostState::RolledBack);
        let c = Counts::of(r.batches.iter());
        assert_eq!(c.summary(), "0 done, 1 failed, 1 rolled back, 2 pending");
        assert_eq!((c.total(), c.finished()), (4, 2));
    }

    #[test]
    fn plan_lists_batches_versions_and_budget() {
        let mut r = sample();
        r.set_state(RolloutState::Planned);
        let text = plan_text(&r);
        assert_eq!(
            text,
            "plan (dry run, nothing changed): api → 2.0, 4 hosts in 3 batches\n\
             failure budget: 1 host may fail (--max-failures 1); at 2 failed, the rollout stops and every host it changed rolls back\n\
             pacing: after the canary, wait 1m; offline hosts are skipped and converge when they return\n\
             batch 1/3 (canary): 1 host\n\
             \x20 web-1  1.0 → 2.0\n\
             batch 2/3: 2 hosts\n\
             \x20 web-2  1.0 → 2.0\n\
             \x20 web-3  (none) → 2.0\n\
             batch 3/3: 1 host\n\
             \x20 web-4  1.0 → 2.0\n"
        );
        r.batches.clear();
        assert!(plan_text(&r).contains("no host matches"));
    }

    #[test]
    fn list_table_shows_progress() {
        let text = list_table(&[sample()], 1_700_000_060_000);
        assert_eq!(
            text,
            "ID    APP  KIND     VERSION  STATE    HOSTS               STARTED  BY\n\
             r-42  api  rollout  2.0      running  1/4 done, 1 failed  1m ago   admin\n"
        );
    }

    #[test]
    fn status_has_a_line_per_batch_with_current_phases() {
        let text = status_text(&sample());
        assert!(text.contains("state:          running (batch 2/3)\n"), "{text}");
        assert!(
            text.contains("batch 1/3 (canary)  done     1 done, 0 failed, 0 pending\n"),
            "{text}"
        );
        assert!(
            text.contains("batch 2/3           running  0 done, 1 failed, 1 pending; now: web-2 health\n"),
            "{text}"
        );
    }

    #[test]
    fn show_has_a_timeline_per_host_with_durations() {
        let text = show_text(&sample(), 1_700_000_060_000);
        assert!(
            text.contains("\nbatch 1/3 (canary): done\n  web-1  1.0 → 2.0  succeeded  1.5s\n"),
            "{text}"
        );
        assert!(text.contains("      fetch          ok        0.3s\n"), "{text}");
        assert!(
            text.contains("      health         ok        1.2s  HTTP 200\n"),
            "{text}"
        );
        assert!(
            !text.contains("done           ok"),
            "the done summary is not a phase: {text}"
        );
        assert!(text.contains("  web-2  1.0 → 2.0  running (in health)\n"), "{text}");
        assert!(
            text.contains("  web-3  (none) → 2.0  failed: health check failed: HTTP 500 from /health  30.0s\n"),
            "{text}"
        );
        assert!(
            text.contains("parameters:     batch 2, canary 1, offline skip\n"),
            "{text}"
        );
    }

    #[test]
    fn failure_names_the_reason_and_the_hosts() {
        let mut r = sample();
        r.set_state(RolloutState::RolledBack);
        r.reason = "2 hosts failed, budget 1".into();
        assert_eq!(
            failure_text(&r),
            "rollout r-42 of api ended rolled back: 2 hosts failed, budget 1\n  web-3: health check failed: HTTP 500 from /health"
        );
        let err = outcome(&r, Format::Table).expect_err("rolled back is a failure");
        assert_eq!(err.exit_code() as u8, 1);
        r.set_state(RolloutState::Succeeded);
        let report = outcome(&r, Format::Table).expect("success");
        assert_eq!(report.stdout, "rollout r-42 succeeded: 1 done, 1 failed, 2 pending\n");
    }

    #[test]
    fn json_is_complete() {
        let v = rollout_json(&sample());
        assert_eq!(v["id"], "r-42");
        assert_eq!(v["hosts"]["failed"], 1);
        assert_eq!(v["params"]["canary_wait_ms"], 60_000);
        assert_eq!(v["batches"][1]["hosts"][1]["cause"], "health check failed");
        assert_eq!(v["batches"][0]["hosts"][0]["timeline"][1]["state"], "ok");
        assert_eq!(v["batches"][0]["canary"], true);
    }

    #[test]
    fn headlines_name_the_kind_and_the_release() {
        let mut r = sample();
        r.version = "1.0".into();
        r.set_kind(RolloutKind::Rollback);
        assert_eq!(headline(&r), "rollback of api to 1.0, 4 hosts in 3 batches");
        r.version.clear();
        r.set_kind(RolloutKind::Converge);
        assert_eq!(
            headline(&r),
            "convergence of api to each host's desired release, 4 hosts in 3 batches"
        );
    }

    #[test]
    fn hosts_are_named_by_hostname_and_short_id() {
        assert_eq!(host_label("0123456789abcdef", "web-1"), "web-1 (0123456789ab)");
        assert_eq!(host_label("0123456789abcdef", ""), "0123456789ab");
        let mut r = sample();
        r.batches[1].hosts[1].hostname = "db-7".into();
        r.batches[1].hosts[1].host_id = "fedcba9876543210".into();
        r.set_state(RolloutState::RolledBack);
        assert!(
            failure_text(&r).contains("\n  db-7 (fedcba987654): health check failed"),
            "{}",
            failure_text(&r)
        );
    }
}
