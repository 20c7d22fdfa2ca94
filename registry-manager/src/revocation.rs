//! The CA's list of revoked certificates (`tls.crl`, written by `registry-manager certs
//! revoke`). Read at start: a list that cannot be used stops the manager with the reason. Then
//! the file is looked at every [`CHECK_EVERY`] and read again when it changed; the TLS front
//! door takes the newest server configuration for every new handshake. A list that changed
//! but cannot be used is reported and the one read before stays in force.
//!
//! Connections opened before a certificate was revoked are not cut by it: they end when their
//! client reconnects or the manager restarts (docs/security.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proto::tls::{TlsError, TlsMaterial};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the list's file is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// What tells one version of the file from another: its modification time and length.
type Stamp = (Option<SystemTime>, u64);

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok((m.modified().ok(), m.len()))
}

/// The server configuration for `material` refusing what the list in `path` names, and how
/// many certificates the list names.
fn load(
    material: &TlsMaterial,
    path: &Path,
) -> Result<(Arc<rustls::ServerConfig>, usize), TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError {
        what: "revocation list",
        path: path.display().to_string(),
        reason: format!(
            "cannot read it: {e}; it is made by `registry-manager certs revoke --dir D NAME`, or remove `crl` from `tls`"
        ),
    })?;
    let config = material.server_config_revoking(Some((path, &pem)))?;
    Ok((config, revoked_count(&pem)))
}

/// How many certificates the PEM list names (0 when it cannot be read as one: the TLS
/// configuration made from it has reported that already).
fn revoked_count(pem: &[u8]) -> usize {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateRevocationListDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .map(|der| {
            x509_parser::parse_x509_crl(&der)
                .map(|(_, crl)| crl.iter_revoked_certificates().count())
                .unwrap_or(0)
        })
        .sum()
}

/// The newest server configuration, for each new TLS handshake.
pub type Configs = watch::Receiver<Arc<rustls::ServerConfig>>;

/// The server configurations new TLS handshakes take: `material`'s, refusing the certificates
/// the list `crl` names (when given), and the task that follows the list's file until `cancel`.
pub fn server_configs(
    material: &TlsMaterial,
    crl: Option<&Path>,
    cancel: CancellationToken,
) -> Result<(Configs, Option<tokio::task::JoinHandle<()>>), TlsError> {
    let Some(path) = crl else {
        let (_, rx) = watch::channel(material.server_config()?);
        return Ok((rx, None));
    };
    let first = stamp(path).ok();
    let (config, count) = load(material, path)?;
    tracing::info!(path = %path.display(), revoked = count, "read the revocation list: certificates it names are refused");
    let (tx, rx) = watch::channel(config);
    let task = tokio::spawn(follow(
        material.clone(),
        path.to_path_buf(),
        first,
        tx,
        cancel,
    ));
    Ok((rx, Some(task)))
}

/// Reads the list again whenever its file changes.
async fn follow(
    material: TlsMaterial,
    path: PathBuf,
    mut seen: Option<Stamp>,
    tx: watch::Sender<Arc<rustls::ServerConfig>>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
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
        let (material, path2) = (material.clone(), path.clone());
        match tokio::task::spawn_blocking(move || load(&material, &path2)).await {
            Ok(Ok((config, count))) => {
                tx.send_replace(config);
                tracing::info!(path = %path.display(), revoked = count, "read the changed revocation list: new connections are checked against it");
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the revocation list changed but cannot be used; the list read before stays in force");
            }
            Err(e) => tracing::warn!(error = %e, "reading the revocation list failed"),
        }
    }
}
