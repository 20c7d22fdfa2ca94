//! The bootstrap list of registry managers (`managers` in the configuration): `host:port`
//! entries as given, `dns+srv:NAME` entries resolved to their SRV targets (lowest priority
//! first, then highest weight) with hickory-resolver, asking the configured `dns_servers`, or
//! the name servers of `/etc/resolv.conf` when none are configured. The list is resolved for every
//! round of connection attempts (answers cached no longer than their TTL), and the cache is
//! dropped after a round that reached no manager, so a changed record moves the agent as soon
//! as the managers it knows are lost, whatever the old record's TTL.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use tokio::sync::OnceCell;

use crate::config::ManagerAddress;

/// Resolves the configured manager addresses.
#[derive(Debug)]
pub struct Bootstrap {
    list: Vec<ManagerAddress>,
    dns_servers: Vec<SocketAddr>,
    resolver: OnceCell<Option<ResolverHandle>>,
}

struct ResolverHandle(TokioResolver);

impl std::fmt::Debug for ResolverHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokioResolver")
    }
}

/// Name servers listed in a resolv.conf text.
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(ip)) => ip.split('%').next()?.parse().ok(),
                _ => None,
            }
        })
        .collect()
}

fn build_resolver(configured: &[SocketAddr]) -> Option<ResolverHandle> {
    let servers: Vec<SocketAddr> = if configured.is_empty() {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let servers = nameservers(&text);
        if servers.is_empty() {
            tracing::error!("dns+srv: /etc/resolv.conf names no name server; SRV entries of `managers` cannot be resolved. Name them in `dns_servers` of the agent configuration");
            return None;
        }
        servers
            .into_iter()
            .map(|ip| SocketAddr::new(ip, 53))
            .collect()
    } else {
        configured.to_vec()
    };
    let config = ResolverConfig::from_name_servers(
        servers
            .into_iter()
            .map(|a| {
                let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                for c in &mut ns.connections {
                    c.port = a.port();
                }
                ns
            })
            .collect(),
    );
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    builder.options_mut().timeout = Duration::from_secs(1);
    builder.options_mut().attempts = 2;
    match builder.build() {
        Ok(r) => Some(ResolverHandle(r)),
        Err(e) => {
            tracing::error!(error = %e, "dns+srv: cannot build a DNS resolver");
            None
        }
    }
}

impl Bootstrap {
    /// A bootstrap list; the resolver is built on first use.
    pub fn new(list: Vec<ManagerAddress>, dns_servers: Vec<SocketAddr>) -> Bootstrap {
        Bootstrap {
            list,
            dns_servers,
            resolver: OnceCell::new(),
        }
    }

    /// Forgets every cached DNS answer, so the next [`Bootstrap::addresses`] asks the name
    /// servers again (called when a whole round of candidates reached no manager).
    pub fn forget(&self) {
        if let Some(Some(r)) = self.resolver.get() {
            r.0.clear_cache();
        }
    }

    /// Every bootstrap address as `host:port`, in configuration order (SRV entries expanded).
    pub async fn addresses(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in &self.list {
            match m {
                ManagerAddress::HostPort(a) => out.push(a.clone()),
                ManagerAddress::DnsSrv(name) => out.extend(self.srv(name).await),
            }
        }
        out
    }

    async fn srv(&self, name: &str) -> Vec<String> {
        let Some(resolver) = self
            .resolver
            .get_or_init(|| async { build_resolver(&self.dns_servers) })
            .await
        else {
            return Vec::new();
        };
        match resolver.0.srv_lookup(name).await {
            Ok(lookup) => {
                let mut records: Vec<(u16, std::cmp::Reverse<u16>, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::SRV(srv) => {
                            let target = srv.target.to_utf8();
                            let target = target.trim_end_matches('.');
                            Some((
                                srv.priority,
                                std::cmp::Reverse(srv.weight),
                                format!("{target}:{}", srv.port),
                            ))
                        }
                        _ => None,
                    })
                    .collect();
                records.sort();
                records.into_iter().map(|r| r.2).collect()
            }
            Err(e) => {
                tracing::warn!(name, error = %e, "dns+srv: SRV lookup failed");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nameservers_of_resolv_conf() {
        let text = "# comment\nsearch example.org\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:2\n";
        let got = nameservers(text);
        assert_eq!(
            got,
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn host_port_entries_pass_through_in_order() {
        let b = Bootstrap::new(
            vec![
                ManagerAddress::HostPort("127.0.0.1:1".into()),
                ManagerAddress::HostPort("m.example.org:7400".into()),
            ],
            Vec::new(),
        );
        assert_eq!(b.addresses().await, ["127.0.0.1:1", "m.example.org:7400"]);
    }
}
