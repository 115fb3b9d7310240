//! A rollout as text and JSON: the plan, the headline and counts, tables
//! of rollouts, the detailed view, failure reasons. Pure functions of the
//! record (and the clock, where a time is shown relative).

use super::*;

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
    /// Counts the hosts of some batches (whole, or summaries).
    pub fn of<'a>(batches: impl Iterator<Item = &'a RolloutBatch>) -> Counts {
        let mut c = Counts::default();
        for b in batches.map(fleet_proto::HostCounts::of) {
            c.done += b.done as usize;
            c.failed += b.failed as usize;
            c.rolled_back += b.rolled_back as usize;
            c.skipped += b.skipped as usize;
            c.running += b.running as usize;
            // Pending counts the hosts not through yet, running ones too.
            c.pending += (b.pending + b.running) as usize;
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
        .filter(|p| !fleet_proto::phase::Phase::Done.is(&p.phase) && p.state() != TaskState::Running)
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
