//! Certificates the real `certs` command never makes, for tests of refusals: one that has
//! expired, signed by a fleet's own CA.

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
    let ca_cert = std::fs::read_to_string(dir.join("ca.crt"))?;
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key"))?)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, identity);
    params.subject_alt_names = vec![SanType::DnsName(identity.to_string().try_into()?)];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(30);
    params.not_after = now - Duration::days(expired_days_ago);
    let cert = params.signed_by(&key, &issuer)?;
    let (crt_path, key_path) = (
        dir.join(format!("{file_name}.crt")),
        dir.join(format!("{file_name}.key")),
    );
    std::fs::write(&crt_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok((crt_path, key_path))
}
