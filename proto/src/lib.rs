//! fleet's wire contract: the generated gRPC types of `proto/fleet.proto`
//! (package `fleet.v1`), and [`transport`], the TLS every side speaks.
//!
//! The transport lives here, beside the messages, because it is part of the
//! contract: which ALPN, how the CA is pinned, how a connection is dialled.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("fleet.v1");
}

pub mod events;
pub mod limits;
pub mod notify;
pub mod phase;
pub mod rollout;
pub mod signing;
pub mod transport;

pub use v1::*;

/// The encoded `FileDescriptorSet` of `fleet.proto`, for gRPC server
/// reflection (grpcurl and other tools read the API from the controller).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fleet_descriptor.bin"));

/// The public id of what someone gave to name a join or operator token:
/// the id itself, or a whole token (`fleet_jt_<id>.<secret>`,
/// `fleet_op_<id>.<secret>`, pasted from a leak), whose secret is dropped so
/// that it reaches no request, record, log or message. At most 64
/// characters are kept.
pub fn token_public_id(given: &str) -> String {
    let t = given.trim();
    let t = ["fleet_op_", "fleet_jt_"]
        .iter()
        .find_map(|p| t.strip_prefix(p))
        .unwrap_or(t);
    t.split('.').next().unwrap_or_default().chars().take(64).collect()
}

/// Milliseconds since the Unix epoch, the unit of every timestamp on the wire.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether `v` is usable as an app name or release version on every side:
/// it becomes a directory name on hosts, so 1-64 of `[A-Za-z0-9._+-]`, not
/// starting with `.` (no `..`, no `/`, no hidden files).
pub fn is_safe_name(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && !v.starts_with('.')
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
}

/// Longest label key (characters).
pub const MAX_LABEL_KEY: usize = 63;
/// Longest label value (characters).
pub const MAX_LABEL_VALUE: usize = 63;
/// Longest hostname (characters, as DNS allows).
pub const MAX_HOSTNAME: usize = 253;

/// Checks a label a host sends about itself: the key 1-63 of
/// `[A-Za-z0-9._/-]` starting and ending with a letter or digit, the value
/// 0-63 of `[A-Za-z0-9._:/-]`. Nothing that could break a selector
/// (`,` `=`), a terminal or a log line gets in. Err says what is wrong.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let key_ok = (1..=MAX_LABEL_KEY).contains(&key.len())
        && edge_ok(key.chars().next())
        && edge_ok(key.chars().last())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'));
    if !key_ok {
        return Err(format!(
            "label key '{}' is not valid: keys are 1-{MAX_LABEL_KEY} of [A-Za-z0-9._/-], starting and ending \
             with a letter or digit",
            key.escape_debug().take(80).collect::<String>()
        ));
    }
    let value_ok = value.len() <= MAX_LABEL_VALUE
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-'));
    if !value_ok {
        return Err(format!(
            "the value of label '{key}' is not valid: values are 0-{MAX_LABEL_VALUE} of [A-Za-z0-9._:/-]"
        ));
    }
    Ok(())
}

/// Checks a hostname a host reports: 1-253 of `[A-Za-z0-9._-]`, starting
/// with a letter or digit. Err says what is wrong.
pub fn check_hostname(name: &str) -> Result<(), String> {
    let ok = (1..=MAX_HOSTNAME).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "hostname '{}' is not valid: hostnames are 1-{MAX_HOSTNAME} of [A-Za-z0-9._-], starting with a \
             letter or digit; set hostname in agent.toml",
            name.escape_debug().take(80).collect::<String>()
        ))
    }
}

/// Parses a size such as "123", "10KiB", "500MiB" or "2GiB" into bytes;
/// `None` when it is not one (or overflows).
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, mult) = [("KiB", 1u64 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("B", 1)]
        .iter()
        .find_map(|(suffix, m)| v.strip_suffix(suffix).map(|n| (n.trim(), *m)))
        .unwrap_or((v, 1));
    num.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {

    #[test]
    fn labels_and_hostnames_from_hosts() {
        for (k, v) in [
            ("az", "eu-west-1a"),
            ("team/owner", "a.b_c:d"),
            ("k", ""),
            ("a", &"v".repeat(63)),
        ] {
            assert_eq!(check_label(k, v), Ok(()), "{k}={v}");
        }
        let long_key = "k".repeat(64);
        for (k, v) in [
            ("", "x"),
            ("-a", "x"),
            ("a-", "x"),
            ("a b", "x"),
            ("a\nb", "x"),
            (long_key.as_str(), "x"),
            ("a", "x,y"),
            ("a", "x=y"),
            ("a", "\x1b[31m"),
            ("a", "new\nline"),
        ] {
            assert!(check_label(k, v).is_err(), "{k:?}={v:?}");
        }
        let e = check_label("a\nb", "x").expect_err("newline");
        assert!(
            e.contains("a\\nb") && !e.contains('\n'),
            "the message shows the key escaped: {e}"
        );
        assert_eq!(check_hostname("web-1.example.com"), Ok(()));
        for bad in ["", "-x", "a b", "x\ny", "\x1b]0;t\x07", &"h".repeat(254)] {
            assert!(check_hostname(bad).is_err(), "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn pasted_tokens_give_their_id_only() {
        assert_eq!(token_public_id("fleet_op_ab12.s3cret"), "ab12");
        assert_eq!(token_public_id("fleet_jt_ab12.s3cret\n"), "ab12");
        assert_eq!(token_public_id(" ab12 "), "ab12");
        assert!(!token_public_id(&format!("fleet_op_{}.x", "a".repeat(500))).contains('x'));
        assert_eq!(token_public_id(&"é".repeat(100)).chars().count(), 64);
    }

    #[test]
    fn safe_names() {
        for ok in ["1.4.2", "v2", "1.0.0-rc.1+build.5", "api_service"] {
            assert!(is_safe_name(ok), "{ok}");
        }
        for bad in ["", "..", ".hidden", "a/b", "1 2", "x\0", &"9".repeat(65)] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("10KiB"), Some(10 << 10));
        assert_eq!(parse_size(" 2 GiB "), Some(2 << 30));
        assert_eq!(parse_size("5B"), Some(5));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("99999999999GiB"), None);
    }
}
