//! `fleetctl login` and `fleetctl whoami`: the `Session` service.

use fleet_proto::{WhoAmIRequest, WhoAmIResponse};
use serde_json::json;

use crate::args::{Global, LoginArgs};
use crate::client::Client;
use crate::config::{self, Env, FileConfig, Resolved, Settings, TrustSource};
use crate::error::Error;
use crate::output::{self, Block, Format, Report};

/// Checks the given credentials with `WhoAmI`, then writes them to the config
/// file. Reads only flags and the environment: login is how the file is made,
/// so whatever is in it now is being replaced.
pub async fn login(global: &Global, args: &LoginArgs, env: &Env) -> Result<Report, Error> {
    let flags = global.flags();
    let mut settings = Settings::default();
    config::apply_overrides(&mut settings, &flags, env)?;
    if let Some(fp) = &args.ca_fingerprint {
        if flags.ca.is_some() {
            return Err(Error::Usage("pass either --ca or --ca-fingerprint, not both".into()));
        }
        settings.trust = Some(TrustSource::Fingerprint(config::normalize_fingerprint(fp)?));
    }
    let missing = |what: &str, how: &str| Error::Usage(format!("fleetctl login needs {what}: {how}"));
    let resolved = Resolved {
        controller: settings.controller.ok_or_else(|| {
            missing(
                "the controller address",
                "pass --controller HOST:PORT or set FLEET_CONTROLLER",
            )
        })?,
        token: settings
            .token
            .ok_or_else(|| missing("a token", "pass --token or set FLEET_TOKEN"))?,
        trust: settings.trust.ok_or_else(|| {
            missing(
                "the controller's CA",
                "pass --ca FILE, --ca-fingerprint sha256:..., or set FLEET_CA",
            )
        })?,
    };
    let path = config::config_path(&flags, env)?.path;

    let client = Client::connect(&resolved).await?;
    let me = whoami_call(&client).await?;

    let (ca, ca_fingerprint) = match &resolved.trust {
        // Stored absolute: the file must keep working from any directory.
        TrustSource::CaFile { path: ca, .. } => {
            let absolute = std::fs::canonicalize(ca).map_err(|e| {
                Error::Failed(format!(
                    "cannot resolve the CA path {}: {e}; pass --ca with an absolute path",
                    ca.display()
                ))
            })?;
            (Some(absolute), None)
        }
        TrustSource::Fingerprint(fp) => (None, Some(fp.clone())),
    };
    let file = FileConfig {
        controller: Some(resolved.controller.clone()),
        token: Some(resolved.token.expose().to_string()),
        ca,
        ca_fingerprint,
    };
    config::write_file(&path, &file).map_err(|e| {
        Error::Failed(format!(
            "cannot write config file {}: {e}; check the directory's permissions or pass --config with another path",
            path.display()
        ))
    })?;

    Ok(match global.output {
        Format::Json => Report::json(&json!({
            "controller": resolved.controller,
            "name": me.name,
            "role": me.role,
            "controller_version": me.controller_version,
            "config": path,
        })),
        Format::Table => Report::out(format!(
            "logged in to {} as {} ({}); config written to {}",
            resolved.controller,
            me.name,
            me.role,
            path.display()
        )),
    })
}

/// Shows who the configured token belongs to: role, what it may change,
/// the permissions the role grants, and when the token expires.
pub async fn whoami(client: &Client, format: Format) -> Result<Report, Error> {
    let me = whoami_call(client).await?;
    let scope = me.scope.clone().unwrap_or_default();
    Ok(match format {
        Format::Json => Report::json(&json!({
            "name": me.name,
            "role": me.role,
            "scope": {"apps": scope.apps, "selector": scope.selector},
            "permissions": me.permissions,
            "token_id": me.token_id,
            "token_expires_at_ms": me.token_expires_at_ms,
            "controller": client.addr(),
            "controller_version": me.controller_version,
        })),
        Format::Table => {
            let now = fleet_proto::now_ms();
            let mut block = Block::default();
            block.line("name", &me.name);
            block.line("role", &me.role);
            block.line("limited to", crate::operators::scope_words(me.scope.as_ref()));
            block.line("permissions", me.permissions.join(", "));
            block.line(
                "token",
                format!(
                    "{} (expires {})",
                    me.token_id,
                    output::when(me.token_expires_at_ms, now, "never")
                ),
            );
            block.line("controller", client.addr());
            block.line("controller_version", &me.controller_version);
            Report::out(block.render())
        }
    })
}

async fn whoami_call(client: &Client) -> Result<WhoAmIResponse, Error> {
    client
        .session()
        .who_am_i(WhoAmIRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| client.fail(s))
}
