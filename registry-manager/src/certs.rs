//! The fleet's small PKI (`registry-manager certs init|issue|revoke`): a CA, and certificates
//! for hosts, members and operators signed by it, as PEM files with fixed names (`D/ca.crt`,
//! `D/ca.key`, `D/NAME.crt`, `D/NAME.key`), and the CA's list of revoked certificates
//! (`D/revoked.crl`). Keys are written readable by their owner only.
//!
//! The certificate of NAME carries NAME as its common name and first DNS name (the identity
//! the managers read), then the addresses and DNS names it may be reached at, and may serve
//! both sides of a connection (server and client authentication).

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use time::{Duration, OffsetDateTime};

/// How long the CA is valid.
pub const CA_DAYS: i64 = 3_650;
/// How long an issued certificate is valid.
pub const LEAF_DAYS: i64 = 825;
/// The CA's list of revoked certificates in the certificates' directory.
pub const CRL_FILE: &str = "revoked.crl";

/// A certificate command that could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// `init` found a CA already there.
    #[error("{0} already exists; refusing to overwrite the fleet's CA (every certificate it signed would stop working). Use another --dir, or remove ca.crt and ca.key first if you mean it")]
    CaExists(String),
    /// `issue` found no CA.
    #[error("no CA in {dir}: {path} is missing; make one first with `registry-manager certs init --dir {dir}`")]
    NoCa { dir: String, path: String },
    /// A name that cannot be a certificate's identity.
    #[error("certificate name {name:?}: {reason}")]
    BadName { name: String, reason: String },
    /// A file that cannot be read or written.
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    /// rcgen refused.
    #[error("making the certificate: {0}")]
    Make(String),
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> CertsError {
    CertsError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn make_error(e: rcgen::Error) -> CertsError {
    CertsError::Make(e.to_string())
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// Its private key (never printed).
    pub key: String,
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pem").finish_non_exhaustive()
    }
}

/// Makes a CA named `name`, valid from an hour ago for `days`.
pub fn make_ca(name: &str, days: i64) -> Result<Pem, CertsError> {
    let key = KeyPair::generate().map_err(make_error)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
    let cert = params.self_signed(&key).map_err(make_error)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// What to put in an issued certificate.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// The identity: common name and first DNS name.
    pub name: String,
    /// Addresses it may be reached at (IP subject alternative names).
    pub ips: Vec<IpAddr>,
    /// More DNS names it may be reached at.
    pub dns: Vec<String>,
    /// Validity start.
    pub not_before: OffsetDateTime,
    /// Validity end.
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A certificate for `name`, valid from an hour ago for [`LEAF_DAYS`].
    pub fn new(name: &str, ips: Vec<IpAddr>, dns: Vec<String>) -> LeafSpec {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            name: name.to_owned(),
            ips,
            dns,
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(LEAF_DAYS),
        }
    }
}

/// Checks a certificate name: the section 2 rules for host names (letters, digits, `-`,
/// `.`), so that an identity compares equal to the host, member or admin it stands for.
pub fn check_name(name: &str) -> Result<(), CertsError> {
    topology::HostName::new(name)
        .map(|_| ())
        .map_err(|e| CertsError::BadName {
            name: name.to_owned(),
            reason: e.to_string(),
        })
}

/// Issues a certificate by `spec`, signed by the CA `ca`.
pub fn issue(ca: &Pem, spec: &LeafSpec) -> Result<Pem, CertsError> {
    check_name(&spec.name)?;
    let ca_key = KeyPair::from_pem(&ca.key).map_err(make_error)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(make_error)?;
    let key = KeyPair::generate().map_err(make_error)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, &spec.name);
    let mut sans = vec![SanType::DnsName(
        spec.name.clone().try_into().map_err(make_error)?,
    )];
    for d in &spec.dns {
        if *d != spec.name {
            sans.push(SanType::DnsName(d.clone().try_into().map_err(|e| {
                CertsError::BadName {
                    name: d.clone(),
                    reason: format!("not a DNS name: {e}"),
                }
            })?));
        }
    }
    sans.extend(spec.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;
    let cert = params.signed_by(&key, &issuer).map_err(make_error)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Where `certs` keeps the files of NAME in `dir`: (`NAME.crt`, `NAME.key`).
pub fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    )
}

/// Writes `text` to `path`; `secret`: readable by the owner only (0600), from its creation.
fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), CertsError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(|e| file_error(path, e))?;
    #[cfg(unix)]
    if secret {
        // An existing file keeps its mode on open: set it.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| file_error(path, e))?;
    }
    f.write_all(text.as_bytes())
        .map_err(|e| file_error(path, e))
}

/// `certs init --dir D`: makes `D/ca.crt` and `D/ca.key`; refuses to overwrite a CA.
pub fn init(dir: &Path) -> Result<(PathBuf, PathBuf), CertsError> {
    let (crt, key) = paths(dir, "ca");
    for p in [&crt, &key] {
        if p.exists() {
            return Err(CertsError::CaExists(p.display().to_string()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let ca = make_ca("fleet-registry CA", CA_DAYS)?;
    write_file(&key, &ca.key, true)?;
    write_file(&crt, &ca.cert, false)?;
    Ok((crt, key))
}

/// Reads the CA of `dir`.
pub fn read_ca(dir: &Path) -> Result<Pem, CertsError> {
    let (crt, key) = paths(dir, "ca");
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CertsError::NoCa {
                    dir: dir.display().to_string(),
                    path: p.display().to_string(),
                }
            } else {
                file_error(p, e)
            }
        })
    };
    Ok(Pem {
        cert: read(&crt)?,
        key: read(&key)?,
    })
}

/// `certs issue --dir D NAME`: writes `D/NAME.crt` and `D/NAME.key`, signed by `D/ca.*`.
pub fn issue_into(dir: &Path, spec: &LeafSpec) -> Result<(PathBuf, PathBuf), CertsError> {
    check_name(&spec.name)?;
    if spec.name == "ca" {
        return Err(CertsError::BadName {
            name: spec.name.clone(),
            reason: "`ca` is the CA's own file name in --dir; choose another name".into(),
        });
    }
    let ca = read_ca(dir)?;
    let pem = issue(&ca, spec)?;
    let (crt, key) = paths(dir, &spec.name);
    write_file(&key, &pem.key, true)?;
    write_file(&crt, &pem.cert, false)?;
    Ok((crt, key))
}

/// What `certs revoke` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The list written: `D/revoked.crl`.
    pub path: PathBuf,
    /// Names whose certificates the list now holds for the first time, with their serials (hex).
    pub added: Vec<(String, String)>,
    /// Names whose certificates it held already (nothing to do for them).
    pub already: Vec<String>,
    /// Certificates the list holds in all.
    pub total: usize,
}

/// A revoked certificate: its serial ([`proto::tls::serial_bytes`]) and when.
type Entry = (Vec<u8>, OffsetDateTime);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The serial of the PEM certificate in `path`.
fn serial_of(path: &Path, pem: &[u8]) -> Result<Vec<u8>, CertsError> {
    let der = CertificateDer::from_pem_slice(pem)
        .map_err(|e| file_error(path, format!("holds no PEM certificate ({e})")))?;
    proto::tls::cert_facts(&der)
        .map(|facts| facts.serial)
        .map_err(|e| file_error(path, e))
}

/// The entries and number of the list in `path`.
fn read_crl(path: &Path, pem: &[u8]) -> Result<(Vec<Entry>, u64), CertsError> {
    let bad = |reason: String| {
        file_error(
            path,
            format!("{reason}; it is written by `registry-manager certs revoke` only: restore it from a copy (a member has one), or remove it to start an empty list"),
        )
    };
    let der = CertificateRevocationListDer::from_pem_slice(pem)
        .map_err(|e| bad(format!("holds no PEM revocation list ({e})")))?;
    let (_, crl) = x509_parser::parse_x509_crl(&der)
        .map_err(|e| bad(format!("not an X.509 revocation list: {e}")))?;
    let mut entries = Vec::new();
    for r in crl.iter_revoked_certificates() {
        let at = OffsetDateTime::from_unix_timestamp(r.revocation_date.timestamp())
            .map_err(|e| bad(format!("a revocation date out of range: {e}")))?;
        entries.push((proto::tls::serial_bytes(r.raw_serial()), at));
    }
    let number = match crl.crl_number() {
        None => 0,
        Some(n) => {
            let bytes = n.to_bytes_be();
            if bytes.len() > 8 {
                return Err(bad("its CRL number is larger than 64 bits".into()));
            }
            bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        }
    };
    Ok((entries, number))
}

/// `certs revoke --dir D NAME...`: adds the certificates `D/NAME.crt` to the CA's list of
/// revoked certificates, `D/revoked.crl` (made if missing, signed by `D/ca.*`, numbered one
/// more than the list it replaces). Revoke before issuing a replacement: the certificate
/// revoked is the one `D/NAME.crt` holds now.
pub fn revoke_into(dir: &Path, names: &[String]) -> Result<Revoked, CertsError> {
    let ca = read_ca(dir)?;
    let path = dir.join(CRL_FILE);
    let (mut entries, number) = match std::fs::read(&path) {
        Ok(pem) => read_crl(&path, &pem)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0),
        Err(e) => return Err(file_error(&path, e)),
    };
    let now = OffsetDateTime::now_utc();
    let (mut added, mut already) = (Vec::new(), Vec::new());
    for name in names {
        check_name(name)?;
        let (crt, _) = paths(dir, name);
        let pem = std::fs::read(&crt).map_err(|e| {
            file_error(
                &crt,
                format!("cannot read it ({e}); `certs revoke` revokes the certificate `certs issue` wrote for {name} in --dir"),
            )
        })?;
        let serial = serial_of(&crt, &pem)?;
        if entries.iter().any(|(s, _)| *s == serial) {
            already.push(name.clone());
        } else {
            added.push((name.clone(), hex(&serial)));
            entries.push((serial, now));
        }
    }
    if !added.is_empty() || !path.exists() {
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::days(LEAF_DAYS),
            crl_number: SerialNumber::from(number + 1),
            issuing_distribution_point: None,
            revoked_certs: entries
                .iter()
                .map(|(serial, at)| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: *at,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let ca_key = KeyPair::from_pem(&ca.key).map_err(make_error)?;
        let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(make_error)?;
        let crl = params.signed_by(&issuer).map_err(make_error)?;
        write_file(&path, &crl.pem().map_err(make_error)?, false)?;
    }
    Ok(Revoked {
        path,
        added,
        already,
        total: entries.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn facts(pem: &str) -> proto::tls::CertFacts {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        proto::tls::cert_facts(der.as_ref()).unwrap()
    }

    #[test]
    fn an_issued_certificate_names_its_holder_first_and_lists_its_addresses() {
        let ca = make_ca("test CA", 1).unwrap();
        let spec = LeafSpec::new(
            "agent-4",
            vec!["127.0.0.1".parse().unwrap()],
            vec!["agent-4.example.org".into()],
        );
        let leaf = issue(&ca, &spec).unwrap();
        assert_eq!(facts(&leaf.cert).name.as_deref(), Some("agent-4"));
        use x509_parser::prelude::*;
        let der = {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::CertificateDer::from_pem_slice(leaf.cert.as_bytes()).unwrap()
        };
        let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "DNSName(agent-4)",
                "DNSName(agent-4.example.org)",
                "IPAddress(7f:00:00:01)"
            ]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth, "usable on both sides");
        assert!(!cert.is_ca());
        assert_eq!(
            cert.issuer().to_string(),
            facts_issuer(&ca.cert),
            "signed by the CA"
        );
    }

    fn facts_issuer(ca_pem: &str) -> String {
        use rustls::pki_types::pem::PemObject;
        use x509_parser::prelude::*;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
        let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
        cert.subject().to_string()
    }

    #[test]
    fn init_writes_a_ca_with_a_private_key_and_refuses_to_overwrite_it() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = init(dir.path()).unwrap();
        assert!(std::fs::read_to_string(&crt)
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "the CA key is the owner's only");
        }
        let before = std::fs::read(&key).unwrap();
        let err = init(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("already exists") && err.contains("ca.crt"),
            "{err}"
        );
        assert_eq!(std::fs::read(&key).unwrap(), before, "nothing overwritten");
    }

    #[test]
    fn issue_needs_the_ca_and_writes_the_key_for_the_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let spec = LeafSpec::new("m1", vec![], vec![]);
        let err = issue_into(dir.path(), &spec).unwrap_err().to_string();
        assert!(err.contains("certs init --dir"), "{err}");
        init(dir.path()).unwrap();
        let (crt, key) = issue_into(dir.path(), &spec).unwrap();
        assert_eq!(crt, dir.path().join("m1.crt"));
        assert_eq!(key, dir.path().join("m1.key"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let loaded = proto::tls::TlsFiles {
            cert: crt,
            key,
            ca: dir.path().join("ca.crt"),
        }
        .load()
        .unwrap();
        assert_eq!(loaded.name(), "m1");
        loaded.check_valid_at(std::time::SystemTime::now()).unwrap();
        loaded.server_config().expect("usable by a server");
    }

    #[test]
    fn names_outside_the_host_name_rules_are_refused() {
        let ca = make_ca("test CA", 1).unwrap();
        for bad in ["", "a b", "x/y", "-lead"] {
            let err = issue(&ca, &LeafSpec::new(bad, vec![], vec![])).unwrap_err();
            assert!(matches!(err, CertsError::BadName { .. }), "{bad:?}: {err}");
        }
    }

    #[test]
    fn an_expired_certificate_is_told_apart_before_it_is_used() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).unwrap();
        let mut spec = LeafSpec::new("agent-4", vec![], vec![]);
        spec.not_before = OffsetDateTime::now_utc() - Duration::days(30);
        spec.not_after = OffsetDateTime::now_utc() - Duration::days(1);
        let (cert, key) = issue_into(dir.path(), &spec).unwrap();
        let loaded = proto::tls::TlsFiles {
            cert,
            key,
            ca: dir.path().join("ca.crt"),
        }
        .load()
        .unwrap();
        let err = loaded
            .check_valid_at(std::time::SystemTime::now())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expired") && err.contains("certs issue"),
            "{err}"
        );
    }

    /// A fleet's files in `dir`: the CA and certificates for `names`.
    fn fleet_with(dir: &Path, names: &[&str]) {
        init(dir).unwrap();
        fleet_with_more(dir, names);
    }

    /// Certificates for `names` in the fleet of `dir`, made before.
    fn fleet_with_more(dir: &Path, names: &[&str]) {
        for n in names {
            issue_into(dir, &LeafSpec::new(n, vec![], vec![])).unwrap();
        }
    }

    fn material(dir: &Path, name: &str) -> proto::tls::TlsMaterial {
        let (cert, key) = paths(dir, name);
        proto::tls::TlsFiles {
            cert,
            key,
            ca: dir.join("ca.crt"),
        }
        .load()
        .unwrap()
    }

    #[test]
    fn revoking_lists_each_certificate_once_and_numbers_every_new_list() {
        let dir = tempfile::tempdir().unwrap();
        fleet_with(dir.path(), &["agent-1", "agent-2"]);
        let first = revoke_into(dir.path(), &["agent-1".into()]).unwrap();
        assert_eq!(first.path, dir.path().join(CRL_FILE));
        assert_eq!(first.added.len(), 1);
        assert_eq!(first.total, 1);
        let second = revoke_into(dir.path(), &["agent-1".into(), "agent-2".into()]).unwrap();
        assert_eq!(second.already, vec!["agent-1".to_string()]);
        assert_eq!(second.added.len(), 1);
        assert_eq!(second.added[0].0, "agent-2");
        assert_eq!(second.total, 2);
        let pem = std::fs::read(dir.path().join(CRL_FILE)).unwrap();
        let (entries, number) = read_crl(&dir.path().join(CRL_FILE), &pem).unwrap();
        assert_eq!(number, 2, "each list written is numbered one more");
        let serials: Vec<Vec<u8>> = ["agent-1", "agent-2"]
            .iter()
            .map(|n| {
                let crt = paths(dir.path(), n).0;
                serial_of(&crt, &std::fs::read(&crt).unwrap()).unwrap()
            })
            .collect();
        let listed: Vec<Vec<u8>> = entries.into_iter().map(|(s, _)| s).collect();
        assert_eq!(listed, serials);
        // Nothing new: the list is not written again.
        let again = revoke_into(dir.path(), &["agent-2".into()]).unwrap();
        assert!(again.added.is_empty());
        assert_eq!(std::fs::read(dir.path().join(CRL_FILE)).unwrap(), pem);
    }

    #[test]
    fn revoke_names_what_is_missing_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let err = revoke_into(dir.path(), &["agent-1".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("certs init --dir"), "{err}");
        fleet_with(dir.path(), &["agent-1"]);
        let err = revoke_into(dir.path(), &["agent-1".into(), "agent-9".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("agent-9.crt") && err.contains("certs issue"),
            "{err}"
        );
        assert!(!dir.path().join(CRL_FILE).exists(), "nothing written");
        std::fs::write(dir.path().join(CRL_FILE), "not a list").unwrap();
        let err = revoke_into(dir.path(), &["agent-1".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("revoked.crl") && err.contains("restore it"),
            "{err}"
        );
    }

    /// A TLS handshake over memory between a server of `server` and a client holding `client`'s
    /// certificate (checking the server's with the fleet's CA alone); the server's verdict.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        dir: &Path,
        client: &str,
    ) -> Result<(), String> {
        let tls = material(dir, client).client_tls(None).unwrap();
        handshake_of(server, &tls, dir, client, "m1").await.0
    }

    /// A TLS handshake over memory between a server of `server` and a client of `dir`'s fleet
    /// holding `name`'s certificate and checking the server's with `tls` (its newest list),
    /// dialing `server_name`; (the server's verdict, the client's).
    async fn handshake_of(
        server: Arc<rustls::ServerConfig>,
        tls: &proto::crl::ClientTls,
        dir: &Path,
        name: &str,
        server_name: &str,
    ) -> (Result<(), String>, Result<(), String>) {
        let (crt, key) = paths(dir, name);
        let chain = vec![CertificateDer::from_pem_slice(&std::fs::read(crt).unwrap()).unwrap()];
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(&std::fs::read(key).unwrap()).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(tls.verifier())
        .with_client_auth_cert(chain, key)
        .unwrap();
        client.alpn_protocols = vec![b"h2".to_vec()];
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server_side = tokio_rustls::TlsAcceptor::from(server).accept(a);
        let client_side = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(
            rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap(),
            b,
        );
        let (accepted, connected) = tokio::join!(server_side, client_side);
        let verdict = |r: std::io::Result<()>| r.map_err(|e| proto::tls::error_chain(&e));
        (verdict(accepted.map(drop)), verdict(connected.map(drop)))
    }

    /// The client's verdict on a handshake of `name` (checking with `tls`) with `server`.
    async fn dial(
        tls: &proto::crl::ClientTls,
        dir: &Path,
        name: &str,
        server: &str,
    ) -> Result<(), String> {
        let server_config = material(dir, server).server_config().unwrap();
        handshake_of(server_config, tls, dir, name, server).await.1
    }

    #[tokio::test]
    async fn a_client_refuses_the_managers_a_list_names_and_a_connection_knows_its_own() {
        let dir = tempfile::tempdir().unwrap();
        fleet_with(dir.path(), &["m1", "m2", "agent-1", "agent-2"]);
        let agent = material(dir.path(), "agent-1");
        let tls = agent.client_tls(None).unwrap();
        // One connection to m1, which records the certificate m1 showed.
        let (to_m1, shown) = tls.recording();
        dial(&to_m1, dir.path(), "agent-1", "m1")
            .await
            .expect("m1 is trusted before any list");
        let m1_serial = shown.serial().expect("recorded");
        assert!(!tls.names(&shown));
        let crl_path = dir.path().join(CRL_FILE);

        // m2 is revoked: refused from now on; the connection to m1 is not concerned.
        let revoked = tls.revoked();
        revoke_into(dir.path(), &["m2".into()]).unwrap();
        let list = std::fs::read(&crl_path).unwrap();
        let named = tls.revoke_from(&crl_path, &list).unwrap();
        assert_eq!(named.len(), 1);
        assert!(
            revoked.has_changed().unwrap(),
            "owners are told of the new list"
        );
        assert_eq!(tls.revocations(), 1, "a certificate no list named before");
        assert!(!tls.names(&shown), "the connection to m1 stays");
        let refused = dial(&tls, dir.path(), "agent-1", "m2").await.unwrap_err();
        assert!(refused.to_lowercase().contains("revoked"), "{refused}");
        dial(&tls, dir.path(), "agent-1", "m1")
            .await
            .expect("a manager the list does not name is trusted");

        // m1 is revoked: the connection to it knows it is named, and m1 is refused.
        revoke_into(dir.path(), &["m1".into()]).unwrap();
        let list = std::fs::read(&crl_path).unwrap();
        tls.revoke_from(&crl_path, &list).unwrap();
        assert!(tls.names(&shown));
        assert!(tls.revoked().borrow().serials.contains(&m1_serial));
        assert_eq!(tls.revocations(), 2);
        let refused = dial(&tls, dir.path(), "agent-1", "m1").await.unwrap_err();
        assert!(refused.to_lowercase().contains("revoked"), "{refused}");
        // The same list read again changes nothing.
        tls.revoke_from(&crl_path, &list).unwrap();
        assert_eq!(tls.revocations(), 2);

        // A list that cannot be used changes nothing: m1 stays refused.
        let err = tls.revoke_from(&crl_path, b"junk").unwrap_err().to_string();
        assert!(err.contains("certs revoke"), "{err}");
        assert!(dial(&tls, dir.path(), "agent-1", "m1").await.is_err());
        assert!(tls.names(&shown));
        // Nor can a client start with a list naming its own certificate.
        revoke_into(dir.path(), &["agent-1".into()]).unwrap();
        let list = std::fs::read(&crl_path).unwrap();
        let err = agent
            .client_tls(Some((crl_path.as_path(), &list)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("own certificate"), "{err}");
    }

    #[tokio::test]
    async fn a_server_refuses_the_revoked_certificates_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        fleet_with(dir.path(), &["m1", "agent-1", "agent-2"]);
        let m1 = material(dir.path(), "m1");
        // Before the list: both agents are let in.
        let open = m1.server_config().unwrap();
        assert!(handshake(open.clone(), dir.path(), "agent-1").await.is_ok());
        revoke_into(dir.path(), &["agent-1".into()]).unwrap();
        let crl_path = dir.path().join(CRL_FILE);
        let crl = std::fs::read(&crl_path).unwrap();
        let revoking = m1
            .server_config_revoking(Some((crl_path.as_path(), &crl)))
            .unwrap();
        let refused = handshake(revoking.clone(), dir.path(), "agent-1")
            .await
            .unwrap_err();
        assert!(refused.to_lowercase().contains("revoked"), "{refused}");
        handshake(revoking, dir.path(), "agent-2")
            .await
            .expect("a certificate the list does not name is let in");
    }

    #[test]
    fn a_list_naming_the_servers_own_certificate_or_of_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fleet_with(dir.path(), &["m1", "agent-1"]);
        revoke_into(dir.path(), &["m1".into()]).unwrap();
        let crl_path = dir.path().join(CRL_FILE);
        let crl = std::fs::read(&crl_path).unwrap();
        let m1 = material(dir.path(), "m1");
        let err = m1
            .server_config_revoking(Some((crl_path.as_path(), &crl)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("own certificate"), "{err}");

        let other = tempfile::tempdir().unwrap();
        fleet_with(other.path(), &["agent-1"]);
        revoke_into(other.path(), &["agent-1".into()]).unwrap();
        let foreign_path = other.path().join(CRL_FILE);
        let foreign = std::fs::read(&foreign_path).unwrap();
        let err = m1
            .server_config_revoking(Some((foreign_path.as_path(), &foreign)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be used with the fleet's CA"), "{err}");
        let err = m1
            .server_config_revoking(Some((foreign_path.as_path(), b"junk")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("certs revoke"), "{err}");
    }
}
