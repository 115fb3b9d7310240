use super::access::parse_since;
use super::*;
use clap::CommandFactory;

#[test]
fn command_tree_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn labels_parse() {
    assert_eq!(
        parse_label("env=prod"),
        Ok(Label {
            key: "env".into(),
            value: "prod".into()
        })
    );
    assert_eq!(
        parse_label("note=a=b"),
        Ok(Label {
            key: "note".into(),
            value: "a=b".into()
        })
    );
    assert_eq!(
        parse_label("empty="),
        Ok(Label {
            key: "empty".into(),
            value: String::new()
        })
    );
    for bad in ["envprod", "=prod", "e nv=x", "env=a,b"] {
        let err = parse_label(bad).expect_err(bad);
        assert!(err.contains(&format!("'{bad}'")), "{err}");
    }
    let dup = label_map(&[parse_label("a=1").expect("label"), parse_label("a=2").expect("label")]);
    assert!(dup.expect_err("duplicate").contains("'a'"));
}

#[test]
fn bad_label_flag_is_a_usage_error() {
    let err = Cli::try_parse_from(["fleetctl", "token", "create", "--label", "oops"]).expect_err("bad label");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("'oops'"), "{err}");
}

#[test]
fn global_flags_after_subcommand() {
    let cli =
        Cli::try_parse_from(["fleetctl", "hosts", "ls", "--output", "json", "--controller", "c:1"]).expect("parse");
    assert_eq!(cli.global.output, Format::Json);
    assert_eq!(cli.global.controller.as_deref(), Some("c:1"));
    let cli = Cli::try_parse_from(["fleetctl", "token", "create", "--ttl", "1h", "--cert-ttl", "7d"]).expect("parse");
    let Command::Token(TokenCommand::Create(args)) = cli.command else {
        panic!("wrong command");
    };
    assert_eq!(args.ttl, Some(Duration::from_secs(3600)));
    assert_eq!(args.cert_ttl, Some(Duration::from_secs(7 * 86_400)));
    assert!(Cli::try_parse_from(["fleetctl", "token", "create", "--ttl", "soon"]).is_err());
}

fn rollout(args: &[&str]) -> Result<RolloutArgs, clap::Error> {
    let mut all = vec!["fleetctl", "rollout"];
    all.extend(args);
    match Cli::try_parse_from(all)?.command {
        Command::Rollout(r) => Ok(r),
        other => panic!("parsed as {other:?}"),
    }
}

#[test]
fn rollout_start_takes_every_flag() {
    let r = rollout(&[
        "api",
        "--release",
        "2.0",
        "--selector",
        "env=prod",
        "--batch",
        "2",
        "--canary",
        "1",
        "--canary-wait",
        "60s",
        "--pause-between",
        "10s",
        "--max-failures",
        "10%",
        "--no-auto-rollback",
        "--offline",
        "wait:5m",
        "--batch-deadline",
        "10m",
        "--wait",
        "--watch",
    ])
    .expect("parse");
    assert!(r.command.is_none());
    let s = r.start;
    assert_eq!(s.app.as_deref(), Some("api"));
    assert_eq!(s.release.get().as_deref(), Some("2.0"));
    assert_eq!(s.canary, Some(1));
    assert_eq!(s.canary_wait, Some(Duration::from_secs(60)));
    assert!(s.no_auto_rollback && s.flags.wait && s.flags.watch && !s.flags.dry_run);
    assert_eq!(s.flags.batch.as_deref(), Some("2"));
    assert_eq!(s.flags.max_failures.as_deref(), Some("10%"));
    assert_eq!(s.flags.offline.as_deref(), Some("wait:5m"));
    assert_eq!(s.flags.batch_deadline, Some(Duration::from_secs(600)));
    assert_eq!(s.flags.pause_between, Some(Duration::from_secs(10)));

    let req = crate::rollouts::start_request(&s).expect("request");
    assert_eq!(
        (req.app.as_str(), req.version.as_str(), req.batch.as_str()),
        ("api", "2.0", "2")
    );
    assert_eq!(
        (req.canary, req.canary_wait_ms, req.pause_between_ms),
        (1, 60_000, 10_000)
    );
    assert_eq!((req.max_failures.as_str(), req.offline.as_str()), ("10%", "wait:5m"));
    assert_eq!(req.batch_deadline_ms, 600_000);
    assert!(req.no_auto_rollback && !req.dry_run && !req.rollback);
}

#[test]
fn rollout_defaults() {
    let s = rollout(&["api", "--latest", "--dry-run"]).expect("parse").start;
    let req = crate::rollouts::start_request(&s).expect("request");
    assert!(req.latest && req.dry_run && req.version.is_empty());
    assert_eq!(
        (req.batch.as_str(), req.max_failures.as_str(), req.offline.as_str()),
        ("25%", "0", "skip")
    );
    assert_eq!((req.canary, req.canary_wait_ms, req.batch_deadline_ms), (0, 0, 0));
    let s = rollout(&["api"]).expect("parse").start;
    let err = crate::rollouts::start_request(&s).expect_err("no version");
    assert!(err.to_string().contains("--latest"), "{err}");
    assert_eq!(err.exit_code() as u8, 2);
}

#[test]
fn rollout_subcommands() {
    assert!(matches!(
        rollout(&["ls"]).expect("ls").command,
        Some(RolloutCommand::Ls { app: None })
    ));
    assert!(matches!(
        rollout(&["ls", "api"]).expect("ls app").command,
        Some(RolloutCommand::Ls { app: Some(a) }) if a == "api"
    ));
    assert!(matches!(
        rollout(&["show", "r1"]).expect("show").command,
        Some(RolloutCommand::Show { id }) if id == "r1"
    ));
    assert!(matches!(
        rollout(&["status", "r1", "--watch"]).expect("status").command,
        Some(RolloutCommand::Status { id, watch: true }) if id == "r1"
    ));
    assert!(matches!(
        rollout(&["pause", "r1"]).expect("pause").command,
        Some(RolloutCommand::Pause { .. })
    ));
    assert!(matches!(
        rollout(&["resume", "r1"]).expect("resume").command,
        Some(RolloutCommand::Resume { .. })
    ));
    assert!(matches!(
        rollout(&["abort", "r1", "--rollback"]).expect("abort").command,
        Some(RolloutCommand::Abort { rollback: true, .. })
    ));
    // Start flags belong to starting a rollout, not to its subcommands.
    assert!(rollout(&["ls", "--batch", "2"]).is_err());
    // Neither a subcommand nor an app.
    assert_eq!(rollout(&[]).expect_err("nothing").exit_code(), 2);
}

#[test]
fn rollout_flags_are_checked() {
    for bad in [
        vec!["api", "--latest", "--release", "1"],
        vec!["api", "--latest", "--version", "1"],
        vec!["api", "--release", "1", "--version", "1"],
        vec!["api", "--latest", "--batch", "0"],
        vec!["api", "--latest", "--batch", "120%"],
        vec!["api", "--latest", "--batch", "half"],
        vec!["api", "--latest", "--max-failures", "-1"],
        vec!["api", "--latest", "--max-failures", "101%"],
        vec!["api", "--latest", "--offline", "wait"],
        vec!["api", "--latest", "--offline", "wait:soon"],
        vec!["api", "--latest", "--canary-wait", "60s"],
        vec![
            "api",
            "--latest",
            "--canary",
            "1",
            "--canary-wait",
            "1s",
            "--canary-approve",
        ],
        vec!["api", "--latest", "--dry-run", "--wait"],
    ] {
        let err = rollout(&bad).expect_err(&format!("{bad:?}"));
        assert_eq!(err.exit_code(), 2, "{bad:?}");
    }
    let err = rollout(&["api", "--latest", "--batch", "0"]).expect_err("zero batch");
    assert!(err.to_string().contains("'0'"), "{err}");
    assert!(rollout(&["api", "--latest", "--canary", "1", "--canary-approve"]).is_ok());
    assert!(rollout(&["api", "--latest", "--max-failures", "0%"]).is_ok());
    assert!(rollout(&["api", "--latest", "--batch", "100%"]).is_ok());
}

#[test]
fn rollback_with_or_without_host() {
    let cli = Cli::try_parse_from(["fleetctl", "rollback", "api", "--host", "web-1"]).expect("parse");
    let Command::Rollback(args) = cli.command else {
        panic!("wrong command");
    };
    let one = args.single_host().expect("single host");
    assert_eq!(
        (one.app.as_str(), one.host.as_str(), one.release.get()),
        ("api", "web-1", None)
    );

    let cli = Cli::try_parse_from(["fleetctl", "rollback", "api", "--selector", "env=prod", "--wait"]).expect("parse");
    let Command::Rollback(args) = cli.command else {
        panic!("wrong command");
    };
    assert!(args.single_host().is_none());
    let req = crate::rollouts::rollback_request(&args);
    assert!(req.rollback && req.version.is_empty() && req.canary == 0);
    assert_eq!((req.batch.as_str(), req.selector.as_str()), ("50%", "env=prod"));
    // Rollout flags belong to the fleet-wide form.
    assert!(Cli::try_parse_from(["fleetctl", "rollback", "api", "--host", "web-1", "--batch", "2"]).is_err());
    // --to (or --release, or the old --version) names one release for the
    // whole selection.
    for flag in ["--to", "--release", "--version"] {
        let cli = Cli::try_parse_from(["fleetctl", "rollback", "api", flag, "1.0"]).expect("parse");
        let Command::Rollback(args) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(crate::rollouts::rollback_request(&args).version, "1.0");
    }
}

#[test]
fn audit_since_is_a_duration_or_a_time() {
    let cli = Cli::try_parse_from(["fleetctl", "audit", "--since", "1h"]).expect("parse");
    let Command::Audit(args) = cli.command else {
        panic!("wrong command");
    };
    assert_eq!(args.since, Some(Since::Ago(Duration::from_secs(3600))));
    assert_eq!(Since::Ago(Duration::from_secs(1)).start_ms(10_000), 9_000);
    assert_eq!(parse_since("2023-11-14T22:13:20.5Z"), Ok(Since::At(1_700_000_000_500)));
    let err = parse_since("yesterday").expect_err("not a time");
    assert!(err.contains("'yesterday'"), "{err}");
}

#[test]
fn completions_know_every_command_group() {
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        let script = crate::completion(shell);
        for word in ["rollout", "operator", "keys", "bootstrap", "sign-key"] {
            assert!(script.contains(word), "{shell:?} completion lacks {word}");
        }
    }
}

#[test]
fn the_release_flag_is_release_or_r_and_the_old_version_spelling_still_works() {
    for args in [
        vec!["fleetctl", "deploy", "api", "--host", "h", "--release", "1.2"],
        vec!["fleetctl", "deploy", "api", "--host", "h", "-r", "1.2"],
        vec!["fleetctl", "deploy", "api", "--host", "h", "--version", "1.2"],
    ] {
        let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let Command::Deploy(d) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(d.release.get().as_deref(), Some("1.2"), "{args:?}");
    }
    let cli = Cli::try_parse_from(["fleetctl", "release", "push", "api", "f.tar.gz", "-r", "3"]).expect("parse");
    let Command::Release(ReleaseCommand::Push(p)) = cli.command else {
        panic!("wrong command");
    };
    assert_eq!(p.release.get().as_deref(), Some("3"));
    // Both spellings at once is a usage error.
    assert!(Cli::try_parse_from(["fleetctl", "deploy", "api", "--host", "h", "-r", "1", "--version", "2"]).is_err());
    // --version alone is still fleetctl's own version.
    let e = Cli::try_parse_from(["fleetctl", "--version"]).expect_err("prints the version");
    assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
}
