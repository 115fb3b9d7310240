//! `fleetctl app …`: apps, their definitions, what each host should run and
//! runs, and their history (`AppService`).

use std::time::Duration;

use fleet_proto::health_check::Check;
use fleet_proto::{AppInventory, AppSpec, AppStatus, GetAppRequest, HealthCheck, ListAppsRequest};
use serde_json::{json, Value};

use crate::args::AppArgs;
use crate::client::Client;
use crate::error::Error;
use crate::output::{self, Block, Format, Report, Table};

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
        .list_rollouts(fleet_proto::ListRolloutsRequest {
            app: name.to_string(),
            // Counts are all a history shows.
            summaries: true,
        })
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
#[cfg(test)]
mod tests {
    use super::*;

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
