//! Label selectors ("role=api,env=prod"): which hosts an app or a rollout
//! covers. Depends on nothing else in the controller.

use std::collections::HashMap;

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
