//! The sandbox policy document: settings the runtime can enforce, parsed
//! and validated here so the control plane (which refuses an invalid
//! policy before anything changes) and the agents (which apply it) agree.
//!
//! ```yaml
//! network: none                 # none | default              (default: default)
//! readOnlyRootFilesystem: true  # root filesystem read-only   (default: false)
//! resources:
//!   cpus: 0.5                   # CPUs, > 0
//!   memory: 256Mi               # bytes, or Ki/Mi/Gi suffix (at least 4Mi)
//! runAsUser: "1000:1000"        # uid[:gid]
//! env:                          # merged over the sandbox env
//!   MODE: strict
//! readiness:                    # must exit 0 before an update is healthy
//!   command: ["sh", "-c", "test -f /sandbox/ready"]
//! ```
//!
//! Unknown keys are errors, so a typo never silently weakens a policy.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest accepted policy document.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Most variables in a policy's `env`.
pub const MAX_POLICY_ENV: usize = 256;
/// Longest env name or value, and readiness argument, in a policy.
pub const MAX_POLICY_STRING: usize = 4096;
/// Most arguments of `readiness.command`.
pub const MAX_READINESS_ARGS: usize = 64;
/// Where agents mount the policy inside the sandbox (read-only).
pub const POLICY_MOUNT_PATH: &str = "/etc/berth/policy.yaml";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    None,
    #[default]
    Default,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub cpus: Option<f64>,
    pub memory: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Readiness {
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub read_only_root_filesystem: bool,
    #[serde(default)]
    pub resources: Resources,
    pub run_as_user: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub readiness: Option<Readiness>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("policy document is {0} bytes; the limit is {MAX_POLICY_BYTES} bytes (64 KiB)")]
    TooLarge(usize),
    #[error("policy document is not valid YAML: {0}")]
    NotYaml(String),
    #[error("policy document is not valid: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> PolicyError {
    PolicyError::Invalid(msg.into())
}

/// Parses `256Mi`, `1Gi`, `512Ki` or a plain byte count.
pub fn parse_memory(text: &str) -> Option<i64> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let n: i64 = digits.parse().ok()?;
    let factor = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
}

impl Policy {
    /// Parses and validates a policy document.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge(text.len()));
        }
        let policy: Policy = if text.trim().is_empty() {
            Policy::default()
        } else {
            let value: serde_yaml::Value =
                serde_yaml::from_str(text).map_err(|e| PolicyError::NotYaml(e.to_string()))?;
            if !value.is_mapping() {
                return Err(invalid("a policy must be a YAML mapping of settings"));
            }
            // Parsed again as text so errors name the offending key.
            serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?
        };
        policy.validate()?;
        Ok(policy)
    }

    fn validate(&self) -> Result<(), PolicyError> {
        if let Some(cpus) = self.resources.cpus {
            if !(cpus > 0.0 && cpus <= 1024.0) {
                return Err(invalid(format!("resources.cpus must be > 0 (got {cpus})")));
            }
        }
        if let Some(memory) = &self.resources.memory {
            match parse_memory(memory) {
                Some(bytes) if bytes >= 4 << 20 => {}
                Some(_) => return Err(invalid("resources.memory must be at least 4Mi")),
                None => {
                    return Err(invalid(format!(
                        "resources.memory {memory:?} is not a size like 256Mi"
                    )))
                }
            }
        }
        if let Some(user) = &self.run_as_user {
            let ok = user.split(':').count() <= 2
                && user
                    .split(':')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if !ok {
                return Err(invalid(format!(
                    "runAsUser {user:?} must be uid or uid:gid (numbers)"
                )));
            }
        }
        if self.env.len() > MAX_POLICY_ENV {
            return Err(invalid(format!(
                "env holds more than {MAX_POLICY_ENV} variables"
            )));
        }
        if let Some(user) = &self.run_as_user {
            if user.len() > 32 {
                return Err(invalid("runAsUser is longer than 32 characters"));
            }
        }
        for (key, value) in &self.env {
            if key.len() > MAX_POLICY_STRING || value.len() > MAX_POLICY_STRING {
                return Err(invalid(format!(
                    "env {key:?}: names and values are at most {MAX_POLICY_STRING} bytes"
                )));
            }
        }
        if let Some(readiness) = &self.readiness {
            let too_long = readiness.command.len() > MAX_READINESS_ARGS
                || readiness
                    .command
                    .iter()
                    .any(|a| a.len() > MAX_POLICY_STRING);
            if too_long {
                return Err(invalid(format!(
                    "readiness.command: at most {MAX_READINESS_ARGS} arguments of at most {MAX_POLICY_STRING} bytes"
                )));
            }
        }
        for key in self.env.keys() {
            let mut bytes = key.bytes();
            let start = bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
            if !start || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(invalid(format!(
                    "env name {key:?} is not a valid variable name"
                )));
            }
        }
        if let Some(readiness) = &self.readiness {
            if readiness.command.is_empty() || readiness.command[0].is_empty() {
                return Err(invalid("readiness.command must name a program"));
            }
        }
        Ok(())
    }

    /// CPU limit in nano-CPUs, as the engine API takes it.
    pub fn nano_cpus(&self) -> Option<i64> {
        self.resources.cpus.map(|c| (c * 1e9) as i64)
    }

    /// Memory limit in bytes.
    pub fn memory_bytes(&self) -> Option<i64> {
        self.resources.memory.as_deref().and_then(parse_memory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let p = Policy::parse(
            "network: none\nreadOnlyRootFilesystem: true\nresources:\n  cpus: 0.5\n  memory: 256Mi\nrunAsUser: \"1000:1000\"\nenv:\n  MODE: strict\nreadiness:\n  command: [\"sh\", \"-c\", \"true\"]\n",
        )
        .unwrap();
        assert_eq!(p.network, Network::None);
        assert!(p.read_only_root_filesystem);
        assert_eq!(p.nano_cpus(), Some(500_000_000));
        assert_eq!(p.memory_bytes(), Some(256 << 20));
        assert_eq!(p.env["MODE"], "strict");
        assert_eq!(p.readiness.unwrap().command.len(), 3);
        assert_eq!(Policy::parse("").unwrap(), Policy::default());
    }

    #[test]
    fn rejects_invalid_documents() {
        for bad in [
            "network: bridge\n",
            "netwrok: none\n",
            "resources:\n  cpus: 0\n",
            "resources:\n  memory: lots\n",
            "resources:\n  memory: 1Ki\n",
            "runAsUser: root\n",
            "env:\n  1BAD: x\n",
            "readiness:\n  command: []\n",
            "- a list\n",
            "network: [unclosed\n",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
        let big = format!("env:\n  A: \"{}\"\n", "x".repeat(MAX_POLICY_BYTES));
        assert!(matches!(Policy::parse(&big), Err(PolicyError::TooLarge(_))));
    }

    #[test]
    fn sizes_are_bounded() {
        let many: String = (0..=MAX_POLICY_ENV)
            .map(|i| format!("  K{i}: v\n"))
            .collect();
        let err = Policy::parse(&format!("env:\n{many}")).unwrap_err();
        assert!(err.to_string().contains("more than 256"), "{err}");
        let long = "v".repeat(MAX_POLICY_STRING + 1);
        assert!(Policy::parse(&format!("env:\n  K: {long}\n")).is_err());
        let args = vec!["\"x\""; MAX_READINESS_ARGS + 1].join(", ");
        assert!(Policy::parse(&format!("readiness:\n  command: [{args}]\n")).is_err());
        assert!(Policy::parse("readiness:\n  command: [\"true\"]\n").is_ok());
    }
}
