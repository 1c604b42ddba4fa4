//! Validation of everything a client sends, before anything is proposed to
//! Raft: a request that fails here changes nothing (invariant 8).

mod image_ref;

use std::collections::BTreeMap;

pub use image_ref::validate_image;

use crate::error::ApiError;

const MAX_ENV_VARS: usize = 256;
/// Longest environment variable name.
pub const MAX_ENV_KEY_BYTES: usize = 256;
/// Longest environment variable value.
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
/// All names and values of a sandbox's env together.
pub const MAX_ENV_TOTAL_BYTES: usize = 256 * 1024;

/// The proposal for a client's command: its request id if it gave one
/// (validated), else a fresh one, so this node's own retries of the write
/// are answered, never applied twice.
pub fn client_proposal(
    command: berth_raft::Command,
    request_id: String,
    caller: &crate::auth::scope::Scope,
) -> Result<berth_raft::Proposal, ApiError> {
    let id = if request_id.is_empty() {
        format!("auto-{}", berth_proto::entropy::uuid())
    } else {
        validate_request_id(&request_id)?;
        request_id
    };
    let mut proposal = berth_raft::Proposal::with_request_id(command, id);
    proposal.audit = Some(berth_raft::model::AuditStamp {
        principal: caller.subject().to_string(),
        tenant: caller.tenant().to_string(),
        at_ms: crate::clock::now_ms(),
    });
    proposal.trace = berth_telemetry::propagate::current_traceparent();
    Ok(proposal)
}

/// `name` is 1-`max` of [A-Za-z0-9_.-], starting with a letter or digit.
fn validate_word(what: &str, name: &str, max: usize) -> Result<(), ApiError> {
    let ok = name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::Invalid(format!(
            "invalid {what} {name:?}: 1-{max} of [A-Za-z0-9_.-], starting with a letter or digit"
        )))
    }
}

/// A node (agent) name, as the agent accepts it.
pub fn validate_node_name(name: &str) -> Result<(), ApiError> {
    validate_word("node name", name, 253)
}

/// A kept volume's name, as the container engine accepts it.
pub fn validate_volume_name(volume: &str) -> Result<(), ApiError> {
    validate_word("volume name", volume, 200)
}

/// A request id is 1-128 printable ASCII characters.
pub fn validate_request_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= berth_raft::model::MAX_REQUEST_ID_LEN
        && id.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ApiError::Invalid(format!(
            "invalid request id {id:?}: must be 1-{} printable ASCII characters",
            berth_raft::model::MAX_REQUEST_ID_LEN
        )))
    }
}

/// A sandbox name must be a DNS-1123 label: at most 63 characters of
/// lowercase letters, digits and '-', starting and ending with a letter or
/// digit.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let invalid = |why: &str| {
        Err(ApiError::Invalid(format!(
            "invalid sandbox name {name:?}: {why}"
        )))
    };
    if name.is_empty() {
        return invalid("must not be empty");
    }
    if name.len() > 63 {
        return invalid("must be at most 63 characters (a DNS-1123 label)");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return invalid("must consist of lowercase letters, digits and '-' (a DNS-1123 label)");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return invalid("must start and end with a letter or digit (a DNS-1123 label)");
    }
    Ok(())
}

/// A policy document must follow the documented schema
/// (`berth_proto::policy`), at most 64 KiB.
pub fn validate_policy(policy: &str) -> Result<(), ApiError> {
    berth_proto::policy::Policy::parse(policy)
        .map(|_| ())
        .map_err(|e| ApiError::Invalid(e.to_string()))
}

/// Environment variable names are POSIX names; values must not hold NUL.
/// Limits: 256 variables, names of at most 256 bytes, values of at most
/// 32 KiB, 256 KiB in all.
/// Secret env follows the rules of env, and a name is either plain or
/// secret, never both.
pub fn validate_secret_env(
    env: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    validate_env(secrets)?;
    match secrets.keys().find(|k| env.contains_key(*k)) {
        Some(both) => Err(ApiError::Invalid(format!(
            "{both} is given both as env and as secret env"
        ))),
        None => Ok(()),
    }
}

pub fn validate_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if env.len() > MAX_ENV_VARS {
        return Err(ApiError::Invalid(format!(
            "at most {MAX_ENV_VARS} environment variables"
        )));
    }
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_ENV_TOTAL_BYTES {
        return Err(ApiError::Invalid(format!(
            "the environment is {total} bytes; the limit is {MAX_ENV_TOTAL_BYTES} bytes (256 KiB)"
        )));
    }
    for (key, value) in env {
        if key.len() > MAX_ENV_KEY_BYTES {
            return Err(ApiError::Invalid(format!(
                "environment variable name {}... is {} bytes; the limit is {MAX_ENV_KEY_BYTES}",
                key.chars().take(32).collect::<String>(),
                key.len()
            )));
        }
        if value.len() > MAX_ENV_VALUE_BYTES {
            return Err(ApiError::Invalid(format!(
                "environment variable {key} is {} bytes; the limit is {MAX_ENV_VALUE_BYTES} bytes (32 KiB)",
                value.len()
            )));
        }
        let mut bytes = key.bytes();
        let valid_start = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        if !valid_start || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(ApiError::Invalid(format!(
                "invalid environment variable name {key:?}: use letters, digits and '_', not starting with a digit"
            )));
        }
        if value.contains('\0') {
            return Err(ApiError::Invalid(format!(
                "environment variable {key} contains a NUL byte"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::policy::MAX_POLICY_BYTES;

    #[test]
    fn env_sizes_are_bounded() {
        let ok = BTreeMap::from([("K".to_string(), "v".repeat(MAX_ENV_VALUE_BYTES))]);
        assert!(validate_env(&ok).is_ok());
        let long_value = BTreeMap::from([("K".to_string(), "v".repeat(MAX_ENV_VALUE_BYTES + 1))]);
        let err = validate_env(&long_value).unwrap_err().to_string();
        assert!(err.contains("32 KiB"), "{err}");
        let long_key = BTreeMap::from([("K".repeat(MAX_ENV_KEY_BYTES + 1), String::new())]);
        assert!(validate_env(&long_key).is_err());
        let total: BTreeMap<String, String> = (0..10)
            .map(|i| (format!("K{i}"), "v".repeat(MAX_ENV_VALUE_BYTES)))
            .collect();
        let err = validate_env(&total).unwrap_err().to_string();
        assert!(err.contains("256 KiB"), "{err}");
    }

    #[test]
    fn request_ids() {
        assert!(validate_request_id("cli-1234").is_ok());
        for bad in ["", "a b", "tab\t", &"x".repeat(129), "ü"] {
            assert!(validate_request_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        for ok in ["a", "web-1", "0abc", &"a".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "ä", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn policies() {
        assert!(validate_policy("network: none\n").is_ok());
        assert!(validate_policy("{}").is_ok());
        assert!(validate_policy("network: [unclosed").is_err());
        assert!(validate_policy("- a list\n").is_err());
        assert!(validate_policy("netwrok: none\n").is_err());
        let big = format!("k: \"{}\"\n", "x".repeat(MAX_POLICY_BYTES));
        assert!(validate_policy(&big).is_err());
    }

    #[test]
    fn env() {
        let mut env = BTreeMap::new();
        env.insert("PATH_2".to_string(), "x".to_string());
        env.insert("_A".to_string(), String::new());
        assert!(validate_env(&env).is_ok());
        for bad in ["", "1A", "A-B", "A B"] {
            let env = BTreeMap::from([(bad.to_string(), "v".to_string())]);
            assert!(validate_env(&env).is_err(), "{bad}");
        }
        let env = BTreeMap::from([("A".to_string(), "a\0b".to_string())]);
        assert!(validate_env(&env).is_err());
    }
}
