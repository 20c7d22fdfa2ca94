//! The CA's list of revoked certificates (`tls.crl`, written by `registry-manager certs
//! revoke`) on the side that dials: agents, members dialing members, command lines.
//!
//! - [`ClientTls`] is what a client dials managers with: its own certificate, and a check of
//!   the manager's certificate against the fleet's CA and, when given, against the list. The
//!   list can be replaced while running ([`ClientTls::revoke_from`]); every new handshake takes
//!   the newest. [`ClientTls::revoked`] tells what the list in force names: a connection made
//!   with [`ClientTls::recording`] knows the certificate its manager showed ([`Shown`]) and is
//!   dropped when the list names it; [`Revoked::generation`] grows whenever a list names a
//!   certificate none before it did, for owners of many connections (channel caches) that
//!   simply make them again.
//! - [`revoked_serials`]: the serials a list names.
//! - [`read`] and [`follow_file`]: the list read at start, then looked at every so often and
//!   handed over when it changed (every daemon follows its list this way).

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

/// What the list in force names.
#[derive(Debug, Clone, Default)]
pub struct Revoked {
    /// The serials of the certificates it names.
    pub serials: Arc<Serials>,
    /// Grows whenever a list put in force names a certificate no list before it named.
    pub generation: u64,
}

/// What every clone of a [`ClientTls`] shares: the current verifier (the CA, and the list
/// when given), and what that list names.
#[derive(Debug)]
struct Shared {
    current: RwLock<Arc<WebPkiServerVerifier>>,
    revoked: watch::Sender<Revoked>,
}

/// The serial of the certificate a manager showed on one connection (the latest handshake of
/// a channel that reconnects), once it was accepted.
#[derive(Debug, Default)]
pub struct Shown(Mutex<Option<Vec<u8>>>);

impl Shown {
    /// The serial ([`serial_bytes`]), if a handshake was accepted.
    pub fn serial(&self) -> Option<Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The check of a manager's certificate with the current verifier; with `shown`, the serial
/// of every certificate it accepts is recorded there.
#[derive(Debug)]
struct ServerCheck {
    shared: Arc<Shared>,
    shown: Option<Arc<Shown>>,
}

impl ServerCheck {
    fn current(&self) -> Arc<WebPkiServerVerifier> {
        Arc::clone(
            &self
                .shared
                .current
                .read()
                .unwrap_or_else(|p| p.into_inner()),
        )
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
        if let Some(shown) = &self.shown {
            *shown.0.lock().unwrap_or_else(|p| p.into_inner()) =
                cert_facts(end_entity).ok().map(|f| f.serial);
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
    shared: Arc<Shared>,
    /// What handshakes call: the check, recording or not.
    verifier: Arc<ServerCheck>,
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
        serials: Serials,
        material: crate::tls::TlsMaterial,
    ) -> ClientTls {
        let shared = Arc::new(Shared {
            current: RwLock::new(verifier),
            revoked: watch::channel(Revoked {
                serials: Arc::new(serials),
                generation: 0,
            })
            .0,
        });
        ClientTls {
            config,
            verifier: Arc::new(ServerCheck {
                shared: Arc::clone(&shared),
                shown: None,
            }),
            shared,
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
        self.verifier.clone()
    }

    /// This client for one connection: its handshakes record the certificate the manager
    /// showed in the [`Shown`] returned, so that the connection can be dropped when a list
    /// names it ([`ClientTls::names`]).
    pub fn recording(&self) -> (ClientTls, Arc<Shown>) {
        let shown = Arc::new(Shown::default());
        let client = ClientTls {
            verifier: Arc::new(ServerCheck {
                shared: Arc::clone(&self.shared),
                shown: Some(Arc::clone(&shown)),
            }),
            ..self.clone()
        };
        (client, shown)
    }

    /// Puts the list `pem` (read from `path`) in force for every new handshake; returns the
    /// serials it names. A list that cannot be used is an error and changes nothing.
    pub fn revoke_from(&self, path: &Path, pem: &[u8]) -> Result<Serials, TlsError> {
        let verifier = self.material.server_verifier(Some((path, pem)))?;
        let serials = revoked_serials(pem);
        *self
            .shared
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = verifier;
        self.shared.revoked.send_if_modified(|r| {
            if *r.serials == serials {
                return false;
            }
            if !serials.is_subset(&r.serials) {
                r.generation += 1;
            }
            r.serials = Arc::new(serials.clone());
            true
        });
        Ok(serials)
    }

    /// What the list in force names; changes when another list is put in force.
    pub fn revoked(&self) -> watch::Receiver<Revoked> {
        self.shared.revoked.subscribe()
    }

    /// Whether the list in force names the certificate `shown` recorded.
    pub fn names(&self, shown: &Shown) -> bool {
        shown
            .serial()
            .is_some_and(|s| self.shared.revoked.borrow().serials.contains(&s))
    }

    /// [`Revoked::generation`] of the list in force: owners of many connections compare it
    /// with the one they were made at, and make them again when it grew.
    pub fn revocations(&self) -> u64 {
        self.shared.revoked.borrow().generation
    }
}

/// What tells one version of a file from another: its modification time and length.
type Stamp = (Option<SystemTime>, u64);

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok((m.modified().ok(), m.len()))
}

/// The version of a list's file that was read ([`read`]), for [`follow_file`] to start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp(Option<Stamp>);

/// Reads the list at `path` for the first time, and the version read (looked at before
/// reading: a change while reading is read again by [`follow_file`]). An error names the
/// file and how to make one.
pub fn read(path: &Path) -> Result<(Vec<u8>, FileStamp), TlsError> {
    let before = FileStamp(stamp(path).ok());
    let text = std::fs::read(path).map_err(|e| TlsError {
        what: "revocation list",
        path: path.display().to_string(),
        reason: format!("cannot read it: {e}; {CRL_HINT}"),
    })?;
    Ok((text, before))
}

/// Looks at `path` every `every` until `cancel`, and calls `changed` with its text whenever it
/// changed since the version `from` ([`read`]) or the last one handed over. A file that cannot
/// be seen or read is logged once, and `changed` is not called: what was read before stays in
/// force.
pub async fn follow_file(
    path: PathBuf,
    from: FileStamp,
    every: Duration,
    cancel: CancellationToken,
    mut changed: impl FnMut(&Path, Vec<u8>) + Send,
) {
    let mut seen = from.0;
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
