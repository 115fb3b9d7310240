//! `fleetctl operator create|ls|show|rm` and `operator token create|revoke`:
//! operator identities and their tokens (`OperatorService`, admins only).

use fleet_proto::{
    CreateOperatorRequest, CreateOperatorTokenRequest, GetOperatorRequest, ListOperatorsRequest, OperatorInfo,
    OperatorScope, OperatorToken, RevokeOperatorTokenRequest,
};
use serde_json::{json, Value};

use crate::args::{OperatorCreateArgs, Ttl};
use crate::client::Client;
use crate::error::Error;
use crate::output::{self, Block, Format, Report, Table};

/// The `operator create` request, checked before dialling.
pub fn create_request(args: &OperatorCreateArgs) -> Result<CreateOperatorRequest, Error> {
    let selector = args.selector.clone().unwrap_or_default();
    fleet_proto::limits::check_selector(&selector).map_err(|e| Error::Usage(e.to_string()))?;
    for app in &args.apps {
        fleet_proto::limits::check_app_name(app).map_err(|e| Error::Usage(e.to_string()))?;
    }
    if !matches!(args.role.as_str(), "admin" | "deployer" | "viewer") {
        return Err(Error::Usage(format!(
            "--role '{}' is not one of admin, deployer, viewer",
            args.role
        )));
    }
    if args.role != "deployer" && (!args.apps.is_empty() || !selector.is_empty()) {
        return Err(Error::Usage(format!(
            "--app and --selector limit a deployer; a {} cannot have them",
            args.role
        )));
    }
    Ok(CreateOperatorRequest {
        name: args.name.clone(),
        role: args.role.clone(),
        scope: Some(OperatorScope {
            apps: args.apps.clone(),
            selector,
        }),
        description: args.description.clone().unwrap_or_default(),
    })
}

/// Creates an identity.
pub async fn create(client: &Client, request: CreateOperatorRequest, format: Format) -> Result<Report, Error> {
    let op = client
        .operators()
        .create_operator(request)
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    Ok(match format {
        Format::Json => Report::json(&info_json(&op)),
        Format::Table => Report::out(format!(
            "created operator {} ({}{}); give it a token: fleetctl operator token create {} --ttl 90d",
            output::escape(&op.name),
            op.role,
            scope_suffix(op.scope.as_ref()),
            output::escape(&op.name)
        )),
    })
}

/// Lists identities.
pub async fn list(client: &Client, format: Format) -> Result<Report, Error> {
    let ops = client
        .operators()
        .list_operators(ListOperatorsRequest {})
        .await
        .map_err(|s| client.fail(s))?
        .into_inner()
        .operators;
    Ok(match format {
        Format::Json => Report::json(&Value::Array(ops.iter().map(info_json).collect())),
        Format::Table => Report::out(table(&ops, fleet_proto::now_ms())),
    })
}

/// Shows one identity with its tokens.
pub async fn show(client: &Client, name: &str, format: Format) -> Result<Report, Error> {
    let op = client
        .operators()
        .get_operator(GetOperatorRequest { name: name.into() })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    Ok(match format {
        Format::Json => Report::json(&info_json(&op)),
        Format::Table => Report::out(detail(&op, fleet_proto::now_ms())),
    })
}

/// Removes an identity and its tokens.
pub async fn remove(client: &Client, name: &str, format: Format) -> Result<Report, Error> {
    let op = client
        .operators()
        .remove_operator(GetOperatorRequest { name: name.into() })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    Ok(match format {
        Format::Json => Report::json(&info_json(&op)),
        Format::Table => Report::out(format!(
            "removed operator {} and its {} token(s)",
            output::escape(&op.name),
            op.tokens.len()
        )),
    })
}

/// Creates a token; the secret goes to stdout alone (table output) so
/// `TOKEN=$(fleetctl operator token create ci)` captures exactly it.
pub async fn create_token(
    client: &Client,
    name: &str,
    ttl: Ttl,
    description: Option<&str>,
    format: Format,
) -> Result<Report, Error> {
    let ttl_ms = match ttl {
        Ttl::Never => 0,
        Ttl::For(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
    };
    let response = client
        .operators()
        .create_operator_token(CreateOperatorTokenRequest {
            operator: name.into(),
            ttl_ms,
            description: description.unwrap_or_default().into(),
        })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    let token = response.token.unwrap_or_default();
    let now = fleet_proto::now_ms();
    Ok(match format {
        Format::Json => {
            let mut v = token_json(&token, now);
            v["secret"] = json!(response.secret);
            Report::json(&v)
        }
        Format::Table => Report {
            stdout: format!("{}\n", response.secret),
            stderr: format!(
                "created token {} for operator {}; expires {}\n\
                 the secret above is shown only once; its other tokens keep working until revoked \
                 ('fleetctl operator token revoke ID')\n",
                output::escape(&token.id),
                output::escape(&token.operator),
                output::when(token.expires_at_ms, now, "never"),
            ),
        },
    })
}

/// Revokes one token.
pub async fn revoke_token(client: &Client, id: &str, format: Format) -> Result<Report, Error> {
    let token = client
        .operators()
        .revoke_operator_token(RevokeOperatorTokenRequest {
            id: fleet_proto::token_public_id(id),
        })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    Ok(match format {
        Format::Json => Report::json(&token_json(&token, fleet_proto::now_ms())),
        Format::Table => Report::out(format!(
            "revoked token {} of operator {}: refused from now on",
            output::escape(&token.id),
            output::escape(&token.operator)
        )),
    })
}

/// " limited to apps web; hosts env=staging", or nothing.
pub fn scope_suffix(scope: Option<&OperatorScope>) -> String {
    match scope_words(scope) {
        s if s == "everything" => String::new(),
        s => format!(", limited to {s}"),
    }
}

/// What a scope limits, in words ("everything" when nothing).
pub fn scope_words(scope: Option<&OperatorScope>) -> String {
    let Some(scope) = scope else {
        return "everything".into();
    };
    let mut parts = Vec::new();
    if !scope.apps.is_empty() {
        parts.push(format!("apps {}", scope.apps.join(", ")));
    }
    if !scope.selector.is_empty() {
        parts.push(format!("hosts {}", scope.selector));
    }
    if parts.is_empty() {
        "everything".into()
    } else {
        parts.join("; ")
    }
}

/// A token's state at `now`.
pub fn token_state(t: &OperatorToken, now: i64) -> &'static str {
    if t.revoked_at_ms != 0 {
        "revoked"
    } else if t.expires_at_ms != 0 && now >= t.expires_at_ms {
        "expired"
    } else {
        "active"
    }
}

fn token_json(t: &OperatorToken, now: i64) -> Value {
    json!({
        "id": t.id,
        "operator": t.operator,
        "state": token_state(t, now),
        "created_at_ms": t.created_at_ms,
        "expires_at_ms": t.expires_at_ms,
        "revoked_at_ms": t.revoked_at_ms,
        "created_by": t.created_by,
        "description": t.description,
    })
}

fn info_json(o: &OperatorInfo) -> Value {
    let now = fleet_proto::now_ms();
    let scope = o.scope.clone().unwrap_or_default();
    json!({
        "name": o.name,
        "role": o.role,
        "scope": {"apps": scope.apps, "selector": scope.selector},
        "created_at_ms": o.created_at_ms,
        "created_by": o.created_by,
        "description": o.description,
        "tokens": o.tokens.iter().map(|t| token_json(t, now)).collect::<Vec<_>>(),
    })
}

/// NAME ROLE SCOPE TOKENS (active of all).
fn table(ops: &[OperatorInfo], now: i64) -> String {
    let mut t = Table::new(vec!["NAME", "ROLE", "LIMITED TO", "TOKENS"]);
    for o in ops {
        let active = o.tokens.iter().filter(|t| token_state(t, now) == "active").count();
        t.row(vec![
            o.name.clone(),
            o.role.clone(),
            scope_words(o.scope.as_ref()),
            format!("{active} active of {}", o.tokens.len()),
        ]);
    }
    t.render()
}

fn detail(o: &OperatorInfo, now: i64) -> String {
    let mut b = Block::default();
    b.line("name", &o.name);
    b.line("role", &o.role);
    b.line("limited to", scope_words(o.scope.as_ref()));
    b.line(
        "created",
        format!("{} by {}", output::timestamp(o.created_at_ms), o.created_by),
    );
    if !o.description.is_empty() {
        b.line("description", &o.description);
    }
    let mut out = b.render();
    if o.tokens.is_empty() {
        out.push_str("\nno tokens: make one with 'fleetctl operator token create NAME'\n");
        return out;
    }
    let mut t = Table::new(vec!["TOKEN", "STATE", "CREATED", "EXPIRES", "BY", "DESCRIPTION"]);
    for tok in &o.tokens {
        t.row(vec![
            tok.id.clone(),
            token_state(tok, now).into(),
            output::timestamp(tok.created_at_ms),
            output::when(tok.expires_at_ms, now, "never"),
            tok.created_by.clone(),
            tok.description.clone(),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(role: &str, apps: &[&str], selector: Option<&str>) -> OperatorCreateArgs {
        OperatorCreateArgs {
            name: "ci".into(),
            role: role.into(),
            apps: apps.iter().map(|a| a.to_string()).collect(),
            selector: selector.map(String::from),
            description: None,
        }
    }

    #[test]
    fn scopes_are_for_deployers_and_checked_before_dialling() {
        let r = create_request(&args("deployer", &["web"], Some("env=staging"))).expect("valid");
        assert_eq!(scope_words(r.scope.as_ref()), "apps web; hosts env=staging");
        for (bad, says) in [
            (args("root", &[], None), "not one of"),
            (args("admin", &["web"], None), "a admin cannot"),
            (args("viewer", &[], Some("env=prod")), "a viewer cannot"),
            (args("deployer", &[], Some("env")), "selector"),
        ] {
            let e = create_request(&bad).expect_err(says);
            assert!(e.to_string().contains(says), "{says}: {e}");
            assert_eq!(e.exit_code(), crate::error::Exit::Usage);
        }
    }

    #[test]
    fn tokens_show_their_state_and_identities_their_limits() {
        let tok = |revoked: i64, expires: i64| OperatorToken {
            id: "t".into(),
            operator: "ci".into(),
            revoked_at_ms: revoked,
            expires_at_ms: expires,
            ..Default::default()
        };
        assert_eq!(token_state(&tok(0, 0), 5), "active");
        assert_eq!(token_state(&tok(0, 5), 5), "expired");
        assert_eq!(token_state(&tok(3, 0), 5), "revoked");
        let ops = [OperatorInfo {
            name: "ci".into(),
            role: "deployer".into(),
            scope: Some(OperatorScope {
                apps: vec!["web".into()],
                selector: String::new(),
            }),
            tokens: vec![tok(0, 0), tok(3, 0)],
            ..Default::default()
        }];
        let text = table(&ops, 5);
        assert!(text.contains("apps web") && text.contains("1 active of 2"), "{text}");
    }
}
