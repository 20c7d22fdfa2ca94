//! Certificates made in process, signed by a fleet's own CA (made by the real `certs init`):
//! one that has expired, for tests of refusals, and valid ones in bulk, for benchmarks of
//! thousands of simulated agents (each needs a certificate naming its host).

use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use time::{Duration, OffsetDateTime};

/// Issues `dir/NAME.crt` and `dir/NAME.key` for `identity`, signed by `dir/ca.*`, valid from
/// 30 days ago until `expired_days_ago` days ago. Returns (cert, key).
pub fn issue_expired(
    dir: &Path,
    file_name: &str,
    identity: &str,
    expired_days_ago: i64,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let now = OffsetDateTime::now_utc();
    let (cert, key) = issue(
        &ca(dir)?,
        identity,
        now - Duration::days(30),
        now - Duration::days(expired_days_ago),
    )?;
    let (crt_path, key_path) = (
        dir.join(format!("{file_name}.crt")),
        dir.join(format!("{file_name}.key")),
    );
    std::fs::write(&crt_path, cert)?;
    std::fs::write(&key_path, key)?;
    Ok((crt_path, key_path))
}

/// The CA of `dir` (`ca.crt`, `ca.key`), to sign with.
pub fn ca(dir: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let ca_cert = std::fs::read_to_string(dir.join("ca.crt"))?;
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key"))?)?;
    Ok(Issuer::from_ca_cert_pem(&ca_cert, ca_key)?)
}

/// A client TLS configuration for `identity`: a certificate valid for a day, signed by
/// `issuer`, and the CA of `dir` as the only root (made in memory, nothing written).
pub fn client_config(
    dir: &Path,
    issuer: &Issuer<'static, KeyPair>,
    identity: &str,
) -> anyhow::Result<proto::crl::ClientTls> {
    let now = OffsetDateTime::now_utc();
    let (cert, key) = issue(
        issuer,
        identity,
        now - Duration::hours(1),
        now + Duration::days(1),
    )?;
    let files = proto::tls::TlsFiles {
        cert: format!("<{identity} in memory>").into(),
        key: format!("<{identity} key in memory>").into(),
        ca: dir.join("ca.crt"),
    };
    let ca = std::fs::read(&files.ca)?;
    Ok(files
        .material(cert.into_bytes(), key.into_bytes(), ca)?
        .client_tls(None)?)
}

/// (certificate PEM, key PEM) for `identity` (its common name and first DNS name).
fn issue(
    issuer: &Issuer<'static, KeyPair>,
    identity: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, identity);
    params.subject_alt_names = vec![SanType::DnsName(identity.to_string().try_into()?)];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}
