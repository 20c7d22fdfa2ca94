//! TLS on the wire (mutual TLS with rustls): the certificate files of a manager, an agent or
//! an operator ([`TlsFiles`], the `tls: { cert, key, ca }` keys and `--ca/--cert/--key`), the
//! loaded material ([`TlsMaterial`]) with the client and server configurations made from it,
//! how a gRPC endpoint is made for an address ([`endpoint`]), and the identity a certificate
//! names ([`identity_of`]: its first DNS subject alternative name, else its common name).
//!
//! Every error names the file and says how to mend it. No key material is ever printed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tonic::transport::{ClientTlsConfig, Endpoint, Identity};

use crate::crl::{ClientTls, CRL_HINT};

/// The three files of a TLS identity: this party's certificate and key, and the CA that signs
/// every certificate of the fleet (peers must present one it signed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate of this party (its name is its identity).
    pub cert: PathBuf,
    /// PEM private key of `cert` (never logged).
    pub key: PathBuf,
    /// PEM certificate of the fleet's CA.
    pub ca: PathBuf,
}

/// A certificate, key or CA file that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("TLS {what} {path}: {reason}")]
pub struct TlsError {
    /// Which file: "certificate", "key" or "CA certificate".
    pub what: &'static str,
    /// The file.
    pub path: String,
    /// What is wrong with it and how to mend it.
    pub reason: String,
}

/// Loaded TLS material: the PEM texts and facts about this party's certificate.
#[derive(Clone)]
pub struct TlsMaterial {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
    /// The identity this party's certificate names.
    name: String,
    /// Where the certificate came from (for errors).
    cert_path: String,
    /// The certificate's validity (seconds since the Unix epoch).
    not_before: i64,
    not_after: i64,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("TlsMaterial")
            .field("name", &self.name)
            .field("cert", &self.cert_path)
            .finish_non_exhaustive()
    }
}

const ISSUE_HINT: &str =
    "make one with `registry-manager certs init --dir D` and `registry-manager certs issue --dir D NAME`";

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError {
        what,
        path: path.display().to_string(),
        reason: format!("cannot read it: {e}; {ISSUE_HINT}"),
    })
}

fn first_cert(what: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<u8>, TlsError> {
    let bad = |reason: String| TlsError {
        what,
        path: path.display().to_string(),
        reason,
    };
    match CertificateDer::pem_slice_iter(pem).next() {
        Some(Ok(der)) => Ok(der.to_vec()),
        Some(Err(e)) => Err(bad(format!("not a PEM certificate: {e}"))),
        None => Err(bad(format!(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----); {ISSUE_HINT}"
        ))),
    }
}

impl TlsFiles {
    /// Reads and checks the three files: each must hold what it should (a certificate, a
    /// private key, a CA certificate) and the certificate must name an identity.
    pub fn load(&self) -> Result<TlsMaterial, TlsError> {
        let cert_pem = read("certificate", &self.cert)?;
        let key_pem = read("key", &self.key)?;
        let ca_pem = read("CA certificate", &self.ca)?;
        self.material(cert_pem, key_pem, ca_pem)
    }

    /// The material of the three PEM texts, read from these files (or made in memory: the
    /// files then only name them in errors), checked as [`TlsFiles::load`] checks them.
    pub fn material(
        &self,
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
        ca_pem: Vec<u8>,
    ) -> Result<TlsMaterial, TlsError> {
        let der = first_cert("certificate", &self.cert, &cert_pem)?;
        first_cert("CA certificate", &self.ca, &ca_pem)?;
        if let Err(e) = PrivateKeyDer::from_pem_slice(&key_pem) {
            return Err(TlsError {
                what: "key",
                path: self.key.display().to_string(),
                reason: format!("holds no PEM private key ({e}); {ISSUE_HINT}"),
            });
        }
        let facts = cert_facts(&der).map_err(|reason| TlsError {
            what: "certificate",
            path: self.cert.display().to_string(),
            reason,
        })?;
        let name = facts.name.ok_or_else(|| TlsError {
            what: "certificate",
            path: self.cert.display().to_string(),
            reason: format!("names no identity (no DNS name, no common name); {ISSUE_HINT}"),
        })?;
        Ok(TlsMaterial {
            cert_pem,
            key_pem,
            ca_pem,
            name,
            cert_path: self.cert.display().to_string(),
            not_before: facts.not_before,
            not_after: facts.not_after,
        })
    }
}

impl TlsMaterial {
    /// The identity this party's certificate names.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An error when this party's certificate is not valid at `now` (expired, or not yet
    /// valid): peers would refuse it, so a daemon or a command says so before it dials.
    pub fn check_valid_at(&self, now: SystemTime) -> Result<(), TlsError> {
        let now = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs() as i64;
        let bad = |reason: String| TlsError {
            what: "certificate",
            path: self.cert_path.clone(),
            reason,
        };
        if now > self.not_after {
            return Err(bad(format!(
                "expired {} (Unix time {}); peers refuse it. Issue a new one with `registry-manager certs issue --dir D {}`",
                ago(now - self.not_after),
                self.not_after,
                self.name
            )));
        }
        if now < self.not_before {
            return Err(bad(format!(
                "is not valid before Unix time {} (check this machine's clock)",
                self.not_before
            )));
        }
        Ok(())
    }

    /// The client side: this party's certificate as its identity, the fleet's CA as the only
    /// root, and the manager's certificate checked also against the CA's revocation list `crl`
    /// (its file and PEM text) when given. The list is checked as for
    /// [`TlsMaterial::server_config_revoking`].
    pub fn client_tls(&self, crl: Option<(&Path, &[u8])>) -> Result<ClientTls, TlsError> {
        let config = ClientTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(Duration::from_secs(5));
        let serials = crl
            .map(|(_, pem)| crate::crl::revoked_serials(pem))
            .unwrap_or_default();
        Ok(ClientTls::new(
            config,
            self.server_verifier(crl)?,
            serials,
            self.clone(),
        ))
    }

    /// The check of a server's certificate: signed by the fleet's CA, and not named by `crl`.
    pub(crate) fn server_verifier(
        &self,
        crl: Option<(&Path, &[u8])>,
    ) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
        let mut builder =
            WebPkiServerVerifier::builder_with_provider(self.roots()?, Self::provider());
        if let Some((path, pem)) = crl {
            builder = builder.with_crls(self.checked_list(path, pem)?);
        }
        builder
            .build()
            .map_err(|e| self.bad("CA certificate", e.to_string()))
    }

    /// The server side: this party's certificate, and a client certificate signed by the CA
    /// required of every client (mutual TLS); HTTP/2 only.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.server_config_revoking(None)
    }

    /// [`TlsMaterial::server_config`], refusing also every client certificate the CA's
    /// revocation list `crl` (its file and PEM text) names. The list must be the fleet CA's,
    /// and must not name this party's own certificate: both are checked here, so that a wrong
    /// file is an error at once rather than every peer refused.
    pub fn server_config_revoking(
        &self,
        crl: Option<(&Path, &[u8])>,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            Self::provider(),
        );
        if let Some((path, pem)) = crl {
            builder = builder.with_crls(self.checked_list(path, pem)?);
        }
        let verifier = builder
            .build()
            .map_err(|e| self.bad("CA certificate", e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| self.bad("key", format!("holds no PEM private key ({e})")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| self.bad("certificate", e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain()?, key)
            .map_err(|e| self.bad("certificate", format!("does not match its key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn bad(&self, what: &'static str, reason: String) -> TlsError {
        TlsError {
            what,
            path: self.cert_path.clone(),
            reason,
        }
    }

    /// The fleet's CA as the only root.
    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(&self.ca_pem) {
            let der = der.map_err(|e| self.bad("CA certificate", e.to_string()))?;
            roots
                .add(der)
                .map_err(|e| self.bad("CA certificate", format!("not a usable CA: {e}")))?;
        }
        Ok(Arc::new(roots))
    }

    /// This party's certificate chain.
    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.bad("certificate", e.to_string()))
    }

    /// The lists of the PEM text `pem` (read from `path`), checked: this party's own
    /// certificate is checked against them as a peer's would be, so a list of another CA (or
    /// damaged), which cannot decide and would refuse every peer, is an error, and so is a
    /// list naming this party.
    fn checked_list(
        &self,
        path: &Path,
        pem: &[u8],
    ) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
        let crls = crate::crl::parse(path, pem)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            Self::provider(),
        )
        .with_crls(crls.clone())
        .build()
        .map_err(|e| self.bad("CA certificate", e.to_string()))?;
        let chain = self.chain()?;
        let Some(own) = chain.first() else {
            return Err(self.bad("certificate", format!("holds no certificate; {ISSUE_HINT}")));
        };
        let now = rustls::pki_types::UnixTime::now();
        if let Err(e) = verifier.verify_client_cert(own, &chain[1..], now) {
            let reason = match e {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked) => format!(
                    "revokes this party's own certificate {}; issue it a new one (`registry-manager certs issue`)",
                    self.cert_path
                ),
                e => format!("cannot be used with the fleet's CA ({e}); {CRL_HINT}"),
            };
            return Err(TlsError {
                what: "revocation list",
                path: path.display().to_string(),
                reason,
            });
        }
        Ok(crls)
    }
}

fn ago(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7_200 => format!("{}min ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3_600),
        s => format!("{} days ago", s / 86_400),
    }
}

/// What is read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Its identity: the first DNS subject alternative name, else the common name.
    pub name: Option<String>,
    /// Validity, seconds since the Unix epoch.
    pub not_before: i64,
    /// Validity, seconds since the Unix epoch.
    pub not_after: i64,
    /// Its serial number ([`serial_bytes`]).
    pub serial: Vec<u8>,
}

/// A serial number as DER holds it (`raw`), as compared here: without leading zeros.
pub fn serial_bytes(raw: &[u8]) -> Vec<u8> {
    let first = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[first..].to_vec()
}

/// Reads a DER certificate's identity, validity and serial.
pub fn cert_facts(der: &[u8]) -> Result<CertFacts, String> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|ext| {
            ext.value.general_names.iter().find_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
        });
    let cn = || {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned)
    };
    Ok(CertFacts {
        name: san.or_else(cn).filter(|n| !n.is_empty()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        serial: serial_bytes(cert.raw_serial()),
    })
}

/// The identity a DER certificate names (first DNS SAN, else CN); none when it names none.
pub fn identity_of(der: &[u8]) -> Option<String> {
    cert_facts(der).ok().and_then(|f| f.name)
}

/// The identity named by the client certificate of a request that came over TLS.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Option<String> {
    let certs = request.peer_certs()?;
    certs.first().and_then(|c| identity_of(c.as_ref()))
}

/// A gRPC endpoint for `addr` (`HOST:PORT`): `https://` with `tls`, else `http://`.
pub fn endpoint(addr: &str, tls: Option<&ClientTls>) -> Result<Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    match tls {
        Some(t) => {
            let (config, verifier) = t.parts();
            ep.tls_config_with_verifier(config, verifier)
                .map_err(|e| format!("TLS for {addr}: {e}"))
        }
        None => Ok(ep),
    }
}

/// The whole chain of an error on one line (tonic's transport errors hide the cause, such as
/// "certificate expired", a few sources down).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A hint for a connection that failed: TLS, or its absence, is the usual cause.
pub fn connect_hint(tls: bool) -> &'static str {
    if tls {
        "if the manager serves plaintext, drop --ca/--cert/--key (and FLEET_REGISTRY_CA/CERT/KEY); if it refused the certificate, check that CA signed it and that it has not expired"
    } else {
        "if the manager serves TLS, give --ca, --cert and --key (or FLEET_REGISTRY_CA, FLEET_REGISTRY_CERT, FLEET_REGISTRY_KEY)"
    }
}
