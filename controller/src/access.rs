//! Who may do what: the roles, the permissions they grant, the one table
//! naming the permission every operator RPC needs ([`TABLE`]), and the
//! scope checks a deployer's changes go through. Pure: the gate
//! (`ops::OperatorGate`) applies [`authorize`] to every call before a
//! handler runs; handlers apply [`Operator::may_change_app`] and
//! [`Operator::may_change_hosts`] once they know what a call touches.
//!
//! Reading is never scoped: every role sees the whole fleet. A scope limits
//! what a deployer may change (apps, and hosts by labels).

use std::collections::HashMap;

use fleet_proto::{Host, OperatorScope};

/// The package prefix of every gRPC path.
pub const PACKAGE: &str = "/fleet.v1.";

/// A role: what an operator identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Sees the fleet; changes nothing.
    Viewer,
    /// Pushes releases and rolls them out (within its scope).
    Deployer,
    /// Everything.
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Deployer, Role::Admin];

    /// Its name.
    pub fn word(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }

    /// The role a name means.
    pub fn parse(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.word() == s)
            .ok_or_else(|| format!("role '{s}' is not one of admin, deployer, viewer"))
    }

    /// Whether it grants `p`.
    pub fn grants(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Deployer => matches!(p, Session | Read | ReleasePush | ReleaseDelete | Deploy),
            Role::Viewer => matches!(p, Session | Read),
        }
    }

    /// The permissions it grants, in table order.
    pub fn permissions(self) -> Vec<Permission> {
        Permission::ALL.into_iter().filter(|p| self.grants(*p)).collect()
    }
}

/// What an operator call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// `whoami`: any valid token.
    Session,
    /// List and show anything, watch rollouts, read the audit log.
    Read,
    /// Push a release (scoped by app).
    ReleasePush,
    /// Delete a release (scoped by app).
    ReleaseDelete,
    /// Deploy to a host, start, pause, resume and abort rollouts (scoped by
    /// app and by the hosts' labels).
    Deploy,
    /// Create and change apps.
    AppWrite,
    /// Label and remove hosts.
    HostWrite,
    /// Create and revoke join tokens.
    TokenWrite,
    /// Manage operator identities and their tokens.
    OperatorAdmin,
    /// Add, remove and test webhooks.
    NotifyWrite,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 10] = [
        Permission::Session,
        Permission::Read,
        Permission::ReleasePush,
        Permission::ReleaseDelete,
        Permission::Deploy,
        Permission::AppWrite,
        Permission::HostWrite,
        Permission::TokenWrite,
        Permission::OperatorAdmin,
        Permission::NotifyWrite,
    ];

    /// Its name, as refusals, `whoami` and the README say it.
    pub fn word(self) -> &'static str {
        match self {
            Permission::Session => "session",
            Permission::Read => "read",
            Permission::ReleasePush => "release.push",
            Permission::ReleaseDelete => "release.delete",
            Permission::Deploy => "deploy",
            Permission::AppWrite => "app.write",
            Permission::HostWrite => "host.write",
            Permission::TokenWrite => "token.write",
            Permission::OperatorAdmin => "operator.admin",
            Permission::NotifyWrite => "notify.write",
        }
    }

    /// The least role that grants it.
    pub fn least_role(self) -> Role {
        Role::ALL.into_iter().find(|r| r.grants(self)).unwrap_or(Role::Admin)
    }
}

/// The one table: the permission each operator RPC (`Service/Method`)
/// needs. A call whose method is not here, and is not an agent's, is
/// refused. README.md's "Permissions" lists the same.
pub const TABLE: [(&str, Permission); 35] = [
    ("Session/WhoAmI", Permission::Session),
    ("HostService/ListHosts", Permission::Read),
    ("HostService/GetHost", Permission::Read),
    ("HostService/LabelHost", Permission::HostWrite),
    ("HostService/RemoveHost", Permission::HostWrite),
    ("HostService/PruneHosts", Permission::HostWrite),
    ("TokenService/CreateToken", Permission::TokenWrite),
    ("TokenService/ListTokens", Permission::Read),
    ("TokenService/RevokeToken", Permission::TokenWrite),
    ("AppService/CreateApp", Permission::AppWrite),
    ("AppService/UpdateApp", Permission::AppWrite),
    ("AppService/ListApps", Permission::Read),
    ("AppService/GetApp", Permission::Read),
    ("AppService/Deploy", Permission::Deploy),
    ("ReleaseService/PushRelease", Permission::ReleasePush),
    ("ReleaseService/ListReleases", Permission::Read),
    ("ReleaseService/GetRelease", Permission::Read),
    ("ReleaseService/DeleteRelease", Permission::ReleaseDelete),
    ("RolloutService/StartRollout", Permission::Deploy),
    ("RolloutService/ListRollouts", Permission::Read),
    ("RolloutService/GetRollout", Permission::Read),
    ("RolloutService/ControlRollout", Permission::Deploy),
    ("RolloutService/WatchRollout", Permission::Read),
    ("AuditService/ListAudit", Permission::Read),
    ("EventService/WatchEvents", Permission::Read),
    ("NotifyService/AddNotifier", Permission::NotifyWrite),
    ("NotifyService/ListNotifiers", Permission::Read),
    ("NotifyService/RemoveNotifier", Permission::NotifyWrite),
    ("NotifyService/TestNotifier", Permission::NotifyWrite),
    ("OperatorService/CreateOperator", Permission::OperatorAdmin),
    ("OperatorService/ListOperators", Permission::OperatorAdmin),
    ("OperatorService/GetOperator", Permission::OperatorAdmin),
    ("OperatorService/RemoveOperator", Permission::OperatorAdmin),
    ("OperatorService/CreateOperatorToken", Permission::OperatorAdmin),
    ("OperatorService/RevokeOperatorToken", Permission::OperatorAdmin),
];

/// Methods anyone may call, with or without a token: the standard gRPC
/// health check (load balancers, probes) and server reflection (grpcurl
/// reads the API shape, which is public; every call it then makes is
/// checked like any other).
pub const PUBLIC_METHODS: [&str; 4] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The agents' methods: authenticated by their client certificate
/// (`AgentService`) or a join token (`Enrollment`), not by operator tokens;
/// and the fleet's controllers' (`PeerService`: a grant made with the
/// fleet's key, see `peers`).
pub const AGENT_METHODS: [&str; 4] = [
    "Enrollment/Enroll",
    "AgentService/Stream",
    "AgentService/FetchArtifact",
    "PeerService/FetchArtifact",
];

/// Who calls: an agent, an operator needing a permission, or a method no
/// table names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callee {
    /// An agent's method: the operator gate lets it through.
    Agent,
    /// Health and reflection: open to anyone.
    Public,
    /// The dashboard's pages (under [`WEB_PREFIX`]): it checks its callers
    /// itself, from a token in a cookie, and needs `read`.
    Web,
    /// An operator method and what it needs.
    Operator(&'static str, Permission),
    /// Not in any table: refused.
    Unknown,
}

/// Where the dashboard's pages are, on the controller's port.
pub const WEB_PREFIX: &str = "/ui/";

/// What a gRPC path is.
pub fn callee(path: &str) -> Callee {
    if PUBLIC_METHODS.contains(&path) {
        return Callee::Public;
    }
    if path.starts_with(WEB_PREFIX) {
        return Callee::Web;
    }
    let Some(method) = path.strip_prefix(PACKAGE) else {
        return Callee::Unknown;
    };
    if AGENT_METHODS.contains(&method) {
        return Callee::Agent;
    }
    TABLE
        .iter()
        .find(|(m, _)| *m == method)
        .map(|(m, p)| Callee::Operator(m, *p))
        .unwrap_or(Callee::Unknown)
}

/// What a role's changes are limited to (a deployer's only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Apps it may change; empty: any.
    pub apps: Vec<String>,
    /// Labels every host it changes must carry; empty: any host.
    pub selector: Vec<(String, String)>,
}

impl Scope {
    /// Whether it limits anything.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty() && self.selector.is_empty()
    }

    /// The selector as text (`env=staging,team=web`).
    pub fn selector_text(&self) -> String {
        self.selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// How the scope reads in a refusal: `apps web, api; hosts env=staging`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.apps.is_empty() {
            parts.push(format!("apps {}", self.apps.join(", ")));
        }
        if !self.selector.is_empty() {
            parts.push(format!("hosts {}", self.selector_text()));
        }
        if parts.is_empty() {
            "everything".into()
        } else {
            parts.join("; ")
        }
    }

    /// The wire form.
    pub fn to_proto(&self) -> OperatorScope {
        OperatorScope {
            apps: self.apps.clone(),
            selector: self.selector_text(),
        }
    }

    /// Whether a host's labels are inside it.
    pub fn holds(&self, labels: &HashMap<String, String>) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// The authenticated operator of a request (a request extension, put there
/// by the gate).
#[derive(Debug, Clone)]
pub struct Operator {
    /// Identity name (audit, `whoami`).
    pub name: String,
    /// Role.
    pub role: Role,
    /// What its changes are limited to.
    pub scope: Scope,
    /// The token the call came with.
    pub token_id: String,
    /// When that token expires (ms); 0: never.
    pub token_expires_at_ms: i64,
}

/// Why an operator may not do something: the whole sentence the caller
/// sees (gRPC PERMISSION_DENIED, fleetctl exit 4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Whether `op` may call `method`, which needs `p`.
pub fn authorize(op: &Operator, method: &str, p: Permission) -> Result<(), Denied> {
    if op.role.grants(p) {
        return Ok(());
    }
    Err(Denied(format!(
        "operator '{}' is a {}; {method} needs the permission '{}' (role {} or above); ask an admin \
         to do it, or for an identity with that role ('fleetctl operator create'). Roles and \
         permissions: README.md, \"Permissions\"",
        op.name,
        op.role.word(),
        p.word(),
        p.least_role().word(),
    )))
}

/// A method no table names: refused whoever calls.
pub fn unknown_method(path: &str) -> Denied {
    Denied(format!(
        "{path} is not a method this controller authorizes; if fleetctl is newer than the \
         controller, upgrade fleet-controller"
    ))
}

impl Operator {
    /// What the operator is, for refusals: `deployer 'ci' (apps web; hosts env=staging)`.
    fn who(&self) -> String {
        format!(
            "operator '{}' ({}, limited to {})",
            self.name,
            self.role.word(),
            self.scope.describe()
        )
    }

    /// Whether it may change `app` (its releases, hosts running it, its rollouts).
    pub fn may_change_app(&self, app: &str) -> Result<(), Denied> {
        if self.scope.apps.is_empty() || self.scope.apps.iter().any(|a| a == app) {
            return Ok(());
        }
        Err(Denied(format!(
            "{} may not change app '{app}'; ask an admin to add it to the identity's apps \
             ('fleetctl operator create … --app {app}' for a new one)",
            self.who()
        )))
    }

    /// Whether it may change every one of `hosts`: each must carry the
    /// scope's labels. The refusal names the first that does not (by name)
    /// and how many are outside.
    pub fn may_change_hosts<'a>(&self, hosts: impl IntoIterator<Item = &'a Host>) -> Result<(), Denied> {
        if self.scope.selector.is_empty() {
            return Ok(());
        }
        let outside: Vec<&Host> = hosts.into_iter().filter(|h| !self.scope.holds(&h.labels)).collect();
        let Some(first) = outside.first() else {
            return Ok(());
        };
        let name = first
            .facts
            .as_ref()
            .map(|f| f.hostname.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or(first.id.as_str());
        Err(Denied(format!(
            "{} may not change host {name}{more}: it lacks the labels {sel}; narrow the call to \
             hosts inside the scope (e.g. 'fleetctl rollout … --selector {sel}')",
            self.who(),
            more = if outside.len() > 1 {
                format!(" and {} more", outside.len() - 1)
            } else {
                String::new()
            },
            sel = self.scope.selector_text(),
        )))
    }
}

/// Checks the role and scope of a new identity: a scope limits a
/// deployer's changes; an admin is unlimited and a viewer changes nothing,
/// so a scope on either would promise a limit that means nothing.
pub fn check_identity(role: Role, scope: &Scope) -> Result<(), String> {
    if role != Role::Deployer && !scope.is_empty() {
        return Err(format!(
            "a {} cannot have a scope (--app, --selector): only a deployer's changes are limited",
            role.word()
        ));
    }
    Ok(())
}

/// Names the audit log uses for callers that are not identities.
pub const RESERVED_NAMES: [&str; 4] = ["unauthenticated", "controller", "recovery", "unknown"];

/// Checks an identity's name: 1–64 of `a-z 0-9 - _ . @`, starting with a
/// letter or digit (it is printed in the audit log and in refusals).
pub fn check_operator_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.@".contains(c));
    if RESERVED_NAMES.contains(&name) {
        return Err(format!(
            "operator name '{name}' is reserved (the audit log uses it for calls without an identity)"
        ));
    }
    if ok {
        Ok(())
    } else {
        Err(format!(
            "operator name {:?} is not 1-64 of a-z 0-9 - _ . @ starting with a letter or digit",
            name.chars().take(80).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(role: Role, apps: &[&str], selector: &[(&str, &str)]) -> Operator {
        Operator {
            name: "ci".into(),
            role,
            scope: Scope {
                apps: apps.iter().map(|a| a.to_string()).collect(),
                selector: selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            },
            token_id: "t".into(),
            token_expires_at_ms: 0,
        }
    }

    fn host(name: &str, labels: &[(&str, &str)]) -> Host {
        Host {
            id: format!("id-{name}"),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            facts: Some(fleet_proto::HostFacts {
                hostname: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Every rpc in fleet.proto, as `Service/Method`.
    fn proto_methods() -> Vec<String> {
        let text = include_str!("../../proto/proto/fleet.proto");
        let mut service = "";
        let mut out = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.trim_end_matches('{').trim();
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let method = rest.split('(').next().unwrap_or_default().trim();
                out.push(format!("{service}/{method}"));
            }
        }
        out
    }

    #[test]
    fn every_rpc_of_the_proto_is_in_one_table_exactly_once() {
        let methods = proto_methods();
        assert!(methods.len() > 30, "parsed {methods:?}");
        for m in &methods {
            let in_table = TABLE.iter().filter(|(t, _)| t == m).count();
            let agent = AGENT_METHODS.contains(&m.as_str()) as usize;
            assert_eq!(
                in_table + agent,
                1,
                "{m}: in the operator table {in_table}×, agent {agent}×"
            );
        }
        for (t, _) in TABLE {
            assert!(
                methods.iter().any(|m| m == t),
                "{t} is in the table but not in fleet.proto"
            );
        }
    }

    #[test]
    fn paths_are_classified() {
        assert_eq!(callee("/fleet.v1.AgentService/Stream"), Callee::Agent);
        assert_eq!(
            callee("/fleet.v1.HostService/RemoveHost"),
            Callee::Operator("HostService/RemoveHost", Permission::HostWrite)
        );
        assert_eq!(callee("/fleet.v1.HostService/Nope"), Callee::Unknown);
        assert_eq!(callee("/other.v1.HostService/ListHosts"), Callee::Unknown);
        assert_eq!(callee("/grpc.health.v1.Health/Check"), Callee::Public);
        assert_eq!(callee("/grpc.health.v1.Health/Nope"), Callee::Unknown);
    }

    #[test]
    fn each_role_gets_exactly_its_permissions() {
        let words = |r: Role| r.permissions().iter().map(|p| p.word()).collect::<Vec<_>>();
        assert_eq!(words(Role::Viewer), ["session", "read"]);
        assert_eq!(
            words(Role::Deployer),
            ["session", "read", "release.push", "release.delete", "deploy"]
        );
        assert_eq!(words(Role::Admin).len(), Permission::ALL.len());
        let viewer = op(Role::Viewer, &[], &[]);
        assert!(authorize(&viewer, "HostService/ListHosts", Permission::Read).is_ok());
        let e = authorize(&viewer, "AppService/Deploy", Permission::Deploy).expect_err("viewer deploys");
        assert!(
            e.0.contains("'ci' is a viewer") && e.0.contains("'deploy'") && e.0.contains("role deployer"),
            "{e}"
        );
        let deployer = op(Role::Deployer, &[], &[]);
        let e = authorize(&deployer, "HostService/RemoveHost", Permission::HostWrite).expect_err("deployer");
        assert!(e.0.contains("'host.write'") && e.0.contains("role admin"), "{e}");
    }

    #[test]
    fn a_scoped_deployer_changes_only_its_apps_and_hosts() {
        let ci = op(Role::Deployer, &["web"], &[("env", "staging")]);
        assert!(ci.may_change_app("web").is_ok());
        let e = ci.may_change_app("api").expect_err("api");
        assert!(
            e.0.contains("may not change app 'api'") && e.0.contains("apps web"),
            "{e}"
        );
        let staging = host("web-1", &[("env", "staging"), ("role", "web")]);
        let prod = host("web-2", &[("env", "prod")]);
        let bare = host("web-3", &[]);
        assert!(ci.may_change_hosts([&staging]).is_ok());
        let e = ci.may_change_hosts([&staging, &prod, &bare]).expect_err("prod");
        assert!(
            e.0.contains("host web-2 and 1 more") && e.0.contains("--selector env=staging"),
            "{e}"
        );
        // Unscoped: anything.
        let any = op(Role::Deployer, &[], &[]);
        assert!(any.may_change_app("api").is_ok() && any.may_change_hosts([&prod]).is_ok());
    }

    #[test]
    fn only_deployers_have_scopes_and_names_are_plain() {
        let scoped = Scope {
            apps: vec!["web".into()],
            selector: vec![],
        };
        assert!(check_identity(Role::Deployer, &scoped).is_ok());
        assert!(check_identity(Role::Admin, &scoped).is_err());
        assert!(check_identity(Role::Viewer, &scoped).is_err());
        assert!(check_identity(Role::Viewer, &Scope::default()).is_ok());
        for ok in ["ci-web", "alice@example.com", "a", "bob.smith_2"] {
            assert!(check_operator_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "Alice",
            "a b",
            "x\n",
            &"a".repeat(65),
            "unauthenticated",
            "recovery",
        ] {
            assert!(check_operator_name(bad).is_err(), "{bad:?}");
        }
    }
}
