//! Limits at the edge: every field of an operator request is checked once,
//! with a documented maximum and a refusal naming the field. fleetctl runs
//! the same checks before dialling (exit 2); the controller refuses what a
//! client that skips them sends (INVALID_ARGUMENT), and stores nothing.

use fleet_proto::app_service_client::AppServiceClient;
use fleet_proto::health_check::Check;
use fleet_proto::host_service_client::HostServiceClient;
use fleet_proto::token_service_client::TokenServiceClient;
use fleet_proto::transport::{certs_from_pem, client_config, connect, Trust};
use fleet_proto::{AppSpec, CreateTokenRequest, HealthCheck, LabelHostRequest, ListHostsRequest, PruneHostsRequest};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::harness::Fleet;

/// A channel to the fleet's controller, and the admin's bearer header.
pub fn operator_channel(
    fleet: &Fleet,
    rt: &tokio::runtime::Runtime,
) -> (Channel, MetadataValue<tonic::metadata::Ascii>) {
    let ca_pem = std::fs::read_to_string(fleet.controller.data_dir.join("ca.pem")).expect("ca.pem");
    let ca = certs_from_pem("ca", &ca_pem).expect("ca cert").remove(0);
    let token = fleet.controller.admin_token();
    let header = format!("Bearer {token}").parse().expect("header");
    let addr = fleet.controller.addr.to_string();
    let channel = rt
        .block_on(async {
            let config = client_config(Trust::Ca(ca), None).map_err(|e| e.to_string())?;
            connect(&addr, config).await.map_err(|e| e.to_string())
        })
        .expect("connect");
    (channel, header)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs fleetctl, expects exit 2 and a message holding every needle.
fn usage_error(fleet: &Fleet, args: &[&str], needles: &[&str]) {
    let out = fleet.fleetctl(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?} must be a usage error: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: '{n}' not in: {err}");
    }
}

#[test]
fn units_and_health_urls_are_restricted_unless_the_app_opts_out() {
    let fleet = Fleet::controller_only(&[]);
    // fleetctl refuses before dialling, naming the field and the fix.
    usage_error(
        &fleet,
        &["app", "create", "xapp", "--unit", "fleet-app-demo.service"],
        &["unit", "another app's unit", "fleet-app-xapp.service"],
    );
    usage_error(
        &fleet,
        &["app", "create", "web", "--unit", "ssh.service"],
        &["unit", "fleet-app-web.service", "polkit", "--allow-any-unit"],
    );
    usage_error(
        &fleet,
        &[
            "app",
            "create",
            "web",
            "--unit",
            "fleet-app-web.service",
            "--health-http",
            "http://169.254.169.254/latest/meta-data/",
        ],
        &["health.http_url", "not loopback", "--allow-remote-health"],
    );
    usage_error(
        &fleet,
        &["app", "create", "Bad_Name!", "--unit", "x.service"],
        &["app name"],
    );
    // Even opted out, another app's unit stays refused.
    usage_error(
        &fleet,
        &[
            "app",
            "create",
            "xapp",
            "--unit",
            "fleet-app-demo.service",
            "--allow-any-unit",
        ],
        &["another app's unit"],
    );

    // The controller refuses the same to a client that skips the checks.
    let rt = runtime();
    let (channel, auth) = operator_channel(&fleet, &rt);
    let mut apps = AppServiceClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", auth.clone());
        Ok(r)
    });
    let base = AppSpec {
        name: "web".into(),
        unit: "fleet-app-web.service".into(),
        ..Default::default()
    };
    let refused: Vec<(AppSpec, &str)> = vec![
        (
            AppSpec {
                unit: "ssh.service".into(),
                ..base.clone()
            },
            "unit: ",
        ),
        (
            AppSpec {
                name: "xapp".into(),
                unit: "fleet-app-demo.service".into(),
                allow_any_unit: true,
                ..base.clone()
            },
            "unit: ",
        ),
        (
            AppSpec {
                health: Some(HealthCheck {
                    check: Some(Check::HttpUrl("http://169.254.169.254/".into())),
                    timeout_ms: 0,
                }),
                ..base.clone()
            },
            "health.http_url: ",
        ),
        (
            AppSpec {
                selector: "=x".into(),
                ..base.clone()
            },
            "selector: ",
        ),
        (
            AppSpec {
                settle_ms: u64::MAX,
                ..base.clone()
            },
            "settle: ",
        ),
    ];
    for (spec, field) in refused {
        let status = rt.block_on(apps.create_app(spec.clone())).expect_err(field);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{spec:?}: {status:?}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    let listed = fleet.fleetctl_json(&["app", "ls"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "nothing stored: {listed}");

    // The opt-outs, explicit per app.
    let out = fleet.fleetctl(&[
        "app",
        "create",
        "edge",
        "--unit",
        "nginx.service",
        "--allow-any-unit",
        "--health-http",
        "http://10.0.0.7:8080/health",
        "--allow-remote-health",
    ]);
    assert!(out.status.success(), "opted out: {}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        shown.contains("opted out") && shown.contains("--allow-any-unit") && shown.contains("--allow-remote-health"),
        "the opt-outs are shown: {shown}"
    );
    let out = fleet.fleetctl(&["app", "create", "web", "--unit", "fleet-app-web.service"]);
    assert!(out.status.success(), "the app's own unit: {}", stderr(&out));

    // An opt-out is taken back with its --no- form: refused while the app
    // still needs it (naming the field), kept when the update fixes that.
    usage_error(
        &fleet,
        &["app", "update", "edge", "--no-allow-any-unit"],
        &["unit", "fleet-app-edge.service"],
    );
    let out = fleet.fleetctl(&[
        "app",
        "update",
        "edge",
        "--health-http",
        "http://127.0.0.1:8080/health",
        "--no-allow-remote-health",
    ]);
    assert!(out.status.success(), "back to loopback: {}", stderr(&out));
    let out = fleet.fleetctl(&[
        "app",
        "update",
        "edge",
        "--unit",
        "fleet-app-edge.service",
        "--no-allow-any-unit",
    ]);
    assert!(out.status.success(), "back to its own unit: {}", stderr(&out));
    let apps = fleet.fleetctl_json(&["app", "ls"]);
    let edge = apps
        .as_array()
        .and_then(|a| a.iter().find(|app| app["name"] == "edge"))
        .unwrap_or_else(|| panic!("edge listed: {apps}"));
    assert_eq!(edge["unit"], "fleet-app-edge.service", "{edge}");
    assert_eq!(edge["allow_any_unit"], false, "{edge}");
    assert_eq!(edge["allow_remote_health"], false, "{edge}");
    usage_error(
        &fleet,
        &["app", "update", "edge", "--unit", "nginx.service"],
        &["unit", "--allow-any-unit"],
    );
    usage_error(
        &fleet,
        &["app", "update", "edge", "--allow-any-unit", "--no-allow-any-unit"],
        &["cannot be used with"],
    );
}

#[test]
fn oversized_and_malformed_fields_are_refused_with_the_field_named() {
    let fleet = Fleet::controller_only(&[]);
    // fleetctl: before dialling (an argument is at most 128 KiB on Linux).
    let long = "d".repeat(100_000);
    usage_error(
        &fleet,
        &["token", "create", "--description", &long],
        &["description", "1024"],
    );
    usage_error(&fleet, &["token", "create", "--ttl", "20y"], &["maximum"]);
    usage_error(&fleet, &["token", "create", "--label", "env=a\u{1b}[31m"], &["labels"]);
    usage_error(&fleet, &["hosts", "label", "web-1", "k=a:b c"], &["labels"]);

    // The controller, to a client that skips fleetctl's checks.
    let rt = runtime();
    let (channel, auth) = operator_channel(&fleet, &rt);
    let authed = move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", auth.clone());
        Ok(r)
    };
    let mut tokens = TokenServiceClient::with_interceptor(channel.clone(), authed.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let huge = CreateTokenRequest {
        description: "x".repeat(3 << 20),
        ..Default::default()
    };
    let status = rt.block_on(tokens.create_token(huge)).expect_err("3 MB description");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("description: "), "{}", status.message());
    assert!(status.message().len() < 300, "the refusal does not echo the field");
    let status = rt
        .block_on(tokens.create_token(CreateTokenRequest {
            ttl_ms: u64::MAX,
            ..Default::default()
        }))
        .expect_err("u64::MAX ttl");
    assert!(status.message().starts_with("ttl: "), "{}", status.message());
    let mut labels = std::collections::HashMap::new();
    labels.insert("big".to_string(), "v".repeat(1 << 20));
    let status = rt
        .block_on(tokens.create_token(CreateTokenRequest {
            labels,
            ..Default::default()
        }))
        .expect_err("1 MB label");
    assert!(status.message().starts_with("labels: "), "{}", status.message());
    // Nothing was stored, and `token ls` still works.
    let listed = fleet.fleetctl_json(&["token", "ls", "--all"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");

    let mut hosts = HostServiceClient::with_interceptor(channel, authed);
    let mut set = std::collections::HashMap::new();
    set.insert("k\n".to_string(), "v".to_string());
    let status = rt
        .block_on(hosts.label_host(LabelHostRequest {
            id: "web-1".into(),
            set,
            remove: vec![],
        }))
        .expect_err("newline key");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("labels: "), "{}", status.message());
    let status = rt
        .block_on(hosts.list_hosts(ListHostsRequest {
            selector: "=x".into(),
            ..Default::default()
        }))
        .expect_err("selector =x");
    assert!(status.message().starts_with("selector: "), "{}", status.message());
    let status = rt
        .block_on(hosts.prune_hosts(PruneHostsRequest {
            disconnected_for_ms: u64::MAX,
            dry_run: true,
        }))
        .expect_err("u64::MAX");
    assert!(
        status.message().starts_with("disconnected_for: "),
        "{}",
        status.message()
    );
    let out = fleet.fleetctl(&["hosts", "ls", "--selector", "=x"]);
    assert!(
        !out.status.success() && stderr(&out).contains("selector"),
        "{}",
        stderr(&out)
    );
}
