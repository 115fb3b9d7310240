//! Planning a rollout, as pure functions: which hosts, in which batches,
//! from which release to which, with what failure budget.

use fleet_proto::rollout::{BatchSpec, FailureBudget, OfflinePolicy};
use fleet_proto::{
    AppSpec, BatchState, Host, HostState, Rollout, RolloutBatch, RolloutHost, RolloutKind, RolloutState,
    StartRolloutRequest,
};

use crate::error::{Error, Result};
use crate::selector::Selector;
use crate::store::rollouts::current_of;

/// What a plan is made from (read by the caller, so planning does no I/O).
pub struct Input<'a> {
    /// The app.
    pub app: &'a AppSpec,
    /// The request.
    pub req: &'a StartRolloutRequest,
    /// Every enrolled host.
    pub hosts: &'a [Host],
    /// Versions of the app's stored releases, newest first.
    pub releases: &'a [String],
    /// The app's rollouts, newest first (its history).
    pub history: &'a [Rollout],
    /// The app's release for new hosts.
    pub app_release: Option<&'a str>,
    /// Who asks.
    pub who: &'a str,
    /// The new rollout's id.
    pub id: String,
    /// The clock.
    pub now_ms: i64,
}

/// A host's name for people: its hostname, or its id.
pub fn hostname(h: &Host) -> String {
    h.facts.as_ref().map(|f| f.hostname.clone()).unwrap_or_default()
}

/// The release `fleetctl rollback APP` goes back to when it names none: the
/// newest version in the app's history of successful rollouts over its whole
/// selection that differs from the app's current release.
pub fn rollback_target(app: &str, history: &[Rollout], current: Option<&str>) -> Result<String> {
    let successful = history.iter().filter(|r| {
        r.app == app
            && r.state() == RolloutState::Succeeded
            && r.whole_selection
            && r.kind() != RolloutKind::Converge
            && !r.version.is_empty()
    });
    let current = current
        .map(str::to_string)
        .or_else(|| successful.clone().next().map(|r| r.version.clone()));
    successful
        .map(|r| r.version.clone())
        .find(|v| Some(v) != current.as_ref())
        .ok_or_else(|| Error::NoEarlierRelease {
            app: app.to_string(),
            current: current.unwrap_or_default(),
        })
}

/// Plans a rollout or a rollback (a rollout to an earlier release).
pub fn plan(input: &Input) -> Result<Rollout> {
    let req = input.req;
    let app = &input.app.name;
    let version = if req.rollback {
        if req.version.is_empty() {
            rollback_target(app, input.history, input.app_release)?
        } else {
            req.version.clone()
        }
    } else if req.latest {
        input
            .releases
            .first()
            .cloned()
            .ok_or_else(|| Error::NoReleases { app: app.clone() })?
    } else if req.version.is_empty() {
        return Err(Error::invalid("version", "give --release V or --latest"));
    } else {
        req.version.clone()
    };
    if !input.releases.contains(&version) {
        return Err(Error::UnknownRelease {
            app: app.clone(),
            version,
        });
    }
    let batch = if req.rollback && req.batch.trim().is_empty() {
        fleet_proto::rollout::DEFAULT_ROLLBACK_BATCH
    } else {
        BatchSpec::of_request(&req.batch).map_err(|why| Error::invalid("batch", why))?
    };
    let budget = FailureBudget::of_request(&req.max_failures).map_err(|why| Error::invalid("max_failures", why))?;
    OfflinePolicy::of_request(&req.offline).map_err(|why| Error::invalid("offline", why))?;
    let app_selector = Selector::parse(&input.app.selector).map_err(|why| Error::invalid("app.selector", why))?;
    let narrowing = Selector::parse(&req.selector).map_err(|why| Error::invalid("selector", why))?;
    let mut hosts: Vec<&Host> = input
        .hosts
        .iter()
        .filter(|h| app_selector.matches(&h.labels) && narrowing.matches(&h.labels))
        .collect();
    if hosts.is_empty() {
        return Err(Error::NoHosts {
            app: app.clone(),
            selector: req.selector.clone(),
        });
    }
    hosts.sort_by(|a, b| hostname(a).cmp(&hostname(b)).then(a.id.cmp(&b.id)));
    let n = hosts.len();
    let size = batch.hosts(n);
    let failure_budget = budget.hosts(n);
    let canary = if req.rollback { 0 } else { req.canary as usize };
    if canary > 0 && canary >= n {
        return Err(Error::invalid(
            "canary",
            format!("canary {canary} leaves no host for the batches after it ({n} hosts match)"),
        ));
    }
    let targets: Vec<(&Host, String)> = hosts.into_iter().map(|h| (h, version.clone())).collect();
    let kind = if req.rollback {
        RolloutKind::Rollback
    } else {
        RolloutKind::Rollout
    };
    let mut r = build(app, &targets, canary, size, kind);
    r.id = input.id.clone();
    r.version = version;
    r.params = Some(req.clone());
    r.created_at_ms = input.now_ms;
    r.created_by = input.who.to_string();
    r.failure_budget = failure_budget;
    r.whole_selection = req.selector.trim().is_empty();
    r.set_state(if req.dry_run {
        RolloutState::Planned
    } else {
        RolloutState::Running
    });
    r.plan = plan_text(&r, budget, req.no_auto_rollback);
    Ok(r)
}

/// Plans a convergence run: each host to its own target, in batches of
/// `size`, no failure tolerated, nothing rolled back (a host that fails
/// reverts itself and keeps its desired release; it is tried again when it
/// next connects).
pub fn converge(app: &str, targets: &[(&Host, String)], size: usize, id: String, now_ms: i64) -> Rollout {
    let mut r = build(app, targets, 0, size.max(1), RolloutKind::Converge);
    r.id = id;
    r.params = Some(StartRolloutRequest {
        app: app.to_string(),
        batch: size.max(1).to_string(),
        no_auto_rollback: true,
        ..Default::default()
    });
    r.created_at_ms = now_ms;
    r.created_by = "controller".into();
    r.set_state(RolloutState::Running);
    r.plan = plan_text(&r, FailureBudget::Count(0), true);
    r
}

fn build(app: &str, targets: &[(&Host, String)], canary: usize, size: usize, kind: RolloutKind) -> Rollout {
    let entry = |(h, to): &(&Host, String)| {
        let mut e = RolloutHost {
            host_id: h.id.clone(),
            hostname: hostname(h),
            from_version: current_of(h, app),
            to_version: to.clone(),
            ..Default::default()
        };
        e.set_state(HostState::Pending);
        e
    };
    let batch = |hosts: &[(&Host, String)], canary: bool| {
        let mut b = RolloutBatch {
            hosts: hosts.iter().map(entry).collect(),
            canary,
            ..Default::default()
        };
        b.set_state(BatchState::Pending);
        b
    };
    let (first, rest) = targets.split_at(canary.min(targets.len()));
    let mut batches = Vec::new();
    if !first.is_empty() {
        batches.push(batch(first, true));
    }
    for chunk in rest.chunks(size.max(1)) {
        batches.push(batch(chunk, false));
    }
    let mut r = Rollout {
        app: app.to_string(),
        batches,
        batch_size: size.max(1) as u32,
        ..Default::default()
    };
    r.set_kind(kind);
    r
}

fn plan_text(r: &Rollout, budget: FailureBudget, no_auto_rollback: bool) -> String {
    let n: usize = r.batches.iter().map(|b| b.hosts.len()).sum();
    let what = match r.kind() {
        RolloutKind::Rollback => format!("roll {} back to {}", r.app, r.version),
        RolloutKind::Converge => format!("converge {} to each host's desired release", r.app),
        _ => format!("roll out {} {}", r.app, r.version),
    };
    let mut text = format!(
        "{what} on {n} host{} in {} batch{} of up to {}; up to {} failed host{} tolerated (max-failures {budget}), then {}\n",
        if n == 1 { "" } else { "s" },
        r.batches.len(),
        if r.batches.len() == 1 { "" } else { "es" },
        r.batch_size,
        r.failure_budget,
        if r.failure_budget == 1 { "" } else { "s" },
        if no_auto_rollback {
            "stop"
        } else {
            "move the changed hosts back"
        },
    );
    for (i, b) in r.batches.iter().enumerate() {
        text.push_str(&format!(
            "batch {}{}:\n",
            i + 1,
            if b.canary { " (canary)" } else { "" }
        ));
        for h in &b.hosts {
            let from = if h.from_version.is_empty() {
                "nothing"
            } else {
                &h.from_version
            };
            text.push_str(&format!(
                "  {} {}: {from} → {}\n",
                fleet_proto::rollout::short_id(&h.host_id),
                h.hostname,
                h.to_version
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::{AppInventory, HostFacts, Inventory};

    fn host(id: &str, name: &str, labels: &[(&str, &str)], current: &str) -> Host {
        Host {
            id: id.into(),
            facts: Some(HostFacts {
                hostname: name.into(),
                ..Default::default()
            }),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            inventory: Some(Inventory {
                apps: vec![AppInventory {
                    app: "demo".into(),
                    current: current.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn app() -> AppSpec {
        AppSpec {
            name: "demo".into(),
            selector: "role=web".into(),
            ..Default::default()
        }
    }

    fn done(id: &str, version: &str, at: i64, whole: bool) -> Rollout {
        let mut r = Rollout {
            id: id.into(),
            app: "demo".into(),
            version: version.into(),
            created_at_ms: at,
            whole_selection: whole,
            ..Default::default()
        };
        r.set_state(RolloutState::Succeeded);
        r
    }

    fn input<'a>(
        req: &'a StartRolloutRequest,
        hosts: &'a [Host],
        history: &'a [Rollout],
        app: &'a AppSpec,
        releases: &'a [String],
    ) -> Input<'a> {
        Input {
            app,
            req,
            hosts,
            releases,
            history,
            app_release: history.first().map(|r| r.version.as_str()),
            who: "admin",
            id: "r-x".into(),
            now_ms: 1,
        }
    }

    #[test]
    fn hosts_by_name_in_batches_with_canary_first_and_only_the_selection() {
        let hosts = [
            host("c", "web-3", &[("role", "web"), ("group", "a")], "1"),
            host("a", "web-1", &[("role", "web"), ("group", "a")], "1"),
            host("b", "web-2", &[("role", "web"), ("group", "b")], ""),
            host("d", "db-1", &[("role", "db")], "1"),
        ];
        let releases = ["2".to_string(), "1".to_string()];
        let req = StartRolloutRequest {
            app: "demo".into(),
            version: "2".into(),
            canary: 1,
            batch: "1".into(),
            ..Default::default()
        };
        let a = app();
        let r = plan(&input(&req, &hosts, &[], &a, &releases)).expect("plan");
        let ids: Vec<Vec<&str>> = r
            .batches
            .iter()
            .map(|b| b.hosts.iter().map(|h| h.host_id.as_str()).collect())
            .collect();
        assert_eq!(ids, vec![vec!["a"], vec!["b"], vec!["c"]]);
        assert!(r.batches[0].canary && !r.batches[1].canary);
        assert_eq!(r.batches[1].hosts[0].from_version, "");
        assert_eq!(r.batches[1].hosts[0].hostname, "web-2");
        assert!(r.whole_selection);
        assert_eq!(r.kind(), RolloutKind::Rollout);

        let narrowed = StartRolloutRequest {
            selector: "group=a".into(),
            ..req.clone()
        };
        let r = plan(&input(&narrowed, &hosts, &[], &a, &releases)).expect("plan");
        let all: Vec<&str> = r
            .batches
            .iter()
            .flat_map(|b| b.hosts.iter().map(|h| h.host_id.as_str()))
            .collect();
        assert_eq!(all, vec!["a", "c"], "a narrowing selector covers only its hosts");
        assert!(!r.whole_selection, "so it never sets the release for new hosts");
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let hosts = [host("a", "web-1", &[("role", "web")], "1")];
        let releases = ["1".to_string()];
        let a = app();
        let req = |f: &dyn Fn(&mut StartRolloutRequest)| {
            let mut r = StartRolloutRequest {
                app: "demo".into(),
                version: "1".into(),
                ..Default::default()
            };
            f(&mut r);
            r
        };
        let cases: Vec<(StartRolloutRequest, &str)> = vec![
            (req(&|r| r.version = "9".into()), "9"),
            (req(&|r| r.batch = "0%".into()), "between 1% and 100%"),
            (req(&|r| r.max_failures = "x".into()), "max-failures 'x'"),
            (req(&|r| r.offline = "later".into()), "offline 'later'"),
            (req(&|r| r.selector = "role=db".into()), "no host matches"),
            (req(&|r| r.canary = 1), "leaves no host"),
            (req(&|r| r.version.clear()), "--release"),
        ];
        for (rq, want) in cases {
            let err = plan(&input(&rq, &hosts, &[], &a, &releases)).expect_err(want);
            assert!(err.to_string().contains(want), "{err} should contain {want}");
        }
    }

    #[test]
    fn a_convergence_run_takes_each_host_to_its_own_release_within_the_batch_size() {
        let a = host("a", "web-1", &[("role", "web")], "1");
        let b = host("b", "web-2", &[("role", "web")], "3");
        let c = host("c", "web-3", &[("role", "web")], "");
        let targets = [(&a, "2".to_string()), (&b, "2".to_string()), (&c, "1".to_string())];
        let r = converge("demo", &targets, 2, "r-c".into(), 5);
        assert_eq!(r.kind(), RolloutKind::Converge);
        assert_eq!(r.created_by, "controller");
        assert!(
            !r.whole_selection,
            "a convergence run never sets the release for new hosts"
        );
        assert_eq!(r.failure_budget, 0);
        assert!(r.params.as_ref().is_some_and(|p| p.no_auto_rollback));
        let batches: Vec<Vec<(&str, &str, &str)>> = r
            .batches
            .iter()
            .map(|b| {
                b.hosts
                    .iter()
                    .map(|h| (h.host_id.as_str(), h.from_version.as_str(), h.to_version.as_str()))
                    .collect()
            })
            .collect();
        assert_eq!(
            batches,
            vec![vec![("a", "1", "2"), ("b", "3", "2")], vec![("c", "", "1")]]
        );
        assert_eq!(
            converge("demo", &targets, 0, "r-d".into(), 5).batch_size,
            1,
            "at least one"
        );
    }

    #[test]
    fn rollback_goes_to_one_release_before_the_current_one() {
        let history = [
            done("r3", "3", 30, true),
            done("r2b", "2", 25, false),
            done("r2", "2", 20, true),
            done("r1", "1", 10, true),
        ];
        assert_eq!(rollback_target("demo", &history, Some("3")).expect("target"), "2");
        assert_eq!(rollback_target("demo", &history, Some("2")).expect("target"), "3");
        let err = rollback_target("demo", &history[3..], Some("1")).expect_err("nothing earlier");
        assert!(err.to_string().contains("--to"), "{err}");

        let hosts = [
            host("a", "web-1", &[("role", "web")], "3"),
            host("b", "web-2", &[("role", "web")], "1"),
        ];
        let releases = ["3".to_string(), "2".to_string(), "1".to_string()];
        let a = app();
        let req = StartRolloutRequest {
            app: "demo".into(),
            rollback: true,
            ..Default::default()
        };
        let r = plan(&input(&req, &hosts, &history, &a, &releases)).expect("plan");
        assert_eq!(r.version, "2");
        assert_eq!(r.kind(), RolloutKind::Rollback);
        assert!(
            r.batches.iter().flat_map(|b| &b.hosts).all(|h| h.to_version == "2"),
            "every host goes to one version, whatever it ran: {r:?}"
        );
        let to = StartRolloutRequest {
            version: "1".into(),
            ..req
        };
        assert_eq!(
            plan(&input(&to, &hosts, &history, &a, &releases))
                .expect("plan")
                .version,
            "1"
        );
    }
}
