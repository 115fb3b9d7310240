//! `fleetctl app …`, `release …`, `deploy` and `rollback --host`: apps,
//! their releases, and changing one host (`AppService`, `ReleaseService`).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use fleet_proto::health_check::Check;
use fleet_proto::{
    AppInventory, AppSpec, AppStatus, DeleteReleaseRequest, DeployRequest, FailureCause, GetAppRequest,
    GetReleaseRequest, HealthCheck, ListAppsRequest, ListReleasesRequest, PushReleaseChunk, Release, ReleaseHeader,
    TaskProgress, TaskState,
};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use crate::args::{label_map, AppArgs, DeployArgs, PushArgs};
use crate::client::Client;
use crate::error::Error;
use crate::output::{self, Block, Format, Report, Table};

/// Upload chunk size.
const CHUNK: usize = 1 << 20;

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Applies the flags to a spec (all of it for create, what is given for update).
fn apply(spec: &mut AppSpec, args: &AppArgs) -> Result<(), Error> {
    if let Some(unit) = &args.unit {
        spec.unit = unit.clone();
    }
    if let Some(sel) = &args.selector {
        spec.selector = sel.clone();
    }
    if let Some(keep) = args.keep {
        spec.keep = keep;
    }
    if let Some(settle) = args.settle {
        spec.settle_ms = millis(settle);
    }
    if let Some(user) = &args.run_as {
        spec.run_as = user.clone();
    }
    let health = spec.health.get_or_insert_with(HealthCheck::default);
    match (&args.health_http, &args.health_command, args.no_health) {
        (Some(url), None, false) => health.check = Some(Check::HttpUrl(url.clone())),
        (None, Some(cmd), false) => health.check = Some(Check::Command(cmd.clone())),
        (None, None, true) => health.check = None,
        (None, None, false) => {}
        _ => {
            return Err(Error::Usage(
                "give one of --health-http, --health-command or --no-health".into(),
            ))
        }
    }
    if let Some(t) = args.health_timeout {
        health.timeout_ms = millis(t);
    }
    // An update without these flags keeps the app's choice; the --no-
    // forms opt back out (the spec is then checked again, so an app whose
    // unit or health URL needs the opt-out is refused, naming the field).
    spec.allow_any_unit = opt(spec.allow_any_unit, args.allow_any_unit, args.no_allow_any_unit);
    spec.allow_remote_health = opt(
        spec.allow_remote_health,
        args.allow_remote_health,
        args.no_allow_remote_health,
    );
    if args.no_require_signature {
        spec.signing_keys.clear();
    } else if !args.require_signature.is_empty() {
        spec.signing_keys = args
            .require_signature
            .iter()
            .map(|k| crate::keys::read_public(k).map(|k| k.to_string()))
            .collect::<Result<_, _>>()?;
    }
    Ok(())
}

/// An opt-out flag after `--X` (`yes`) or `--no-X` (`no`); clap refuses both.
fn opt(current: bool, yes: bool, no: bool) -> bool {
    (current || yes) && !no
}

fn usage(e: fleet_proto::limits::FieldError) -> Error {
    Error::Usage(e.to_string())
}

/// The spec `app create` sends, checked against the contract's limits
/// before dialling (an invalid name, unit or URL is exit 2).
pub fn create_spec(name: &str, args: &AppArgs) -> Result<AppSpec, Error> {
    fleet_proto::limits::check_app_name(name).map_err(usage)?;
    let Some(unit) = &args.unit else {
        return Err(Error::Usage(format!(
            "--unit is required: the systemd unit that runs {name}, e.g. --unit {}",
            fleet_proto::limits::app_unit(name)
        )));
    };
    let mut spec = AppSpec {
        name: name.to_string(),
        unit: unit.clone(),
        ..Default::default()
    };
    apply(&mut spec, args)?;
    fleet_proto::limits::check_app_spec(&spec).map_err(usage)?;
    Ok(spec)
}

/// `app create`.
pub async fn create(client: &Client, spec: AppSpec, format: Format) -> Result<Report, Error> {
    let spec = client
        .apps()
        .create_app(spec)
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    Ok(spec_report(&spec, format, "created"))
}

/// `app update`: changes only what the flags name.
pub async fn update(client: &Client, name: &str, args: &AppArgs, format: Format) -> Result<Report, Error> {
    let status = client
        .apps()
        .get_app(GetAppRequest { name: name.to_string() })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    let mut spec = status.spec.unwrap_or_default();
    apply(&mut spec, args)?;
    fleet_proto::limits::check_app_spec(&spec).map_err(usage)?;
    let spec = client
        .apps()
        .update_app(spec)
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    Ok(spec_report(&spec, format, "updated"))
}

fn spec_report(spec: &AppSpec, format: Format, verb: &str) -> Report {
    match format {
        Format::Json => Report::json(&spec_json(spec)),
        Format::Table => Report::out(format!("{verb} app {}\n{}", spec.name, spec_block(spec).render())),
    }
}

fn health_text(h: Option<&HealthCheck>) -> String {
    let h = h.cloned().unwrap_or_default();
    let timeout = humantime::format_duration(Duration::from_millis(h.timeout_ms));
    match h.check {
        Some(Check::HttpUrl(u)) => format!("GET {u} (2xx within {timeout})"),
        Some(Check::Command(c)) => format!("command `{c}` (exit 0 within {timeout})"),
        None => "unit active only".into(),
    }
}

fn spec_block(spec: &AppSpec) -> Block {
    let mut b = Block::default();
    b.line("unit", spec.unit.clone());
    b.line("health", health_text(spec.health.as_ref()));
    b.line(
        "selector",
        if spec.selector.is_empty() {
            "all hosts".to_string()
        } else {
            spec.selector.clone()
        },
    );
    b.line(
        "settle",
        humantime::format_duration(Duration::from_millis(spec.settle_ms)).to_string(),
    );
    b.line("keep", format!("{} releases per host", spec.keep));
    if !spec.run_as.is_empty() {
        b.line("hooks run as", spec.run_as.clone());
    }
    let opted_out: Vec<&str> = [
        (spec.allow_any_unit, "any unit (--allow-any-unit)"),
        (spec.allow_remote_health, "remote health URL (--allow-remote-health)"),
    ]
    .into_iter()
    .filter_map(|(on, what)| on.then_some(what))
    .collect();
    if !opted_out.is_empty() {
        b.line("opted out", opted_out.join(", "));
    }
    if !spec.signing_keys.is_empty() {
        b.line("signed by one of", spec.signing_keys.join(", "));
    }
    b
}

fn spec_json(spec: &AppSpec) -> Value {
    let h = spec.health.clone().unwrap_or_default();
    let (kind, target) = match h.check {
        Some(Check::HttpUrl(u)) => ("http", u),
        Some(Check::Command(c)) => ("command", c),
        None => ("none", String::new()),
    };
    json!({
        "name": spec.name,
        "unit": spec.unit,
        "selector": spec.selector,
        "health": {"kind": kind, "target": target, "timeout_ms": h.timeout_ms},
        "keep": spec.keep,
        "settle_ms": spec.settle_ms,
        "run_as": spec.run_as,
        "allow_any_unit": spec.allow_any_unit,
        "allow_remote_health": spec.allow_remote_health,
        "signing_keys": spec.signing_keys,
    })
}

/// `app ls`.
pub async fn list(client: &Client, format: Format) -> Result<Report, Error> {
    let apps = client
        .apps()
        .list_apps(ListAppsRequest {})
        .await
        .map_err(|s| client.fail(s))?
        .into_inner()
        .apps;
    Ok(match format {
        Format::Json => Report::json(&Value::Array(apps.iter().map(spec_json).collect())),
        Format::Table => {
            let mut t = Table::new(vec!["NAME", "UNIT", "HEALTH", "SELECTOR", "KEEP"]);
            for a in &apps {
                t.row(vec![
                    a.name.clone(),
                    a.unit.clone(),
                    health_text(a.health.as_ref()),
                    a.selector.clone(),
                    a.keep.to_string(),
                ]);
            }
            let mut r = Report::out(t.render());
            if apps.is_empty() {
                r.stderr =
                    "no apps yet; create one with 'fleetctl app create NAME --unit fleet-app-NAME.service'\n".into();
            }
            r
        }
    })
}

/// `app show`: the definition, the release for new hosts, and per host
/// what it should run and what it runs (drift flagged).
pub async fn show(client: &Client, name: &str, format: Format) -> Result<Report, Error> {
    let status: AppStatus = client
        .apps()
        .get_app(GetAppRequest { name: name.to_string() })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    let spec = status.spec.clone().unwrap_or_default();
    let empty = AppInventory::default();
    let inventory = |id: &str| status.hosts.get(id).unwrap_or(&empty);
    Ok(match format {
        Format::Json => {
            let mut v = spec_json(&spec);
            v["desired_version"] = json!(status.desired_version);
            v["release_for_new_hosts"] = json!(status.desired_version);
            v["drift"] = json!(status.host_states.iter().filter(|h| h.drift).count());
            v["hosts"] = status
                .host_states
                .iter()
                .map(|h| {
                    let mut j = crate::hosts::app_json(inventory(&h.host_id));
                    j["host_id"] = json!(h.host_id);
                    j["hostname"] = json!(h.hostname);
                    j["desired"] = json!(h.desired);
                    j["current"] = json!(h.current);
                    j["connected"] = json!(h.connected);
                    j["drift"] = json!(h.drift);
                    j
                })
                .collect();
            Report::json(&v)
        }
        Format::Table => {
            let mut block = spec_block(&spec);
            if !status.desired_version.is_empty() {
                block.line(
                    "for new hosts",
                    format!("{} (hosts that join get it)", status.desired_version),
                );
            }
            let drifting = status.host_states.iter().filter(|h| h.drift).count();
            if drifting > 0 {
                block.line(
                    "drift",
                    format!(
                        "{drifting} host{} run{} something other than their desired release; they converge through the rollout engine when connected",
                        if drifting == 1 { "" } else { "s" },
                        if drifting == 1 { "s" } else { "" }
                    ),
                );
            }
            let mut out = format!("app {}\n{}", spec.name, block.render());
            if status.host_states.is_empty() {
                out.push_str("\nno host matches or runs it yet; check the selector with 'fleetctl hosts ls'\n");
            } else {
                let now = fleet_proto::now_ms();
                let mut t = Table::new(vec![
                    "HOST", "DESIRED", "CURRENT", "", "PREVIOUS", "UNIT", "PID", "RESTARTS", "HEALTH", "ON DISK",
                ]);
                for h in &status.host_states {
                    let inv = inventory(&h.host_id);
                    let unit = inv.unit.clone().unwrap_or_default();
                    let health = match &inv.last_health {
                        Some(h) => format!(
                            "{} {}",
                            if h.ok { "ok" } else { "FAILED" },
                            output::relative(h.checked_at_ms, now)
                        ),
                        None => "-".into(),
                    };
                    let desired = if h.desired.is_empty() && !status.desired_version.is_empty() {
                        format!("({})", status.desired_version)
                    } else {
                        or_dash(&h.desired)
                    };
                    t.row(vec![
                        crate::rollouts::host_label(&h.host_id, &h.hostname),
                        desired,
                        or_dash(&h.current),
                        match (h.drift, h.connected) {
                            (true, _) => "DRIFT".into(),
                            (false, false) => "offline".into(),
                            _ => String::new(),
                        },
                        or_dash(&inv.previous),
                        if unit.name.is_empty() {
                            "-".into()
                        } else {
                            format!("{}/{}", unit.active_state, unit.sub_state)
                        },
                        unit.main_pid.to_string(),
                        unit.n_restarts.to_string(),
                        health,
                        inv.releases.join(" "),
                    ]);
                }
                out.push('\n');
                out.push_str(&t.render());
            }
            Report::out(out)
        }
    })
}

/// `app history APP`: what was rolled out when, by whom, and how it ended
/// (operator rollouts, rollbacks and the controller's convergence runs).
pub async fn history(client: &Client, name: &str, format: Format) -> Result<Report, Error> {
    client
        .apps()
        .get_app(GetAppRequest { name: name.to_string() })
        .await
        .map_err(|s| client.fail(s))?;
    let rollouts = client
        .rollouts()
        .list_rollouts(fleet_proto::ListRolloutsRequest { app: name.to_string() })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner()
        .rollouts;
    Ok(match format {
        Format::Json => Report::json(&serde_json::Value::Array(
            rollouts.iter().map(crate::rollouts::history_json).collect(),
        )),
        Format::Table => {
            let mut r = Report::out(crate::rollouts::history_table(&rollouts, fleet_proto::now_ms()));
            if rollouts.is_empty() {
                r.stderr = format!(
                    "{name} has no history yet; roll a release out with 'fleetctl rollout {name} --release V'\n"
                );
            }
            r
        }
    })
}

pub(crate) fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// The format of an archive, from its file name.
fn format_of(path: &Path) -> Result<&'static str, Error> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Ok("tar.gz")
    } else if name.ends_with(".tar.zst") || name.ends_with(".tzst") {
        Ok("tar.zst")
    } else {
        Err(Error::Usage(format!(
            "{} is neither .tar.gz nor .tar.zst; releases are gzip or zstd tarballs",
            path.display()
        )))
    }
}

async fn sha256_of(path: &Path, bar: &indicatif::ProgressBar) -> Result<(String, u64), Error> {
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::Failed(format!("cannot read {}: {e}", path.display())))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(|e| Error::Failed(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        size += n as u64;
        bar.inc(n as u64);
    }
    Ok((fleet_proto::transport::hex(ctx.finish().as_ref()), size))
}

/// The progress of `release push` on stderr: hashing, then uploading, in
/// bytes; drawn only on a terminal (scripts and CI logs get none).
fn push_bar(len: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let target = if std::io::stderr().is_terminal() {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    };
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg:>9} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// `release push`: hashes the file, then streams it in chunks.
pub async fn push(client: &Client, args: &PushArgs, format: Format) -> Result<Report, Error> {
    let fmt = format_of(&args.file)?;
    let len = tokio::fs::metadata(&args.file).await.map(|m| m.len()).unwrap_or(0);
    let bar = push_bar(len);
    bar.set_message("hashing");
    let (sha256, size) = sha256_of(&args.file, &bar).await?;
    bar.set_position(0);
    bar.set_message("uploading");
    let version = args.release.get().filter(|v| !v.is_empty()).ok_or_else(|| {
        Error::Usage(format!(
            "say which release this is: --release V (e.g. {} FILE --release 1.4.2)",
            args.app
        ))
    })?;
    let header = ReleaseHeader {
        app: args.app.clone(),
        version: version.clone(),
        sha256: sha256.clone(),
        size,
        metadata: label_map(&args.meta).map_err(Error::Usage)?,
        format: fmt.into(),
        signature: match &args.sign_key {
            Some(key) => Some(crate::keys::sign(key, &args.app, &version, &sha256, args.sequence)?),
            None => None,
        },
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<PushReleaseChunk>(4);
    let path = args.file.clone();
    let sent = bar.clone();
    let reader = tokio::spawn(async move {
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut first = Some(header);
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = f
                .read(&mut buf)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            buf.truncate(n);
            if n == 0 && first.is_none() {
                return Ok::<(), String>(());
            }
            let chunk = PushReleaseChunk {
                header: first.take(),
                data: buf,
            };
            if tx.send(chunk).await.is_err() || n == 0 {
                // The controller answered early (e.g. the same bytes again).
                return Ok(());
            }
            sent.inc(n as u64);
        }
    });
    let pushed = client
        .releases()
        .push_release(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    reader.abort();
    bar.finish_and_clear();
    let pushed = pushed.map_err(|s| client.fail(s))?;
    // The controller says what it did with the bytes (see
    // `fleet_controller::releases::PUSH_OUTCOME`); an older one says nothing.
    let outcome = pushed
        .metadata()
        .get("fleet-push-outcome")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("stored")
        .to_string();
    let release = pushed.into_inner();
    Ok(match format {
        Format::Json => {
            let mut v = release_json(&release);
            v["outcome"] = json!(outcome);
            Report::json(&v)
        }
        Format::Table => {
            let a = release.artifact.clone().unwrap_or_default();
            let what = match outcome.as_str() {
                "unchanged" => "already stored with these bytes",
                "repaired" => {
                    "repaired: the controller's copy was missing or damaged and was replaced with these bytes"
                }
                _ => "stored",
            };
            Report::out(format!(
                "{} {} {what}: {} ({}), sha256 {}\n",
                release.app,
                a.version,
                output::bytes(a.size),
                a.format,
                a.sha256
            ))
        }
    })
}

fn release_json(r: &Release) -> Value {
    let a = r.artifact.clone().unwrap_or_default();
    json!({
        "app": r.app,
        "version": a.version,
        "sha256": a.sha256,
        "size": a.size,
        "format": a.format,
        "pushed_by": r.pushed_by,
        "pushed_at_ms": r.pushed_at_ms,
        "metadata": output::sorted(&r.metadata),
        "signed_by": a.signature.as_ref().map(|s| s.key.clone()),
        "sequence": a.signature.as_ref().map(|s| s.sequence),
    })
}

/// `release ls APP`.
pub async fn releases(client: &Client, app: &str, format: Format) -> Result<Report, Error> {
    let list = client
        .releases()
        .list_releases(ListReleasesRequest { app: app.to_string() })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner()
        .releases;
    Ok(match format {
        Format::Json => Report::json(&Value::Array(list.iter().map(release_json).collect())),
        Format::Table => {
            let now = fleet_proto::now_ms();
            let mut t = Table::new(vec!["VERSION", "SIZE", "FORMAT", "SHA256", "PUSHED", "BY", "META"]);
            for r in &list {
                let a = r.artifact.clone().unwrap_or_default();
                t.row(vec![
                    a.version,
                    output::bytes(a.size),
                    a.format,
                    a.sha256.chars().take(12).collect(),
                    output::relative(r.pushed_at_ms, now),
                    r.pushed_by.clone(),
                    output::labels(&r.metadata),
                ]);
            }
            let mut rep = Report::out(t.render());
            if list.is_empty() {
                rep.stderr =
                    format!("{app} has no releases; push one with 'fleetctl release push {app} FILE --release V'\n");
            }
            rep
        }
    })
}

/// `release rm`: deletes a release the controller finds unused.
pub async fn delete_release(client: &Client, app: &str, version: &str, format: Format) -> Result<Report, Error> {
    let r = client
        .releases()
        .delete_release(DeleteReleaseRequest {
            app: app.to_string(),
            version: version.to_string(),
        })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    let release = r.release.unwrap_or_default();
    let a = release.artifact.clone().unwrap_or_default();
    Ok(match format {
        Format::Json => {
            let mut v = release_json(&release);
            v["artifact_removed"] = json!(r.artifact_removed);
            Report::json(&v)
        }
        Format::Table => {
            let artifact = if r.artifact_removed {
                format!("its artifact sha256 {} was removed", a.sha256)
            } else {
                format!(
                    "its artifact sha256 {} stays: another release has the same bytes",
                    a.sha256
                )
            };
            Report::out(format!(
                "{} {} deleted; {artifact}\n",
                output::escape(&release.app),
                output::escape(&a.version)
            ))
        }
    })
}

/// `release show APP VERSION`.
pub async fn release(client: &Client, app: &str, version: &str, format: Format) -> Result<Report, Error> {
    let r = client
        .releases()
        .get_release(GetReleaseRequest {
            app: app.to_string(),
            version: version.to_string(),
        })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    Ok(match format {
        Format::Json => Report::json(&release_json(&r)),
        Format::Table => {
            let a = r.artifact.clone().unwrap_or_default();
            let mut b = Block::default();
            b.line("app", r.app.clone());
            b.line("version", a.version);
            b.line("sha256", a.sha256);
            b.line("size", output::bytes(a.size));
            b.line("format", a.format);
            b.line("pushed", output::timestamp(r.pushed_at_ms));
            b.line("pushed by", r.pushed_by.clone());
            b.line(
                "signed by",
                match &a.signature {
                    Some(s) => format!("{} (sequence {})", s.key, s.sequence),
                    None => "nobody (unsigned)".into(),
                },
            );
            for (k, v) in output::sorted(&r.metadata) {
                b.line(format!("meta {k}"), v);
            }
            Report::out(b.render())
        }
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_come_from_the_file_name() {
        assert_eq!(format_of(Path::new("api.tar.gz")).expect("gz"), "tar.gz");
        assert_eq!(format_of(Path::new("/x/api-1.2.tgz")).expect("tgz"), "tar.gz");
        assert_eq!(format_of(Path::new("api.tar.zst")).expect("zst"), "tar.zst");
        assert!(format_of(Path::new("api.zip")).is_err());
    }

    #[test]
    fn health_flags_are_exclusive() {
        let mut spec = AppSpec::default();
        let args = AppArgs {
            health_http: Some("http://127.0.0.1:1/health".into()),
            health_command: Some("true".into()),
            ..Default::default()
        };
        assert!(matches!(apply(&mut spec, &args), Err(Error::Usage(_))));
        let args = AppArgs {
            no_health: true,
            ..Default::default()
        };
        apply(&mut spec, &args).expect("no health");
        assert!(spec.health.expect("health").check.is_none());
    }
}
