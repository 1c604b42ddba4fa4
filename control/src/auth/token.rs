//! API token text: `berth_<id>_<secret>`. The id is public (it names the
//! token in `berth token list` and in audit records); the secret is 256
//! random bits, shown once and kept only as its SHA-256.

use berth_raft::model::{Role, TokenRecord};

const PREFIX: &str = "berth_";

/// A new token: its text (to show once) and its record (to replicate).
pub fn mint(
    tenant: &str,
    role: Role,
    description: &str,
    created_at_ms: i64,
    expires_at_ms: Option<i64>,
) -> (String, TokenRecord) {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    berth_proto::entropy::fill(&mut id);
    berth_proto::entropy::fill(&mut secret);
    let (id, secret) = (hex(&id), hex(&secret));
    let record = TokenRecord {
        id: id.clone(),
        secret_sha256: digest(&secret),
        tenant: tenant.to_string(),
        role,
        description: description.to_string(),
        created_at_ms,
        expires_at_ms,
        revoked_at_ms: None,
        bootstrap: false,
    };
    (format!("{PREFIX}{id}_{secret}"), record)
}

/// The id and secret of a token's text, if it has the shape of one.
pub fn parse(text: &str) -> Option<(&str, &str)> {
    let (id, secret) = text.strip_prefix(PREFIX)?.split_once('_')?;
    let hexish = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexish(id) && hexish(secret)).then_some((id, secret))
}

/// Whether `secret` is the one `record` was made with. Compares digests
/// in constant time.
pub fn matches(record: &TokenRecord, secret: &str) -> bool {
    let presented = digest(secret);
    let (a, b) = (presented.as_bytes(), record.secret_sha256.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The digest the state keeps of a secret: lowercase hex SHA-256.
pub fn digest(text: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_parses_and_matches_only_its_secret() {
        let (text, record) = mint("team", Role::Member, "ci", 1, None);
        let (id, secret) = parse(&text).unwrap();
        assert_eq!(id, record.id);
        assert_eq!(secret.len(), 64);
        assert!(matches(&record, secret));
        assert!(!matches(&record, &secret.replace(&secret[..1], "x")));
        assert!(!text.contains(&record.secret_sha256));
        let (other, _) = mint("team", Role::Member, "ci", 1, None);
        assert_ne!(other, text);
    }

    #[test]
    fn malformed_text_is_not_a_token() {
        for bad in [
            "",
            "berth_",
            "berth_abc",
            "berth__ab",
            "bearer_ab_cd",
            "berth_zz_cd",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
