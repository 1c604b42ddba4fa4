//! Validation of everything a client sends, before anything is proposed to
//! Raft: a request that fails here changes nothing (invariant 8).

mod image_ref;

use std::collections::BTreeMap;

pub use image_ref::validate_image;

use crate::error::ApiError;

const MAX_ENV_VARS: usize = 256;

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
pub fn validate_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if env.len() > MAX_ENV_VARS {
        return Err(ApiError::Invalid(format!(
            "at most {MAX_ENV_VARS} environment variables"
        )));
    }
    for (key, value) in env {
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
