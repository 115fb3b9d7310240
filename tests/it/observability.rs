//! What a monitoring setup reads: the controller's metrics after a good and
//! a failed rollout, and the sample alert rules and Grafana dashboard in
//! packaging/, whose every expression must parse as PromQL and name only
//! metrics the running controller serves.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::releases::assert_success;
use crate::rollouts::Cluster;

/// Every sample name the exposition can carry, from its `# TYPE` lines
/// (a family shows its TYPE before it has samples).
fn served_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_count", "_sum"] {
                    names.insert(format!("{name}{s}"));
                }
            }
            "info" => {
                names.insert(format!("{name}_info"));
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// The value of the sample `series` (name and labels as printed).
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// The metric names an expression uses: `fleet_*`, `process_*` and `up`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' {
            // Skip label values.
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += 1;
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &expr[start..i];
            if word.starts_with("fleet_") || word.starts_with("process_") || word == "up" {
                out.push(word.to_string());
            }
            continue;
        }
        i += 1;
    }
    out
}

/// Checks one expression: it parses, and names only served metrics.
fn check_expr(where_: &str, expr: &str, served: &BTreeSet<String>) {
    // Grafana's variables, as Grafana fills them in before querying.
    let expr = expr
        .replace("$__rate_interval", "5m")
        .replace("$job", "fleet-controller");
    if let Err(e) = promql_parser::parser::parse(&expr) {
        panic!("{where_}: `{expr}` is not PromQL: {e}");
    }
    let names = metric_names(&expr);
    assert!(!names.is_empty(), "{where_}: `{expr}` names no metric");
    for name in names {
        // `up` is Prometheus's own, for every scrape target.
        assert!(
            name == "up" || served.contains(&name),
            "{where_}: `{expr}` reads {name}, which the controller does not serve"
        );
    }
}

#[test]
fn metrics_alert_rules_and_dashboard_agree_with_a_running_controller() {
    let c = Cluster::start(2);
    c.push("1.0.0", &[]);
    assert_success(
        &c.rollout(&["--release", "1.0.0", "--batch", "100%", "--wait"]),
        "rollout 1.0.0",
    );
    c.push("2.0.0", &[c.ports[0]]);
    let bad = c.rollout(&["--release", "2.0.0", "--batch", "100%", "--wait"]);
    assert!(!bad.status.success(), "the second rollout is rolled back");
    let text = c.fleet.controller.metrics_text();

    // Rollouts started and ended by kind and outcome, hosts by status, the
    // phases' durations, reverts by cause, the process's own figures.
    for (series, want) in [
        ("fleet_rollouts_started_total{kind=\"rollout\"}", 2.0),
        ("fleet_rollouts_ended_total{kind=\"rollout\",state=\"succeeded\"}", 1.0),
        (
            "fleet_rollouts_ended_total{kind=\"rollout\",state=\"rolled_back\"}",
            1.0,
        ),
        ("fleet_hosts{status=\"connected\"}", 2.0),
        ("fleet_hosts{status=\"disconnected\"}", 0.0),
        (
            "fleet_host_tasks_ended_total{outcome=\"reverted\",cause=\"health\"}",
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in:\n{text}");
    }
    // Every host fetched twice and rolled back once at most: each phase's
    // count is at least the hosts' first deploy.
    for phase in ["fetch", "unpack", "swap", "restart", "health"] {
        let series = format!("fleet_deploy_phase_duration_seconds_count{{phase=\"{phase}\"}}");
        let n = sample(&text, &series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        assert!(n >= 2.0, "{series} = {n}");
    }
    // Heartbeats every second, from every host: each one taken in is timed.
    let beats = sample(&text, "fleet_heartbeat_delay_seconds_count").expect("fleet_heartbeat_delay_seconds_count");
    assert!(beats >= 2.0, "heartbeats timed: {beats}");
    let rss = sample(&text, "process_resident_memory_bytes").expect("process_resident_memory_bytes");
    assert!(rss > 1e6 && rss < 1e9, "resident {rss}");
    let fds = sample(&text, "process_open_fds").expect("process_open_fds");
    let max = sample(&text, "process_max_fds").expect("process_max_fds");
    assert!(fds > 5.0 && max >= fds, "fds {fds} of {max}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let started = sample(&text, "process_start_time_seconds").expect("process_start_time_seconds");
    assert!(
        (now - started) > 0.0 && (now - started) < 600.0,
        "started {started}, now {now}"
    );
    assert!(
        sample(&text, "process_cpu_seconds_total").is_some_and(|s| s > 0.0),
        "{text}"
    );

    let served = served_names(&text);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("packaging");

    // The alert rules: Prometheus's rule-file shape, every expression PromQL.
    let rules_text = std::fs::read_to_string(root.join("prometheus/fleet-alerts.yml")).expect("alert rules");
    let docs = yaml_rust2::YamlLoader::load_from_str(&rules_text).expect("the rules file is YAML");
    let groups = docs[0]["groups"].as_vec().expect("groups");
    let mut alerts = BTreeSet::new();
    for g in groups {
        assert!(g["name"].as_str().is_some(), "a group has a name");
        for r in g["rules"].as_vec().expect("rules") {
            let name = r["alert"].as_str().expect("every rule is an alert with a name");
            assert!(alerts.insert(name.to_string()), "alert {name} twice");
            let expr = r["expr"].as_str().unwrap_or_else(|| panic!("{name} has no expr"));
            check_expr(name, expr, &served);
            assert!(
                matches!(r["labels"]["severity"].as_str(), Some("page" | "warn" | "info")),
                "{name}: severity page, warn or info"
            );
            assert!(r["annotations"]["summary"].as_str().is_some(), "{name}: a summary");
            if let Some(f) = r["for"].as_str() {
                assert!(humantime::parse_duration(f).is_ok(), "{name}: for {f}");
            }
        }
    }
    for must in [
        "FleetControllerDown",
        "FleetStoreUnhealthy",
        "FleetRolloutFailed",
        "FleetDeployReverts",
    ] {
        assert!(alerts.contains(must), "no {must} alert");
    }

    // The Grafana dashboard: its model's required fields, and every
    // panel's queries.
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("grafana/fleet-dashboard.json")).expect("dashboard"))
            .expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "fleet-controller");
    assert!(dash["schemaVersion"].as_u64().is_some() && dash["title"].as_str().is_some());
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(vars.contains(&"datasource") && vars.contains(&"job"), "{vars:?}");
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("a panel title");
        assert!(ids.insert(p["id"].as_u64().expect("a panel id")), "{title}: id twice");
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].as_u64().is_some(), "{title}: gridPos.{k}");
        }
        assert!(
            p["gridPos"]["x"].as_u64().unwrap_or(99) + p["gridPos"]["w"].as_u64().unwrap_or(99) <= 24,
            "{title}: fits the 24-column grid"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            check_expr(title, t["expr"].as_str().expect("expr"), &served);
        }
    }
}

#[test]
fn the_name_scanner_skips_label_values_and_functions() {
    assert_eq!(
        metric_names(r#"sum by (le) (rate(fleet_x_bucket{job="fleet_not_a_metric"}[5m])) / up"#),
        ["fleet_x_bucket", "up"]
    );
}
