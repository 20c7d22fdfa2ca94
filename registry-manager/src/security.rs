//! A manager's security settings (`tls:`, `admins:`, `insecure:`, `group.key_file`) and the
//! pure start-up checks that keep a manager safe by default: no plaintext port beyond
//! loopback unless the operator says `insecure`, no group member beyond loopback without the
//! cluster key.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::access::Access;
use crate::group::GroupConfig;

/// TLS and access settings of a manager (docs/security.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// Mutual TLS on the gRPC port; none: plaintext, and every caller is `local`.
    pub tls: Option<proto::tls::TlsFiles>,
    /// Certificate names allowed to run admin commands.
    pub admins: Vec<String>,
    /// Serve plaintext beyond loopback anyway (`insecure: true`, `--insecure`).
    pub insecure: bool,
    /// The cluster key the members authenticate each other with (`group.key_file`).
    pub key_file: Option<PathBuf>,
    /// The CA's list of revoked certificates (`tls.crl`), read again whenever it changes.
    pub crl: Option<PathBuf>,
}

impl Security {
    /// The access rules these settings make for a group.
    pub fn access(&self, group: Option<&GroupConfig>) -> Access {
        let members: BTreeSet<String> = group
            .map(|g| {
                g.members
                    .keys()
                    .chain(g.learners.keys())
                    .map(|n| n.to_string())
                    .collect()
            })
            .unwrap_or_default();
        Access {
            tls: self.tls.is_some(),
            admins: self.admins.iter().cloned().collect(),
            members,
        }
    }
}

/// Refuses settings that would expose a manager: plaintext on an address other than loopback
/// without `insecure`, and a member of a group listening beyond loopback without a cluster key.
pub fn check_exposure(
    listen: SocketAddr,
    security: &Security,
    group: Option<&GroupConfig>,
) -> Result<(), String> {
    let beyond_loopback = !listen.ip().is_loopback();
    if beyond_loopback && security.tls.is_none() && !security.insecure {
        return Err(format!(
            "refusing to listen on {listen} without TLS: anyone who reaches that address could open sessions as any host and change the topology. Configure `tls: {{ cert, key, ca }}` (see docs/security.md; `registry-manager certs init|issue` makes the files), or set `insecure: true` (or --insecure) if you mean to serve plaintext there, or listen on loopback (127.0.0.1)"
        ));
    }
    let in_group = group.is_some_and(|g| !g.is_stand_alone());
    if beyond_loopback && in_group && security.key_file.is_none() {
        return Err(format!(
            "refusing to start: this member listens on {listen}, beyond loopback, without a cluster key. Set `group.key_file` to a file holding the group's key (the same on every member; for example 32 random bytes: `head -c 32 /dev/urandom | base64 > cluster.key`)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> Option<proto::tls::TlsFiles> {
        Some(proto::tls::TlsFiles {
            cert: "m1.crt".into(),
            key: "m1.key".into(),
            ca: "ca.crt".into(),
        })
    }

    fn group() -> GroupConfig {
        let n = |s: &str| topology::HostName::new(s).unwrap();
        GroupConfig {
            name: n("m1"),
            members: [
                (n("m1"), "10.0.0.1:7400".to_string()),
                (n("m2"), "10.0.0.2:7400".to_string()),
                (n("m3"), "10.0.0.3:7400".to_string()),
            ]
            .into(),
            learners: Default::default(),
            preferred: None,
            dial: Default::default(),
            hook: None,
        }
    }

    #[test]
    fn plaintext_beyond_loopback_needs_insecure_and_the_error_names_both_fixes() {
        let wide: SocketAddr = "10.0.0.1:7400".parse().unwrap();
        let err = check_exposure(wide, &Security::default(), None).unwrap_err();
        assert!(err.contains("10.0.0.1:7400"), "{err}");
        assert!(
            err.contains("tls:") && err.contains("insecure: true"),
            "{err}"
        );
        let all: SocketAddr = "0.0.0.0:7400".parse().unwrap();
        assert!(check_exposure(all, &Security::default(), None).is_err());
        let insecure = Security {
            insecure: true,
            ..Default::default()
        };
        assert_eq!(check_exposure(wide, &insecure, None), Ok(()));
        let with_tls = Security {
            tls: tls(),
            ..Default::default()
        };
        assert_eq!(check_exposure(wide, &with_tls, None), Ok(()));
        let local: SocketAddr = "127.0.0.1:7400".parse().unwrap();
        assert_eq!(check_exposure(local, &Security::default(), None), Ok(()));
        let local6: SocketAddr = "[::1]:7400".parse().unwrap();
        assert_eq!(check_exposure(local6, &Security::default(), None), Ok(()));
    }

    #[test]
    fn a_member_beyond_loopback_needs_the_cluster_key() {
        let wide: SocketAddr = "10.0.0.1:7400".parse().unwrap();
        let with_tls = Security {
            tls: tls(),
            ..Default::default()
        };
        let err = check_exposure(wide, &with_tls, Some(&group())).unwrap_err();
        assert!(err.contains("group.key_file"), "{err}");
        let keyed = Security {
            key_file: Some("cluster.key".into()),
            ..with_tls.clone()
        };
        assert_eq!(check_exposure(wide, &keyed, Some(&group())), Ok(()));
        let local: SocketAddr = "127.0.0.1:7400".parse().unwrap();
        assert_eq!(
            check_exposure(local, &Security::default(), Some(&group())),
            Ok(())
        );
    }

    #[test]
    fn members_and_admins_make_the_access_rules() {
        let s = Security {
            tls: tls(),
            admins: vec!["ops".into()],
            ..Default::default()
        };
        let a = s.access(Some(&group()));
        assert!(a.tls);
        assert_eq!(a.admins, ["ops".to_string()].into());
        assert_eq!(a.members.len(), 3);
    }
}
