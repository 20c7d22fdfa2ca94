//! `registry-manager certs init|issue|revoke`: the fleet's CA, its certificates and its list
//! of revoked certificates, as files.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use super::Output;

/// The `certs` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make the fleet's CA: DIR/ca.crt and DIR/ca.key (the key readable by its owner only). Refuses to overwrite a CA.
    Init {
        /// The directory of the fleet's certificates (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[command(flatten)]
        out: Output,
    },
    /// Issue DIR/NAME.crt and DIR/NAME.key, signed by DIR's CA, for a host, a member or an operator named NAME.
    Issue {
        /// The directory holding the CA (from `certs init`); the new files are written there.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The identity: an agent's host name, a member's name, or an operator's name in `admins`.
        name: String,
        /// An IP address the holder serves at (a manager's listen address); repeat for more.
        #[arg(long = "ip", value_name = "A")]
        ips: Vec<IpAddr>,
        /// A DNS name the holder serves at; repeat for more (NAME is always included).
        #[arg(long = "dns", value_name = "N")]
        dns: Vec<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Revoke the certificates DIR/NAME.crt (a lost or stolen key, a host taken out of the fleet): adds them to DIR/revoked.crl, the CA's signed list. Copy that file to every member and agent host as `tls: { crl }` (operators give it as --crl); members read it again within 5 s of a change, refuse those certificates on every new connection and cut the connections open with them; agents leave a manager it names. Revoke before issuing NAME a new certificate: the one revoked is the one DIR/NAME.crt holds now.
    Revoke {
        /// The directory holding the CA and the certificates (from `certs init` and `certs issue`).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The names whose certificates to revoke (DIR/NAME.crt).
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        out: Output,
    },
}

pub fn run(cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    use registry_manager::certs;
    match cmd {
        CertsCommand::Init { dir, out } => {
            let (crt, key) = certs::init(&dir)?;
            if out.json {
                println!(
                    "{}",
                    json!({ "cert": crt.display().to_string(), "key": key.display().to_string() })
                );
            } else {
                println!(
                    "made the fleet's CA: {} and {} (keep the key safe: whoever holds it can issue certificates)",
                    crt.display(),
                    key.display()
                );
            }
        }
        CertsCommand::Issue {
            dir,
            name,
            ips,
            dns,
            out,
        } => {
            let spec = certs::LeafSpec::new(&name, ips, dns);
            let (crt, key) = certs::issue_into(&dir, &spec)?;
            if out.json {
                println!(
                    "{}",
                    json!({ "name": name, "cert": crt.display().to_string(), "key": key.display().to_string() })
                );
            } else {
                println!(
                    "issued {} and {} for {name}, valid {} days",
                    crt.display(),
                    key.display(),
                    certs::LEAF_DAYS
                );
            }
        }
        CertsCommand::Revoke { dir, names, out } => {
            let r = certs::revoke_into(&dir, &names)?;
            if out.json {
                let added: Vec<_> = r
                    .added
                    .iter()
                    .map(|(name, serial)| json!({ "name": name, "serial": serial }))
                    .collect();
                println!(
                    "{}",
                    json!({
                        "crl": r.path.display().to_string(),
                        "revoked": added,
                        "already_revoked": r.already,
                        "total": r.total,
                    })
                );
            } else {
                for (name, serial) in &r.added {
                    println!("revoked the certificate of {name} (serial {serial})");
                }
                for name in &r.already {
                    println!("the certificate of {name} was revoked already");
                }
                println!(
                    "{} lists {} revoked certificate(s): copy it to every member and agent host (`tls: {{ crl: ... }}` in their configurations); they read it again within 5 s of a change",
                    r.path.display(),
                    r.total
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
