//! Rate limits and quotas: an enrollment burst from one source is refused
//! with RESOURCE_EXHAUSTED naming the limit (and a real agent retries and
//! gets in later); failed operator authentications lock their source out
//! for a while; rapid renewals on one stream are refused after the first; a
//! replaced certificate stops being honoured once the host moved to the new
//! one; a join token created without --uses is spent after one enrollment.

use std::time::Duration;

use fleet_proto::agent_service_client::AgentServiceClient;
use fleet_proto::transport::connect;
use fleet_proto::{agent_message, controller_message, AgentMessage, Hello, RenewRequest};
use tokio_stream::wrappers::ReceiverStream;

use crate::harness::{wait_until, Fleet};
use crate::refusals::raw_stream;
use crate::stress::{enroll_one, host_tls, key_and_csr, Enrolled};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn ca_pem(fleet: &Fleet) -> String {
    std::fs::read_to_string(fleet.controller.data_dir.join("ca.pem")).expect("ca.pem")
}

#[test]
fn an_enrollment_burst_from_one_source_is_limited_and_the_agent_gets_in_later() {
    // 2 at once, then one every 10 s, from one address.
    let mut fleet = Fleet::controller_only(&[("limits", "{ enroll_per_source = { burst = 2, per_minute = 6 } }")]);
    let token = fleet.token(&["--uses", "20"]);
    let (addr, fp) = (
        fleet.controller.addr.to_string(),
        fleet.controller.ca_fingerprint.clone(),
    );
    let rt = runtime();
    let results: Vec<Result<Enrolled, String>> =
        (0..5).map(|i| rt.block_on(enroll_one(&addr, &fp, &token, i))).collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 2, "the burst, then refusals");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(e.starts_with("ResourceExhausted"), "{e}");
        assert!(
            e.contains("limits.enroll_per_source") && e.contains("retry in"),
            "names the limit and when to retry: {e}"
        );
    }
    // A real agent from the same source: refused at first, it backs off
    // (RESOURCE_EXHAUSTED is not "refused for good", exit 3) and gets in.
    let i = fleet.add_agent("late-1", &token, &[]);
    fleet.wait_connected(1, Duration::from_secs(60));
    let log = fleet.agents[i].log_text();
    assert!(
        log.contains("limits.enroll_per_source"),
        "the agent met the limit: {log}"
    );
    let listed = fleet.fleetctl_json(&["token", "ls"]);
    assert_eq!(listed[0]["uses"], 3, "refused attempts spend no use: {listed}");
}

#[test]
fn failed_operator_authentications_lock_their_source_out_for_a_while() {
    let fleet = Fleet::controller_only(&[(
        "limits",
        "{ auth_failures_per_source = { burst = 3, per_minute = 20 } }",
    )]);
    let bad = ["--token", "fleet_op_0000deadbeef.nope", "whoami"];
    for _ in 0..3 {
        let out = fleet.fleetctl(&bad);
        assert_eq!(
            out.status.code(),
            Some(4),
            "a bad token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = fleet.fleetctl(&bad);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("limits.auth_failures_per_source") && err.contains("retry in"),
        "the 4th attempt meets the limit: {err}"
    );
    // The whole source waits, the admin too, until the bucket refills (3 s).
    wait_until(Duration::from_secs(15), "whoami works again", || {
        fleet.fleetctl(&["whoami"]).status.success().then_some(())
    });
}

/// Opens `host`'s stream, sends hello then `renewals` renew requests back to
/// back, and returns the renewed certificates (PEM, with their new keys)
/// and the status that ended the stream, if one did.
fn renew_burst(fleet: &Fleet, host: &Enrolled, renewals: usize) -> (Vec<String>, Option<tonic::Status>) {
    let (addr, ca) = (fleet.controller.addr.to_string(), ca_pem(fleet));
    runtime().block_on(async move {
        let channel = connect(&addr, host_tls(&ca, host)).await.expect("connect");
        let (tx, rx) = tokio::sync::mpsc::channel(renewals + 1);
        let hello = AgentMessage {
            body: Some(agent_message::Body::Hello(Hello {
                host_id: host.host_id.clone(),
                ..Default::default()
            })),
        };
        tx.send(hello).await.expect("hello");
        let mut keys = Vec::new();
        for _ in 0..renewals {
            let (key, csr_der) = key_and_csr(&host.host_id);
            keys.push(key.serialize_pem());
            let renew = AgentMessage {
                body: Some(agent_message::Body::Renew(RenewRequest { csr_der })),
            };
            tx.send(renew).await.expect("renew");
        }
        let mut inbound = AgentServiceClient::new(channel)
            .stream(ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        let mut renewed = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
                Ok(Ok(Some(m))) => match m.body {
                    Some(controller_message::Body::Renewed(r)) => {
                        let key = keys.remove(0);
                        renewed.push(format!("{}{key}", r.certificate_pem));
                    }
                    Some(controller_message::Body::Welcome(_)) => {}
                    other => panic!("unexpected {other:?}"),
                },
                Ok(Ok(None)) => return (renewed, None),
                Ok(Err(status)) => return (renewed, Some(status)),
                Err(_) => return (renewed, None),
            }
        }
    })
}

#[test]
fn rapid_renewals_are_refused_and_a_replaced_certificate_stops_being_honoured() {
    let fleet = Fleet::controller_only(&[]);
    let token = fleet.token(&[]);
    let (addr, fp) = (
        fleet.controller.addr.to_string(),
        fleet.controller.ca_fingerprint.clone(),
    );
    let host = runtime().block_on(enroll_one(&addr, &fp, &token, 1)).expect("enroll");

    // 20 renewals in a row on one stream: the first is answered, the next
    // is refused (one in flight, then renew_min_interval) and ends the stream.
    let (renewed, ended) = renew_burst(&fleet, &host, 20);
    assert_eq!(renewed.len(), 1, "only the first renewal yields a certificate");
    let status = ended.expect("the stream ends with the refusal");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("renew") && status.message().contains("retry in"),
        "{}",
        status.message()
    );

    // The host has not used the new certificate yet: the old one is still
    // honoured (never revoked before the new one is proven).
    raw_stream(&fleet, Some(&host.identity_pem), &host.host_id).expect("the old certificate, before the switch");
    // The host moves to the new certificate…
    raw_stream(&fleet, Some(&renewed[0]), &host.host_id).expect("the renewed certificate");
    // …and the one it replaced is no longer honoured.
    let refused = raw_stream(&fleet, Some(&host.identity_pem), &host.host_id).expect_err("the replaced certificate");
    assert!(refused.contains("revoked"), "{refused}");
    // The new one still is.
    raw_stream(&fleet, Some(&renewed[0]), &host.host_id).expect("the renewed certificate, again");
    let log = fleet.controller.log_text();
    assert!(log.contains("replaced certificate revoked"), "{log}");
}

#[test]
fn a_token_without_uses_is_spent_after_the_default_and_unlimited_is_explicit() {
    let fleet = Fleet::controller_only(&[]);
    let created = fleet.fleetctl_json(&["token", "create"]);
    assert_eq!(created["max_uses"], 1, "the documented default: {created}");
    let token = created["secret"].as_str().expect("secret").to_string();
    let (addr, fp) = (
        fleet.controller.addr.to_string(),
        fleet.controller.ca_fingerprint.clone(),
    );
    let rt = runtime();
    rt.block_on(enroll_one(&addr, &fp, &token, 1)).expect("the one use");
    let second = rt.block_on(enroll_one(&addr, &fp, &token, 2)).err().expect("used up");
    assert!(second.starts_with("PermissionDenied"), "{second}");
    for args in [
        &["token", "create", "--unlimited"][..],
        &["token", "create", "--uses", "0"],
    ] {
        let v = fleet.fleetctl_json(args);
        assert_eq!(v["max_uses"], 0, "{args:?}: {v}");
    }
    let v = fleet.fleetctl_json(&["token", "create", "--uses", "5"]);
    assert_eq!(v["max_uses"], 5, "{v}");
    let out = fleet.fleetctl(&["token", "create", "--uses", "3", "--unlimited"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
