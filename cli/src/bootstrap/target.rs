//! What a `[USER@]HOST[:PORT]` target means.

/// One host to bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// SSH user.
    pub user: String,
    /// Host name or address.
    pub host: String,
    /// SSH port.
    pub port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.port == 22 {
            write!(f, "{}@{}", self.user, self.host)
        } else {
            write!(f, "{}@{}:{}", self.user, self.host, self.port)
        }
    }
}

/// Parses `[USER@]HOST[:PORT]` (`[v6addr]:port` too); `user` and `port` fill
/// in what the target does not say.
pub fn parse_target(s: &str, user: Option<&str>, port: u16) -> Result<Target, String> {
    let s = s.trim();
    let (who, rest) = match s.rsplit_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, s),
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("target '{s}' has '[' without ']'"))?;
        match after.strip_prefix(':') {
            Some(p) => (h, parse_port(s, p)?),
            None if after.is_empty() => (h, port),
            None => return Err(format!("target '{s}' has text after ']'; write [ADDRESS]:PORT")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, parse_port(s, p)?),
            _ => (rest, port),
        }
    };
    if host.is_empty() {
        return Err(format!("target '{s}' names no host; write [USER@]HOST[:PORT]"));
    }
    let user = match who.or(user) {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => {
            return Err(format!(
                "target '{s}' names no user and neither --user nor $USER is set; write USER@{host}"
            ))
        }
    };
    Ok(Target {
        user,
        host: host.to_string(),
        port,
    })
}

fn parse_port(target: &str, p: &str) -> Result<u16, String> {
    p.parse::<u16>()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("target '{target}' has a bad port '{p}'"))
}
