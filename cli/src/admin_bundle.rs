//! The admin bundle: the directory `ballast cluster init` writes for operators, holding
//! the cluster CA certificate, an admin certificate and key, and `admin.toml`, which names
//! the cluster and the nodes' addresses. Admin commands find it through `--config FILE`
//! (or `BALLAST_CONFIG`), `--admin DIR` (or `BALLAST_ADMIN`), or `./ballast-admin`.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// File name of the bundle's description inside its directory.
pub const ADMIN_FILE: &str = "admin.toml";
/// Directory name of the bundle inside a cluster directory, and the default location.
pub const ADMIN_DIR: &str = "ballast-admin";

/// A node the admin commands may call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownNode {
    /// The node's id.
    pub name: String,
    /// Its QUIC address (gossip and RPC).
    pub addr: SocketAddr,
}

/// The contents of `admin.toml`; relative paths are relative to the file's directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// The cluster's name.
    pub cluster: String,
    /// The cluster CA certificate.
    pub ca_cert: PathBuf,
    /// The admin certificate.
    pub cert: PathBuf,
    /// The admin certificate's private key.
    pub key: PathBuf,
    /// Nodes to reach the cluster through, tried in order; the others are found
    /// through the first one that answers.
    #[serde(default)]
    pub nodes: Vec<KnownNode>,
}

impl AdminFile {
    /// A bundle with the standard file names.
    pub fn new(cluster: &str) -> Self {
        Self {
            cluster: cluster.to_owned(),
            ca_cert: "ca.pem".into(),
            cert: "admin.pem".into(),
            key: "admin.key".into(),
            nodes: Vec::new(),
        }
    }

    /// Renders the file with a header comment.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        let body = toml::to_string_pretty(self).context("rendering admin.toml")?;
        Ok(format!(
            "# The admin bundle of cluster {:?}, written by `ballast cluster init` and\n\
             # updated by `ballast node add`. Admin commands use it with `--admin DIR`,\n\
             # `--config {ADMIN_FILE}` or from ./{ADMIN_DIR}. Keep admin.key secret.\n\n{body}",
            self.cluster
        ))
    }

    /// Adds or replaces a node (by name).
    pub fn upsert_node(&mut self, node: KnownNode) {
        match self.nodes.iter_mut().find(|n| n.name == node.name) {
            Some(n) => *n = node,
            None => self.nodes.push(node),
        }
    }
}

/// A loaded admin bundle with its paths made absolute.
#[derive(Clone, Debug)]
pub struct AdminBundle {
    /// Where `admin.toml` was read from.
    pub file_path: PathBuf,
    /// Its contents, paths resolved against its directory.
    pub file: AdminFile,
    /// The nodes admin.toml names when `--node-addr` replaced them as entry points:
    /// still asked by answers about the whole cluster.
    pub other_nodes: Vec<KnownNode>,
}

/// Where the admin commands look for the bundle (the shared flags of every admin command).
#[derive(clap::Args, Debug, Clone)]
pub struct AdminArgs {
    /// The admin bundle's admin.toml [default: ./ballast-admin/admin.toml].
    #[arg(long, env = "BALLAST_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// The admin bundle's directory (the one holding admin.toml); --config wins over it.
    #[arg(long, env = "BALLAST_ADMIN", value_name = "DIR", global = true)]
    pub admin: Option<PathBuf>,
    /// Call this node (HOST:PORT) instead of the nodes named in admin.toml.
    #[arg(long, value_name = "HOST:PORT", global = true)]
    pub node_addr: Option<SocketAddr>,
}

impl AdminArgs {
    /// The admin.toml these flags point at.
    pub fn file_path(&self) -> PathBuf {
        match (&self.config, &self.admin) {
            (Some(file), _) => file.clone(),
            (None, Some(dir)) => dir.join(ADMIN_FILE),
            (None, None) => Path::new(ADMIN_DIR).join(ADMIN_FILE),
        }
    }

    /// Loads the bundle these flags point at.
    pub fn load(&self) -> anyhow::Result<AdminBundle> {
        let mut bundle = AdminBundle::load(&self.file_path())?;
        if let Some(addr) = self.node_addr {
            bundle.other_nodes = std::mem::replace(
                &mut bundle.file.nodes,
                vec![KnownNode {
                    name: addr.to_string(),
                    addr,
                }],
            );
        }
        Ok(bundle)
    }
}

impl AdminBundle {
    /// Reads `admin.toml` at `path`; a missing file, an agent config given by mistake, or
    /// a malformed file is an error that says which and how to fix it.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no admin bundle at {}: pass --admin DIR or --config FILE (or set \
                 BALLAST_ADMIN / BALLAST_CONFIG) to the {ADMIN_DIR} directory that \
                 `ballast cluster init` wrote",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut file: AdminFile = toml::from_str(&text).map_err(|e| {
            let looks_like_agent = text.lines().any(|l| l.trim() == "[node]");
            let (line, column) = e
                .span()
                .map_or((1, 1), |s| crate::text_pos::line_col(&text, s.start));
            let hint = if looks_like_agent {
                " (this looks like an agent config; admin commands need the admin bundle's \
                 admin.toml and its admin certificate)"
            } else {
                ""
            };
            anyhow::anyhow!(
                "{}: line {line}, column {column}: {}{hint}",
                path.display(),
                e.message()
            )
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for p in [&mut file.ca_cert, &mut file.cert, &mut file.key] {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        Ok(Self {
            file_path: path.to_owned(),
            file,
            other_nodes: Vec::new(),
        })
    }

    /// Reads the admin certificate, its key and the CA certificate, and checks that the
    /// certificate is signed by that CA.
    pub fn cert_bundle(&self) -> anyhow::Result<ballast_gossip::CertBundle> {
        let f = &self.file;
        let bundle =
            ballast_gossip::load_cert_bundle(&f.cert, &f.key, &f.ca_cert).with_context(|| {
                format!(
                    "reading the admin certificate named in {}",
                    self.file_path.display()
                )
            })?;
        crate::cert_check::check_signed_by(&bundle.ca_cert_pem, &bundle.cert_pem).map_err(|e| {
            anyhow::anyhow!(
                "{} is not signed by the cluster CA {} ({e}): it belongs to another \
                     cluster; use the admin bundle of cluster {:?}",
                f.cert.display(),
                f.ca_cert.display(),
                f.cluster
            )
        })?;
        Ok(bundle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_file_round_trips_and_resolves_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = AdminFile::new("prod");
        f.upsert_node(KnownNode {
            name: "node-1".into(),
            addr: "127.0.0.1:7420".parse().expect("addr"),
        });
        f.upsert_node(KnownNode {
            name: "node-1".into(),
            addr: "127.0.0.1:7421".parse().expect("addr"),
        });
        assert_eq!(f.nodes.len(), 1);
        let path = dir.path().join(ADMIN_FILE);
        std::fs::write(&path, f.to_toml().expect("render")).expect("write");
        let b = AdminBundle::load(&path).expect("load");
        assert_eq!(b.file.cluster, "prod");
        assert_eq!(b.file.nodes[0].addr.port(), 7421);
        assert_eq!(b.file.cert, dir.path().join("admin.pem"));
    }

    #[test]
    fn an_agent_config_is_recognized() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "[node]\nid = \"a\"\n").expect("write");
        let e = AdminBundle::load(&path).expect_err("agent config");
        assert!(format!("{e:#}").contains("agent config"), "{e:#}");
        let e = AdminBundle::load(&dir.path().join("nope.toml")).expect_err("missing");
        assert!(format!("{e:#}").contains("cluster init"), "{e:#}");
    }
}
