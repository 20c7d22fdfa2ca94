//! Who may do what: the identity of a caller (the name in its client certificate, or `local`
//! when the manager serves no TLS) and the pure decision [`Access::authorize`] every RPC is
//! put through before it does anything.
//!
//! The rules (docs/security.md): an agent may open a session, keep it alive and report only for
//! the host its certificate names; admin RPCs need a certificate named in `admins` (or a
//! member's: members forward admin requests to the leader); member RPCs need a member's
//! certificate; reads an agent needs (watch, health) need any certificate the CA signed.

use std::collections::BTreeSet;
use std::fmt;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The manager serves no TLS: every caller is `local` and may do everything (as before
    /// TLS existed; such a manager only listens on loopback unless told `insecure`).
    Local,
    /// The name in the caller's client certificate.
    Named(String),
    /// Over TLS, but the certificate names nobody (should not happen with `certs issue`).
    Anonymous,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Local => f.write_str("local"),
            Identity::Named(n) => f.write_str(n),
            Identity::Anonymous => f.write_str("<no name>"),
        }
    }
}

/// What a request asks to do, as far as access is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc<'a> {
    /// Acts for a host (OpenSession, KeepAlive, ReportStatus): only that host's certificate.
    ForHost {
        /// The RPC's name, for the refusal.
        rpc: &'static str,
        /// The host it acts for.
        host: &'a str,
    },
    /// An `Admin` RPC: an admin's or a member's certificate.
    Admin(&'static str),
    /// A `Member` RPC: a member's certificate.
    Member(&'static str),
    /// Reading the registry as an agent does (Watch): any certificate of the CA.
    Read(&'static str),
}

/// Why a request was refused; the message names the identity seen and what it would need.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No usable identity.
    #[error("{0}")]
    Unauthenticated(String),
    /// An identity without the right.
    #[error("{0}")]
    PermissionDenied(String),
}

impl From<Refusal> for tonic::Status {
    fn from(r: Refusal) -> tonic::Status {
        match r {
            Refusal::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            Refusal::PermissionDenied(m) => tonic::Status::permission_denied(m),
        }
    }
}

/// The access rules of one manager.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// True when the manager serves TLS; false: everyone is [`Identity::Local`].
    pub tls: bool,
    /// Certificate names allowed to run admin RPCs (`admins:`).
    pub admins: BTreeSet<String>,
    /// Member names of the group (voters and learners of the configuration).
    pub members: BTreeSet<String>,
}

impl Access {
    /// No TLS: everything allowed, as a manager on loopback always was.
    pub fn open() -> Access {
        Access::default()
    }

    /// Decides whether `who` may do `rpc`. `member` says whether a name is a member of the
    /// group now (the configuration's members, and any the group has added since).
    pub fn authorize(
        &self,
        who: &Identity,
        rpc: Rpc<'_>,
        member: &dyn Fn(&str) -> bool,
    ) -> Result<(), Refusal> {
        if !self.tls {
            return Ok(());
        }
        let name = match who {
            Identity::Named(n) => n.as_str(),
            Identity::Local => return Ok(()),
            Identity::Anonymous => {
                return Err(Refusal::Unauthenticated(
                    "this registry manager requires a client certificate that names its holder (a DNS name or common name); issue one with `registry-manager certs issue --dir D NAME`".into(),
                ))
            }
        };
        // Asked only where it matters: a heartbeat (for a host) never looks up the membership.
        let is_member = || self.members.contains(name) || member(name);
        match rpc {
            Rpc::ForHost { rpc, host } => {
                if name == host {
                    Ok(())
                } else {
                    Err(Refusal::PermissionDenied(format!(
                        "{rpc} for host \"{host}\" refused: the client certificate names \"{name}\"; an agent may only act for the host its certificate names, so this needs the certificate of \"{host}\""
                    )))
                }
            }
            Rpc::Admin(rpc) => {
                if self.admins.contains(name) || is_member() {
                    Ok(())
                } else {
                    Err(Refusal::PermissionDenied(format!(
                        "{rpc} refused: the client certificate names \"{name}\", which is not in this manager's `admins` ({}); run it with an admin's certificate (--cert/--key)",
                        list(&self.admins)
                    )))
                }
            }
            Rpc::Member(rpc) => {
                if is_member() {
                    Ok(())
                } else {
                    Err(Refusal::PermissionDenied(format!(
                        "{rpc} refused: the client certificate names \"{name}\", which is not a member of this group ({}); member RPCs need a member's certificate",
                        list(&self.members)
                    )))
                }
            }
            Rpc::Read(_) => Ok(()),
        }
    }
}

fn list(names: &BTreeSet<String>) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// The identity of a request's caller under `access`.
pub fn identity_of<T>(access: &Access, request: &tonic::Request<T>) -> Identity {
    if !access.tls {
        return Identity::Local;
    }
    match proto::tls::peer_identity(request) {
        Some(n) => Identity::Named(n),
        None => Identity::Anonymous,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> Access {
        Access {
            tls: true,
            admins: ["ops".to_string()].into(),
            members: ["m1".to_string(), "m2".to_string(), "m3".to_string()].into(),
        }
    }

    fn named(n: &str) -> Identity {
        Identity::Named(n.into())
    }

    const NONE: &dyn Fn(&str) -> bool = &|_| false;

    #[test]
    fn an_agent_acts_only_for_the_host_its_certificate_names() {
        let a = tls();
        let open = |host| Rpc::ForHost {
            rpc: "OpenSession",
            host,
        };
        assert_eq!(
            a.authorize(&named("agent-4"), open("agent-4"), NONE),
            Ok(())
        );
        let err = a
            .authorize(&named("agent-4"), open("agent-3"), NONE)
            .unwrap_err();
        let Refusal::PermissionDenied(m) = err else {
            panic!("{err:?}")
        };
        assert!(
            m.contains("\"agent-4\"") && m.contains("\"agent-3\""),
            "{m}"
        );
        // Not even an admin or a member acts for a host.
        assert!(a.authorize(&named("ops"), open("agent-3"), NONE).is_err());
        assert!(a.authorize(&named("m1"), open("agent-3"), NONE).is_err());
    }

    #[test]
    fn admin_rpcs_need_an_admin_or_a_member() {
        let a = tls();
        let rpc = Rpc::Admin("ApplyTopology");
        assert_eq!(a.authorize(&named("ops"), rpc, NONE), Ok(()));
        assert_eq!(a.authorize(&named("m2"), rpc, NONE), Ok(()));
        let err = a.authorize(&named("agent-4"), rpc, NONE).unwrap_err();
        let Refusal::PermissionDenied(m) = err else {
            panic!("{err:?}")
        };
        assert!(
            m.contains("agent-4") && m.contains("admins") && m.contains("ops"),
            "{m}"
        );
    }

    #[test]
    fn member_rpcs_need_a_member_of_the_configuration_or_of_the_group_now() {
        let a = tls();
        let rpc = Rpc::Member("Raft");
        assert_eq!(a.authorize(&named("m3"), rpc, NONE), Ok(()));
        assert!(a.authorize(&named("ops"), rpc, NONE).is_err());
        assert!(a.authorize(&named("m4"), rpc, NONE).is_err());
        assert_eq!(a.authorize(&named("m4"), rpc, &|n| n == "m4"), Ok(()));
    }

    #[test]
    fn reads_need_only_a_certificate_and_no_tls_allows_everything() {
        let a = tls();
        assert_eq!(
            a.authorize(&named("agent-9"), Rpc::Read("Watch"), NONE),
            Ok(())
        );
        assert!(matches!(
            a.authorize(&Identity::Anonymous, Rpc::Read("Watch"), NONE),
            Err(Refusal::Unauthenticated(_))
        ));
        let open = Access::open();
        for rpc in [
            Rpc::Admin("ApplyTopology"),
            Rpc::Member("Raft"),
            Rpc::ForHost {
                rpc: "OpenSession",
                host: "agent-3",
            },
        ] {
            assert_eq!(open.authorize(&Identity::Local, rpc, NONE), Ok(()));
        }
    }
}
