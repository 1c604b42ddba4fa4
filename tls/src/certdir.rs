//! A directory holding a cluster's CA and the certificates it issues
//! (`berth certs init|issue`). The CA's key and every issued key are
//! written with mode 0600, each file through a temporary name and a rename,
//! so a process that reloads certificates never reads half a file.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::{io, ClientGrant, Identity, TlsError};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const DATA_KEY: &str = "data-key";
const CLUSTER: &str = "cluster";
/// How long the CA is valid.
const CA_DAYS: i64 = 3650;
/// Certificates are valid from a little before they are made, for clocks
/// slightly behind this one.
const BACKDATE: Duration = Duration::hours(1);

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A control node: serves the API and Raft, and dials other nodes and
    /// agents.
    Server,
    /// A node agent: dials the control plane, serves its data plane.
    Agent,
    /// An API client.
    Client,
}

impl FromStr for Kind {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        match s {
            "server" => Ok(Kind::Server),
            "agent" => Ok(Kind::Agent),
            "client" => Ok(Kind::Client),
            other => Err(TlsError::Invalid(format!(
                "unknown certificate kind {other:?}: use server, agent or client"
            ))),
        }
    }
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Server => "server",
            Kind::Agent => "agent",
            Kind::Client => "client",
        }
    }
}

/// A certificate and key written by [`CertDir::issue`].
#[derive(Debug, Clone)]
pub struct Issued {
    pub identity: Identity,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A cluster's CA directory.
#[derive(Debug, Clone)]
pub struct CertDir {
    dir: PathBuf,
    cluster: String,
}

impl CertDir {
    /// Creates a new CA for `cluster` in `dir`; refuses to replace one.
    pub fn init(dir: &Path, cluster: &str) -> Result<Self, TlsError> {
        Identity::check_name(cluster)?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        for file in [CA_CERT, CA_KEY] {
            if dir.join(file).exists() {
                return Err(TlsError::Exists {
                    dir: dir.display().to_string(),
                    file: file.to_string(),
                });
            }
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = common_name(&format!("berth CA ({cluster})"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(CA_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write_file(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&dir.join(CA_CERT), cert.pem().as_bytes(), 0o644)?;
        write_file(&dir.join(CLUSTER), format!("{cluster}\n").as_bytes(), 0o644)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cluster: cluster.to_string(),
        })
    }

    /// The CA in `dir`, made by [`CertDir::init`].
    pub fn open(dir: &Path) -> Result<Self, TlsError> {
        let path = dir.join(CLUSTER);
        let cluster = std::fs::read_to_string(&path).map_err(io(&path))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cluster: cluster.trim().to_string(),
        })
    }

    /// The cluster's name, part of every server identity.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The CA certificate (PEM), which every component trusts.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    /// The cluster data key file (`berthd --data-key-file`), made with one
    /// random 256-bit key (`1:<hex>`, mode 0600) if it does not exist.
    pub fn ensure_data_key(&self) -> Result<PathBuf, TlsError> {
        let path = self.dir.join(DATA_KEY);
        if path.exists() {
            return Ok(path);
        }
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| TlsError::Invalid("no randomness for the data key".into()))?;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        write_file(&path, format!("1:{hex}\n").as_bytes(), 0o600)?;
        Ok(path)
    }

    /// The identity a certificate of `kind` named `name` carries: every
    /// server speaks for the cluster; an agent for its node; a client for
    /// itself.
    pub fn identity(&self, kind: Kind, name: &str) -> Identity {
        match kind {
            Kind::Server => Identity::Server {
                cluster: self.cluster.clone(),
            },
            Kind::Agent => Identity::Agent {
                node: name.to_string(),
            },
            Kind::Client => Identity::Client {
                name: name.to_string(),
            },
        }
    }

    /// Issues a certificate of `kind` for `name` (files `KIND-NAME.pem` and
    /// `KIND-NAME-key.pem`), valid for `days`, also naming `extra_sans`
    /// (host names or IP addresses the component is dialed at).
    pub fn issue(
        &self,
        kind: Kind,
        name: &str,
        extra_sans: &[String],
        days: u32,
    ) -> Result<Issued, TlsError> {
        self.issue_with(kind, name, extra_sans, days, None)
    }

    /// A client certificate that grants `grant` (its tenant and role, as
    /// the subject's organization and organizational unit, the way
    /// Kubernetes reads groups from client certificates).
    pub fn issue_client(
        &self,
        name: &str,
        grant: &ClientGrant,
        extra_sans: &[String],
        days: u32,
    ) -> Result<Issued, TlsError> {
        self.issue_with(Kind::Client, name, extra_sans, days, Some(grant))
    }

    fn issue_with(
        &self,
        kind: Kind,
        name: &str,
        extra_sans: &[String],
        days: u32,
        grant: Option<&ClientGrant>,
    ) -> Result<Issued, TlsError> {
        Identity::check_name(name)?;
        if days == 0 {
            return Err(TlsError::Invalid(
                "a certificate must be valid for at least one day".into(),
            ));
        }
        extra_sans.iter().try_for_each(|san| check_san(san))?;
        let identity = self.identity(kind, name);
        let mut sans = vec![identity.dns_name()];
        sans.extend(extra_sans.iter().cloned());
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = common_name(&identity.dns_name());
        if let Some(grant) = grant {
            Identity::check_name(&grant.tenant)?;
            Identity::check_name(&grant.role)?;
            params
                .distinguished_name
                .push(DnType::OrganizationName, grant.tenant.as_str());
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, grant.role.as_str());
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match kind {
            Kind::Server | Kind::Agent => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Kind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(i64::from(days));

        let ca_key_path = self.dir.join(CA_KEY);
        let ca_key = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
        let ca_cert_path = self.ca_cert();
        let ca_cert = std::fs::read_to_string(&ca_cert_path).map_err(io(&ca_cert_path))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_cert, KeyPair::from_pem(&ca_key)?)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;

        let base = format!("{}-{name}", kind.as_str());
        let issued = Issued {
            identity,
            cert: self.dir.join(format!("{base}.pem")),
            key: self.dir.join(format!("{base}-key.pem")),
        };
        write_file(&issued.key, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&issued.cert, cert.pem().as_bytes(), 0o644)?;
        Ok(issued)
    }
}

/// An extra name must be an IP address or a host name, and never a berth
/// identity: only the certificate's kind decides who it speaks for.
fn check_san(san: &str) -> Result<(), TlsError> {
    if san.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let lower = san.to_ascii_lowercase();
    if lower.ends_with(".berth") || lower == "berth" {
        return Err(TlsError::Invalid(format!(
            "--san {san:?} is a berth identity name; the certificate's kind sets its identity"
        )));
    }
    Identity::check_name(&lower).map_err(|_| {
        TlsError::Invalid(format!(
            "--san {san:?} is neither an IP address nor a host name"
        ))
    })
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// Writes `bytes` to `path` with `mode`, through a temporary file and a
/// rename.
/// Writes `bytes` to `path` with `mode` through a temporary file, synced,
/// then renamed (and the directory synced): a reader sees the old file or
/// the whole new one, and a crash never leaves a half-written secret. Used
/// for keys, certificates and token files.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let synced = std::fs::File::open(dir).and_then(|d| d.sync_all());
        synced.map_err(io(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn der_of(pem_path: &Path) -> Vec<u8> {
        let text = std::fs::read_to_string(pem_path).unwrap();
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        base64_decode(&body)
    }

    /// A small base64 decoder for the test (the crate needs none).
    fn base64_decode(s: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let mut acc = 0u32;
        let mut bits = 0;
        for c in s.bytes().filter(|c| *c != b'=') {
            let v = ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        out
    }

    #[test]
    fn a_ca_issues_certificates_that_name_their_identity_and_keys_stay_private() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertDir::init(dir.path(), "prod").unwrap();
        assert_eq!(CertDir::open(dir.path()).unwrap().cluster(), "prod");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join(CA_KEY)), 0o600);

        let server = ca
            .issue(
                Kind::Server,
                "node-1",
                &["127.0.0.1".into(), "localhost".into()],
                30,
            )
            .unwrap();
        assert_eq!(mode(&server.key), 0o600);
        assert_eq!(
            Identity::of_certificate(&der_of(&server.cert)).unwrap(),
            vec![Identity::Server {
                cluster: "prod".into()
            }]
        );
        let agent = ca.issue(Kind::Agent, "worker-7", &[], 30).unwrap();
        assert_eq!(
            Identity::of_certificate(&der_of(&agent.cert)).unwrap(),
            vec![Identity::Agent {
                node: "worker-7".into()
            }]
        );
        assert!(agent.cert.ends_with("agent-worker-7.pem"));
    }

    #[test]
    fn bad_input_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertDir::init(dir.path(), "prod").unwrap();
        let before = std::fs::read(ca.ca_cert()).unwrap();
        assert!(matches!(
            CertDir::init(dir.path(), "prod"),
            Err(TlsError::Exists { .. })
        ));
        assert_eq!(std::fs::read(ca.ca_cert()).unwrap(), before);
        assert!(ca.issue(Kind::Agent, "Bad Name", &[], 30).is_err());
        assert!(ca.issue(Kind::Agent, "ok", &[], 0).is_err());
        assert!(ca
            .issue(Kind::Agent, "ok", &["not a name!".into()], 30)
            .is_err());
        // An agent's certificate can never also name a server.
        let err = ca
            .issue(Kind::Agent, "ok", &["server.prod.berth".into()], 30)
            .unwrap_err();
        assert!(err.to_string().contains("identity"), "{err}");
        assert!("admin".parse::<Kind>().is_err());
        assert!(CertDir::init(&dir.path().join("x"), "Not Valid").is_err());
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 3, "{files:?}");
    }
}
