//! `fleetctl deploy` and `rollback --host`: one host changed, followed
//! phase by phase (`AppService/Deploy`); and the words of failure causes
//! every command prints.

use std::io::Write;

use fleet_proto::{DeployRequest, FailureCause, TaskProgress, TaskState};
use serde_json::{json, Value};

use crate::apps::or_dash;
use crate::args::DeployArgs;
use crate::client::Client;
use crate::error::Error;
use crate::output::{Format, Report};

pub(crate) fn cause_name(c: FailureCause) -> &'static str {
    match c {
        FailureCause::Unspecified => "",
        FailureCause::Download => "download failed",
        FailureCause::ArchiveRefused => "archive refused",
        FailureCause::Hook => "hook failed",
        FailureCause::Unit => "unit failed",
        FailureCause::Health => "health check failed",
        FailureCause::Timeout => "timed out",
        FailureCause::Unreachable => "host unreachable",
        FailureCause::DiskFull => "disk full",
        FailureCause::Invalid => "invalid task",
        FailureCause::Agent => "agent error",
        FailureCause::Signature => "signature refused",
    }
}

fn state_name(s: TaskState) -> &'static str {
    match s {
        TaskState::Running => "running",
        TaskState::Succeeded => "ok",
        TaskState::Failed => "FAILED",
        TaskState::Unspecified => "?",
    }
}

fn progress_json(p: &TaskProgress) -> Value {
    json!({
        "phase": p.phase,
        "state": state_name(p.state()).to_lowercase(),
        "duration_ms": p.duration_ms,
        "detail": p.detail,
        "cause": cause_name(p.cause()),
    })
}

/// `deploy APP --release V --host ID` and `rollback APP --host ID`: sends
/// the task and prints each phase as the agent reports it.
pub async fn deploy(client: &Client, args: &DeployArgs, rollback: bool, format: Format) -> Result<Report, Error> {
    let request = DeployRequest {
        app: args.app.clone(),
        version: args.release.get().unwrap_or_default(),
        host: args.host.clone(),
        rollback,
    };
    if !rollback && request.version.is_empty() {
        return Err(Error::Usage("--release is required: the release to deploy".into()));
    }
    let mut stream = client
        .apps()
        .deploy(request)
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    let live = format == Format::Table;
    let mut phases = Vec::new();
    let mut last: Option<TaskProgress> = None;
    while let Some(p) = stream.message().await.map_err(|s| client.fail(s))? {
        if live && !fleet_proto::phase::Phase::Done.is(&p.phase) && p.state() != TaskState::Running {
            let mut line = format!(
                "{:<14} {:<6} {:>7}  {}\n",
                p.phase,
                state_name(p.state()),
                format!("{:.1}s", p.duration_ms as f64 / 1000.0),
                p.detail.lines().next().unwrap_or_default()
            );
            for more in p.detail.lines().skip(1) {
                line.push_str(&format!("{:31}{more}\n", ""));
            }
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
        if !fleet_proto::phase::Phase::Done.is(&p.phase) && p.state() != TaskState::Running {
            phases.push(progress_json(&p));
        }
        let end = fleet_proto::phase::Phase::Done.is(&p.phase);
        last = Some(p);
        if end {
            break;
        }
    }
    let last = last.ok_or_else(|| Error::Failed("the controller ended the deploy without a result".into()))?;
    let ok = last.state() == TaskState::Succeeded;
    let summary = json!({
        "task_id": last.task_id,
        "host_id": last.host_id,
        "app": args.app,
        "state": if ok { "succeeded" } else { "failed" },
        "current": last.current,
        "reverted": last.reverted,
        "cause": cause_name(last.cause()),
        "detail": last.detail,
        "duration_ms": last.duration_ms,
        "phases": phases,
    });
    if !ok {
        if format == Format::Json {
            // CI reads the record on stdout; the exit code says it failed.
            let _ = std::io::stdout().write_all(format!("{summary:#}\n").as_bytes());
        }
        let what = if last.reverted {
            format!("; reverted to {}", or_dash(&last.current))
        } else if last.current.is_empty() {
            String::new()
        } else {
            format!("; current is {}", last.current)
        };
        return Err(Error::Failed(format!(
            "{} on host {}: {}{what}",
            cause_name(last.cause()),
            last.host_id,
            last.detail
        )));
    }
    Ok(match format {
        Format::Json => Report::json(&summary),
        Format::Table => Report::out(format!(
            "done in {:.1}s: {}\n",
            last.duration_ms as f64 / 1000.0,
            last.detail
        )),
    })
}
