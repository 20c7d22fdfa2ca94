//! The CA's list of revoked certificates (`tls.crl`, written by `registry-manager certs
//! revoke`) on the side that dials: agents, members dialing members, command lines.
//!
//! - [`ClientTls`] is what a client dials managers with: its own certificate, and a check of
//!   the manager's certificate against the fleet's CA and, when given, against the list. The
//!   list can be replaced while running ([`ClientTls::revoke_from`]); every new handshake takes
//!   the newest. A replacement naming a certificate a manager has already shown this process
//!   bumps [`ClientTls::revoked_peers`]: the owner drops its open connections and dials again,
//!   and the new handshakes refuse that manager.
//! - [`revoked_serials`]: the serials a list names.
//! - [`follow_file`]: looks at a file every so often and hands over its text when it changed
//!   (every daemon follows its list this way).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::ClientTlsConfig;

use crate::tls::{cert_facts, serial_bytes, TlsError};

/// How to make a list, for errors.
pub(crate) const CRL_HINT: &str =
    "it is made by `registry-manager certs revoke --dir D NAME` with the fleet's CA in D";

/// The serials of the certificates a list names ([`serial_bytes`]).
pub type Serials = BTreeSet<Vec<u8>>;

/// The lists in a PEM text (one or more `X509 CRL` blocks); an error names `path` and the fix.
pub fn parse(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError {
        what: "revocation list",
        path: path.display().to_string(),
        reason,
    };
    let crls = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM revocation list ({e}); {CRL_HINT}")))?;
    if crls.is_empty() {
        return Err(bad(format!("holds no revocation list; {CRL_HINT}")));
    }
    Ok(crls)
}

/// The serials the PEM list names (none from a part that cannot be read as one: [`parse`]
/// reports those).
pub fn revoked_serials(pem: &[u8]) -> Serials {
    CertificateRevocationListDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .flat_map(|der| {
            x509_parser::parse_x509_crl(&der)
                .map(|(_, crl)| {
                    crl.iter_revoked_certificates()
                        .map(|r| serial_bytes(r.raw_serial()))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect()
}

/// Most serials of managers' certificates remembered (a process talks to a few managers; the
/// bound only keeps a hostile stream of new certificates from growing memory).
const SEEN_MAX: usize = 1024;

/// The check of a manager's certificate: the current verifier (the CA, and the list when
/// given), and the serials of the certificates it accepted.
#[derive(Debug)]
struct ServerCheck {
    current: RwLock<Arc<WebPkiServerVerifier>>,
    seen: Mutex<Serials>,
    revoked_peers: watch::Sender<u64>,
}

impl ServerCheck {
    fn current(&self) -> Arc<WebPkiServerVerifier> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Serials> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.current().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if let Ok(facts) = cert_facts(end_entity) {
            let mut seen = self.seen();
            if seen.len() >= SEEN_MAX && !seen.contains(&facts.serial) {
                seen.clear();
            }
            seen.insert(facts.serial);
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// What a client dials managers with over mutual TLS: its identity, and the check of the
/// manager's certificate (the fleet's CA; the revocation list when given). Clones share the
/// check, so a list replaced in one is in force in all.
#[derive(Clone)]
pub struct ClientTls {
    config: ClientTlsConfig,
    check: Arc<ServerCheck>,
    material: crate::tls::TlsMaterial,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("material", &self.material)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    pub(crate) fn new(
        config: ClientTlsConfig,
        verifier: Arc<WebPkiServerVerifier>,
        material: crate::tls::TlsMaterial,
    ) -> ClientTls {
        ClientTls {
            config,
            check: Arc::new(ServerCheck {
                current: RwLock::new(verifier),
                seen: Mutex::new(Serials::new()),
                revoked_peers: watch::channel(0).0,
            }),
            material,
        }
    }

    /// The endpoint's TLS settings (identity, handshake timeout) and the check of the server.
    pub(crate) fn parts(&self) -> (ClientTlsConfig, Arc<dyn ServerCertVerifier>) {
        (self.config.clone(), self.verifier())
    }

    /// The check of a manager's certificate every handshake of this client makes (shared by
    /// its clones; the newest list in force).
    pub fn verifier(&self) -> Arc<dyn ServerCertVerifier> {
        self.check.clone()
    }

    /// Puts the list `pem` (read from `path`) in force for every new handshake; returns the
    /// serials it names. A list that cannot be used is an error and changes nothing. When it
    /// names a certificate a manager has shown this process, [`ClientTls::revoked_peers`]
    /// changes.
    pub fn revoke_from(&self, path: &Path, pem: &[u8]) -> Result<Serials, TlsError> {
        let verifier = self.material.server_verifier(Some((path, pem)))?;
        let serials = revoked_serials(pem);
        *self
            .check
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = verifier;
        // Forgotten once told: a later list that still names them changes nothing more.
        let hit = {
            let mut seen = self.check.seen();
            let before = seen.len();
            seen.retain(|s| !serials.contains(s));
            seen.len() != before
        };
        if hit {
            self.check.revoked_peers.send_modify(|n| *n += 1);
        }
        Ok(serials)
    }

    /// Changes whenever a list put in force names a certificate a manager showed this process
    /// before: connections open to that manager are to be dropped and dialed again.
    pub fn revoked_peers(&self) -> watch::Receiver<u64> {
        self.check.revoked_peers.subscribe()
    }

    /// How many times [`ClientTls::revoked_peers`] changed.
    pub fn revocations(&self) -> u64 {
        *self.check.revoked_peers.borrow()
    }
}

/// What tells one version of a file from another: its modification time and length.
type Stamp = (Option<SystemTime>, u64);

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok((m.modified().ok(), m.len()))
}

/// Looks at `path` every `every` until `cancel`, and calls `changed` with its text whenever it
/// changed since the last look (the first look compares with the file as it was when this
/// was called). A file that cannot be seen or read is logged once, and `changed` is not
/// called: what was read before stays in force.
pub async fn follow_file(
    path: PathBuf,
    every: Duration,
    cancel: CancellationToken,
    mut changed: impl FnMut(&Path, Vec<u8>) + Send,
) {
    let mut seen = stamp(&path).ok();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = match stamp(&path) {
            Ok(s) => s,
            Err(e) => {
                if seen.is_some() {
                    tracing::warn!(path = %path.display(), error = %e, "cannot see the revocation list any more; the list read before stays in force");
                }
                seen = None;
                continue;
            }
        };
        if seen == Some(now) {
            continue;
        }
        seen = Some(now);
        match std::fs::read(&path) {
            Ok(text) => changed(&path, text),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the changed revocation list; the list read before stays in force");
            }
        }
    }
}

/// Reads the list at `path` for the first time: an error names the file and the fix.
pub fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError {
        what: "revocation list",
        path: path.display().to_string(),
        reason: format!("cannot read it: {e}; {CRL_HINT}, or remove `crl`"),
    })
}
