//! `fleetctl rollout …` and the fleet-wide `fleetctl rollback APP`: starting
//! a rollout (or planning it with --dry-run), listing, showing, pausing,
//! resuming and aborting rollouts (`RolloutService`). Following one live is
//! in `watch`; everything that renders a rollout is a pure function here.

use std::fmt::Write as _;
use std::time::Duration;

use fleet_proto::rollout::short_id;
use fleet_proto::{
    ControlAction, ControlRolloutRequest, GetRolloutRequest, HostState, ListRolloutsRequest, Rollout, RolloutBatch,
    RolloutHost, RolloutKind, RolloutState, StartRolloutRequest, TaskProgress, TaskState,
};
use serde_json::{json, Value};

use crate::apps::{cause_name, or_dash};
use crate::args::{RollbackArgs, RolloutFlags, StartArgs};
use crate::client::Client;
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
        .ok_or_else(|| Error::Usage("name the app to roll out: fleetctl rollout APP --version V".into()))?;
    let version = args.version.clone().unwrap_or_default();
    if version.is_empty() && !args.latest {
        return Err(Error::Usage(format!(
            "say which release to roll out: --version V, or --latest for the newest ('fleetctl release ls {app}' lists them)"
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
        version: args.to.clone().unwrap_or_default(),
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
                report.stderr = "no rollouts yet; start one with 'fleetctl rollout APP --version V'\n".into();
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
        })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner()
        .rollouts;
    rollouts.into_iter().next().ok_or_else(|| Error::Rpc {
        code: tonic::Code::NotFound,
        message: format!(
            "no rollout '{id_or_app}', and no app of that name has any; list them with 'fleetctl rollout ls'"
        ),
    })
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

/// Why a rollout did not succeed, naming the failed hosts (the first five).
pub fn failure_text(r: &Rollout) -> String {
    let mut text = format!(
        "rollout {} of {} ended {}",
        r.id,
        r.app,
        r.state().word().replace('_', " ")
    );
    if !r.reason.is_empty() {
        let _ = write!(text, ": {}", r.reason);
    }
    let failed: Vec<&RolloutHost> = hosts(r)
        .filter(|h| {
            matches!(h.state(), HostState::Failed | HostState::RollbackFailed)
                || (h.state() == HostState::RolledBack && h.cause != 0)
        })
        .collect();
    for h in failed.iter().take(5) {
        let _ = write!(text, "\n  {}: {}", label(h), host_failure(h));
    }
    if failed.len() > 5 {
        let _ = write!(
            text,
            "\n  and {} more: 'fleetctl rollout show {}'",
            failed.len() - 5,
            r.id
        );
    }
    text
}

fn host_failure(h: &RolloutHost) -> String {
    let cause = cause_name(h.cause());
    match (cause.is_empty(), h.detail.is_empty()) {
        (false, false) => format!("{cause}: {}", first_line(&h.detail)),
        (false, true) => cause.to_string(),
        (true, false) => first_line(&h.detail).to_string(),
        (true, true) => h.state().word().replace('_', " "),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

fn hosts(r: &Rollout) -> impl Iterator<Item = &RolloutHost> {
    r.batches.iter().flat_map(|b| b.hosts.iter())
}

/// Hosts by where they stand.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// On the target release.
    pub done: usize,
    /// Failed (a failed host reverts itself on the agent).
    pub failed: usize,
    /// Changed by the rollout, then rolled back when it stopped.
    pub rolled_back: usize,
    /// Skipped (offline when their batch came).
    pub skipped: usize,
    /// Not started or in flight.
    pub pending: usize,
    /// Of which in flight.
    pub running: usize,
}

impl Counts {
    /// Counts the hosts of some batches.
    pub fn of<'a>(batches: impl Iterator<Item = &'a RolloutBatch>) -> Counts {
        let mut c = Counts::default();
        for h in batches.flat_map(|b| b.hosts.iter()) {
            match h.state() {
                HostState::Succeeded | HostState::Unchanged => c.done += 1,
                HostState::Failed | HostState::RollbackFailed => c.failed += 1,
                HostState::RolledBack => c.rolled_back += 1,
                HostState::Skipped => c.skipped += 1,
                HostState::Running | HostState::RollingBack => {
                    c.pending += 1;
                    c.running += 1;
                }
                HostState::Pending | HostState::Unspecified => c.pending += 1,
            }
        }
        c
    }

    /// Hosts in all.
    pub fn total(&self) -> usize {
        self.done + self.failed + self.rolled_back + self.skipped + self.pending
    }

    /// Hosts that are through (done, failed or skipped).
    pub fn finished(&self) -> usize {
        self.done + self.failed + self.rolled_back + self.skipped
    }

    /// "3 done, 1 failed, 4 pending" (skipped only when there are some).
    pub fn summary(&self) -> String {
        let mut s = format!("{} done, {} failed", self.done, self.failed);
        if self.rolled_back > 0 {
            let _ = write!(s, ", {} rolled back", self.rolled_back);
        }
        if self.skipped > 0 {
            let _ = write!(s, ", {} skipped", self.skipped);
        }
        let _ = write!(s, ", {} pending", self.pending);
        s
    }
}

fn plural(n: usize, one: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// The release a rollout moves hosts to, in words.
fn target(r: &Rollout) -> String {
    match (r.kind(), r.version.is_empty()) {
        (_, false) => r.version.clone(),
        (RolloutKind::Converge, true) => "desired".into(),
        (_, true) => "?".into(),
    }
}

/// "api-service → 2.0.0, 8 hosts in 4 batches" (or "rollback of …").
pub fn headline(r: &Rollout) -> String {
    let n = hosts(r).count();
    let what = match r.kind() {
        RolloutKind::Rollback => format!("rollback of {} to {}", r.app, target(r)),
        RolloutKind::Converge => format!("convergence of {} to each host's desired release", r.app),
        _ => format!("{} → {}", r.app, target(r)),
    };
    format!("{what}, {} in {}", plural(n, "host"), plural(r.batches.len(), "batch")).replace("batchs", "batches")
}

fn batch_name(r: &Rollout, index: usize) -> String {
    let canary = r.batches.get(index).is_some_and(|b| b.canary);
    format!(
        "batch {}/{}{}",
        index + 1,
        r.batches.len(),
        if canary { " (canary)" } else { "" }
    )
}

fn budget_text(r: &Rollout) -> String {
    let given = r
        .params
        .as_ref()
        .map(|p| p.max_failures.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| DEFAULT_MAX_FAILURES.to_string());
    let then = if r.params.as_ref().is_some_and(|p| p.no_auto_rollback) {
        "the rollout stops and changed hosts stay as they are"
    } else {
        "the rollout stops and every host it changed rolls back"
    };
    let tolerated = r.failure_budget as usize;
    format!(
        "{} may fail (--max-failures {given}); at {} failed, {then}",
        plural(tolerated, "host"),
        tolerated + 1
    )
}

/// The --dry-run plan: which hosts in which batches, from which release to
/// which, and the failure budget in hosts.
pub fn plan_text(r: &Rollout) -> String {
    let mut out = format!("plan (dry run, nothing changed): {}\n", headline(r));
    let _ = writeln!(out, "failure budget: {}", budget_text(r));
    if let Some(p) = &r.params {
        let mut pacing = Vec::new();
        if p.canary > 0 {
            pacing.push(match (p.canary_approve, p.canary_wait_ms) {
                (true, _) => "after the canary, wait for 'fleetctl rollout resume ID'".to_string(),
                (false, 0) => "after the canary, go on as soon as it is healthy".to_string(),
                (false, ms) => format!("after the canary, wait {}", human(ms)),
            });
        }
        if p.pause_between_ms > 0 {
            pacing.push(format!("pause {} between batches", human(p.pause_between_ms)));
        }
        let default_offline = DEFAULT_OFFLINE.to_string();
        let offline = if p.offline.is_empty() {
            &default_offline
        } else {
            &p.offline
        };
        pacing.push(if offline == "skip" {
            "offline hosts are skipped and converge when they return".to_string()
        } else {
            format!("offline hosts are waited for ({})", offline.trim_start_matches("wait:"))
        });
        let _ = writeln!(out, "pacing: {}", pacing.join("; "));
    }
    let width = hosts(r).map(|h| label(h).chars().count()).max().unwrap_or(0);
    for (i, b) in r.batches.iter().enumerate() {
        let _ = writeln!(out, "{}: {}", batch_name(r, i), plural(b.hosts.len(), "host"));
        for h in &b.hosts {
            let _ = writeln!(
                out,
                "  {:width$}  {} → {}{}",
                label(h),
                or_none(&h.from_version),
                h.to_version,
                if h.state() == HostState::Skipped {
                    "  (skipped: offline)"
                } else {
                    ""
                }
            );
        }
    }
    if r.batches.is_empty() {
        out.push_str("no host matches: nothing to roll out\n");
    }
    out
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "(none)"
    } else {
        s
    }
}

fn human(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// `rollout ls` as a table.
pub fn list_table(rollouts: &[Rollout], now_ms: i64) -> String {
    let mut t = Table::new(vec!["ID", "APP", "KIND", "VERSION", "STATE", "HOSTS", "STARTED", "BY"]);
    for r in rollouts {
        let c = Counts::of(r.batches.iter());
        t.row(vec![
            r.id.clone(),
            r.app.clone(),
            r.kind().word().to_string(),
            target(r),
            r.state().word().to_string(),
            if c.rolled_back > 0 {
                format!(
                    "{}/{} done, {} failed, {} rolled back",
                    c.done,
                    c.total(),
                    c.failed,
                    c.rolled_back
                )
            } else {
                format!("{}/{} done, {} failed", c.done, c.total(), c.failed)
            },
            output::relative_or(r.created_at_ms, now_ms, "-"),
            or_dash(&r.created_by),
        ]);
    }
    t.render()
}

/// `app history` as a table: newest first, one line per rollout.
pub fn history_table(rollouts: &[Rollout], now_ms: i64) -> String {
    let mut t = Table::new(vec!["WHEN", "KIND", "VERSION", "OUTCOME", "HOSTS", "BY", "ID"]);
    for r in rollouts {
        let c = Counts::of(r.batches.iter());
        let scope = r
            .params
            .as_ref()
            .map(|p| p.selector.clone())
            .filter(|s| !s.is_empty())
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        t.row(vec![
            output::relative_or(r.created_at_ms, now_ms, "-"),
            r.kind().word().to_string(),
            format!("{}{scope}", target(r)),
            r.state().word().to_string(),
            format!("{}/{} done, {} failed", c.done, c.total(), c.failed),
            or_dash(&r.created_by),
            r.id.clone(),
        ]);
    }
    t.render()
}

/// One `app history` entry for scripts.
pub fn history_json(r: &Rollout) -> Value {
    let c = Counts::of(r.batches.iter());
    json!({
        "id": r.id,
        "kind": r.kind().word(),
        "version": r.version,
        "selector": r.params.as_ref().map(|p| p.selector.clone()).unwrap_or_default(),
        "state": r.state().word(),
        "reason": r.reason,
        "created_at_ms": r.created_at_ms,
        "ended_at_ms": r.ended_at_ms,
        "created_by": r.created_by,
        "hosts": { "total": c.total(), "done": c.done, "failed": c.failed, "rolled_back": c.rolled_back, "skipped": c.skipped },
    })
}

fn state_line(r: &Rollout) -> String {
    if has_ended(r) || r.batches.is_empty() {
        return r.state().word().to_string();
    }
    format!("{} ({})", r.state().word(), batch_name(r, r.current_batch as usize))
}

fn header_block(r: &Rollout, now_ms: i64) -> Block {
    let mut b = Block::default();
    b.line("rollout", format!("{}: {}", r.id, headline(r)));
    b.line("state", state_line(r));
    if !r.reason.is_empty() {
        b.line("reason", r.reason.clone());
    }
    b.line("hosts", Counts::of(r.batches.iter()).summary());
    b.line("failure budget", budget_text(r));
    if r.created_at_ms != 0 {
        let by = if r.created_by.is_empty() {
            String::new()
        } else {
            format!(" by {}", r.created_by)
        };
        b.line("started", format!("{}{by}", output::when(r.created_at_ms, now_ms, "-")));
    }
    if r.ended_at_ms != 0 {
        b.line("ended", output::when(r.ended_at_ms, now_ms, "-"));
    }
    b
}

/// "host phase, host phase" for the hosts of a batch that are running.
pub(crate) fn running_phases(b: &RolloutBatch) -> String {
    b.hosts
        .iter()
        .filter(|h| h.state().in_flight())
        .map(|h| {
            format!(
                "{} {}",
                label(h),
                if h.phase.is_empty() { "starting" } else { &h.phase }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `rollout status`: the rollout and one line per batch.
pub fn status_text(r: &Rollout) -> String {
    let mut out = header_block(r, fleet_proto::now_ms()).render();
    let names: Vec<String> = (0..r.batches.len()).map(|i| batch_name(r, i)).collect();
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    for (b, name) in r.batches.iter().zip(&names) {
        let c = Counts::of(std::iter::once(b));
        let mut line = format!("{name:width$}  {:<7}  {}", b.state().word(), c.summary());
        let running = running_phases(b);
        if !running.is_empty() {
            let _ = write!(line, "; now: {running}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn step_state(p: &TaskProgress) -> &'static str {
    match p.state() {
        TaskState::Succeeded => "ok",
        TaskState::Failed => "FAILED",
        TaskState::Running => "running",
        TaskState::Unspecified => "?",
    }
}

/// The finished phases of a host's timeline (the "done" summary and
/// "running" marks left out: the finished report of each phase carries its
/// duration).
fn steps(h: &RolloutHost) -> impl Iterator<Item = &TaskProgress> {
    h.timeline
        .iter()
        .filter(|p| p.phase != "done" && p.state() != TaskState::Running)
}

/// `rollout show`: the rollout, then per batch each host with its timeline.
pub fn show_text(r: &Rollout, now_ms: i64) -> String {
    let mut out = header_block(r, now_ms).render();
    if let Some(p) = &r.params {
        let mut how = vec![format!("batch {}", or_dash(&p.batch))];
        if p.canary > 0 {
            how.push(format!("canary {}", p.canary));
        }
        if !p.selector.is_empty() {
            how.push(format!("selector {}", p.selector));
        }
        if p.pause_between_ms > 0 {
            how.push(format!("pause {}", human(p.pause_between_ms)));
        }
        if !p.offline.is_empty() {
            how.push(format!("offline {}", p.offline));
        }
        if p.no_auto_rollback {
            how.push("no auto rollback".into());
        }
        out = out.trim_end().to_string();
        let _ = writeln!(out, "\nparameters:     {}", how.join(", "));
    }
    let width = hosts(r).map(|h| label(h).chars().count()).max().unwrap_or(0);
    for (i, b) in r.batches.iter().enumerate() {
        let _ = writeln!(out, "\n{}: {}", batch_name(r, i), b.state().word());
        for h in &b.hosts {
            let total: u64 = steps(h).map(|p| p.duration_ms).sum();
            let mut line = format!(
                "  {:width$}  {} → {}  {}",
                label(h),
                or_none(&h.from_version),
                h.to_version,
                h.state().word().replace('_', " ")
            );
            match h.state() {
                HostState::Running | HostState::RollingBack if !h.phase.is_empty() => {
                    let _ = write!(line, " (in {})", h.phase);
                }
                HostState::Failed | HostState::RolledBack | HostState::RollbackFailed | HostState::Skipped
                    if h.cause != 0 || !h.detail.is_empty() =>
                {
                    let _ = write!(line, ": {}", host_failure(h));
                }
                _ => {}
            }
            if total > 0 {
                let _ = write!(line, "  {}", seconds(total));
            }
            out.push_str(&line);
            out.push('\n');
            for p in steps(h) {
                let step = format!(
                    "      {:<14} {:<6} {:>7}  {}",
                    p.phase,
                    step_state(p),
                    seconds(p.duration_ms),
                    first_line(&p.detail)
                );
                out.push_str(step.trim_end());
                out.push('\n');
            }
        }
    }
    out
}

fn progress_json(p: &TaskProgress) -> Value {
    json!({
        "phase": p.phase,
        "state": step_state(p).to_lowercase(),
        "duration_ms": p.duration_ms,
        "detail": p.detail,
        "cause": cause_name(p.cause()),
    })
}

/// A rollout for scripts; field names are stable.
pub fn rollout_json(r: &Rollout) -> Value {
    let p = r.params.clone().unwrap_or_default();
    let c = Counts::of(r.batches.iter());
    json!({
        "id": r.id,
        "app": r.app,
        "version": r.version,
        "kind": r.kind().word(),
        "state": r.state().word(),
        "whole_selection": r.whole_selection,
        "batch_size": r.batch_size,
        "reason": r.reason,
        "created_at_ms": r.created_at_ms,
        "ended_at_ms": r.ended_at_ms,
        "created_by": r.created_by,
        "failure_budget": r.failure_budget,
        "current_batch": r.current_batch,
        "plan": r.plan,
        "hosts": {
            "total": c.total(),
            "done": c.done,
            "failed": c.failed,
            "rolled_back": c.rolled_back,
            "skipped": c.skipped,
            "pending": c.pending,
        },
        "params": {
            "version": p.version,
            "latest": p.latest,
            "rollback": p.rollback,
            "selector": p.selector,
            "batch": p.batch,
            "canary": p.canary,
            "canary_wait_ms": p.canary_wait_ms,
            "canary_approve": p.canary_approve,
            "pause_between_ms": p.pause_between_ms,
            "max_failures": p.max_failures,
            "no_auto_rollback": p.no_auto_rollback,
            "offline": p.offline,
            "batch_deadline_ms": p.batch_deadline_ms,
        },
        "batches": r.batches.iter().enumerate().map(|(i, b)| json!({
            "index": i,
            "canary": b.canary,
            "state": b.state().word(),
            "started_at_ms": b.started_at_ms,
            "ended_at_ms": b.ended_at_ms,
            "hosts": b.hosts.iter().map(|h| json!({
                "host_id": h.host_id,
                "hostname": h.hostname,
                "from_version": h.from_version,
                "to_version": h.to_version,
                "state": h.state().word(),
                "phase": h.phase,
                "cause": cause_name(h.cause()),
                "detail": h.detail,
                "timeline": h.timeline.iter().map(progress_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

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
