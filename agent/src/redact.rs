//! Defence in depth for what leaves the host: a deploy's progress details
//! carry hook output, health responses and journal lines, which a careless
//! or hostile release can fill with secrets. Before a detail is reported or
//! logged, every PEM block (a private key, a certificate) and the secret
//! half of every fleet token (`fleet_jt_<id>.<secret>`,
//! `fleet_op_<id>.<secret>`) is replaced by a marker.

/// What a PEM block is replaced with.
const PEM_MARK: &str = "[PEM block redacted]";
/// What a token's secret is replaced with.
const SECRET_MARK: &str = "<redacted>";
/// Prefixes of fleet's tokens (`<prefix><id>.<secret>`).
const TOKEN_PREFIXES: [&str; 2] = ["fleet_jt_", "fleet_op_"];

/// `text` without PEM blocks and token secrets.
pub fn redact(text: &str) -> String {
    redact_tokens(&redact_pem(text))
}

/// Replaces every `-----BEGIN …-----` … `-----END …-----` block; a block
/// that never ends is cut from its BEGIN line to the end.
fn redact_pem(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(begin) = rest.find("-----BEGIN ") {
        out.push_str(&rest[..begin]);
        out.push_str(PEM_MARK);
        let block = &rest[begin..];
        rest = match block.find("-----END ") {
            Some(end) => {
                let after_end = &block[end + "-----END ".len()..];
                // The END line's closing dashes.
                match after_end.find("-----") {
                    Some(close) => &after_end[close + 5..],
                    None => "",
                }
            }
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// Replaces the secret after `<prefix><id>.` of every fleet token.
fn redact_tokens(text: &str) -> String {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let next = TOKEN_PREFIXES
            .iter()
            .filter_map(|p| rest.find(p).map(|at| (at, p.len())))
            .min();
        let Some((at, prefix_len)) = next else { break };
        let token = &rest[at..];
        let id_len = token[prefix_len..].chars().take_while(|c| is_token_char(*c)).count();
        let after_id = prefix_len + id_len;
        if token[after_id..].starts_with('.') {
            let secret_len: usize = token[after_id + 1..]
                .chars()
                .take_while(|c| is_token_char(*c))
                .map(char::len_utf8)
                .sum();
            out.push_str(&rest[..at + after_id + 1]);
            if secret_len > 0 {
                out.push_str(SECRET_MARK);
            }
            rest = &token[after_id + 1 + secret_len..];
        } else {
            out.push_str(&rest[..at + after_id]);
            rest = &token[after_id..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----";

    #[test]
    fn a_private_key_printed_by_a_hook_does_not_leave_the_host() {
        let out = redact(&format!("exit status: 0\nstarting\n{KEY}\ndone"));
        assert_eq!(out, "exit status: 0\nstarting\n[PEM block redacted]\ndone");
        assert!(!out.contains("MIGHAgEA"));
        // Two blocks, and one that never ends (cut by a tail, say).
        let out = redact(&format!("{KEY}{KEY}\n-----BEGIN CERTIFICATE-----\nMIIB..."));
        assert_eq!(out, "[PEM block redacted][PEM block redacted]\n[PEM block redacted]");
        assert!(!redact("-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA").contains("abc"));
    }

    #[test]
    fn token_secrets_are_cut_and_their_ids_kept() {
        assert_eq!(
            redact("join_token = \"fleet_jt_3f9a.s3cr3tS3cr3t\" and fleet_op_ab12.ZZZ_zz-9!"),
            "join_token = \"fleet_jt_3f9a.<redacted>\" and fleet_op_ab12.<redacted>!"
        );
        // No secret: nothing to cut; words that only look alike stay.
        assert_eq!(redact("fleet_jt_3f9a. done"), "fleet_jt_3f9a. done");
        assert_eq!(redact("fleet_jt_ and fleet_app"), "fleet_jt_ and fleet_app");
        assert_eq!(redact("nothing here"), "nothing here");
        assert_eq!(redact("ünïcode fleet_op_é.x"), "ünïcode fleet_op_é.x");
    }
}
