//! The identity a certificate speaks for, carried as a DNS subject
//! alternative name, and read back from a peer's certificate.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::TlsError;

const SUFFIX: &str = ".berth";

/// Who a certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A control node of cluster `cluster` (all nodes share it).
    Server { cluster: String },
    /// The node agent of node `node`.
    Agent { node: String },
    /// An API client.
    Client { name: String },
}

impl Identity {
    /// The DNS name that carries this identity.
    pub fn dns_name(&self) -> String {
        match self {
            Identity::Server { cluster } => format!("server.{cluster}{SUFFIX}"),
            Identity::Agent { node } => format!("agent.{node}{SUFFIX}"),
            Identity::Client { name } => format!("client.{name}{SUFFIX}"),
        }
    }

    /// The identity a DNS name carries, if it is one of berth's.
    pub fn parse(dns: &str) -> Option<Self> {
        let rest = dns.strip_suffix(SUFFIX)?;
        let (kind, name) = rest.split_once('.')?;
        if name.is_empty() {
            return None;
        }
        let name = name.to_string();
        match kind {
            "server" => Some(Identity::Server { cluster: name }),
            "agent" => Some(Identity::Agent { node: name }),
            "client" => Some(Identity::Client { name }),
            _ => None,
        }
    }

    /// The berth identities named by a DER certificate.
    pub fn of_certificate(der: &[u8]) -> Result<Vec<Self>, TlsError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| TlsError::Invalid(format!("unreadable certificate: {e}")))?;
        let sans = cert
            .subject_alternative_name()
            .map_err(|e| TlsError::Invalid(format!("bad subject alternative names: {e}")))?;
        Ok(sans
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(dns) => Identity::parse(dns),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Checks that a name can be part of an identity: a DNS label or
    /// several (letters, digits, `-`, `.`), as node names are.
    pub fn check_name(name: &str) -> Result<(), TlsError> {
        let ok = !name.is_empty()
            && name.len() <= 200
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            });
        if ok {
            Ok(())
        } else {
            Err(TlsError::Invalid(format!(
                "{name:?} cannot be named in a certificate: use lowercase letters, digits, '-' and '.'"
            )))
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dns_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_foreign_names_are_not_identities() {
        for id in [
            Identity::Server {
                cluster: "prod".into(),
            },
            Identity::Agent {
                node: "worker-1.rack2".into(),
            },
            Identity::Client { name: "ci".into() },
        ] {
            assert_eq!(Identity::parse(&id.dns_name()), Some(id.clone()), "{id}");
        }
        for foreign in [
            "example.com",
            "server.berth",
            "agent..berth",
            "admin.x.berth",
            "server.prod.berth.evil",
        ] {
            assert_eq!(Identity::parse(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn names_that_dns_cannot_carry_are_refused() {
        for good in ["node-1", "a.b", "w7"] {
            assert!(Identity::check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Node", "a..b", "-a", "a b", "ü", &"x".repeat(64)] {
            assert!(Identity::check_name(bad).is_err(), "{bad}");
        }
    }
}

/// What a client certificate grants: a tenant and a role, carried as the
/// subject's organization (O) and organizational unit (OU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientGrant {
    pub tenant: String,
    pub role: String,
}

impl ClientGrant {
    /// The grant of a DER certificate, if its subject has both parts.
    pub fn of_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let subject = cert.subject();
        let tenant = subject.iter_organization().next()?.as_str().ok()?;
        let role = subject.iter_organizational_unit().next()?.as_str().ok()?;
        Some(ClientGrant {
            tenant: tenant.to_string(),
            role: role.to_string(),
        })
    }
}
