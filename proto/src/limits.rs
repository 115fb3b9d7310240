//! The limits of every field an operator or a host sends: one table of
//! maximums and the pure checks that enforce them.
//!
//! They live in the contract crate because both sides use them: the
//! controller validates every request once at its edge with these functions,
//! and fleetctl runs the same checks before dialling so a bad flag is a usage
//! error (exit 2) instead of a round trip. README.md's "Limits" table lists
//! the same constants; change both together.

use std::net::{IpAddr, Ipv6Addr};

use crate::health_check::Check;
use crate::{AppSpec, CreateTokenRequest, LabelHostRequest};

/// Longest app name (characters): it becomes a directory and a unit name.
pub const MAX_APP_NAME: usize = 63;
/// Longest release version (characters); see [`crate::is_safe_name`].
pub const MAX_VERSION: usize = 64;
/// Longest systemd unit name (systemd's own limit).
pub const MAX_UNIT: usize = 255;
/// Longest selector ("k=v,k2=v2"), characters.
pub const MAX_SELECTOR: usize = 1024;
/// Most labels set by one request (a token's, or `hosts label`'s).
pub const MAX_LABELS: usize = 64;
/// Longest token description (bytes).
pub const MAX_DESCRIPTION: usize = 1024;
/// Longest health URL (bytes).
pub const MAX_HEALTH_URL: usize = 2048;
/// Longest health command (bytes).
pub const MAX_HEALTH_COMMAND: usize = 4096;
/// Most signing keys an app lists.
pub const MAX_SIGNING_KEYS: usize = 16;
/// Longest `run_as` user name (Linux `useradd` allows 32).
pub const MAX_RUN_AS: usize = 32;
/// Most releases kept per host.
pub const MAX_KEEP: u32 = 100;
/// Longest health timeout and settle time, ms: a deploy task has 30 minutes
/// in all, and both run inside it.
pub const MAX_DEPLOY_WAIT_MS: u64 = 10 * 60 * 1000;
/// Longest any duration an operator sends may be, ms (10 years). Longer ones
/// are mistakes (or u64::MAX) that would overflow timestamps.
pub const MAX_DURATION_MS: u64 = 10 * 365 * 86_400_000;
/// Largest certificate signing request (DER bytes); a P-256 CSR is ~300.
pub const MAX_CSR: usize = 16 * 1024;
/// Longest host reference (id, id prefix or hostname), characters.
pub const MAX_HOST_REF: usize = crate::MAX_HOSTNAME;
/// Most metadata entries of a release, and the longest value (bytes).
pub const MAX_METADATA: usize = 32;
/// Longest release metadata value (bytes).
pub const MAX_METADATA_VALUE: usize = 256;

/// The unit name prefix the agent's polkit rule lets it restart.
pub const APP_UNIT_PREFIX: &str = "fleet-app-";

/// A request field that breaks a limit. `field` is the name an operator
/// knows (the flag or proto field), `problem` says what is wrong and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The field, e.g. "unit", "labels[az]", "health.http_url".
    pub field: String,
    /// What is wrong, and what would be accepted.
    pub problem: String,
}

impl FieldError {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A value as it may be quoted in a message: escaped, and cut at 80
/// characters, so a 3 MB or hostile field does not become a 3 MB error.
pub fn quote(v: &str) -> String {
    let mut s: String = v.chars().take(80).collect::<String>().escape_debug().collect();
    if v.chars().count() > 80 {
        s.push('…');
    }
    s
}

fn too_long(field: &str, len: usize, max: usize) -> FieldError {
    FieldError::new(field, format!("{len} bytes is longer than the maximum of {max}"))
}

/// An app name: 1-63 of `[a-z0-9._-]`, not starting with `.` or `-`.
pub fn check_app_name(name: &str) -> Result<(), FieldError> {
    let ok = (1..=MAX_APP_NAME).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "app name",
            format!(
                "'{}' is not valid: 1-{MAX_APP_NAME} of [a-z0-9._-], not starting with '.' or '-'",
                quote(name)
            ),
        ))
    }
}

/// A release version: see [`crate::is_safe_name`].
pub fn check_version(v: &str) -> Result<(), FieldError> {
    if crate::is_safe_name(v) {
        Ok(())
    } else {
        Err(FieldError::new(
            "version",
            format!(
                "'{}' is not valid: 1-{MAX_VERSION} of [A-Za-z0-9._+-], not starting with '.'",
                quote(v)
            ),
        ))
    }
}

/// Whether `unit` matches the agent's polkit rule:
/// `^fleet-app-[a-z0-9]+(-[a-z0-9]+)*\.service$`.
pub fn polkit_allows(unit: &str) -> bool {
    let Some(middle) = unit
        .strip_prefix(APP_UNIT_PREFIX)
        .and_then(|u| u.strip_suffix(".service"))
    else {
        return false;
    };
    !middle.is_empty()
        && middle
            .split('-')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
}

/// The unit an app runs as unless it opts out: `fleet-app-<app>.service`.
pub fn app_unit(app: &str) -> String {
    format!("{APP_UNIT_PREFIX}{app}.service")
}

/// How strictly [`check_unit`] judges an app's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitRule {
    /// Only `fleet-app-<app>.service` (the default).
    OwnAppUnit,
    /// Any service unit except another app's `fleet-app-*` unit (the app
    /// set `allow_any_unit`).
    AnyService,
}

/// An app's unit. By default only `fleet-app-<app>.service`, the one unit
/// of this app the agent's polkit rule lets it restart; a unit of another
/// app is refused either way, so one app cannot restart another's.
pub fn check_unit(app: &str, unit: &str, rule: UnitRule) -> Result<(), FieldError> {
    let own = app_unit(app);
    if unit.len() > MAX_UNIT {
        return Err(too_long("unit", unit.len(), MAX_UNIT));
    }
    let syntax_ok = unit.len() > ".service".len()
        && unit.ends_with(".service")
        && unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':' | '\\'));
    if !syntax_ok {
        return Err(FieldError::new(
            "unit",
            format!("'{}' is not a systemd service name (e.g. {own})", quote(unit)),
        ));
    }
    if unit == own {
        if !polkit_allows(unit) {
            return Err(FieldError::new(
                "unit",
                format!(
                    "'{unit}' does not match the agent's polkit rule (fleet-app-[a-z0-9]+(-[a-z0-9]+)*.service), so \
                     the agent could not restart it: name the app with [a-z0-9-] only, or pass --allow-any-unit and \
                     extend the rule"
                ),
            ));
        }
        return Ok(());
    }
    if unit.starts_with(APP_UNIT_PREFIX) {
        return Err(FieldError::new(
            "unit",
            format!(
                "'{unit}' is another app's unit (app {app} may only use {own}): an app must not restart another \
                 app's unit"
            ),
        ));
    }
    match rule {
        UnitRule::AnyService => Ok(()),
        UnitRule::OwnAppUnit => Err(FieldError::new(
            "unit",
            format!(
                "'{}' is not this app's unit: app {app} runs as {own}, the only kind of unit the agent's polkit \
                 rule lets it restart (fleet-app-*); to use another unit pass --allow-any-unit (and extend the \
                 polkit rule)",
                quote(unit)
            ),
        )),
    }
}

/// Where a health URL may point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthTarget {
    /// Only the host itself: 127.0.0.0/8, ::1, localhost (the default).
    Loopback,
    /// Anywhere (the app set `allow_remote_health`).
    Anywhere,
}

/// A health URL: `http://`, at most [`MAX_HEALTH_URL`] bytes, no userinfo,
/// no whitespace or control characters, and by default a loopback host.
/// The check runs on the host, with the agent's network access: a remote
/// URL would let an operator make every host probe e.g. 169.254.169.254.
pub fn check_health_url(url: &str, target: HealthTarget) -> Result<(), FieldError> {
    const FIELD: &str = "health.http_url";
    if url.len() > MAX_HEALTH_URL {
        return Err(too_long(FIELD, url.len(), MAX_HEALTH_URL));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(FieldError::new(
            FIELD,
            format!("'{}' holds whitespace or control characters", quote(url)),
        ));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(FieldError::new(
            FIELD,
            format!(
                "'{}' must start with http:// (the check runs on the host, against the app's local port)",
                quote(url)
            ),
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(FieldError::new(
            FIELD,
            format!("'{}' holds user information (user@host); leave it out", quote(url)),
        ));
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    if host.is_empty() {
        return Err(FieldError::new(FIELD, format!("'{}' names no host", quote(url))));
    }
    if target == HealthTarget::Anywhere {
        return Ok(());
    }
    let loopback = host.eq_ignore_ascii_case("localhost")
        || match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => v4.is_loopback(),
            Ok(IpAddr::V6(v6)) => v6 == Ipv6Addr::LOCALHOST,
            Err(_) => false,
        };
    if loopback {
        Ok(())
    } else {
        Err(FieldError::new(
            FIELD,
            format!(
                "host '{}' is not loopback: health checks go to 127.0.0.0/8, ::1 or localhost (the app on the host \
                 itself); pass --allow-remote-health to check another address",
                quote(host)
            ),
        ))
    }
}

/// A duration in ms, at most `max` ms; `field` names it.
pub fn check_duration_ms(field: &str, ms: u64, max: u64) -> Result<(), FieldError> {
    if ms <= max {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{} is longer than the maximum of {}",
                describe_ms(ms),
                humantime::format_duration(std::time::Duration::from_millis(max))
            ),
        ))
    }
}

fn describe_ms(ms: u64) -> String {
    if ms > MAX_DURATION_MS * 100 {
        format!("{ms} ms")
    } else {
        humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
    }
}

/// A label an operator sets (`hosts label`, token labels): the same rule as
/// the labels hosts send ([`crate::check_label`]), so a selector can always
/// match it. `field` names where it came from.
pub fn check_operator_label(field: &str, key: &str, value: &str) -> Result<(), FieldError> {
    crate::check_label(key, value).map_err(|e| FieldError::new(field, e))
}

fn check_labels<'a>(
    field: &str,
    labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), FieldError> {
    if labels.len() > MAX_LABELS {
        return Err(FieldError::new(
            field,
            format!("{} labels is more than the maximum of {MAX_LABELS}", labels.len()),
        ));
    }
    for (k, v) in labels {
        check_operator_label(field, k, v)?;
    }
    Ok(())
}

/// A selector "k=v,k2=v2": at most [`MAX_SELECTOR`] characters, every part
/// a key=value whose key and value follow the label rule (so `=x`, `role`
/// and `a=b=c` are refused). Empty selects every host.
pub fn check_selector(sel: &str) -> Result<(), FieldError> {
    if sel.len() > MAX_SELECTOR {
        return Err(too_long("selector", sel.len(), MAX_SELECTOR));
    }
    for part in sel.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(FieldError::new(
                "selector",
                format!("part '{}' is not key=value (e.g. role=api,env=prod)", quote(part)),
            ));
        };
        crate::check_label(k.trim(), v.trim())
            .map_err(|e| FieldError::new("selector", format!("part '{}': {e}", quote(part))))?;
    }
    Ok(())
}

/// A host reference (id, id prefix, hostname): 1-253 characters.
pub fn check_host_ref(field: &str, v: &str) -> Result<(), FieldError> {
    if v.is_empty() {
        return Err(FieldError::new(
            field,
            "is empty; give a host id, id prefix or hostname",
        ));
    }
    if v.len() > MAX_HOST_REF {
        return Err(too_long(field, v.len(), MAX_HOST_REF));
    }
    Ok(())
}

/// A certificate signing request's size.
pub fn check_csr(csr_der: &[u8]) -> Result<(), FieldError> {
    if csr_der.len() > MAX_CSR {
        return Err(too_long("csr_der", csr_der.len(), MAX_CSR));
    }
    Ok(())
}

/// An app definition as the controller stores it (defaults filled in).
pub fn check_app_spec(spec: &AppSpec) -> Result<(), FieldError> {
    check_app_name(&spec.name)?;
    let unit_rule = if spec.allow_any_unit {
        UnitRule::AnyService
    } else {
        UnitRule::OwnAppUnit
    };
    check_unit(&spec.name, &spec.unit, unit_rule)?;
    check_selector(&spec.selector)?;
    if let Some(health) = &spec.health {
        match &health.check {
            Some(Check::HttpUrl(u)) => {
                let target = if spec.allow_remote_health {
                    HealthTarget::Anywhere
                } else {
                    HealthTarget::Loopback
                };
                check_health_url(u, target)?;
            }
            Some(Check::Command(c)) if c.trim().is_empty() => {
                return Err(FieldError::new("health.command", "is empty"));
            }
            Some(Check::Command(c)) if c.len() > MAX_HEALTH_COMMAND => {
                return Err(too_long("health.command", c.len(), MAX_HEALTH_COMMAND));
            }
            _ => {}
        }
        check_duration_ms("health.timeout", health.timeout_ms, MAX_DEPLOY_WAIT_MS)?;
    }
    check_duration_ms("settle", spec.settle_ms, MAX_DEPLOY_WAIT_MS)?;
    if spec.keep > MAX_KEEP {
        return Err(FieldError::new(
            "keep",
            format!("{} is more than the maximum of {MAX_KEEP}", spec.keep),
        ));
    }
    let run_as_ok = spec.run_as.len() <= MAX_RUN_AS
        && !spec.run_as.starts_with('-')
        && spec
            .run_as
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !run_as_ok {
        return Err(FieldError::new(
            "run_as",
            format!(
                "'{}' is not a user name: 0-{MAX_RUN_AS} of [A-Za-z0-9._-], not starting with '-'",
                quote(&spec.run_as)
            ),
        ));
    }
    if spec.signing_keys.len() > MAX_SIGNING_KEYS {
        return Err(FieldError::new(
            "signing_keys",
            format!("an app lists at most {MAX_SIGNING_KEYS} signing keys"),
        ));
    }
    for k in &spec.signing_keys {
        crate::signing::PublicKey::parse(k).map_err(|why| FieldError::new("signing_keys", why))?;
    }
    Ok(())
}

/// A join token request. Durations of 0 mean "the controller's default".
pub fn check_create_token(r: &CreateTokenRequest) -> Result<(), FieldError> {
    check_labels("labels", r.labels.iter())?;
    if r.allowed_label_keys.len() > MAX_LABELS {
        return Err(FieldError::new(
            "allowed_label_keys",
            format!(
                "{} keys is more than the maximum of {MAX_LABELS}",
                r.allowed_label_keys.len()
            ),
        ));
    }
    for k in &r.allowed_label_keys {
        crate::check_label(k, "").map_err(|e| FieldError::new("allowed_label_keys", e))?;
    }
    if r.description.len() > MAX_DESCRIPTION {
        return Err(too_long("description", r.description.len(), MAX_DESCRIPTION));
    }
    check_duration_ms("ttl", r.ttl_ms, MAX_DURATION_MS)?;
    check_duration_ms("cert_ttl", r.cert_ttl_ms, MAX_DURATION_MS)?;
    if r.unlimited && r.max_uses != 0 {
        return Err(FieldError::new(
            "max_uses",
            format!("{} uses contradicts unlimited; give one of them", r.max_uses),
        ));
    }
    Ok(())
}

/// The most hosts one `ListHosts` answer holds when a page is asked for.
pub const MAX_PAGE_SIZE: u32 = 5000;
/// A page also ends before its hosts pass this many bytes, so that any
/// page fits a client's usual 4 MiB answer limit, however large its hosts.
pub const MAX_PAGE_BYTES: usize = 2 << 20;
/// The longest page token (a hostname and a host id).
pub const MAX_PAGE_TOKEN: usize = crate::MAX_HOSTNAME + 1 + 128;

/// A `ListHosts` request's page (its selector is parsed where it is used).
pub fn check_list_hosts(r: &crate::ListHostsRequest) -> Result<(), FieldError> {
    if r.page_size > MAX_PAGE_SIZE {
        return Err(FieldError::new(
            "page_size",
            format!("{} is more than the maximum of {MAX_PAGE_SIZE}", r.page_size),
        ));
    }
    if r.page_token.len() > MAX_PAGE_TOKEN {
        return Err(too_long("page_token", r.page_token.len(), MAX_PAGE_TOKEN));
    }
    Ok(())
}

/// A `hosts label` request.
pub fn check_label_host(r: &LabelHostRequest) -> Result<(), FieldError> {
    check_host_ref("id", &r.id)?;
    check_labels("labels", r.set.iter())?;
    if r.remove.len() > MAX_LABELS {
        return Err(FieldError::new(
            "remove",
            format!("{} keys is more than the maximum of {MAX_LABELS}", r.remove.len()),
        ));
    }
    for k in &r.remove {
        crate::check_label(k, "").map_err(|e| FieldError::new("remove", e))?;
    }
    Ok(())
}

/// A rollout request's names, selector and durations (the batch, failure
/// and offline specs have their own parsers in [`crate::rollout`]).
pub fn check_start_rollout(r: &crate::StartRolloutRequest) -> Result<(), FieldError> {
    check_app_name(&r.app)?;
    if !r.version.is_empty() {
        check_version(&r.version)?;
    }
    check_selector(&r.selector)?;
    check_duration_ms("canary_wait", r.canary_wait_ms, MAX_DURATION_MS)?;
    check_duration_ms("pause_between", r.pause_between_ms, MAX_DURATION_MS)?;
    check_duration_ms("batch_deadline", r.batch_deadline_ms, MAX_DURATION_MS)?;
    for (field, v) in [
        ("batch", &r.batch),
        ("max_failures", &r.max_failures),
        ("offline", &r.offline),
    ] {
        if v.len() > 64 {
            return Err(too_long(field, v.len(), 64));
        }
    }
    Ok(())
}

/// A release's metadata (`release push --meta`).
pub fn check_metadata<'a>(metadata: impl ExactSizeIterator<Item = (&'a String, &'a String)>) -> Result<(), FieldError> {
    if metadata.len() > MAX_METADATA {
        return Err(FieldError::new(
            "metadata",
            format!("{} entries is more than the maximum of {MAX_METADATA}", metadata.len()),
        ));
    }
    for (k, v) in metadata {
        crate::check_label(k, "").map_err(|e| FieldError::new("metadata", e))?;
        if v.len() > MAX_METADATA_VALUE {
            return Err(too_long(&format!("metadata[{k}]"), v.len(), MAX_METADATA_VALUE));
        }
        if v.chars().any(char::is_control) {
            return Err(FieldError::new(format!("metadata[{k}]"), "holds control characters"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HealthCheck;

    #[test]
    fn units_are_the_apps_own_unless_it_opts_out() {
        use UnitRule::*;
        assert_eq!(check_unit("demo", "fleet-app-demo.service", OwnAppUnit), Ok(()));
        for (unit, rule, needle) in [
            ("ssh.service", OwnAppUnit, "--allow-any-unit"),
            ("fleet-app-other.service", OwnAppUnit, "another app's unit"),
            ("fleet-app-other.service", AnyService, "another app's unit"),
            ("demo", OwnAppUnit, "not a systemd service name"),
            ("a b.service", AnyService, "not a systemd service name"),
        ] {
            let e = check_unit("demo", unit, rule).expect_err(unit);
            assert_eq!(e.field, "unit");
            assert!(e.problem.contains(needle), "{unit}: {e}");
        }
        assert_eq!(check_unit("demo", "nginx.service", AnyService), Ok(()));
        let e = check_unit("my_app", "fleet-app-my_app.service", OwnAppUnit).expect_err("polkit");
        assert!(e.problem.contains("polkit"), "{e}");
        let long = format!("{}.service", "a".repeat(300));
        assert!(check_unit("demo", &long, AnyService).is_err());
    }

    #[test]
    fn polkit_rule_matches_the_shipped_regex() {
        for ok in ["fleet-app-a.service", "fleet-app-web-2.service"] {
            assert!(polkit_allows(ok), "{ok}");
        }
        for bad in [
            "fleet-app-.service",
            "fleet-app-A.service",
            "fleet-app-a--b.service",
            "fleet-app-a-.service",
            "fleet-app-a.b.service",
            "fleet-app-a.socket",
            "ssh.service",
        ] {
            assert!(!polkit_allows(bad), "{bad}");
        }
    }

    #[test]
    fn health_urls_stay_on_the_host_unless_allowed() {
        use HealthTarget::*;
        for ok in [
            "http://127.0.0.1:8080/health",
            "http://127.9.9.9/",
            "http://localhost:80",
            "http://LOCALHOST/h?x=1",
            "http://[::1]:8080/health",
        ] {
            assert_eq!(check_health_url(ok, Loopback), Ok(()), "{ok}");
        }
        for bad in [
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
            "http://example.com/health",
            "http://2130706433/",
            "http://[::ffff:127.0.0.1]/",
            "http://127.0.0.1@169.254.169.254/",
            "https://127.0.0.1/",
            "http://127.0.0.1/a b",
            "http:///x",
        ] {
            let e = check_health_url(bad, Loopback).expect_err(bad);
            assert_eq!(e.field, "health.http_url", "{bad}");
        }
        assert!(check_health_url("http://169.254.169.254/", Loopback)
            .expect_err("metadata")
            .problem
            .contains("--allow-remote-health"));
        assert_eq!(check_health_url("http://10.0.0.1:8080/h", Anywhere), Ok(()));
        let long = format!("http://127.0.0.1/{}", "a".repeat(MAX_HEALTH_URL));
        assert!(check_health_url(&long, Anywhere).is_err());
    }

    #[test]
    fn selectors_need_keys_and_label_shaped_pairs() {
        assert_eq!(check_selector(""), Ok(()));
        assert_eq!(check_selector("role=api, env=prod"), Ok(()));
        for bad in ["=x", "role", "a=b=c", "k=v\nx", &"k=v,".repeat(300)] {
            let e = check_selector(bad).expect_err(bad);
            assert_eq!(e.field, "selector");
        }
    }

    #[test]
    fn durations_and_sizes_name_their_field() {
        assert_eq!(check_duration_ms("ttl", 3_600_000, MAX_DURATION_MS), Ok(()));
        let e = check_duration_ms("ttl", u64::MAX, MAX_DURATION_MS).expect_err("max");
        assert!(e.to_string().starts_with("ttl: "), "{e}");
        let token = CreateTokenRequest {
            description: "x".repeat(3 << 20),
            ..Default::default()
        };
        let e = check_create_token(&token).expect_err("3 MB description");
        assert_eq!(e.field, "description");
        assert!(e.to_string().len() < 200, "the message does not quote the field: {e}");
        assert_eq!(check_csr(&[0; 300]), Ok(()));
        assert_eq!(check_csr(&[0; MAX_CSR + 1]).expect_err("csr").field, "csr_der");
    }

    #[test]
    fn app_specs_are_checked_field_by_field() {
        let spec = AppSpec {
            name: "demo".into(),
            unit: "fleet-app-demo.service".into(),
            keep: 5,
            settle_ms: 1000,
            health: Some(HealthCheck {
                check: Some(Check::HttpUrl("http://127.0.0.1:8080/health".into())),
                timeout_ms: 30_000,
            }),
            ..Default::default()
        };
        assert_eq!(check_app_spec(&spec), Ok(()));
        let cases: Vec<(AppSpec, &str)> = vec![
            (
                AppSpec {
                    name: "Demo".into(),
                    ..spec.clone()
                },
                "app name",
            ),
            (
                AppSpec {
                    unit: "ssh.service".into(),
                    ..spec.clone()
                },
                "unit",
            ),
            (
                AppSpec {
                    selector: "=x".into(),
                    ..spec.clone()
                },
                "selector",
            ),
            (
                AppSpec {
                    settle_ms: u64::MAX,
                    ..spec.clone()
                },
                "settle",
            ),
            (
                AppSpec {
                    keep: 10_000,
                    ..spec.clone()
                },
                "keep",
            ),
            (
                AppSpec {
                    run_as: "root\n".into(),
                    ..spec.clone()
                },
                "run_as",
            ),
            (
                AppSpec {
                    health: Some(HealthCheck {
                        check: Some(Check::HttpUrl("http://169.254.169.254/".into())),
                        timeout_ms: 1000,
                    }),
                    ..spec.clone()
                },
                "health.http_url",
            ),
            (
                AppSpec {
                    health: Some(HealthCheck {
                        check: None,
                        timeout_ms: u64::MAX,
                    }),
                    ..spec.clone()
                },
                "health.timeout",
            ),
        ];
        for (s, field) in cases {
            assert_eq!(check_app_spec(&s).expect_err(field).field, field);
        }
        let opted_out = AppSpec {
            unit: "nginx.service".into(),
            allow_any_unit: true,
            allow_remote_health: true,
            health: Some(HealthCheck {
                check: Some(Check::HttpUrl("http://10.1.2.3/".into())),
                timeout_ms: 1000,
            }),
            ..spec
        };
        assert_eq!(check_app_spec(&opted_out), Ok(()));
    }

    #[test]
    fn operator_labels_follow_the_host_label_rule() {
        let mut r = LabelHostRequest {
            id: "web-1".into(),
            ..Default::default()
        };
        r.set.insert("role".into(), "api".into());
        assert_eq!(check_label_host(&r), Ok(()));
        r.set.insert("k".into(), "x".repeat(1 << 20));
        assert_eq!(check_label_host(&r).expect_err("1 MB value").field, "labels");
        assert!(check_label_host(&r).expect_err("quoted").to_string().len() < 300);
    }
}
