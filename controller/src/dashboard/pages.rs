//! The dashboard's pages, rendered from what the store and the registry
//! hold. Pure: every function takes records and gives HTML (maud escapes
//! every value it is given, so a hostile hostname, label or hook output is
//! text, never markup).

use std::collections::HashMap;

use fleet_proto::{
    AppSpec, AppStatus, AuditEntry, FleetEvent, Host, HostState, HostStatus, Release, Rollout, RolloutBatch,
    RolloutState,
};
use maud::{html, Markup, DOCTYPE};

use crate::fleet::host_list_key;
use crate::paging;

/// Hosts on one page of the host list (20,000 rows took a browser seconds
/// to draw, again at every live refresh).
pub const HOSTS_PER_PAGE: usize = 500;

/// Who is looking: shown in the header.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// Operator name.
    pub name: String,
    /// Role word.
    pub role: String,
}

/// Where a page's `<main>` gets its live updates from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live<'a> {
    /// Nothing: a static page.
    No,
    /// Reload `<main>` when one of these event kinds arrives on the fleet's
    /// event stream (empty: any).
    Refresh(&'a str),
    /// Reload `<main>` on every event of this rollout.
    Rollout(&'a str),
    /// Prepend each event's row to the table.
    Append,
}

/// A whole page: the header, the navigation, and `main`.
pub fn page(title: &str, viewer: &Viewer, live: Live<'_>, main: Markup) -> Markup {
    let (source, mode, kinds) = match live {
        Live::No => (String::new(), "", ""),
        Live::Refresh(kinds) => ("/ui/sse/events".to_string(), "refresh", kinds),
        Live::Rollout(id) => (format!("/ui/sse/rollouts/{id}"), "refresh", ""),
        Live::Append => ("/ui/sse/events".to_string(), "append", ""),
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "fleet · " (title) }
                link rel="stylesheet" href="/ui/style.css";
                script src="/ui/app.js" defer {}
            }
            body {
                header {
                    nav {
                        a.brand href="/ui/hosts" { "fleet" }
                        a href="/ui/hosts" { "Hosts" }
                        a href="/ui/apps" { "Apps" }
                        a href="/ui/rollouts" { "Rollouts" }
                        a href="/ui/events" { "Events" }
                        a href="/ui/audit" { "Audit" }
                        span.who { (viewer.name) " (" (viewer.role) ") · " a href="/ui/logout" { "sign out" } }
                    }
                }
                main id="main" data-live=(source) data-mode=(mode) data-kinds=(kinds) {
                    (main)
                }
            }
        }
    }
}

/// The sign-in page.
pub fn login(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "fleet · sign in" }
                link rel="stylesheet" href="/ui/style.css";
            }
            body {
                main.login {
                    h1 { "fleet" }
                    p { "Sign in with an operator token (any role can read): "
                        code { "fleetctl operator token create NAME --ttl 12h" } }
                    @if let Some(e) = error {
                        p.error id="login-error" { (e) }
                    }
                    form method="post" action="/ui/login" {
                        label for="token" { "Operator token" }
                        input type="password" id="token" name="token" autocomplete="off" required;
                        button type="submit" id="sign-in" { "Sign in" }
                    }
                }
            }
        }
    }
}

/// A page that names what was not found.
pub fn not_found(what: &str) -> Markup {
    html! {
        h1 { "Not found" }
        p.error { (what) }
    }
}

fn ago(at_ms: i64, now_ms: i64) -> String {
    if at_ms <= 0 {
        return "never".into();
    }
    let s = (now_ms - at_ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn utc(at_ms: i64) -> String {
    match u64::try_from(at_ms) {
        Ok(ms) if ms > 0 => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
        }
        _ => "-".into(),
    }
}

fn hostname(h: &Host) -> &str {
    h.facts
        .as_ref()
        .map(|f| f.hostname.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or(&h.id)
}

fn status_word(h: &Host) -> &'static str {
    match h.status() {
        HostStatus::Connected => "connected",
        HostStatus::Disconnected => "disconnected",
        _ => "unknown",
    }
}

fn labels(l: &HashMap<String, String>) -> Markup {
    let mut pairs: Vec<_> = l.iter().collect();
    pairs.sort();
    html! {
        @for (k, v) in pairs { span.label { (k) "=" (v) } " " }
    }
}

/// Every host: status, address, labels, what it runs, when it was seen.
pub fn hosts(list: Vec<Host>, after: &str, now_ms: i64) -> Markup {
    let total = list.len();
    let connected = list.iter().filter(|h| h.status() == HostStatus::Connected).count();
    let limits = paging::Limits {
        items: HOSTS_PER_PAGE,
        bytes: usize::MAX,
    };
    let page = paging::page(list, host_list_key, |_| 0, after, limits);
    let shown = (page.before + 1, page.before + page.items.len());
    html! {
        h1 { "Hosts" }
        p.summary id="hosts-summary" {
            (total) " hosts, " (connected) " connected"
            @if total > page.items.len() { " · showing " (shown.0) "–" (shown.1) }
        }
        table id="hosts" {
            thead { tr { th { "Host" } th { "Status" } th { "Address" } th { "Labels" } th { "Runs" } th { "Last seen" } } }
            tbody {
                @for h in &page.items {
                    tr data-host=(h.id) {
                        td { a href={ "/ui/hosts/" (h.id) } { (hostname(h)) } }
                        td { span class={ "status " (status_word(h)) } { (status_word(h)) } }
                        td { (h.remote_addr) }
                        td { (labels(&h.labels)) }
                        td {
                            @for a in h.inventory.iter().flat_map(|i| &i.apps) {
                                span.runs { (a.app) " " (if a.current.is_empty() { "-" } else { &a.current }) } " "
                            }
                        }
                        td { @if h.status() == HostStatus::Connected { "now" } @else { (ago(h.last_seen_ms, now_ms)) } }
                    }
                }
            }
        }
        @if !after.is_empty() || !page.next.is_empty() {
            p.pages {
                @if !after.is_empty() { a href="/ui/hosts" { "first page" } }
                @if !after.is_empty() && !page.next.is_empty() { " · " }
                @if !page.next.is_empty() {
                    a href={ "/ui/hosts?after=" (form_urlencoded::byte_serialize(page.next.as_bytes()).collect::<String>()) } {
                        "next " (HOSTS_PER_PAGE) " →"
                    }
                }
            }
        }
    }
}

/// One host: facts, labels, and each app it holds.
pub fn host(h: &Host, now_ms: i64) -> Markup {
    let facts = h.facts.clone().unwrap_or_default();
    html! {
        h1 { (hostname(h)) }
        dl {
            dt { "Id" } dd { code { (h.id) } }
            dt { "Status" } dd { span class={ "status " (status_word(h)) } { (status_word(h)) } }
            dt { "Address" } dd { (h.remote_addr) }
            dt { "Labels" } dd { (labels(&h.labels)) }
            dt { "OS" } dd { (facts.os) " " (facts.kernel) }
            dt { "Agent" } dd { (facts.agent_version) }
            dt { "Enrolled" } dd { (utc(h.enrolled_at_ms)) }
            dt { "Last seen" } dd { (ago(h.last_seen_ms, now_ms)) }
            dt { "Certificate until" } dd { (utc(h.cert_not_after_ms)) }
        }
        h2 { "Apps" }
        table id="host-apps" {
            thead { tr { th { "App" } th { "Current" } th { "Previous" } th { "Releases kept" } th { "Unit" } th { "Last health check" } } }
            tbody {
                @for a in h.inventory.iter().flat_map(|i| &i.apps) {
                    tr {
                        td { a href={ "/ui/apps/" (a.app) } { (a.app) } }
                        td { (a.current) }
                        td { (a.previous) }
                        td { (a.releases.join(", ")) }
                        td { @if let Some(u) = &a.unit { (u.name) " " (u.active_state) "/" (u.sub_state) } }
                        td { @if let Some(hc) = &a.last_health { (if hc.ok { "ok" } else { "failing" }) ": " (hc.detail.lines().next().unwrap_or_default()) } }
                    }
                }
            }
        }
    }
}

/// Every app with its release for new hosts.
pub fn apps(list: &[(AppSpec, String)]) -> Markup {
    html! {
        h1 { "Apps" }
        table id="apps" {
            thead { tr { th { "App" } th { "Unit" } th { "Selector" } th { "Release" } } }
            tbody {
                @for (spec, release) in list {
                    tr {
                        td { a href={ "/ui/apps/" (spec.name) } { (spec.name) } }
                        td { (spec.unit) }
                        td { (spec.selector) }
                        td { (release) }
                    }
                }
            }
        }
    }
}

/// One app: its hosts (should run, runs), its releases, its rollouts.
pub fn app(status: &AppStatus, releases: &[Release], history: &[Rollout], now_ms: i64) -> Markup {
    let spec = status.spec.clone().unwrap_or_default();
    html! {
        h1 { (spec.name) }
        dl {
            dt { "Unit" } dd { (spec.unit) }
            dt { "Selector" } dd { (spec.selector) }
            dt { "Release for new hosts" } dd { (status.desired_version) }
        }
        h2 { "Hosts" }
        table id="app-hosts" {
            thead { tr { th { "Host" } th { "Should run" } th { "Runs" } th { "Connected" } th { "Drift" } } }
            tbody {
                @for h in &status.host_states {
                    tr {
                        td { a href={ "/ui/hosts/" (h.host_id) } { (if h.hostname.is_empty() { &h.host_id } else { &h.hostname }) } }
                        td { (if h.desired.is_empty() { &status.desired_version } else { &h.desired }) }
                        td { (h.current) }
                        td { (if h.connected { "yes" } else { "no" }) }
                        td { @if h.drift { span.drift { "drift" } } }
                    }
                }
            }
        }
        h2 { "Releases" }
        table id="releases" {
            thead { tr { th { "Version" } th { "Size" } th { "Pushed" } th { "By" } th { "Signed" } } }
            tbody {
                @for r in releases {
                    @let a = r.artifact.clone().unwrap_or_default();
                    tr {
                        td { (a.version) }
                        td { (a.size) " B" }
                        td { (ago(r.pushed_at_ms, now_ms)) }
                        td { (r.pushed_by) }
                        td { (if a.signature.is_some() { "yes" } else { "no" }) }
                    }
                }
            }
        }
        h2 { "History" }
        (rollout_table(history, now_ms))
    }
}

fn done_of(r: &Rollout) -> (usize, usize) {
    let hosts = r.batches.iter().flat_map(|b| &b.hosts);
    let total = hosts.clone().count();
    let done = hosts
        .filter(|h| {
            !matches!(
                h.state(),
                HostState::Pending | HostState::Running | HostState::Unspecified
            )
        })
        .count();
    (done, total)
}

/// Rollouts, newest first.
pub fn rollout_table(list: &[Rollout], now_ms: i64) -> Markup {
    html! {
        table.rollouts id="rollouts" {
            thead { tr { th { "Rollout" } th { "App" } th { "Kind" } th { "Version" } th { "State" } th { "Hosts done" } th { "Started" } th { "By" } } }
            tbody {
                @for r in list {
                    @let (done, total) = done_of(r);
                    tr {
                        td { a href={ "/ui/rollouts/" (r.id) } { (r.id) } }
                        td { (r.app) }
                        td { (r.kind().word()) }
                        td { (r.version) }
                        td { span class={ "state " (r.state().word()) } { (r.state().word()) } }
                        td { (done) "/" (total) }
                        td { (ago(r.created_at_ms, now_ms)) }
                        td { (r.created_by) }
                    }
                }
            }
        }
    }
}

/// All rollouts.
pub fn rollouts(list: &[Rollout], now_ms: i64) -> Markup {
    html! {
        h1 { "Rollouts" }
        (rollout_table(list, now_ms))
    }
}

fn batch_title(b: &RolloutBatch, i: usize, n: usize) -> String {
    format!(
        "Batch {} of {n}{} — {}",
        i + 1,
        if b.canary { " (canary)" } else { "" },
        b.state().word()
    )
}

/// One rollout: where it stands, each batch, each host's phases.
pub fn rollout(r: &Rollout, now_ms: i64) -> Markup {
    let (done, total) = done_of(r);
    let percent = (done * 100).checked_div(total).unwrap_or(100);
    let n = r.batches.len();
    html! {
        h1 { "Rollout " (r.id) }
        p.summary {
            (r.kind().word()) " of " (r.app) " " (r.version) " by " (r.created_by) ", started " (ago(r.created_at_ms, now_ms))
        }
        p {
            span id="rollout-state" class={ "state " (r.state().word()) } { (r.state().word()) }
            @if !r.reason.is_empty() { " — " span id="rollout-reason" { (r.reason) } }
        }
        progress id="rollout-bar" value=(done) max=(total.max(1)) { (percent) "%" }
        p id="rollout-progress" { (done) " of " (total) " hosts done" }
        @if r.state() == RolloutState::Paused {
            p.hint { "Continue with " code { "fleetctl rollout resume " (r.id) } }
        }
        @for (i, b) in r.batches.iter().enumerate() {
            section.batch data-batch=(i) {
                h2 { (batch_title(b, i, n)) }
                table.hosts {
                    thead { tr { th { "Host" } th { "State" } th { "Phase" } th { "From → to" } th { "Timeline" } th { "Detail" } } }
                    tbody {
                        @for h in &b.hosts {
                            tr data-host=(h.host_id) {
                                td { a href={ "/ui/hosts/" (h.host_id) } { (if h.hostname.is_empty() { &h.host_id } else { &h.hostname }) } }
                                td { span class={ "state " (h.state().word()) } { (h.state().word()) } }
                                td.phase { (h.phase) }
                                td { (if h.from_version.is_empty() { "-" } else { &h.from_version }) " → " (h.to_version) }
                                td.timeline {
                                    @for p in &h.timeline {
                                        span class={ "step " (if p.state() == fleet_proto::TaskState::Failed { "failed" } else { "ok" }) } {
                                            (p.phase) " " (p.duration_ms) "ms"
                                        }
                                        " "
                                    }
                                }
                                td { (h.detail.lines().next().unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The audit log, newest first.
pub fn audit(entries: &[AuditEntry]) -> Markup {
    html! {
        h1 { "Audit log" }
        table id="audit" {
            thead { tr { th { "When" } th { "Who" } th { "What" } th { "From" } th { "App" } th { "Target" } th { "Outcome" } } }
            tbody {
                @for e in entries.iter().rev() {
                    tr {
                        td { (utc(e.at_ms)) }
                        td { (e.who) }
                        td { (e.what) }
                        td { (e.from) }
                        td { (e.app) " " (e.version) }
                        td { (e.target) (if e.dry_run { " (dry run)" } else { "" }) }
                        td { (e.outcome.lines().next().unwrap_or_default()) }
                    }
                }
            }
        }
    }
}

/// One event as a table row (the events page, and each live row).
pub fn event_row(e: &FleetEvent) -> Markup {
    let host = if e.hostname.is_empty() { &e.host_id } else { &e.hostname };
    html! {
        tr data-seq=(e.seq) data-kind=(e.kind().word()) {
            td { (utc(e.at_ms)) }
            td { (e.kind().word()) }
            td { (e.app) " " (e.version) }
            td { (host) }
            td { @if !e.rollout_id.is_empty() { a href={ "/ui/rollouts/" (e.rollout_id) } { (e.rollout_id) } } }
            td { (e.outcome) }
            td { (e.detail.lines().next().unwrap_or_default()) }
            td { (e.who) }
        }
    }
}

/// The newest events, newest first; new ones are added on top as they happen.
pub fn events(list: &[FleetEvent]) -> Markup {
    html! {
        h1 { "Events" }
        table id="events" {
            thead { tr { th { "When" } th { "Kind" } th { "App" } th { "Host" } th { "Rollout" } th { "Outcome" } th { "Detail" } th { "Who" } } }
            tbody {
                @for e in list.iter().rev() { (event_row(e)) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::{HostFacts, RolloutHost};

    #[test]
    fn the_host_list_comes_in_pages_that_link_to_the_next() {
        let list: Vec<Host> = (0..1200)
            .map(|i| Host {
                id: format!("id{i:04}"),
                facts: Some(HostFacts {
                    hostname: format!("web-{i:04}"),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let next_of = |out: &str| {
            let at = out.find("/ui/hosts?after=")? + "/ui/hosts?after=".len();
            let token = &out[at..at + out[at..].find('"')?];
            let decoded = form_urlencoded::parse(format!("t={token}").as_bytes())
                .next()?
                .1
                .into_owned();
            Some(decoded)
        };
        let mut after = String::new();
        let mut rows = 0;
        let mut summaries = Vec::new();
        for _ in 0..3 {
            let out = hosts(list.clone(), &after, 0).into_string();
            rows += out.matches("<tr data-host=").count();
            summaries.push(
                out[out.find("1200 hosts").expect("the summary counts all")..]
                    .split('<')
                    .next()
                    .map(String::from),
            );
            match next_of(&out) {
                Some(t) => after = t,
                None => {
                    assert!(out.contains("first page"), "the last page links back: {out}");
                    break;
                }
            }
        }
        assert_eq!(rows, 1200, "every host on exactly one page");
        assert_eq!(
            summaries,
            [
                Some("1200 hosts, 0 connected · showing 1–500".to_string()),
                Some("1200 hosts, 0 connected · showing 501–1000".to_string()),
                Some("1200 hosts, 0 connected · showing 1001–1200".to_string()),
            ]
        );
        let small = hosts(list[..3].to_vec(), "", 0).into_string();
        assert!(!small.contains("showing") && !small.contains("next "), "{small}");
    }

    #[test]
    fn hostile_names_and_details_are_text() {
        let mut h = Host {
            id: "abc".into(),
            facts: Some(HostFacts {
                hostname: "<script>alert(1)</script>".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        h.labels.insert("team".into(), "\"><img src=x onerror=alert(1)>".into());
        let out = hosts(vec![h], "", 0).into_string();
        assert!(!out.contains("<script>") && !out.contains("<img"), "{out}");
        assert!(out.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{out}");
        let mut e = FleetEvent {
            detail: "</td><script>x</script>".into(),
            ..Default::default()
        };
        e.set_kind(fleet_proto::FleetEventKind::HostConnected);
        assert!(!event_row(&e).into_string().contains("<script>"));
    }

    #[test]
    fn a_rollout_page_shows_progress_batches_and_each_hosts_phase() {
        let mut done = RolloutHost {
            host_id: "h1".into(),
            hostname: "web-1".into(),
            to_version: "2.0".into(),
            from_version: "1.0".into(),
            ..Default::default()
        };
        done.set_state(HostState::Succeeded);
        let mut running = RolloutHost {
            host_id: "h2".into(),
            hostname: "web-2".into(),
            phase: "health".into(),
            ..Default::default()
        };
        running.set_state(HostState::Running);
        let mut r = Rollout {
            id: "r-1".into(),
            app: "web".into(),
            version: "2.0".into(),
            batches: vec![
                RolloutBatch {
                    hosts: vec![done],
                    canary: true,
                    ..Default::default()
                },
                RolloutBatch {
                    hosts: vec![running],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        r.set_state(RolloutState::Running);
        let out = rollout(&r, 0).into_string();
        assert!(out.contains("1 of 2 hosts done"), "{out}");
        assert!(
            out.contains(r#"<progress id="rollout-bar" value="1" max="2">50%</progress>"#),
            "{out}"
        );
        assert!(out.contains("Batch 1 of 2 (canary)"), "{out}");
        assert!(out.contains("<td class=\"phase\">health</td>"), "{out}");
    }
}
