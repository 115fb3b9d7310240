//! Hosts may download only what they were sent: an enrolled host asking
//! `FetchArtifact` for an artifact no deploy task sent it (another app's, or
//! its own app's release never deployed to it, or with a made-up grant) is
//! refused with PERMISSION_DENIED naming the digest, the host and the fix.
//! The deploy path itself (grant in the task, shown back on the fetch, also
//! after a controller restart) is exercised by `releases`.

use std::time::Duration;

use fleet_proto::agent_service_client::AgentServiceClient;
use fleet_proto::transport::{certs_from_pem, client_config, connect, key_from_pem, ClientIdentity, Trust};
use fleet_proto::{FetchArtifactRequest, FetchGrant};

use crate::harness::Fleet;
use crate::releases::{assert_success, release};

/// Pushes `bytes` as `app` `version` and returns its sha256.
fn push(fleet: &Fleet, app: &str, version: &str, bytes: &[u8]) -> String {
    let path = fleet.root.path().join(format!("{app}-{version}.tar.gz"));
    std::fs::write(&path, bytes).expect("write release");
    let out = fleet.fleetctl(&[
        "release",
        "push",
        app,
        path.to_str().expect("utf-8"),
        "--release",
        version,
    ]);
    assert_success(&out, "release push");
    let shown = fleet.fleetctl_json(&["release", "ls", app]);
    shown[0]["sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("release ls shows the sha256: {shown}"))
        .to_string()
}

/// `FetchArtifact` as the host whose identity (certificate then key) is
/// `identity_pem`; the refusal as (code, message), or Ok with the bytes.
fn fetch_as(fleet: &Fleet, identity_pem: &str, req: FetchArtifactRequest) -> Result<usize, (tonic::Code, String)> {
    let ca_pem = std::fs::read_to_string(fleet.controller.data_dir.join("ca.pem")).expect("ca.pem");
    let ca = certs_from_pem("ca", &ca_pem).expect("ca cert").remove(0);
    let identity = ClientIdentity {
        chain: certs_from_pem("identity", identity_pem).expect("identity cert"),
        key: key_from_pem("identity", identity_pem).expect("identity key"),
    };
    let addr = fleet.controller.addr.to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let config = client_config(Trust::Ca(ca), Some(identity)).expect("client config");
        let channel = connect(&addr, config).await.expect("connect with the host's identity");
        let mut stream = AgentServiceClient::new(channel)
            .fetch_artifact(req)
            .await
            .map_err(|s| (s.code(), s.message().to_string()))?
            .into_inner();
        let mut n = 0;
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| (s.code(), s.message().to_string()))?
        {
            n += chunk.data.len();
        }
        Ok(n)
    })
}

#[test]
fn a_host_cannot_download_what_no_task_sent_it() {
    let mut fleet = Fleet::controller_only(&[]);
    let token = fleet.token(&["--label", "role=web"]);
    fleet.add_agent("web-1", &token, &[]);
    fleet.wait_connected(1, Duration::from_secs(30));
    let host_id = fleet.agents[0].host_id().expect("host id");
    let identity = std::fs::read_to_string(fleet.agents[0].dir.join("state/identity.pem")).expect("identity.pem");

    for (app, selector) in [("web", "role=web"), ("billing", "role=db")] {
        let out = fleet.fleetctl(&[
            "app",
            "create",
            app,
            "--unit",
            &format!("fleet-app-{app}.service"),
            "--selector",
            selector,
        ]);
        assert_success(&out, "app create");
    }
    let billing = push(&fleet, "billing", "1.0.0", &release("1.0.0", &[]).gz());
    let web = push(&fleet, "web", "1.0.0", &release("web 1.0.0", &[]).gz());

    let ask = |sha256: &str, grant: Option<FetchGrant>| {
        fetch_as(
            &fleet,
            &identity,
            FetchArtifactRequest {
                sha256: sha256.to_string(),
                offset: 0,
                grant,
            },
        )
    };
    let forged = FetchGrant {
        app: "billing".into(),
        version: "1.0.0".into(),
        expires_at_ms: i64::MAX,
        mac: vec![0; 32],
    };
    let cases = [
        ("another app's artifact", billing.clone(), None),
        (
            "another app's artifact, with a made-up grant",
            billing.clone(),
            Some(forged),
        ),
        ("its own app's release, never sent to it", web.clone(), None),
    ];
    for (what, sha256, grant) in cases {
        let (code, message) = match ask(&sha256, grant) {
            Err(refusal) => refusal,
            Ok(n) => panic!("{what}: the host downloaded {n} bytes"),
        };
        assert_eq!(code, tonic::Code::PermissionDenied, "{what}: {message}");
        for needle in [sha256.as_str(), host_id.as_str(), "fleetctl deploy"] {
            assert!(
                message.contains(needle),
                "{what}: the refusal names '{needle}': {message}"
            );
        }
    }
    let log = fleet.controller.log_text();
    assert!(
        log.contains("artifact download refused"),
        "the controller logs the refusal:\n{log}"
    );
}
