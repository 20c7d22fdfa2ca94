//! The `registry-manager` command line: subcommands, flags and dispatch.
//!
//! - `serve.rs`: the daemon (`serve`), its config file and flags.
//! - `offline.rs`: commands that need no manager (`topology check|schema`, `route explain` with files).
//! - `certs.rs`: the fleet's CA and certificates (`certs init|issue`).
//! - `live.rs`: commands that talk to a live manager over gRPC (`--manager ADDR`).
//! - `events.rs`: `events`, every registry change as it happens (a watch stream that resumes).
//! - `render.rs`: how a route explanation is printed (the form shared with `registry-agent`).
//! - `report.rs`: exit codes and how errors are printed (one line, or one JSON object with
//!   `--json`), completions and man pages.

mod certs;
mod events;
mod ha;
mod live;
mod offline;
mod render;
mod report;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use report::main;

/// Default address of a live manager's gRPC API.
pub const DEFAULT_MANAGER: &str = "127.0.0.1:7400";

/// Exit code of a command that could not do its work (an invalid file, a manager that
/// cannot be reached, a refused request).
pub use cli_kit::EXIT_FAILURE;
/// Exit code of `route explain` when no manager is eligible; the answer is printed.
pub const EXIT_NO_MANAGER: u8 = 3;

/// The registry manager of fleet-registry: keeps the fleet's registry and pushes it to every agent.
#[derive(Debug, Parser)]
#[command(name = "registry-manager", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a registry manager (single node by default: data in ./registry-data, gRPC on 127.0.0.1:7400).
    Serve(serve::ServeArgs),
    /// Validate, apply, compare, show the topology, or print its JSON Schema.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Explain which manager a host routes to, and why.
    #[command(subcommand)]
    Route(RouteCommand),
    /// Read the live registry.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Operator actions on a package: drain (maintenance), withdraw, restore.
    #[command(subcommand)]
    Package(PackageCommand),
    /// The registry manager group: status, leadership moves, membership changes.
    #[command(subcommand)]
    Ha(ha::HaCommand),
    /// Make the fleet's certificates: a CA, then one certificate per host, member and operator.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Write a consistent copy of the whole live registry to FILE (JSON, with a checksum).
    Backup {
        /// The backup file to write.
        file: PathBuf,
        #[command(flatten)]
        manager: ManagerAddr,
        #[command(flatten)]
        out: Output,
    },
    /// Make a new store in DIR from a backup FILE (offline; a new history: agents get a full snapshot). Restore every member of a group from the same file.
    Restore {
        /// The backup file (written by `registry-manager backup`).
        file: PathBuf,
        /// The data directory to create; it must hold no registry yet.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[command(flatten)]
        out: Output,
    },
    /// Print every registry change as it happens, one line each (revision and what changed), until Ctrl-C; reconnects and resumes after a restart or failover.
    Events {
        /// Address of a live registry manager: HOST:PORT or http://HOST:PORT. Repeat it for every member of a group: when one ends the stream, the next is asked.
        #[arg(long = "manager", value_name = "ADDR", default_value = DEFAULT_MANAGER)]
        addrs: Vec<String>,
        /// One JSON object per line: {"revision": N, "changes": [{"kind": ..., ...}]}.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell to complete for.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout, or write one page per command into DIR.
    Man {
        /// Write registry-manager.1 and one page per subcommand (registry-manager-topology-check.1, ...) into DIR (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TopologyCommand {
    /// Validate a topology file offline: a one-line summary, or every error as FILE:LINE:COL: message.
    Check {
        /// The topology file (YAML, version 1).
        file: PathBuf,
        #[command(flatten)]
        out: Output,
    },
    /// Apply a topology file to a live manager, atomically; prints the new revision.
    Apply {
        /// The topology file (YAML, version 1); checked here first, every error printed.
        file: PathBuf,
        /// Apply even when the change removes hosts that hold a live session, or moves the
        /// routes of more than --max-move percent of the hosts.
        #[arg(long)]
        yes: bool,
        /// The share of hosts (percent) whose chosen manager may change without --yes.
        #[arg(long, value_name = "PERCENT", default_value_t = 25.0)]
        max_move: f64,
        #[command(flatten)]
        manager: ManagerAddr,
        #[command(flatten)]
        out: Output,
    },
    /// Show what applying a topology file would change, and which hosts would move to another manager.
    Diff {
        /// The topology file (YAML, version 1) to compare with the applied one.
        file: PathBuf,
        #[command(flatten)]
        manager: ManagerAddr,
        #[command(flatten)]
        out: Output,
    },
    /// Print the topology the live manager has applied.
    Show {
        #[command(flatten)]
        manager: ManagerAddr,
        #[command(flatten)]
        read: ReadOpts,
        #[command(flatten)]
        out: Output,
    },
    /// Print the JSON Schema of the topology file (for editors).
    Schema,
}

#[derive(Debug, Subcommand)]
enum RouteCommand {
    /// The route of HOST to the managers of TYPE: offline with --topology and --registry, else from the live manager.
    Explain(ExplainArgs),
    /// Single points of failure before they fail: per type, hosts with no eligible manager, hosts with only one, and the manager whose loss would move the most hosts.
    Coverage(CoverageArgs),
}

#[derive(Debug, Args)]
struct CoverageArgs {
    /// Only this manager type (default: every type the registry knows).
    #[arg(long = "type")]
    package_type: Option<String>,
    /// Topology file, for an offline answer (needs --registry too).
    #[arg(long, requires = "registry")]
    topology: Option<PathBuf>,
    /// Registry snapshot file (YAML or JSON, as `registry export` writes), for an offline answer.
    #[arg(long, requires = "topology")]
    registry: Option<PathBuf>,
    #[command(flatten)]
    manager: ManagerAddr,
    #[command(flatten)]
    read: ReadOpts,
    #[command(flatten)]
    out: Output,
}

#[derive(Debug, Args)]
struct ExplainArgs {
    /// The requesting host.
    #[arg(long)]
    host: String,
    /// The manager type, e.g. command-control-manager.
    #[arg(long = "type")]
    package_type: String,
    /// Topology file, for an offline answer (needs --registry too).
    #[arg(long, requires = "registry")]
    topology: Option<PathBuf>,
    /// Registry snapshot file (YAML or JSON, as `registry export` writes), for an offline answer.
    #[arg(long, requires = "topology")]
    registry: Option<PathBuf>,
    #[command(flatten)]
    manager: ManagerAddr,
    #[command(flatten)]
    read: ReadOpts,
    #[command(flatten)]
    out: Output,
}

#[derive(Debug, Subcommand)]
enum RegistryCommand {
    /// The live registry as a snapshot (YAML; JSON with --json).
    Export {
        #[command(flatten)]
        manager: ManagerAddr,
        #[command(flatten)]
        read: ReadOpts,
        #[command(flatten)]
        out: Output,
    },
    /// Every host the live registry knows, whether a session holds it, and its packages.
    Hosts {
        #[command(flatten)]
        manager: ManagerAddr,
        #[command(flatten)]
        read: ReadOpts,
        #[command(flatten)]
        out: Output,
    },
}

#[derive(Debug, Subcommand)]
enum PackageCommand {
    /// Put a package into maintenance: it takes no new requests until `restore`.
    Drain(PackageArgs),
    /// Withdraw a package from routing until `restore`.
    Withdraw(PackageArgs),
    /// Clear drain/withdraw: the agent's latest report counts again.
    Restore(PackageArgs),
}

#[derive(Debug, Args)]
struct PackageArgs {
    /// The host the package runs on, as named in the topology.
    #[arg(long)]
    host: String,
    /// The package's manager type, e.g. command-control-manager.
    #[arg(long = "type")]
    package_type: String,
    #[command(flatten)]
    manager: ManagerAddr,
    #[command(flatten)]
    out: Output,
}

/// Which live manager a command talks to, and the certificate it shows there.
#[derive(Debug, Args, Clone)]
pub struct ManagerAddr {
    /// Address of a live registry manager: HOST:PORT (or http://HOST:PORT, https://HOST:PORT).
    #[arg(long = "manager", value_name = "ADDR", default_value = DEFAULT_MANAGER)]
    addr: String,
    /// The fleet's CA certificate (PEM): with --cert and --key, talk to the manager over mutual TLS.
    #[arg(long, value_name = "FILE", env = "FLEET_REGISTRY_CA", requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,
    /// This operator's certificate (PEM), made by `registry-manager certs issue`.
    #[arg(long, value_name = "FILE", env = "FLEET_REGISTRY_CERT", requires_all = ["ca", "key"])]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "FILE", env = "FLEET_REGISTRY_KEY", requires_all = ["ca", "cert"])]
    key: Option<PathBuf>,
    /// The CA's list of revoked certificates (PEM, written by `certs revoke`): refuse a manager
    /// whose certificate it names. Needs --ca, --cert and --key.
    #[arg(long, value_name = "FILE", env = "FLEET_REGISTRY_CRL", requires_all = ["ca", "cert", "key"])]
    crl: Option<PathBuf>,
}

impl ManagerAddr {
    /// The same certificate, toward another manager.
    fn at(&self, addr: &str) -> ManagerAddr {
        ManagerAddr {
            addr: addr.to_owned(),
            ..self.clone()
        }
    }

    /// The TLS files given, if any.
    fn tls_files(&self) -> Option<proto::tls::TlsFiles> {
        match (&self.ca, &self.cert, &self.key) {
            (Some(ca), Some(cert), Some(key)) => Some(proto::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            }),
            _ => None,
        }
    }

    /// The revocation list given, if any.
    fn crl(&self) -> Option<&std::path::Path> {
        self.crl.as_deref()
    }
}

impl std::fmt::Display for ManagerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

#[derive(Debug, Args, Clone, Copy)]
struct ReadOpts {
    /// Answer from the asked member's own copy, without confirming with the group's leader
    /// that it is current (works while the group has no leader).
    #[arg(long)]
    stale: bool,
}

#[derive(Debug, Args, Clone, Copy)]
pub struct Output {
    /// Machine-readable output: the answer as JSON on stdout; an error as one JSON object,
    /// {"error": "..."}, on stderr.
    #[arg(long)]
    pub json: bool,
}

/// Runs one command; the exit code on success, an error (printed on one line) otherwise.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Topology(TopologyCommand::Check { file, out }) => offline::check(&file, out.json),
        Command::Topology(TopologyCommand::Schema) => offline::schema(),
        Command::Topology(TopologyCommand::Apply {
            file,
            yes,
            max_move,
            manager,
            out,
        }) => live::block_on(live::apply(&manager, &file, yes, max_move, out.json)),
        Command::Topology(TopologyCommand::Diff { file, manager, out }) => {
            live::block_on(live::diff(&manager, &file, out.json))
        }
        Command::Topology(TopologyCommand::Show { manager, read, out }) => {
            live::block_on(live::show(&manager, read.stale, out.json))
        }
        Command::Route(RouteCommand::Explain(args)) => match (&args.topology, &args.registry) {
            (Some(topology), Some(registry)) => offline::explain(
                topology,
                registry,
                &args.host,
                &args.package_type,
                args.out.json,
            ),
            _ => live::block_on(live::explain(
                &args.manager,
                &args.host,
                &args.package_type,
                args.read.stale,
                args.out.json,
            )),
        },
        Command::Route(RouteCommand::Coverage(args)) => match (&args.topology, &args.registry) {
            (Some(topology), Some(registry)) => offline::coverage_files(
                topology,
                registry,
                args.package_type.as_deref(),
                args.out.json,
            ),
            _ => live::block_on(live::coverage(
                &args.manager,
                args.package_type.as_deref(),
                args.read.stale,
                args.out.json,
            )),
        },
        Command::Registry(RegistryCommand::Export { manager, read, out }) => {
            live::block_on(live::export(&manager, read.stale, out.json))
        }
        Command::Registry(RegistryCommand::Hosts { manager, read, out }) => {
            live::block_on(live::hosts(&manager, read.stale, out.json))
        }
        Command::Ha(cmd) => live::block_on(ha::run(cmd)),
        Command::Certs(cmd) => certs::run(cmd),
        Command::Backup { file, manager, out } => {
            live::block_on(live::backup(&manager, &file, out.json))
        }
        Command::Restore {
            file,
            data_dir,
            out,
        } => offline::restore(&file, &data_dir, out.json),
        Command::Events { addrs, json } => live::block_on(events::events(&addrs, json)),
        Command::Completions { shell } => report::completions(shell),
        Command::Man { dir } => report::man(dir.as_deref()),
        Command::Package(cmd) => {
            let (action, args) = match cmd {
                PackageCommand::Drain(a) => (live::Action::Drain, a),
                PackageCommand::Withdraw(a) => (live::Action::Withdraw, a),
                PackageCommand::Restore(a) => (live::Action::Restore, a),
            };
            live::block_on(live::package(
                &args.manager,
                action,
                &args.host,
                &args.package_type,
                args.out.json,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
