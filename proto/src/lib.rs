//! fleet's wire contract: the generated gRPC types of `proto/fleet.proto`
//! (package `fleet.v1`), and [`transport`], the TLS every side speaks.
//!
//! The transport lives here, beside the messages, because it is part of the
//! contract: which ALPN, how the CA is pinned, how a connection is dialled.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("fleet.v1");
}

pub mod notify;
pub mod transport;

pub use v1::*;

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
    use super::*;

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
