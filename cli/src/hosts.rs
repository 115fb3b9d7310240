//! `fleetctl hosts ls|show|label|rm`: enrolled hosts (`HostService`).
//!
//! The JSON shape of a host ([`host_json`]) is a contract: end-to-end tests
//! and operators' scripts parse it, so its field names do not change.

use std::time::Duration;

use fleet_proto::{
    AppInventory, GetHostRequest, Host, HostStatus, LabelHostRequest, ListHostsRequest, PruneHostsRequest,
    RemoveHostRequest, RemoveHostResponse,
};
use serde_json::{json, Value};

use crate::args::{label_map, Label};
use crate::client::Client;
use crate::error::Error;
use crate::output::{self, Block, Format, Report, Table};

/// Hosts asked for per `ListHosts` answer; the controller also ends a page
/// before 2 MiB (about 4,000 hosts). Each page costs the controller a read
/// of every host, so fewer pages are faster: `hosts ls` of 19,700 hosts
/// took 4.1 s in pages of 1,000.
const PAGE_SIZE: u32 = fleet_proto::limits::MAX_PAGE_SIZE;

/// Every host matching `selector`, a page at a time (one answer of 20,000
/// hosts would pass gRPC's usual answer limit).
pub async fn all(client: &Client, selector: &str) -> Result<Vec<Host>, Error> {
    let mut hosts = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListHostsRequest {
            selector: selector.to_string(),
            page_size: PAGE_SIZE,
            page_token,
        };
        let page = client
            .hosts()
            .list_hosts(request)
            .await
            .map_err(|s| client.fail(s))?
            .into_inner();
        hosts.extend(page.hosts);
        if page.next_page_token.is_empty() {
            return Ok(hosts);
        }
        page_token = page.next_page_token;
    }
}

/// Lists hosts, optionally filtered by a label selector.
pub async fn list(client: &Client, selector: Option<&str>, format: Format) -> Result<Report, Error> {
    let hosts = all(client, selector.unwrap_or_default()).await?;
    Ok(match format {
        Format::Json => Report::json(&Value::Array(hosts.iter().map(host_json).collect())),
        Format::Table => Report::out(host_table(&hosts, fleet_proto::now_ms())),
    })
}

/// Shows one host: id, unique id prefix or hostname (the controller resolves it).
pub async fn show(client: &Client, id: &str, format: Format) -> Result<Report, Error> {
    let host = get(client, id).await?;
    Ok(match format {
        Format::Json => Report::json(&host_json(&host)),
        Format::Table => Report::out(host_block(&host, fleet_proto::now_ms())),
    })
}

/// Sets and removes labels; reports the labels the host ends up with.
/// The `hosts label` request, checked against the contract's limits before
/// dialling (a bad label is a usage error, exit 2).
pub fn label_request(id: &str, set: &[Label], remove: &[String]) -> Result<LabelHostRequest, Error> {
    if set.is_empty() && remove.is_empty() {
        return Err(Error::Usage(
            "nothing to change: give KEY=VALUE labels to set, or --remove KEY".into(),
        ));
    }
    let set = label_map(set).map_err(Error::Usage)?;
    if let Some(key) = remove.iter().find(|k| set.contains_key(*k)) {
        return Err(Error::Usage(format!(
            "label '{key}' is both set and removed; give it once"
        )));
    }
    let request = LabelHostRequest {
        id: id.to_string(),
        set,
        remove: remove.to_vec(),
    };
    fleet_proto::limits::check_label_host(&request).map_err(|e| Error::Usage(e.to_string()))?;
    Ok(request)
}

/// `hosts label`: sends a request made by [`label_request`].
pub async fn label(client: &Client, request: LabelHostRequest, format: Format) -> Result<Report, Error> {
    let host = client
        .hosts()
        .label_host(request)
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    Ok(match format {
        Format::Json => Report::json(&host_json(&host)),
        Format::Table => {
            let lines: String = output::sorted(&host.labels)
                .iter()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect();
            let mut report = Report::out(lines);
            if host.labels.is_empty() {
                report.stderr = format!("host {} now has no labels\n", host.id);
            }
            report
        }
    })
}

pub use crate::confirm::Confirm;

/// Removes a host, asking first when `confirm` says so.
pub async fn remove(client: &Client, id: &str, confirm: Confirm, format: Format) -> Result<Report, Error> {
    let target = if confirm == Confirm::Skip {
        id.to_string()
    } else {
        let host = get(client, id).await?;
        let question = format!("remove host {} ({})? [y/N] ", host.id, hostname(&host));
        confirm.check(question, format!("host {} not removed", host.id)).await?;
        // The full id, so the host confirmed is the host removed.
        host.id
    };
    let request = RemoveHostRequest { id: target };
    let removed = client
        .hosts()
        .remove_host(request)
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    Ok(match format {
        Format::Json => Report::json(&json!({
            "host_id": removed.host_id,
            "revoked_certificates": removed.revoked_certificates,
            "stream_cut": removed.stream_cut,
        })),
        Format::Table => Report::out(removed_line(&removed)),
    })
}

/// `hosts prune --disconnected-for D [--dry-run]`.
pub async fn prune(
    client: &Client,
    disconnected_for: Duration,
    dry_run: bool,
    confirm: Confirm,
    format: Format,
) -> Result<Report, Error> {
    if !dry_run && confirm == Confirm::Ask {
        // Show what would go, then ask.
        let stale = client
            .hosts()
            .prune_hosts(PruneHostsRequest {
                disconnected_for_ms: disconnected_for.as_millis() as u64,
                dry_run: true,
            })
            .await
            .map_err(|s| client.fail(s))?
            .into_inner()
            .removed;
        if stale.is_empty() {
            return Ok(Report::out(format!(
                "no host has been disconnected for {} or more",
                humantime::format_duration(disconnected_for)
            )));
        }
        let names: Vec<String> = stale.iter().map(|h| format!("{} ({})", h.id, hostname(h))).collect();
        confirm
            .check(
                format!(
                    "remove {} host{} and revoke their certificates: {}? [y/N] ",
                    stale.len(),
                    if stale.len() == 1 { "" } else { "s" },
                    names.join(", ")
                ),
                "no host removed".into(),
            )
            .await?;
    }
    let removed = client
        .hosts()
        .prune_hosts(PruneHostsRequest {
            disconnected_for_ms: disconnected_for.as_millis() as u64,
            dry_run,
        })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner()
        .removed;
    Ok(match format {
        Format::Json => Report::json(&json!({
            "dry_run": dry_run,
            "removed": removed.iter().map(|h| json!({
                "host_id": h.id,
                "hostname": hostname(h),
                "last_seen_ms": h.last_seen_ms,
            })).collect::<Vec<_>>(),
        })),
        Format::Table => {
            let verb = if dry_run { "would remove" } else { "removed" };
            let mut out = format!(
                "{verb} {} host{} disconnected for {} or more\n",
                removed.len(),
                if removed.len() == 1 { "" } else { "s" },
                humantime::format_duration(disconnected_for)
            );
            let now = fleet_proto::now_ms();
            for h in &removed {
                out.push_str(&format!(
                    "  {}  last seen {}\n",
                    crate::rollouts::host_label(&h.id, hostname(h)),
                    output::relative(h.last_seen_ms, now)
                ));
            }
            Report::out(out)
        }
    })
}

fn removed_line(r: &RemoveHostResponse) -> String {
    let stream = if r.stream_cut {
        "live stream cut"
    } else {
        "no live stream"
    };
    format!(
        "removed host {}: {} certificate(s) revoked, {stream}",
        r.host_id, r.revoked_certificates
    )
}

/// Prints `question` on stderr and reads a yes/no answer from stdin (blocking).
async fn get(client: &Client, id: &str) -> Result<Host, Error> {
    let request = GetHostRequest { id: id.to_string() };
    client
        .hosts()
        .get_host(request)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| client.fail(s))
}

fn hostname(host: &Host) -> &str {
    host.facts.as_ref().map(|f| f.hostname.as_str()).unwrap_or_default()
}

fn status(host: &Host) -> &'static str {
    match HostStatus::try_from(host.status) {
        Ok(HostStatus::Connected) => "connected",
        Ok(HostStatus::Uninstalled) => "uninstalled",
        _ => "disconnected",
    }
}

/// A host as JSON: the shape `hosts ls` (one per element) and `hosts show`
/// print. Facts and metrics are flattened; metrics are 0 before the first
/// heartbeat.
pub fn host_json(host: &Host) -> Value {
    let facts = host.facts.clone().unwrap_or_default();
    let metrics = host.metrics.unwrap_or_default();
    let apps = host.inventory.as_ref().map(|i| i.apps.as_slice()).unwrap_or_default();
    json!({
        "id": host.id,
        "hostname": facts.hostname,
        "labels": output::sorted(&host.labels),
        "status": status(host),
        "last_seen_ms": host.last_seen_ms,
        "uninstalled_at_ms": host.uninstalled_at_ms,
        "agent_version": facts.agent_version,
        "os": facts.os,
        "kernel": facts.kernel,
        "boot_id": facts.boot_id,
        "cpus": facts.cpus,
        "cpu_percent": metrics.cpu_percent,
        "load1": metrics.load1,
        "memory_used_bytes": metrics.memory_used_bytes,
        "memory_total_bytes": metrics.memory_total_bytes,
        "disk_free_bytes": metrics.disk_free_bytes,
        "disk_total_bytes": metrics.disk_total_bytes,
        "uptime_secs": metrics.uptime_secs,
        "agent_rss_bytes": metrics.agent_rss_bytes,
        "enrolled_at_ms": host.enrolled_at_ms,
        "cert_not_after_ms": host.cert_not_after_ms,
        "token_id": host.token_id,
        "remote_addr": host.remote_addr,
        "same_hostname": host.same_hostname,
        "inventory": apps.iter().map(app_json).collect::<Vec<_>>(),
    })
}

/// One app of a host's inventory; `unit` and `last_health` only when known.
pub fn app_json(app: &AppInventory) -> Value {
    let mut v = json!({
        "app": app.app,
        "current": app.current,
        "previous": app.previous,
        "releases": app.releases,
    });
    if let Some(unit) = &app.unit {
        v["unit"] = json!({
            "name": unit.name,
            "active_state": unit.active_state,
            "sub_state": unit.sub_state,
            "n_restarts": unit.n_restarts,
            "main_pid": unit.main_pid,
        });
    }
    if let Some(health) = &app.last_health {
        v["last_health"] = json!({
            "ok": health.ok,
            "detail": health.detail,
            "checked_at_ms": health.checked_at_ms,
        });
    }
    v
}

fn host_table(hosts: &[Host], now_ms: i64) -> String {
    let mut table = Table::new(vec![
        "ID",
        "HOSTNAME",
        "LABELS",
        "STATUS",
        "LAST SEEN",
        "VERSION",
        "CPU",
        "MEM",
    ]);
    for host in hosts {
        let facts = host.facts.clone().unwrap_or_default();
        let (cpu, mem) = match &host.metrics {
            Some(m) => (
                format!("{:.0}%", m.cpu_percent),
                output::bytes_of(m.memory_used_bytes, m.memory_total_bytes),
            ),
            None => ("-".into(), "-".into()),
        };
        let name = match host.same_hostname.len() {
            0 => facts.hostname,
            n => format!("{} (shared with {n})", facts.hostname),
        };
        table.row(vec![
            host.id.chars().take(12).collect(),
            name,
            output::labels(&host.labels),
            status(host).into(),
            output::relative_or(host.last_seen_ms, now_ms, "never"),
            facts.agent_version,
            cpu,
            mem,
        ]);
    }
    table.render()
}

fn host_block(host: &Host, now_ms: i64) -> String {
    let facts = host.facts.clone().unwrap_or_default();
    let mut b = Block::default();
    b.line("id", &host.id);
    b.line("hostname", &facts.hostname);
    if !host.same_hostname.is_empty() {
        b.line(
            "same_hostname",
            format!(
                "{} (another machine uses this hostname; address these hosts by id)",
                host.same_hostname.join(", ")
            ),
        );
    }
    let status = match (status(host), host.remote_addr.is_empty()) {
        ("connected", false) => format!("connected from {}", host.remote_addr),
        ("uninstalled", _) => format!(
            "uninstalled {} (its agent's package was removed; 'fleetctl hosts rm {}' forgets it)",
            output::relative_or(host.uninstalled_at_ms, now_ms, "at an unknown time"),
            fleet_proto::rollout::short_id(&host.id)
        ),
        (s, _) => s.to_string(),
    };
    b.line("status", status);
    b.line("last_seen", output::relative_or(host.last_seen_ms, now_ms, "never"));
    b.line("labels", output::labels(&host.labels));
    b.line("agent_version", &facts.agent_version);
    b.line("os", &facts.os);
    b.line("kernel", &facts.kernel);
    b.line("boot_id", &facts.boot_id);
    b.line("cpus", facts.cpus.to_string());
    b.line("enrolled_at", output::when(host.enrolled_at_ms, now_ms, "unknown"));
    b.line("token_id", &host.token_id);
    b.line(
        "cert_not_after",
        output::when(host.cert_not_after_ms, now_ms, "unknown"),
    );
    match &host.metrics {
        None => b.line("metrics", "none yet (no heartbeat received)"),
        Some(m) => {
            b.line("cpu", format!("{:.0}%", m.cpu_percent));
            b.line("load", format!("{:.2} {:.2} {:.2}", m.load1, m.load5, m.load15));
            b.line("memory", output::bytes_of(m.memory_used_bytes, m.memory_total_bytes));
            b.line(
                "disk_free",
                format!(
                    "{} of {}",
                    output::bytes(m.disk_free_bytes),
                    output::bytes(m.disk_total_bytes)
                ),
            );
            b.line(
                "uptime",
                humantime::format_duration(Duration::from_secs(m.uptime_secs)).to_string(),
            );
            b.line("agent_rss", output::bytes(m.agent_rss_bytes));
        }
    }
    let apps = host.inventory.as_ref().map(|i| i.apps.as_slice()).unwrap_or_default();
    if apps.is_empty() {
        b.line("inventory", "no apps");
    }
    for app in apps {
        b.line(format!("app {}", app.app), describe_app(app, now_ms));
    }
    b.render()
}

fn describe_app(app: &AppInventory, now_ms: i64) -> String {
    let or_none = |s: &str| {
        if s.is_empty() {
            "none".to_string()
        } else {
            s.to_string()
        }
    };
    let mut parts = vec![
        format!("current {}", or_none(&app.current)),
        format!("previous {}", or_none(&app.previous)),
        format!("releases [{}]", app.releases.join(" ")),
    ];
    if let Some(unit) = &app.unit {
        parts.push(format!(
            "unit {} {}/{} ({} restarts)",
            unit.name, unit.active_state, unit.sub_state, unit.n_restarts
        ));
    }
    if let Some(h) = &app.last_health {
        let verdict = if h.ok { "ok" } else { "failing" };
        parts.push(format!(
            "health {verdict} {}",
            output::relative_or(h.checked_at_ms, now_ms, "")
        ));
    }
    parts.join(", ").trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::{HealthResult, HostFacts, HostMetrics, Inventory, UnitState};

    const GIB: u64 = 1024 * 1024 * 1024;

    fn host(with_metrics: bool) -> Host {
        Host {
            id: "0123456789abcdef0123".into(),
            labels: [("role", "api"), ("env", "prod")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            facts: Some(HostFacts {
                hostname: "web-1".into(),
                agent_version: "0.1.0".into(),
                os: "Ubuntu 24.04".into(),
                kernel: "6.8.0".into(),
                boot_id: "b00t".into(),
                cpus: 2,
                memory_total_bytes: 4 * GIB,
            }),
            status: HostStatus::Connected as i32,
            last_seen_ms: 10_000,
            metrics: with_metrics.then_some(HostMetrics {
                load1: 0.5,
                load5: 0.4,
                load15: 0.3,
                cpu_percent: 12.4,
                memory_used_bytes: GIB * 12 / 10,
                memory_total_bytes: GIB * 38 / 10,
                disk_free_bytes: 10 * GIB,
                disk_total_bytes: 50 * GIB,
                uptime_secs: 3600,
                agent_rss_bytes: 5 * 1024 * 1024,
            }),
            enrolled_at_ms: 1_000,
            token_id: "jt1".into(),
            cert_not_after_ms: 1_000 + 7 * 86_400_000,
            inventory: Some(Inventory {
                apps: vec![AppInventory {
                    app: "api-service".into(),
                    releases: vec!["1.4.1".into(), "1.4.2".into()],
                    current: "1.4.2".into(),
                    previous: "1.4.1".into(),
                    unit: Some(UnitState {
                        name: "api-service.service".into(),
                        active_state: "active".into(),
                        sub_state: "running".into(),
                        n_restarts: 0,
                        main_pid: 42,
                    }),
                    last_health: Some(HealthResult {
                        ok: true,
                        detail: "200".into(),
                        checked_at_ms: 9_000,
                    }),
                }],
                running_tasks: Vec::new(),
            }),
            remote_addr: "127.0.0.1:5555".into(),
            same_hostname: Vec::new(),
            uninstalled_at_ms: 0,
        }
    }

    #[test]
    fn json_shape_is_the_contract() {
        let v = host_json(&host(true));
        let mut keys: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut want = vec![
            "id",
            "hostname",
            "labels",
            "status",
            "last_seen_ms",
            "uninstalled_at_ms",
            "agent_version",
            "os",
            "kernel",
            "boot_id",
            "cpus",
            "cpu_percent",
            "load1",
            "memory_used_bytes",
            "memory_total_bytes",
            "disk_free_bytes",
            "disk_total_bytes",
            "uptime_secs",
            "agent_rss_bytes",
            "enrolled_at_ms",
            "cert_not_after_ms",
            "token_id",
            "remote_addr",
            "same_hostname",
            "inventory",
        ];
        want.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(v["id"], "0123456789abcdef0123");
        assert_eq!(v["hostname"], "web-1");
        assert_eq!(v["labels"], json!({"env": "prod", "role": "api"}));
        assert_eq!(v["status"], "connected");
        assert_eq!(v["cpus"], 2);
        assert_eq!(v["cpu_percent"], 12.4);
        assert_eq!(v["memory_total_bytes"], GIB * 38 / 10);
        assert!(v["last_seen_ms"].is_i64() && v["uptime_secs"].is_u64() && v["load1"].is_f64());
        let app = &v["inventory"][0];
        assert_eq!(app["app"], "api-service");
        assert_eq!(app["current"], "1.4.2");
        assert_eq!(app["releases"], json!(["1.4.1", "1.4.2"]));
        assert_eq!(app["unit"]["active_state"], "active");
        assert_eq!(app["last_health"]["ok"], true);
    }

    #[test]
    fn json_before_first_heartbeat_has_zero_metrics() {
        let mut h = host(false);
        h.status = HostStatus::Disconnected as i32;
        h.inventory = None;
        let v = host_json(&h);
        assert_eq!(v["status"], "disconnected");
        assert_eq!(v["cpu_percent"], 0.0);
        assert_eq!(v["memory_used_bytes"], 0);
        assert_eq!(v["inventory"], json!([]));
        let bare = host_json(&Host::default());
        assert_eq!(bare["hostname"], "");
        assert_eq!(bare["status"], "disconnected");
    }

    #[test]
    fn an_uninstalled_host_says_so_and_how_to_forget_it() {
        let mut h = host(false);
        h.status = HostStatus::Uninstalled as i32;
        h.uninstalled_at_ms = 1_000;
        let v = host_json(&h);
        assert_eq!(v["status"], "uninstalled");
        assert_eq!(v["uninstalled_at_ms"], 1_000);
        let shown = host_block(&h, 61_000);
        assert!(shown.contains("uninstalled 1m ago"), "{shown}");
        assert!(shown.contains("fleetctl hosts rm"), "{shown}");
    }

    #[test]
    fn a_shared_hostname_is_marked() {
        let mut twin = host(false);
        twin.same_hostname = vec!["fedcba9876543210fedc".into()];
        let table = host_table(&[host(false), twin.clone()], 13_000);
        let lines: Vec<&str> = table.lines().collect();
        assert!(!lines[1].contains("shared"), "{table}");
        assert!(lines[2].contains("web-1 (shared with 1)"), "{table}");
        assert_eq!(host_json(&twin)["same_hostname"], json!(["fedcba9876543210fedc"]));
        let block = host_block(&twin, 13_000);
        assert!(block.contains("fedcba9876543210fedc"), "{block}");
    }

    #[test]
    fn table_columns() {
        let table = host_table(&[host(true), host(false)], 13_000);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("ID "), "{table}");
        let row: Vec<&str> = lines[1].split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
        assert_eq!(
            row,
            [
                "0123456789ab",
                "web-1",
                "env=prod,role=api",
                "connected",
                "3s ago",
                "0.1.0",
                "12%",
                "1.2/3.8 GiB"
            ]
        );
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(row[row.len() - 2..], ["-", "-"], "{table}");
    }

    #[test]
    fn block_shows_facts_metrics_and_apps() {
        // Alignment depends on the longest key; compare with spaces collapsed.
        let text = host_block(&host(true), 13_000)
            .split(' ')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        for want in [
            "id: 0123456789abcdef0123",
            "hostname: web-1",
            "status: connected from 127.0.0.1:5555",
            "labels: env=prod,role=api",
            "memory: 1.2/3.8 GiB",
            "cert_not_after: 1970-01-08T00:00:01Z (in 6d)",
            "app api-service: current 1.4.2, previous 1.4.1, releases [1.4.1 1.4.2]",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let text = host_block(&host(false), 13_000);
        assert!(text.contains("none yet"), "{text}");
    }

    #[test]
    fn removal_line() {
        let r = RemoveHostResponse {
            host_id: "h1".into(),
            revoked_certificates: 2,
            stream_cut: true,
        };
        assert_eq!(
            removed_line(&r),
            "removed host h1: 2 certificate(s) revoked, live stream cut"
        );
        let r = RemoveHostResponse { stream_cut: false, ..r };
        assert!(removed_line(&r).ends_with("no live stream"));
    }
}
