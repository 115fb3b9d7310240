//! `OperatorService`: operator identities (name, role, scope) and their
//! tokens. Admins only (the gate checks `operator.admin`). Secrets are made
//! here, returned once, and stored only as their SHA-256.

use std::sync::Arc;

use fleet_proto::operator_service_server::OperatorService;
use fleet_proto::{
    now_ms, CreateOperatorRequest, CreateOperatorTokenRequest, CreateOperatorTokenResponse, GetOperatorRequest,
    ListOperatorsRequest, ListOperatorsResponse, OperatorInfo, OperatorScope, OperatorToken,
    RevokeOperatorTokenRequest,
};
use tonic::{Request, Response, Status};

use crate::access::{check_identity, check_operator_name, Role, Scope};
use crate::audit;
use crate::auth::{operator, OPERATOR_TOKEN_PREFIX};
use crate::error::{Error, Result};
use crate::fleet::Fleet;
use crate::selector::parse_selector;
use crate::store::operators::RemoveIdentityError;
use crate::store::{secret_hash, IdentityRecord, OperatorRecord};

/// `OperatorService`.
pub struct OperatorsService(pub Arc<Fleet>);

fn token_view(t: OperatorRecord) -> OperatorToken {
    OperatorToken {
        id: t.id,
        operator: t.name,
        created_at_ms: t.created_at_ms,
        expires_at_ms: t.expires_at_ms,
        revoked_at_ms: t.revoked_at_ms,
        created_by: t.created_by,
        description: t.description,
    }
}

/// An identity with its tokens, newest first.
fn info(rec: IdentityRecord, tokens: &[OperatorRecord]) -> OperatorInfo {
    let mut mine: Vec<OperatorToken> = tokens
        .iter()
        .filter(|t| t.name == rec.name)
        .cloned()
        .map(token_view)
        .collect();
    mine.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(a.id.cmp(&b.id)));
    OperatorInfo {
        name: rec.name,
        role: rec.role,
        scope: Some(OperatorScope {
            apps: rec.apps,
            selector: rec.selector,
        }),
        created_at_ms: rec.created_at_ms,
        created_by: rec.created_by,
        description: rec.description,
        tokens: mine,
    }
}

/// The identity a create request describes, checked field by field.
fn new_identity(r: CreateOperatorRequest, who: &str, now: i64) -> Result<IdentityRecord> {
    check_operator_name(&r.name).map_err(|why| Error::invalid("name", why))?;
    let role = Role::parse(&r.role).map_err(|why| Error::invalid("role", why))?;
    let scope = r.scope.unwrap_or_default();
    for app in &scope.apps {
        fleet_proto::limits::check_app_name(app).map_err(Error::from)?;
    }
    fleet_proto::limits::check_selector(&scope.selector).map_err(Error::from)?;
    let selector = parse_selector(&scope.selector).map_err(Error::from)?;
    let mut apps = scope.apps;
    apps.sort();
    apps.dedup();
    let scope = Scope { apps, selector };
    check_identity(role, &scope).map_err(|why| Error::invalid("scope", why))?;
    if r.description.len() > fleet_proto::limits::MAX_DESCRIPTION {
        return Err(Error::invalid(
            "description",
            format!(
                "description is longer than {} bytes",
                fleet_proto::limits::MAX_DESCRIPTION
            ),
        ));
    }
    Ok(IdentityRecord {
        name: r.name,
        role: role.word().into(),
        selector: scope.selector_text(),
        apps: scope.apps,
        created_at_ms: now,
        created_by: who.into(),
        description: r.description,
    })
}

impl OperatorsService {
    fn get(&self, name: &str) -> Result<IdentityRecord> {
        self.0
            .store
            .identity(name)?
            .ok_or_else(|| Error::UnknownOperator(name.to_string()))
    }
}

#[tonic::async_trait]
impl OperatorService for OperatorsService {
    async fn create_operator(&self, req: Request<CreateOperatorRequest>) -> Result<Response<OperatorInfo>, Status> {
        let who = operator(&req).name;
        let note = audit::note(&req);
        let rec = new_identity(req.into_inner(), &who, now_ms())?;
        note.set(|d| {
            d.target = format!("operator {} ({})", rec.name, rec.role);
            d.selector = rec.selector.clone();
        });
        if !self.0.store.create_identity(&rec).map_err(Error::Store)? {
            return Err(Error::Exists(format!(
                "operator '{}' already exists; see it with 'fleetctl operator show {}'",
                rec.name, rec.name
            ))
            .into());
        }
        self.0.store.flush().await.map_err(Error::Store)?;
        tracing::info!(operator = %rec.name, role = %rec.role, by = %who, "operator identity created");
        self.0
            .events
            .note(fleet_proto::FleetEventKind::OperatorChanged, &who, |e| {
                e.detail = format!("identity {} created ({})", rec.name, rec.role);
            });
        Ok(Response::new(info(rec, &[])))
    }

    async fn list_operators(
        &self,
        _req: Request<ListOperatorsRequest>,
    ) -> Result<Response<ListOperatorsResponse>, Status> {
        let tokens = self.0.store.operator_tokens().map_err(Error::Store)?;
        let operators = self
            .0
            .store
            .identities()
            .map_err(Error::Store)?
            .into_iter()
            .map(|rec| info(rec, &tokens))
            .collect();
        Ok(Response::new(ListOperatorsResponse { operators }))
    }

    async fn get_operator(&self, req: Request<GetOperatorRequest>) -> Result<Response<OperatorInfo>, Status> {
        let rec = self.get(&req.get_ref().name)?;
        let tokens = self.0.store.operator_tokens().map_err(Error::Store)?;
        Ok(Response::new(info(rec, &tokens)))
    }

    async fn remove_operator(&self, req: Request<GetOperatorRequest>) -> Result<Response<OperatorInfo>, Status> {
        let who = operator(&req).name;
        let note = audit::note(&req);
        let name = req.into_inner().name;
        note.set(|d| d.target = format!("operator {name}"));
        let tokens = self.0.store.operator_tokens().map_err(Error::Store)?;
        let (rec, removed) = match self.0.store.remove_identity(&name) {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Error::UnknownOperator(name).into()),
            Err(RemoveIdentityError::LastAdmin(_)) => {
                return Err(Error::Precondition(RemoveIdentityError::LastAdmin(name).to_string()).into())
            }
            Err(RemoveIdentityError::Store(e)) => return Err(Error::Store(e).into()),
        };
        self.0.store.flush().await.map_err(Error::Store)?;
        tracing::info!(operator = %rec.name, tokens = removed, by = %who, "operator identity removed");
        self.0
            .events
            .note(fleet_proto::FleetEventKind::OperatorChanged, &who, |e| {
                e.detail = format!("identity {} removed with {removed} tokens", rec.name);
            });
        Ok(Response::new(info(rec, &tokens)))
    }

    async fn create_operator_token(
        &self,
        req: Request<CreateOperatorTokenRequest>,
    ) -> Result<Response<CreateOperatorTokenResponse>, Status> {
        let who = operator(&req).name;
        let note = audit::note(&req);
        let r = req.into_inner();
        note.set(|d| d.target = format!("operator {}", r.operator));
        let identity = self.get(&r.operator)?;
        fleet_proto::limits::check_duration_ms("ttl", r.ttl_ms, fleet_proto::limits::MAX_DURATION_MS)
            .map_err(Error::from)?;
        if r.description.len() > fleet_proto::limits::MAX_DESCRIPTION {
            return Err(Error::invalid("description", "description is longer than 1024 bytes").into());
        }
        let now = now_ms();
        let (id, secret) = (crate::random_hex(6), crate::random_hex(24));
        note.set(|d| d.target = format!("token {id} of operator {}", identity.name));
        let rec = OperatorRecord {
            id: id.clone(),
            name: identity.name.clone(),
            role: String::new(),
            secret_sha256: secret_hash(&secret),
            created_at_ms: now,
            expires_at_ms: if r.ttl_ms == 0 {
                0
            } else {
                now.saturating_add(i64::try_from(r.ttl_ms).unwrap_or(i64::MAX))
            },
            revoked_at_ms: 0,
            created_by: who.clone(),
            description: r.description,
        };
        if !self.0.store.add_operator_token(&rec).map_err(Error::Store)? {
            return Err(Error::UnknownOperator(rec.name).into());
        }
        // Durable before the secret is shown: a token handed out must work
        // after a crash.
        self.0.store.flush().await.map_err(Error::Store)?;
        tracing::info!(operator = %rec.name, token_id = %rec.id, by = %who, "operator token created");
        self.0
            .events
            .note(fleet_proto::FleetEventKind::OperatorChanged, &who, |e| {
                e.detail = format!("token {} of {} created", rec.id, rec.name);
            });
        Ok(Response::new(CreateOperatorTokenResponse {
            token: Some(token_view(rec)),
            secret: format!("{OPERATOR_TOKEN_PREFIX}{id}.{secret}"),
        }))
    }

    async fn revoke_operator_token(
        &self,
        req: Request<RevokeOperatorTokenRequest>,
    ) -> Result<Response<OperatorToken>, Status> {
        let who = operator(&req).name;
        let note = audit::note(&req);
        let id = fleet_proto::token_public_id(&req.into_inner().id);
        note.set(|d| d.target = format!("token {id}"));
        let rec = self
            .0
            .store
            .revoke_operator_token(&id, now_ms())
            .map_err(Error::Store)?
            .ok_or_else(|| Error::UnknownOperatorToken(id.clone()))?;
        self.0.store.flush().await.map_err(Error::Store)?;
        tracing::info!(operator = %rec.name, token_id = %rec.id, by = %who, "operator token revoked");
        self.0
            .events
            .note(fleet_proto::FleetEventKind::OperatorChanged, &who, |e| {
                e.detail = format!("token {} of {} revoked", rec.id, rec.name);
            });
        Ok(Response::new(token_view(rec)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, role: &str, apps: &[&str], selector: &str) -> CreateOperatorRequest {
        CreateOperatorRequest {
            name: name.into(),
            role: role.into(),
            scope: Some(OperatorScope {
                apps: apps.iter().map(|a| a.to_string()).collect(),
                selector: selector.into(),
            }),
            description: String::new(),
        }
    }

    #[test]
    fn identities_are_checked_field_by_field() {
        let rec = new_identity(
            req("ci-web", "deployer", &["web", "api", "web"], "env=staging"),
            "root",
            5,
        )
        .expect("valid");
        assert_eq!(rec.apps, ["api", "web"]);
        assert_eq!(
            (rec.selector.as_str(), rec.created_by.as_str()),
            ("env=staging", "root")
        );
        for (bad, field) in [
            (req("Bad Name", "viewer", &[], ""), "operator name"),
            (req("x", "root", &[], ""), "role 'root'"),
            (req("x", "admin", &["web"], ""), "cannot have a scope"),
            (req("x", "deployer", &["../etc"], ""), "app"),
            (req("x", "deployer", &[], "env"), "selector"),
        ] {
            let e = new_identity(bad, "root", 5).expect_err(field);
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
    }
}
