//! A small fleet of real processes on loopback: one `registry-manager` (or a group of them,
//! joined through cuttable relays), some `registry-agent`s, and stand-in manager packages
//! (`fleet-standin` processes), each on its own ports, every one killed and reaped when the
//! [`Fleet`] is dropped. Logs live in a temporary directory that is
//! kept (and its path printed) when a test fails.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use proto::agent_client::AgentClient;
use tonic::transport::{Channel, Endpoint};

use crate::relay::Relay;
use crate::wait::wait_until;

/// Where the workspace's binaries are: next to the running test or benchmark executable.
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("executable has no directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is not built; run `cargo build --workspace` (or `cargo test --workspace`) first",
        path.display()
    );
    Ok(path)
}

/// Runs `registry-manager restore BACKUP --data-dir DATA_DIR [extra...]` (offline) and returns
/// its output.
pub fn restore_cli(
    backup: &str,
    data_dir: &Path,
    extra: &[&str],
) -> anyhow::Result<std::process::Output> {
    let data = data_dir.display().to_string();
    Ok(Command::new(bin_path("registry-manager")?)
        .args(["restore", backup, "--data-dir", &data])
        .args(extra)
        .output()?)
}

/// A free loopback port for a child process to bind.
///
/// Taken below the kernel's ephemeral range (32768 and up by default), so that no outgoing
/// connection of another process can grab it between this check and the child's bind; spread
/// by process id so concurrent test binaries rarely meet, and checked by binding it.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let base = (std::process::id() % 600) * 20;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (base + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free loopback port between {LOW} and {}", LOW + SPAN)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One child process the fleet owns, with its command line kept for restarts.
#[derive(Debug)]
pub struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn new(name: &str, program: PathBuf, args: Vec<String>, log: PathBuf) -> Proc {
        Proc {
            name: name.to_string(),
            program,
            args,
            log,
            child: None,
        }
    }

    /// Starts (or starts again) the process, appending to its log.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("FLEET_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY-free: libc::kill on our own child's pid.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    }

    /// SIGKILL and reap: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.signal_pid(child.id(), libc::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal_pid(&self, pid: u32, sig: i32) {
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }

    /// SIGSTOP: the process hangs silently; its sockets stay open.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Proc::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGTERM, then wait up to `grace` before SIGKILL; reaps either way.
    pub fn terminate(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            self.signal_pid(child.id(), libc::SIGCONT);
            self.signal_pid(child.id(), libc::SIGTERM);
            let deadline = std::time::Instant::now() + grace;
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                if std::time::Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Whether it exited by itself (for diagnostics).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Its whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The tail of its log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        let mut out = format!("--- {} ({}) ---\n", self.name, self.log.display());
        for l in &all[start..] {
            let _ = writeln!(out, "{l}");
        }
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The cluster key every member of a fleet built with [`FleetBuilder::cluster_key`] starts with.
pub const CLUSTER_KEY: &str = "fleet-test-cluster-key-0123456789abcdef";

/// The operator of a TLS fleet: the managers' admin.
pub const OPERATOR: &str = "ops";

/// Builder of a [`Fleet`]: `Fleet::from_topology(yaml).manager().agent("agent-4")...start()`.
#[derive(Debug, Clone)]
pub struct FleetBuilder {
    topology: String,
    manager: bool,
    members: usize,
    agents: Vec<String>,
    packages: Vec<(String, String)>,
    forwards: Vec<String>,
    session_ttl: String,
    health: String,
    check: String,
    relays: bool,
    grpc: bool,
    srv: Option<(String, SocketAddr)>,
    /// The single manager serves its HTTP side port (status page, metrics) on a free port.
    manager_http: bool,
    tls: bool,
    cluster_key: bool,
    crl: bool,
}

impl FleetBuilder {
    /// Adds the registry manager (started first).
    pub fn manager(mut self) -> Self {
        self.manager = true;
        self
    }

    /// Runs the registry as a group of `n` managers (`m1`..`mn`), each member reaching every
    /// other through a relay of its own, so a test can cut one member off in both directions.
    /// Agents list every member, rotated so they spread over the group.
    pub fn managers(mut self, n: usize) -> Self {
        self.manager = true;
        self.members = n.max(1);
        self
    }

    /// Adds an agent for `host`.
    pub fn agent(mut self, host: &str) -> Self {
        self.agents.push(host.to_string());
        self
    }

    /// Adds agents for every host of the topology.
    pub fn every_agent(mut self) -> anyhow::Result<Self> {
        let t = topology::Topology::from_yaml("fleet", &self.topology)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for h in t.hosts() {
            if !self.agents.iter().any(|a| a == h.name.as_str()) {
                self.agents.push(h.name.to_string());
            }
        }
        Ok(self)
    }

    /// Runs a stand-in package of `package_type` on `host` (its agent checks and registers it).
    pub fn package(mut self, host: &str, package_type: &str) -> Self {
        self.packages
            .push((host.to_string(), package_type.to_string()));
        self
    }

    /// Every agent gets a forwarding port for `package_type`.
    pub fn forward(mut self, package_type: &str) -> Self {
        self.forwards.push(package_type.to_string());
        self
    }

    /// The manager's `--session-ttl` (default `1s`).
    pub fn session_ttl(mut self, ttl: &str) -> Self {
        self.session_ttl = ttl.to_string();
        self
    }

    /// The agents' `health` block, as YAML flow mapping.
    pub fn health(mut self, health: &str) -> Self {
        self.health = health.to_string();
        self
    }

    /// Agents use their DEFAULT `health` block and package `check` settings (the command-line contract (docs/manager.md, docs/agent.md)) instead of
    /// the test-fast ones this builder sets otherwise (for benchmarks "with default settings").
    pub fn default_checks(mut self) -> Self {
        self.health = String::new();
        self.check = String::new();
        self
    }

    /// Stand-in packages speak the gRPC health protocol instead of the greeting; agents check
    /// them with `grpc_health` and probe managers with `probe: grpc-health`, which sees a
    /// hung (SIGSTOPped) manager that TCP connects cannot.
    pub fn grpc_packages(mut self) -> Self {
        self.grpc = true;
        self
    }

    /// Agents find the managers by DNS: `managers: ["dns+srv:NAME"]`, asking only the name
    /// server at `dns` (see [`crate::dns::DnsServer`]).
    pub fn srv_bootstrap(mut self, name: &str, dns: SocketAddr) -> Self {
        self.srv = Some((name.to_string(), dns));
        self
    }

    /// Agents reach the manager through a cuttable [`Relay`] each.
    pub fn relays(mut self) -> Self {
        self.relays = true;
        self
    }

    /// The manager serves its HTTP side port — status page, `/metrics`, `/healthz` — on a free
    /// loopback port ([`Fleet::manager_http_url`]; in a group every member,
    /// [`Fleet::member_http_url`]); off otherwise.
    pub fn manager_http(mut self) -> Self {
        self.manager_http = true;
        self
    }

    /// Runs the fleet with mutual TLS, from certificates made by the real `registry-manager
    /// certs init|issue` in the fleet's directory: one per member (`m1`..), one per agent
    /// host, and the operator `ops` (the managers' only admin), which the harness's own calls
    /// and [`Fleet::manager_cli`] use.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// With [`FleetBuilder::tls`]: the managers and the agents follow the CA's revocation list
    /// (`tls: { crl }`), and operator commands are given it (`--crl`); it is made at the start
    /// by the real `certs revoke` for a certificate issued to nobody (`retired`);
    /// [`Fleet::revoke`] adds to it.
    pub fn revocation_list(mut self) -> Self {
        self.crl = true;
        self
    }

    /// Members of a group sign their RPCs with a cluster key (`group.key_file`); each member
    /// reads its own copy, [`Fleet::cluster_key_file`], so a test can give one another key.
    pub fn cluster_key(mut self) -> Self {
        self.cluster_key = true;
        self
    }

    /// Starts every process and waits until each agent answers on its local API.
    pub async fn start(self) -> anyhow::Result<Fleet> {
        let dir = tempfile::Builder::new().prefix("fleet-").tempdir()?;
        let topology_path = dir.path().join("topology.yaml");
        std::fs::write(&topology_path, &self.topology)?;
        let mut fleet = Fleet {
            manager_addr: loopback(free_port()?),
            manager: None,
            members: Vec::new(),
            member_relays: BTreeMap::new(),
            agents: BTreeMap::new(),
            standins: BTreeMap::new(),
            topology_path,
            dir: Some(dir),
            spec: self.clone(),
            manager_http: None,
            member_http: Vec::new(),
        };
        if self.manager_http && self.members <= 1 {
            fleet.manager_http = Some(loopback(free_port()?));
        }
        if self.tls {
            fleet.make_certs()?;
            if self.crl {
                fleet.issue("retired")?;
                fleet.revoke("retired")?;
            }
        }
        if self.manager && self.members > 1 {
            fleet.start_group(self.members).await?;
        } else if self.manager {
            let m = fleet.manager_proc()?;
            fleet.manager = Some(m);
            fleet.start_manager().await?;
        }
        for (host, ty) in &self.packages {
            fleet.start_standin(host, ty).await?;
        }
        for host in &self.agents {
            fleet.add_agent(host).await?;
        }
        for host in &self.agents {
            fleet.wait_agent_ready(host).await?;
        }
        Ok(fleet)
    }
}

/// One member of a registry group.
#[derive(Debug)]
pub struct Member {
    /// `m1`, `m2`, ...
    pub name: String,
    /// Its process.
    pub proc: Proc,
    /// Its gRPC address (agents and operators use it directly).
    pub addr: SocketAddr,
}

/// One agent of the fleet.
#[derive(Debug)]
pub struct AgentHandle {
    pub proc: Proc,
    /// Its local API.
    pub api: SocketAddr,
    /// Its forwarding port per type.
    pub forwards: BTreeMap<String, SocketAddr>,
    /// The relay between it and the manager, when the fleet was built with relays.
    pub relay: Option<Relay>,
    client: Option<AgentClient<Channel>>,
}

/// A running fleet. Dropping it kills and reaps every process.
#[derive(Debug)]
pub struct Fleet {
    manager_addr: SocketAddr,
    manager: Option<Proc>,
    /// The other members of a group (member 0 is `manager`): name, process, address.
    members: Vec<Member>,
    /// Relays between members: (from, to) -> relay; `to`'s address as `from` dials it.
    member_relays: BTreeMap<(usize, usize), Relay>,
    agents: BTreeMap<String, AgentHandle>,
    standins: BTreeMap<(String, String), (Proc, SocketAddr)>,
    topology_path: PathBuf,
    dir: Option<tempfile::TempDir>,
    spec: FleetBuilder,
    /// The manager's HTTP side port, when the builder asked for one (in a group: member 0's).
    manager_http: Option<SocketAddr>,
    /// Every member's HTTP side port, in a group built with `.manager_http()`.
    member_http: Vec<SocketAddr>,
}

impl Fleet {
    /// Starts building a fleet on a topology (YAML text).
    #[allow(clippy::new_ret_no_self)]
    pub fn from_topology(yaml: &str) -> FleetBuilder {
        FleetBuilder {
            topology: yaml.to_string(),
            manager: false,
            members: 1,
            agents: Vec::new(),
            packages: Vec::new(),
            forwards: Vec::new(),
            session_ttl: "1s".into(),
            health: "{ interval: 200ms, timeout: 200ms, fall: 2, rise: 2 }".into(),
            check: "{ interval: 100ms, fall: 2, rise: 2 }".into(),
            relays: false,
            grpc: false,
            srv: None,
            manager_http: false,
            tls: false,
            cluster_key: false,
            crl: false,
        }
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("fleet dir").path()
    }

    /// The manager's gRPC address.
    pub fn manager_addr(&self) -> SocketAddr {
        self.manager_addr
    }

    /// The manager's HTTP side port, `http://127.0.0.1:PORT`, when built with
    /// [`FleetBuilder::manager_http`] (the same port across restarts).
    pub fn manager_http_url(&self) -> Option<String> {
        self.manager_http_addr().map(|a| format!("http://{a}"))
    }

    /// The HTTP side port of group member `i`, `http://127.0.0.1:PORT`, in a group built with
    /// [`FleetBuilder::manager_http`].
    pub fn member_http_url(&self, i: usize) -> Option<String> {
        self.member_http_addr(i).map(|a| format!("http://{a}"))
    }

    fn member_http_addr(&self, i: usize) -> Option<SocketAddr> {
        self.member_http.get(i).copied()
    }

    /// The address of the manager's HTTP side port (see [`Fleet::manager_http_url`]).
    pub fn manager_http_addr(&self) -> Option<SocketAddr> {
        self.manager_http
    }

    fn manager_proc(&self) -> anyhow::Result<Proc> {
        let mut args = vec![
            "serve".into(),
            "--listen".into(),
            self.manager_addr.to_string(),
            "--data-dir".into(),
            self.dir().join("manager-data").display().to_string(),
            "--topology".into(),
            self.topology_path.display().to_string(),
            "--session-ttl".into(),
            self.spec.session_ttl.clone(),
            // Many daemons per machine: no HTTP side port (its default would be shared).
            "--http-listen".into(),
            "none".into(),
        ];
        if let Some(http) = self.manager_http_addr() {
            *args.last_mut().expect("an --http-listen value") = http.to_string();
        }
        if self.spec.tls {
            let path = self.dir().join("manager-tls.yaml");
            std::fs::write(&path, self.tls_yaml("m1"))?;
            args.extend(["--config".into(), path.display().to_string()]);
        }
        Ok(Proc::new(
            "registry-manager",
            bin_path("registry-manager")?,
            args,
            self.dir().join("manager.log"),
        ))
    }

    /// Starts (or restarts) the manager and waits until it answers.
    pub async fn start_manager(&mut self) -> anyhow::Result<()> {
        let addr = self.manager_addr;
        self.manager
            .as_mut()
            .context("fleet has no manager")?
            .spawn()?;
        let r = wait_until(
            "the registry manager to answer",
            Duration::from_secs(20),
            || async {
                let ch = self
                    .admin_endpoint(addr)
                    .map_err(|e| e.to_string())?
                    .connect_timeout(Duration::from_millis(500))
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
                proto::admin_client::AdminClient::new(ch)
                    .show_topology(proto::ShowTopologyRequest { stale: false })
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(())
            },
        )
        .await;
        if let Err(e) = r {
            anyhow::bail!("{e}\n{}", self.logs());
        }
        Ok(())
    }

    /// Starts a group of `n` members: relays between every pair, a config file each.
    async fn start_group(&mut self, n: usize) -> anyhow::Result<()> {
        if self.spec.manager_http {
            self.member_http = (0..n)
                .map(|_| free_port().map(loopback))
                .collect::<anyhow::Result<_>>()?;
            self.manager_http = self.member_http.first().copied();
        }
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|_| free_port().map(loopback))
            .collect::<anyhow::Result<_>>()?;
        self.manager_addr = addrs[0];
        for from in 0..n {
            for (to, addr) in addrs.iter().enumerate() {
                if from != to {
                    self.member_relays
                        .insert((from, to), Relay::start(*addr).await?);
                }
            }
        }
        let members_yaml: String = (0..n)
            .map(|i| format!("    m{}: \"{}\"\n", i + 1, addrs[i]))
            .collect();
        for (i, addr) in addrs.iter().enumerate() {
            let dial: String = (0..n)
                .filter(|j| *j != i)
                .map(|j| {
                    format!(
                        "    m{}: \"{}\"\n",
                        j + 1,
                        self.member_relays[&(i, j)].addr()
                    )
                })
                .collect();
            let config = format!(
                "listen: \"{addr}\"\nhttp_listen: none\ndata_dir: \"{}\"\ntopology: \"{}\"\nsession_ttl: {}\ngroup:\n  name: m{}\n  preferred: m1\n  members:\n{members_yaml}  dial:\n{dial}",
                self.dir().join(format!("m{}-data", i + 1)).display(),
                self.topology_path.display(),
                self.spec.session_ttl,
                i + 1,
            );
            let config = if self.spec.tls {
                config + &self.tls_yaml(&format!("m{}", i + 1))
            } else {
                config
            };
            let config = if self.spec.cluster_key {
                let path = self.cluster_key_file(&format!("m{}", i + 1));
                std::fs::write(&path, format!("{CLUSTER_KEY}\n"))?;
                config.replacen(
                    "group:\n",
                    &format!("group:\n  key_file: \"{}\"\n", path.display()),
                    1,
                )
            } else {
                config
            };
            let path = self.dir().join(format!("m{}.yaml", i + 1));
            std::fs::write(&path, config)?;
            let mut proc = Proc::new(
                &format!("registry-manager m{}", i + 1),
                bin_path("registry-manager")?,
                vec![
                    "serve".into(),
                    "--config".into(),
                    path.display().to_string(),
                ],
                self.dir().join(format!("m{}.log", i + 1)),
            );
            if let Some(http) = self.member_http_addr(i) {
                // The flag wins over `http_listen: none` in the file.
                proc.args
                    .extend(["--http-listen".to_string(), http.to_string()]);
            }
            self.members.push(Member {
                name: format!("m{}", i + 1),
                proc,
                addr: *addr,
            });
        }
        for m in &mut self.members {
            m.proc.spawn()?;
        }
        for i in 0..n {
            self.wait_member(i).await?;
        }
        Ok(())
    }

    /// Starts one more manager process, configured as a learner of the group (not yet added:
    /// `ha add-learner` does that). Returns its index.
    pub async fn start_learner(&mut self, name: &str) -> anyhow::Result<usize> {
        let addr = loopback(free_port()?);
        let members_yaml: String = self
            .members
            .iter()
            .map(|m| format!("    {}: \"{}\"\n", m.name, m.addr))
            .collect();
        let config = format!(
            "listen: \"{addr}\"\nhttp_listen: none\ndata_dir: \"{}\"\nsession_ttl: {}\ngroup:\n  name: {name}\n  members:\n{members_yaml}  learners:\n    {name}: \"{addr}\"\n",
            self.dir().join(format!("{name}-data")).display(),
            self.spec.session_ttl,
        );
        let config = if self.spec.tls {
            self.issue(name)?;
            config + &self.tls_yaml(name)
        } else {
            config
        };
        let path = self.dir().join(format!("{name}.yaml"));
        std::fs::write(&path, config)?;
        let mut proc = Proc::new(
            &format!("registry-manager {name}"),
            bin_path("registry-manager")?,
            vec![
                "serve".into(),
                "--config".into(),
                path.display().to_string(),
            ],
            self.dir().join(format!("{name}.log")),
        );
        proc.spawn()?;
        self.members.push(Member {
            name: name.to_owned(),
            proc,
            addr,
        });
        // A manager listens once its store is loaded: wait for that, so that the group can
        // reach the learner as soon as it is added.
        wait_until(
            &format!("learner {name} to listen"),
            Duration::from_secs(20),
            || async move {
                tokio::net::TcpStream::connect(addr)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )
        .await?;
        Ok(self.members.len() - 1)
    }

    /// Waits until member `i` answers a current read (the group has a leader it follows).
    pub async fn wait_member(&self, i: usize) -> anyhow::Result<()> {
        let addr = self.members[i].addr;
        let r = wait_until(
            "a registry group member to answer a current read",
            Duration::from_secs(30),
            || async {
                let ch = self
                    .admin_endpoint(addr)
                    .map_err(|e| e.to_string())?
                    .connect_timeout(Duration::from_millis(500))
                    .timeout(Duration::from_secs(5))
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
                let t = proto::admin_client::AdminClient::new(ch)
                    .show_topology(proto::ShowTopologyRequest { stale: false })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                if t.yaml.is_empty() {
                    return Err("no topology yet".to_string());
                }
                Ok(())
            },
        )
        .await;
        if let Err(e) = r {
            anyhow::bail!("{e}\n{}", self.logs());
        }
        Ok(())
    }

    /// The members of the group (empty for a single manager).
    pub fn members(&mut self) -> &mut [Member] {
        &mut self.members
    }

    /// The gRPC address of member `i`.
    pub fn member_addr(&self, i: usize) -> SocketAddr {
        self.members[i].addr
    }

    /// The name of member `i`.
    pub fn member_name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// The index of the member named `name`.
    pub fn member_index(&self, name: &str) -> anyhow::Result<usize> {
        self.members
            .iter()
            .position(|m| m.name == name)
            .with_context(|| format!("no member {name}"))
    }

    /// `ha status --json` as one member (by index) answers it.
    pub fn ha_status(&self, i: usize) -> anyhow::Result<serde_json::Value> {
        let out = self.member_cli(self.members[i].addr, &["ha", "status", "--json"])?;
        anyhow::ensure!(
            out.status.success(),
            "ha status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Waits until every running member agrees on a leader (other than `not`); its index.
    pub async fn wait_leader(
        &self,
        not: Option<usize>,
        deadline: Duration,
    ) -> anyhow::Result<usize> {
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.agree_on_leader(&all, not, deadline).await
    }

    /// Waits until the running members among `among` agree on a leader among them.
    pub async fn wait_leader_among(
        &self,
        among: &[usize],
        deadline: Duration,
    ) -> anyhow::Result<usize> {
        self.agree_on_leader(among, None, deadline).await
    }

    async fn agree_on_leader(
        &self,
        among: &[usize],
        not: Option<usize>,
        deadline: Duration,
    ) -> anyhow::Result<usize> {
        let start = tokio::time::Instant::now();
        loop {
            let running: Vec<usize> = among
                .iter()
                .copied()
                .filter(|i| self.members[*i].proc.pid().is_some())
                .collect();
            let mut leaders = std::collections::BTreeSet::new();
            for i in &running {
                let out = self.member_cli(
                    self.members[*i].addr,
                    &["ha", "status", "--local", "--json"],
                );
                let leader = out
                    .ok()
                    .filter(|o| o.status.success())
                    .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                    .and_then(|v| v["leader"].as_str().map(str::to_owned));
                leaders.insert(leader);
            }
            if leaders.len() == 1 {
                if let Some(Some(name)) = leaders.into_iter().next() {
                    let idx = self.member_index(&name)?;
                    if Some(idx) != not && running.contains(&idx) {
                        return Ok(idx);
                    }
                }
            }
            if start.elapsed() >= deadline {
                anyhow::bail!(
                    "the group agreed on no new leader within {deadline:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Cuts member `i` off from every other member, both ways (packets vanish, no reset).
    pub fn cut_member(&self, i: usize) {
        for ((from, to), relay) in &self.member_relays {
            if *from == i || *to == i {
                relay.cut();
            }
        }
    }

    /// Undoes [`Fleet::cut_member`].
    pub fn heal_member(&self, i: usize) {
        for ((from, to), relay) in &self.member_relays {
            if *from == i || *to == i {
                relay.heal();
            }
        }
    }

    /// Restarts member `i` (after a kill) and waits until it serves current reads.
    pub async fn restart_member(&mut self, i: usize) -> anyhow::Result<()> {
        self.members[i].proc.spawn()?;
        self.wait_member(i).await
    }

    /// Member `i`'s data directory.
    pub fn member_data_dir(&self, i: usize) -> PathBuf {
        self.dir().join(format!("m{}-data", i + 1))
    }

    /// The data directory of the agent of `host`.
    pub fn agent_data_dir(&self, host: &str) -> PathBuf {
        self.dir().join(format!("agent-{host}"))
    }

    /// The manager's data directory (one manager).
    pub fn manager_data_dir(&self) -> PathBuf {
        self.dir().join("manager-data")
    }

    /// SIGKILLs the manager.
    pub fn kill_manager(&mut self) {
        if let Some(m) = self.manager.as_mut() {
            m.kill();
        }
    }

    /// The manager process.
    pub fn manager(&mut self) -> Option<&mut Proc> {
        self.manager.as_mut()
    }

    async fn start_standin(&mut self, host: &str, ty: &str) -> anyhow::Result<()> {
        let addr = loopback(free_port()?);
        let mut p = Proc::new(
            &format!("standin {host}/{ty}"),
            bin_path("fleet-standin")?,
            {
                let mut args = vec![
                    "--host".to_string(),
                    host.to_string(),
                    "--listen".into(),
                    addr.to_string(),
                ];
                if self.spec.grpc {
                    args.push("--grpc".into());
                }
                args
            },
            self.dir().join(format!("standin-{host}-{ty}.log")),
        );
        p.spawn()?;
        wait_until(
            "a stand-in package to listen",
            Duration::from_secs(10),
            || async {
                tokio::net::TcpStream::connect(addr)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )
        .await?;
        self.standins
            .insert((host.to_string(), ty.to_string()), (p, addr));
        Ok(())
    }

    /// The stand-in package of `package_type` on `host`.
    pub fn package(&mut self, host: &str, package_type: &str) -> anyhow::Result<&mut Proc> {
        self.standins
            .get_mut(&(host.to_string(), package_type.to_string()))
            .map(|(p, _)| p)
            .with_context(|| format!("no stand-in {package_type} on {host}"))
    }

    /// Restarts a killed stand-in package on its port and waits until it answers.
    pub async fn restart_package(&mut self, host: &str, package_type: &str) -> anyhow::Result<()> {
        let key = (host.to_string(), package_type.to_string());
        let (p, addr) = self
            .standins
            .get_mut(&key)
            .with_context(|| format!("no stand-in {package_type} on {host}"))?;
        let addr = *addr;
        p.spawn()?;
        wait_until(
            "a restarted stand-in to listen",
            Duration::from_secs(10),
            || async {
                tokio::net::TcpStream::connect(addr)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )
        .await
    }

    fn agent_config(
        &self,
        host: &str,
        api: SocketAddr,
        forwards: &BTreeMap<String, SocketAddr>,
        manager: SocketAddr,
    ) -> String {
        let mut y = String::new();
        let _ = writeln!(y, "host: {host}");
        if let Some((name, dns)) = &self.spec.srv {
            let _ = writeln!(y, "managers: [\"dns+srv:{name}\"]");
            let _ = writeln!(y, "dns_servers: [\"{dns}\"]");
        } else if self.members.is_empty() {
            let _ = writeln!(y, "managers: [\"{manager}\"]");
        } else {
            // Every member, rotated by the agent's position so agents spread over the group.
            let n = self.members.len();
            let first = self.agents.len() % n;
            let list: Vec<String> = (0..n)
                .map(|i| format!("\"{}\"", self.members[(first + i) % n].addr))
                .collect();
            let _ = writeln!(y, "managers: [{}]", list.join(", "));
        }
        let _ = writeln!(
            y,
            "data_dir: {}",
            self.dir().join(format!("agent-{host}")).display()
        );
        let _ = writeln!(y, "listen: {api}");
        let _ = writeln!(y, "http_listen: none");
        let probe = if self.spec.grpc {
            "probe: grpc-health"
        } else {
            ""
        };
        let health = self
            .spec
            .health
            .trim()
            .trim_start_matches('{')
            .trim_end_matches('}')
            .trim();
        match (probe.is_empty(), health.is_empty()) {
            (true, true) => {}
            (false, true) => {
                let _ = writeln!(y, "health: {{ {probe} }}");
            }
            (true, false) => {
                let _ = writeln!(y, "health: {{ {health} }}");
            }
            (false, false) => {
                let _ = writeln!(y, "health: {{ {probe}, {health} }}");
            }
        }
        let check_kind = if self.spec.grpc { "grpc_health" } else { "tcp" };
        let pkgs: Vec<_> = self
            .standins
            .iter()
            .filter(|((h, _), _)| h == host)
            .collect();
        if !pkgs.is_empty() {
            let _ = writeln!(y, "packages:");
            for ((_, ty), (_, addr)) in pkgs {
                let _ = writeln!(y, "  - type: {ty}");
                let _ = writeln!(y, "    endpoint: {addr}");
                let check = self
                    .spec
                    .check
                    .trim_start_matches('{')
                    .trim_end_matches('}');
                if check.trim().is_empty() {
                    let _ = writeln!(y, "    check: {{ {check_kind}: \"{addr}\" }}");
                } else {
                    let _ = writeln!(y, "    check: {{ {check_kind}: \"{addr}\", {check} }}");
                }
            }
        }
        if self.spec.tls {
            let (cert, key, ca) = self.cert_files(host);
            let _ = writeln!(
                y,
                "tls: {{ cert: \"{}\", key: \"{}\", ca: \"{}\"{} }}",
                cert.display(),
                key.display(),
                ca.display(),
                self.crl_yaml()
            );
        }
        if !forwards.is_empty() {
            let _ = writeln!(y, "forward:");
            for (ty, addr) in forwards {
                let _ = writeln!(y, "  - type: {ty}");
                let _ = writeln!(y, "    listen: {addr}");
            }
        }
        y
    }

    async fn add_agent(&mut self, host: &str) -> anyhow::Result<()> {
        let api = loopback(free_port()?);
        let mut forwards = BTreeMap::new();
        for ty in &self.spec.forwards {
            forwards.insert(ty.clone(), loopback(free_port()?));
        }
        let relay = if self.spec.relays {
            Some(Relay::start(self.manager_addr).await?)
        } else {
            None
        };
        let manager = relay.as_ref().map(Relay::addr).unwrap_or(self.manager_addr);
        let config = self.agent_config(host, api, &forwards, manager);
        let config_path = self.dir().join(format!("agent-{host}.yaml"));
        std::fs::write(&config_path, config)?;
        let mut proc = Proc::new(
            &format!("agent {host}"),
            bin_path("registry-agent")?,
            vec![
                "run".into(),
                "--config".into(),
                config_path.display().to_string(),
            ],
            self.dir().join(format!("agent-{host}.log")),
        );
        proc.spawn()?;
        self.agents.insert(
            host.to_string(),
            AgentHandle {
                proc,
                api,
                forwards,
                relay,
                client: None,
            },
        );
        Ok(())
    }

    async fn wait_agent_ready(&mut self, host: &str) -> anyhow::Result<()> {
        let api = self.agent(host)?.api;
        let r = wait_until(
            &format!("agent {host} to answer"),
            Duration::from_secs(20),
            || async {
                let ch = connect(api).await.map_err(|e| e.to_string())?;
                AgentClient::new(ch)
                    .routes(proto::RoutesRequest {})
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(())
            },
        )
        .await;
        if let Err(e) = r {
            anyhow::bail!("{e}\n{}", self.logs());
        }
        Ok(())
    }

    /// The agent of `host`.
    pub fn agent(&mut self, host: &str) -> anyhow::Result<&mut AgentHandle> {
        self.agents
            .get_mut(host)
            .with_context(|| format!("no agent for {host} in this fleet"))
    }

    /// Restarts a killed or stopped agent with the same config and waits until it answers.
    pub async fn restart_agent(&mut self, host: &str) -> anyhow::Result<()> {
        let a = self.agent(host)?;
        a.client = None;
        a.proc.spawn()?;
        self.wait_agent_ready(host).await
    }

    /// Asks the agent of `host` how it routes `package_type` now.
    pub async fn resolve(
        &mut self,
        host: &str,
        package_type: &str,
    ) -> anyhow::Result<proto::RouteExplanation> {
        let a = self.agent(host)?;
        if a.client.is_none() {
            a.client = Some(AgentClient::new(connect(a.api).await?));
        }
        let client = a.client.as_mut().expect("client set above");
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            client.resolve(proto::ResolveRequest {
                r#type: package_type.to_string(),
                brief: false,
            }),
        )
        .await
        .context("resolve timed out")??;
        Ok(r.into_inner())
    }

    /// The manager `host`'s agent has chosen for `package_type` now.
    pub async fn chosen(
        &mut self,
        host: &str,
        package_type: &str,
    ) -> anyhow::Result<Option<String>> {
        Ok(self.resolve(host, package_type).await?.chosen)
    }

    /// Waits until the agent of `host` chooses `expected` for `package_type`; returns how long it took.
    pub async fn wait_chosen(
        &mut self,
        host: &str,
        package_type: &str,
        expected: Option<&str>,
        deadline: Duration,
    ) -> anyhow::Result<Duration> {
        let start = tokio::time::Instant::now();
        loop {
            let seen = self.resolve(host, package_type).await;
            match &seen {
                Ok(r) if r.chosen.as_deref() == expected => return Ok(start.elapsed()),
                _ => {}
            }
            if start.elapsed() >= deadline {
                let seen = match seen {
                    Ok(r) => format!(
                        "chosen {:?}, route {:?}, revision {}, stale {}",
                        r.chosen, r.route, r.revision, r.stale
                    ),
                    Err(e) => format!("error: {e}"),
                };
                anyhow::bail!(
                    "agent {host} did not choose {expected:?} for {package_type} within {deadline:?}; last seen: {seen}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the agent of `host` routes `package_type` over exactly `expected`, in order.
    pub async fn wait_route(
        &mut self,
        host: &str,
        package_type: &str,
        expected: &[&str],
        deadline: Duration,
    ) -> anyhow::Result<()> {
        let start = tokio::time::Instant::now();
        loop {
            let seen = self.resolve(host, package_type).await;
            if let Ok(r) = &seen {
                if r.route
                    .iter()
                    .map(String::as_str)
                    .eq(expected.iter().copied())
                {
                    return Ok(());
                }
            }
            if start.elapsed() >= deadline {
                anyhow::bail!(
                    "agent {host} did not route {package_type} over {expected:?} within {deadline:?}; last seen: {:?}\n{}",
                    seen.map(|r| r.route),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Connects through the forwarding port of `host` for `package_type` and returns the host
    /// name the manager at the other end greets with.
    pub async fn through_forward(
        &mut self,
        host: &str,
        package_type: &str,
    ) -> anyhow::Result<String> {
        let addr = *self
            .agent(host)?
            .forwards
            .get(package_type)
            .with_context(|| format!("agent {host} has no forward for {package_type}"))?;
        match crate::standin::greeting(addr).await {
            Ok(host) => Ok(host),
            Err(e) => anyhow::bail!(
                "through {host}'s forwarding port for {package_type}: {e}\n{}",
                self.logs()
            ),
        }
    }

    /// Runs the real `registry-manager` command line against this fleet's manager (in a
    /// group: the first member still running).
    pub fn manager_cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let addr = self
            .members
            .iter()
            .find(|m| m.proc.pid().is_some())
            .map_or(self.manager_addr, |m| m.addr);
        self.member_cli(addr, args)
    }

    /// Runs the real `registry-manager` command line against the member at `addr`.
    pub fn member_cli(
        &self,
        addr: SocketAddr,
        args: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        self.cli_as(self.spec.tls.then_some(OPERATOR), addr, args)
    }

    /// Runs the real `registry-manager` command line against the member at `addr`, showing
    /// the certificate of `identity` (none: plaintext, no certificate).
    pub fn cli_as(
        &self,
        identity: Option<&str>,
        addr: SocketAddr,
        args: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        full.push("--manager".into());
        full.push(addr.to_string());
        if let Some(name) = identity {
            let (cert, key, ca) = self.cert_files(name);
            for (flag, path) in [("--ca", ca), ("--cert", cert), ("--key", key)] {
                full.push(flag.into());
                full.push(path.display().to_string());
            }
            if self.spec.crl {
                full.push("--crl".into());
                full.push(self.revocation_list().display().to_string());
            }
        }
        let out = Command::new(bin_path("registry-manager")?)
            .args(&full)
            .stdin(Stdio::null())
            .output()?;
        Ok(out)
    }

    /// The cluster key file member `name` reads (with [`FleetBuilder::cluster_key`]).
    pub fn cluster_key_file(&self, name: &str) -> PathBuf {
        self.dir().join(format!("cluster-{name}.key"))
    }

    /// The directory of the fleet's certificates (with [`FleetBuilder::tls`]).
    pub fn certs_dir(&self) -> PathBuf {
        self.dir().join("certs")
    }

    /// (certificate, key, CA) files of `name` in [`Fleet::certs_dir`].
    pub fn cert_files(&self, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let d = self.certs_dir();
        (
            d.join(format!("{name}.crt")),
            d.join(format!("{name}.key")),
            d.join("ca.crt"),
        )
    }

    /// The real `registry-manager certs WHAT --dir <certs dir> ARGS...`; its output, or an
    /// error with what it said when it failed.
    fn certs_cli(&self, what: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let dir = self.certs_dir().display().to_string();
        let out = Command::new(bin_path("registry-manager")?)
            .args(["certs", what, "--dir", &dir])
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "certs {what} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// Issues a certificate for `name` (valid at 127.0.0.1) with the real `certs issue`.
    pub fn issue(&self, name: &str) -> anyhow::Result<()> {
        self.certs_cli("issue", &[name, "--ip", "127.0.0.1"])
            .map(drop)
    }

    /// `certs init`, then a certificate for every member, agent host and the operator.
    fn make_certs(&self) -> anyhow::Result<()> {
        self.certs_cli("init", &[])?;
        let members = (1..=self.spec.members.max(1)).map(|i| format!("m{i}"));
        for name in members
            .chain(self.spec.agents.iter().cloned())
            .chain([OPERATOR.to_string()])
        {
            self.issue(&name)?;
        }
        Ok(())
    }

    /// The `tls:` and `admins:` keys of a manager's configuration (member `name`).
    fn tls_yaml(&self, name: &str) -> String {
        let (cert, key, ca) = self.cert_files(name);
        format!(
            "tls: {{ cert: \"{}\", key: \"{}\", ca: \"{}\"{} }}\nadmins: [{OPERATOR}]\n",
            cert.display(),
            key.display(),
            ca.display(),
            self.crl_yaml()
        )
    }

    /// The `crl` key inside `tls:` (with [`FleetBuilder::revocation_list`]), after a comma.
    fn crl_yaml(&self) -> String {
        if self.spec.crl {
            format!(", crl: \"{}\"", self.revocation_list().display())
        } else {
            String::new()
        }
    }

    /// The CA's revocation list the managers follow (with [`FleetBuilder::revocation_list`]).
    pub fn revocation_list(&self) -> PathBuf {
        self.certs_dir().join("revoked.crl")
    }

    /// Revokes `name`'s certificate with the real `certs revoke`; its output.
    pub fn revoke(&self, name: &str) -> anyhow::Result<std::process::Output> {
        self.certs_cli("revoke", &[name])
    }

    /// An endpoint to a manager for the harness's own admin calls: over TLS as the operator
    /// when the fleet runs TLS.
    pub fn admin_endpoint(&self, addr: SocketAddr) -> anyhow::Result<Endpoint> {
        self.endpoint_as(self.spec.tls.then_some(OPERATOR), addr)
    }

    /// An endpoint to a manager showing the certificate of `identity` (none: plaintext).
    pub fn endpoint_as(
        &self,
        identity: Option<&str>,
        addr: SocketAddr,
    ) -> anyhow::Result<Endpoint> {
        let tls = match identity {
            Some(name) => {
                let (cert, key, ca) = self.cert_files(name);
                let m = proto::tls::TlsFiles { cert, key, ca }.load()?;
                Some(m.client_tls(None)?)
            }
            None => None,
        };
        proto::tls::endpoint(&addr.to_string(), tls.as_ref()).map_err(|e| anyhow::anyhow!(e))
    }

    /// Runs an operator command and fails with its stderr if it fails.
    pub fn operator(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.manager_cli(args)?;
        anyhow::ensure!(
            out.status.success(),
            "`registry-manager {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes `yaml` to a file and applies it with `registry-manager topology apply`.
    pub fn apply_topology(&mut self, yaml: &str) -> anyhow::Result<String> {
        std::fs::write(&self.topology_path, yaml)?;
        self.spec.topology = yaml.to_string();
        let path = self.topology_path.display().to_string();
        self.operator(&["topology", "apply", &path, "--yes"])
    }

    /// The whole logs of the group's members (or the manager).
    pub fn logs_all(&self) -> String {
        let mut out = String::new();
        for p in self
            .manager
            .iter()
            .chain(self.members.iter().map(|m| &m.proc))
        {
            out.push_str(&std::fs::read_to_string(&p.log).unwrap_or_default());
        }
        out
    }

    /// The whole log of member `i`.
    pub fn member_log(&self, i: usize) -> String {
        self.members[i].proc.log()
    }

    /// The whole log of `host`'s agent (empty when there is none).
    pub fn agent_log(&self, host: &str) -> String {
        self.agents
            .get(host)
            .map(|a| a.proc.log())
            .unwrap_or_default()
    }

    /// The whole logs of every agent.
    pub fn agent_logs(&self) -> String {
        let mut out = String::new();
        for a in self.agents.values() {
            out.push_str(&std::fs::read_to_string(&a.proc.log).unwrap_or_default());
        }
        out
    }

    /// The last lines of every process's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Some(m) = &self.manager {
            out.push_str(&m.log_tail(30));
        }
        for m in &self.members {
            out.push_str(&m.proc.log_tail(30));
        }
        for a in self.agents.values() {
            out.push_str(&a.proc.log_tail(15));
        }
        out
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for a in self.agents.values_mut() {
            a.proc.kill();
        }
        if let Some(m) = self.manager.as_mut() {
            m.kill();
        }
        for m in &mut self.members {
            m.proc.kill();
        }
        for (p, _) in self.standins.values_mut() {
            p.kill();
        }
        if std::thread::panicking() || std::env::var_os("FLEET_KEEP_LOGS").is_some() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("fleet logs kept in {}", kept.display());
            }
        }
    }
}

/// A channel to a local agent API, with a bounded connect time.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5))
        .connect()
        .await?)
}
