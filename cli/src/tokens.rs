//! `fleetctl token create|ls|revoke`: join tokens (`TokenService`).

use std::time::Duration;

use fleet_proto::{CreateTokenRequest, JoinToken, ListTokensRequest, RevokeTokenRequest};
use serde_json::{json, Value};

use crate::args::{label_map, TokenCreateArgs};
use crate::client::Client;
use crate::error::Error;
use crate::output::{self, Format, Report, Table};

/// The `token create` request, checked against the contract's limits before
/// dialling. Without `--uses` the controller's default applies (`token_uses`,
/// 1 unless configured); `--uses 0` or `--unlimited` asks for no limit.
pub fn create_request(args: &TokenCreateArgs) -> Result<CreateTokenRequest, Error> {
    let uses = args.uses.unwrap_or(0);
    let request = CreateTokenRequest {
        labels: label_map(&args.labels).map_err(Error::Usage)?,
        ttl_ms: args.ttl.map(millis).unwrap_or(0),
        max_uses: uses,
        description: args.description.clone().unwrap_or_default(),
        cert_ttl_ms: args.cert_ttl.map(millis).unwrap_or(0),
        allowed_label_keys: args.allow_labels.clone(),
        unlimited: args.unlimited || args.uses == Some(0),
    };
    if args.unlimited && uses != 0 {
        return Err(Error::Usage(format!(
            "--unlimited and --uses {uses} contradict each other; give one of them"
        )));
    }
    fleet_proto::limits::check_create_token(&request).map_err(|e| Error::Usage(e.to_string()))?;
    Ok(request)
}

/// Creates a join token. The secret goes to stdout alone (table output) so
/// `TOKEN=$(fleetctl token create ...)` captures exactly it; the details go to
/// stderr for the person watching.
pub async fn create(client: &Client, request: CreateTokenRequest, format: Format) -> Result<Report, Error> {
    let response = client
        .tokens()
        .create_token(request)
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    let token = response.token.unwrap_or_default();
    Ok(match format {
        Format::Json => Report::json(&json!({
            "id": token.id,
            "secret": response.secret,
            "labels": output::sorted(&token.labels),
            "expires_at_ms": token.expires_at_ms,
            "max_uses": token.max_uses,
            "cert_ttl_ms": token.cert_ttl_ms,
            "allowed_label_keys": token.allowed_label_keys,
            "state": token.state().word(),
        })),
        Format::Table => Report {
            stdout: format!("{}\n", response.secret),
            stderr: describe_created(&token, fleet_proto::now_ms()),
        },
    })
}

/// The stderr lines after `token create`.
fn describe_created(token: &JoinToken, now_ms: i64) -> String {
    let uses = match token.max_uses {
        0 => "unlimited uses until it expires".to_string(),
        1 => "1 use".to_string(),
        n => format!("{n} uses"),
    };
    let cert = match token.cert_ttl_ms {
        0 => "the controller's default certificate lifetime".to_string(),
        ms => format!(
            "certificates valid {}",
            humantime::format_duration(Duration::from_millis(ms))
        ),
    };
    let own = if token.allowed_label_keys.is_empty() {
        "hosts set no labels themselves".to_string()
    } else {
        format!("hosts may set {}", token.allowed_label_keys.join(", "))
    };
    format!(
        "created join token {}: labels {}; {own}; expires {}; {uses}; {cert}\n\
         the secret above is shown only once: put it in the agent's join_token\n",
        output::escape(&token.id),
        output::escape(&output::labels(&token.labels)),
        output::when(token.expires_at_ms, now_ms, "never"),
    )
}

/// Lists join tokens.
pub async fn list(client: &Client, all: bool, format: Format) -> Result<Report, Error> {
    let response = client
        .tokens()
        .list_tokens(ListTokensRequest { all })
        .await
        .map_err(|s| client.fail(s))?;
    let tokens = response.into_inner().tokens;
    Ok(match format {
        Format::Json => Report::json(&Value::Array(tokens.iter().map(token_json).collect())),
        Format::Table => {
            let mut report = Report::out(token_table(&tokens, fleet_proto::now_ms()));
            if tokens.is_empty() && !all {
                report.stderr = "no active join tokens; --all also shows expired, revoked and used-up ones\n".into();
            }
            report
        }
    })
}

/// Revokes a join token.
pub async fn revoke(client: &Client, id: &str, format: Format) -> Result<Report, Error> {
    let request = RevokeTokenRequest { id: id.to_string() };
    let token = client
        .tokens()
        .revoke_token(request)
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();
    Ok(match format {
        Format::Json => Report::json(&token_json(&token)),
        Format::Table => Report::out(format!("revoked join token {}", token.id)),
    })
}

/// A token record as JSON (never with a secret: the record holds none).
pub fn token_json(t: &JoinToken) -> Value {
    json!({
        "id": t.id,
        "labels": output::sorted(&t.labels),
        "state": t.state().word(),
        "uses": t.uses,
        "max_uses": t.max_uses,
        "created_at_ms": t.created_at_ms,
        "expires_at_ms": t.expires_at_ms,
        "revoked_at_ms": t.revoked_at_ms,
        "description": t.description,
        "created_by": t.created_by,
        "cert_ttl_ms": t.cert_ttl_ms,
        "allowed_label_keys": t.allowed_label_keys,
    })
}

fn token_table(tokens: &[JoinToken], now_ms: i64) -> String {
    let mut table = Table::new(vec!["ID", "LABELS", "STATE", "USES", "EXPIRES", "DESCRIPTION"]);
    for t in tokens {
        table.row(vec![
            t.id.clone(),
            output::labels(&t.labels),
            t.state().word().to_string(),
            uses(t.uses, t.max_uses),
            output::relative_or(t.expires_at_ms, now_ms, "never"),
            t.description.clone(),
        ]);
    }
    table.render()
}

/// "1/3", or "2/∞" when the token has no use limit.
fn uses(uses: u32, max_uses: u32) -> String {
    match max_uses {
        0 => format!("{uses}/∞"),
        max => format!("{uses}/{max}"),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken {
            id: "jt1".into(),
            labels: [("env".to_string(), "prod".to_string())].into_iter().collect(),
            created_at_ms: 1_000,
            expires_at_ms: 1_000 + 3_600_000,
            max_uses: 3,
            uses: 1,
            revoked_at_ms: 0,
            created_by: "admin".into(),
            description: "asg".into(),
            state: fleet_proto::TokenState::Active.into(),
            cert_ttl_ms: 7 * 86_400_000,
            allowed_label_keys: vec!["az".into()],
        }
    }

    #[test]
    fn uses_column() {
        assert_eq!(uses(1, 3), "1/3");
        assert_eq!(uses(2, 0), "2/∞");
    }

    #[test]
    fn table_rows() {
        let table = token_table(&[token()], 1_000 + 2_000);
        let mut lines = table.lines();
        assert!(lines.next().is_some_and(|h| h.starts_with("ID ")));
        let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
        assert_eq!(row, ["jt1", "env=prod", "active", "1/3", "in", "59m", "asg"]);
    }

    #[test]
    fn json_keys() {
        let v = token_json(&token());
        let mut keys: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "allowed_label_keys",
                "cert_ttl_ms",
                "created_at_ms",
                "created_by",
                "description",
                "expires_at_ms",
                "id",
                "labels",
                "max_uses",
                "revoked_at_ms",
                "state",
                "uses"
            ]
        );
        assert_eq!(v["labels"]["env"], "prod");
    }

    #[test]
    fn created_details_never_hold_secret() {
        let text = describe_created(&token(), 1_000);
        assert!(
            text.contains("jt1") && text.contains("env=prod") && text.contains("3 uses"),
            "{text}"
        );
        assert!(text.contains("certificates valid 7days"), "{text}");
    }
}
