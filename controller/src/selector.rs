//! Label selectors ("role=api,env=prod"): which hosts an app or a rollout
//! covers. `parse_selector` checks the text form at the edge (the contract's limits).
//! Depends on nothing else in the controller.

use std::collections::HashMap;

use fleet_proto::limits::FieldError;

/// Parses a selector "k=v,k2=v2" into pairs, after the contract's limits
/// (`fleet_proto::limits::check_selector`: `=x`, `role`, oversized refused).
pub fn parse_selector(sel: &str) -> Result<Vec<(String, String)>, FieldError> {
    fleet_proto::limits::check_selector(sel)?;
    Ok(sel
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

/// A parsed selector: every pair must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pairs: Vec<(String, String)>,
}

impl Selector {
    /// Parses "k=v,k2=v2"; empty selects every host. The error names the part.
    pub fn parse(sel: &str) -> Result<Selector, String> {
        fleet_proto::limits::check_selector(sel).map_err(|e| e.to_string())?;
        let pairs = sel
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
                _ => Err(format!(
                    "selector part '{kv}' is not key=value (e.g. role=api,env=prod)"
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(Selector { pairs })
    }

    /// Whether a host with these labels is selected.
    pub fn matches(&self, labels: &HashMap<String, String>) -> bool {
        self.pairs.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert_eq!(
            parse_selector("role=api, env=prod").expect("ok"),
            vec![("role".into(), "api".into()), ("env".into(), "prod".into())]
        );
        assert!(parse_selector("role").is_err());
        assert!(parse_selector("=x").is_err());
        assert!(parse_selector("").expect("empty").is_empty());
    }

    #[test]
    fn pairs_must_all_match() {
        let labels: HashMap<String, String> = [("role", "web"), ("env", "prod")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(Selector::parse("").expect("empty").matches(&labels));
        assert!(Selector::parse("role=web, env=prod").expect("two").matches(&labels));
        assert!(!Selector::parse("role=web,env=dev").expect("two").matches(&labels));
        assert!(Selector::parse("role").is_err());
        assert!(Selector::parse("=x").is_err(), "a pair needs a key");
    }
}
