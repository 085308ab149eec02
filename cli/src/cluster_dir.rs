//! The cluster directory `ballast cluster init` writes, and the node directories in it:
//!
//! ```text
//! DIR/ca/ca.pem, ca.key               the cluster CA (keep ca.key offline)
//! DIR/ballast-admin/                  the admin bundle (admin.toml, ca.pem, admin.pem/.key)
//! DIR/nodes/NAME/                     one node: agent.toml, ca.pem, node.pem, node.key
//! ```
//!
//! A node directory is complete on its own: copy it to the host and run
//! `ballast agent --config agent.toml` there.

use crate::admin_bundle::{AdminFile, KnownNode, ADMIN_DIR, ADMIN_FILE};
use crate::config_doc::documented_toml;
use anyhow::{bail, Context};
use ballast_gossip::{CaBundle, CertBundle};
use ballast_node::config::{AgentConfig, DriverKind};
use serde::Serialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// The CA's directory inside a cluster directory.
pub const CA_DIR: &str = "ca";
/// The nodes' directory inside a cluster directory.
pub const NODES_DIR: &str = "nodes";
/// A node's config file name inside its directory.
pub const AGENT_FILE: &str = "agent.toml";

/// Paths inside one cluster directory.
#[derive(Clone, Debug)]
pub struct ClusterDir {
    /// The directory.
    pub root: PathBuf,
}

impl ClusterDir {
    /// The CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join(CA_DIR).join("ca.pem")
    }
    /// The CA key.
    pub fn ca_key(&self) -> PathBuf {
        self.root.join(CA_DIR).join("ca.key")
    }
    /// The admin bundle's directory.
    pub fn admin_dir(&self) -> PathBuf {
        self.root.join(ADMIN_DIR)
    }
    /// The admin bundle's admin.toml.
    pub fn admin_file(&self) -> PathBuf {
        self.admin_dir().join(ADMIN_FILE)
    }
    /// A node's directory.
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.root.join(NODES_DIR).join(name)
    }

    /// Reads the CA, with a message naming the directory when it is not a cluster's.
    pub fn load_ca(&self) -> anyhow::Result<CaBundle> {
        if !self.ca_key().exists() {
            bail!(
                "{} holds no cluster CA ({} is missing): pass the --dir that \
                 `ballast cluster init` wrote",
                self.root.display(),
                self.ca_key().display()
            );
        }
        ballast_gossip::load_ca(&self.ca_cert(), &self.ca_key()).context("reading the cluster CA")
    }

    /// Reads admin.toml as written (paths unresolved), if the bundle is there.
    pub fn load_admin_file(&self) -> anyhow::Result<Option<AdminFile>> {
        let path = self.admin_file();
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes admin.toml.
    pub fn save_admin_file(&self, file: &AdminFile) -> anyhow::Result<()> {
        let path = self.admin_file();
        std::fs::write(&path, file.to_toml()?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// What to write for one node.
#[derive(Clone, Debug)]
pub struct NodePlan {
    /// The node id (a DNS label).
    pub name: String,
    /// The address other nodes reach it at.
    pub addr: SocketAddr,
    /// The address it binds (defaults to `addr`).
    pub listen: Option<SocketAddr>,
    /// Nodes to join through.
    pub seeds: Vec<SocketAddr>,
    /// The metrics endpoint, none to disable.
    pub metrics_listen: Option<SocketAddr>,
    /// The hypervisor driver.
    pub driver: DriverArgs,
    /// The certificate's validity.
    pub cert: CertArgs,
}

/// The certificate flags shared by `cluster init`, `node add` and `node renew`.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct CertArgs {
    /// Days the node's certificate is valid (`status` warns 30 days before the end;
    /// `ballast node renew` issues a new one).
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub valid_days: u32,
}

impl CertArgs {
    /// The validity from now.
    pub fn validity(&self) -> ballast_gossip::Validity {
        ballast_gossip::Validity::days_from_now(self.valid_days)
    }
}

/// The driver flags shared by `cluster init` and `node add`.
#[derive(clap::Args, Clone, Debug)]
pub struct DriverArgs {
    /// The node's hypervisor driver: sim, qemu or exec (an external plugin).
    #[arg(long, default_value = "qemu", value_parser = parse_driver)]
    pub driver: DriverKind,
    /// The plugin program of `--driver exec` (looked up in PATH when relative).
    #[arg(
        long,
        value_name = "PROGRAM",
        required_if_eq("driver", "exec"),
        value_parser = parse_program
    )]
    pub exec_command: Option<String>,
    /// An argument of the plugin program (repeat for several, in order).
    #[arg(
        long,
        value_name = "ARG",
        requires = "exec_command",
        allow_hyphen_values = true
    )]
    pub exec_arg: Vec<String>,
}

impl DriverArgs {
    /// The sim driver, for nodes that run no real VMs (demo, tests).
    pub fn sim() -> Self {
        Self {
            driver: DriverKind::Sim,
            exec_command: None,
            exec_arg: Vec::new(),
        }
    }
}

/// clap parser of a plugin program: not empty.
fn parse_program(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("the plugin program must not be empty".into());
    }
    Ok(text.to_owned())
}

/// What was written for one node (printed by `--json`).
#[derive(Clone, Debug, Serialize)]
pub struct WrittenNode {
    /// The node id.
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Its directory.
    pub dir: PathBuf,
    /// Its config file.
    pub config: PathBuf,
}

/// The agent configuration of a planned node (certificate paths relative to its file).
pub fn node_config(cluster: &str, plan: &NodePlan) -> AgentConfig {
    let mut cfg = AgentConfig::default();
    cfg.node.id = plan.name.clone();
    cfg.node.cluster = cluster.to_owned();
    cfg.node.listen = plan.listen.unwrap_or(plan.addr);
    cfg.node.advertise = (cfg.node.listen != plan.addr).then_some(plan.addr);
    cfg.node.seeds = plan.seeds.clone();
    cfg.node.metrics_listen = plan.metrics_listen;
    cfg.driver.kind = plan.driver.driver;
    if let Some(program) = &plan.driver.exec_command {
        cfg.driver.exec.command = std::iter::once(program.clone())
            .chain(plan.driver.exec_arg.iter().cloned())
            .collect();
    }
    cfg
}

/// Issues the node's certificate and writes its directory; refuses to overwrite one.
pub fn write_node(dir: &ClusterDir, ca: &CaBundle, plan: &NodePlan) -> anyhow::Result<WrittenNode> {
    let node_dir = dir.node_dir(&plan.name);
    if node_dir.join(AGENT_FILE).exists() {
        bail!(
            "node {} already exists ({}); pick another name or remove that directory",
            plan.name,
            node_dir.display()
        );
    }
    std::fs::create_dir_all(&node_dir)
        .with_context(|| format!("creating {}", node_dir.display()))?;
    let cert = ballast_gossip::issue_node_cert_valid(
        ca,
        &plan.name,
        &[plan.addr.ip()],
        plan.cert.validity(),
    )
    .with_context(|| format!("issuing the certificate of node {}", plan.name))?;
    save_bundle(&cert, &node_dir, "node")?;
    let cfg = node_config(&ca.cluster_name, plan);
    let header = format!(
        "ballast agent configuration of node {} in cluster {:?}.\n\
         Run it with: ballast agent --config {AGENT_FILE}\n\
         Every option is shown with its default; `ballast config check` validates this file.",
        plan.name, ca.cluster_name
    );
    let text = documented_toml(&cfg, &header)?;
    // The file we write must be one the agent accepts.
    AgentConfig::from_toml_str(&text).context("the generated config does not validate")?;
    let config = node_dir.join(AGENT_FILE);
    std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    Ok(WrittenNode {
        name: plan.name.clone(),
        addr: plan.addr,
        dir: node_dir,
        config,
    })
}

/// Writes a certificate bundle as `ca.pem`, `<stem>.pem`, `<stem>.key` (0600) in `dir`.
pub fn save_bundle(cert: &CertBundle, dir: &Path, stem: &str) -> anyhow::Result<()> {
    ballast_gossip::save_cert_bundle(
        cert,
        &dir.join(format!("{stem}.pem")),
        &dir.join(format!("{stem}.key")),
        &dir.join("ca.pem"),
    )
    .with_context(|| format!("writing the {stem} certificate in {}", dir.display()))
}

/// Records a node in the admin bundle's admin.toml, if the bundle is in this directory.
pub fn record_node(dir: &ClusterDir, name: &str, addr: SocketAddr) -> anyhow::Result<bool> {
    let Some(mut file) = dir.load_admin_file()? else {
        return Ok(false);
    };
    file.upsert_node(KnownNode {
        name: name.to_owned(),
        addr,
    });
    dir.save_admin_file(&file)?;
    Ok(true)
}

/// clap parser of a node address: `IP:PORT` or `HOST:PORT` (resolved now), not the
/// unspecified address and not port 0, since other nodes must reach it there.
pub fn parse_node_addr(text: &str) -> Result<SocketAddr, String> {
    let addr = match text.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => text
            .to_socket_addrs()
            .map_err(|e| format!("'{text}' is not HOST:PORT ({e})"))?
            .next()
            .ok_or_else(|| format!("'{text}' resolves to no address"))?,
    };
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err(format!(
            "'{text}' must be the address other nodes reach this node at (not 0.0.0.0, not port 0)"
        ));
    }
    Ok(addr)
}

/// clap parser of a metrics address: `IP:PORT` (port 0: any free port). The agent
/// config cannot switch metrics off yet, so there is no `off`.
pub fn parse_metrics_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .map_err(|_| format!("'{text}' is not IP:PORT"))
}

/// clap parser of a node or admin name (a DNS label, as certificates need).
pub fn parse_name(text: &str) -> Result<String, String> {
    ballast_gossip::validate_name(text).map_err(|_| {
        format!(
            "'{text}' is not a valid name: 1-63 letters, digits and '-', starting with a \
             letter and not ending with '-'"
        )
    })?;
    Ok(text.to_owned())
}

/// clap parser of a driver kind.
pub fn parse_driver(text: &str) -> Result<DriverKind, String> {
    match text {
        "sim" => Ok(DriverKind::Sim),
        "qemu" => Ok(DriverKind::Qemu),
        "exec" => Ok(DriverKind::Exec),
        _ => Err(format!("'{text}' is not a driver: sim, qemu or exec")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_be_reachable() {
        assert!(parse_node_addr("127.0.0.1:7420").is_ok());
        assert!(parse_node_addr("0.0.0.0:7420").is_err());
        assert!(parse_node_addr("127.0.0.1:0").is_err());
        assert!(parse_node_addr("nonsense").is_err());
        assert!(parse_metrics_listen("127.0.0.1:0").is_ok());
        assert!(parse_metrics_listen("x").is_err());
        assert!(parse_name("node_1").is_err());
        assert!(parse_name("node-1").is_ok());
    }

    #[test]
    fn a_node_directory_holds_a_valid_config_and_keys() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ClusterDir {
            root: tmp.path().to_owned(),
        };
        let ca = ballast_gossip::create_ca("test").expect("ca");
        let plan = NodePlan {
            name: "n1".into(),
            addr: "127.0.0.1:7000".parse().expect("addr"),
            listen: None,
            seeds: vec!["127.0.0.1:7001".parse().expect("addr")],
            metrics_listen: None,
            driver: DriverArgs::sim(),
            cert: CertArgs { valid_days: 365 },
        };
        let w = write_node(&dir, &ca, &plan).expect("write");
        let cfg = AgentConfig::load(&w.config).expect("loads");
        assert_eq!(cfg.node.id, "n1");
        assert_eq!(cfg.node.cluster, "test");
        assert_eq!(cfg.node.seeds.len(), 1);
        assert_eq!(cfg.tls.key, w.dir.join("node.key"));
        let mode = std::fs::metadata(&cfg.tls.key)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let bundle =
            ballast_gossip::load_cert_bundle(&cfg.tls.cert, &cfg.tls.key, &cfg.tls.ca_cert)
                .expect("bundle");
        assert_eq!(bundle.name, "n1");
        assert!(write_node(&dir, &ca, &plan).is_err(), "no overwrite");
    }
}
