//! The CLI's view of a running cluster through the admin API: find a node that answers
//! (from the admin bundle), learn the others from its membership view, and fan calls
//! out to all of them. Errors are turned into messages that say what to do.

use crate::admin_bundle::{AdminArgs, AdminBundle, KnownNode};
use anyhow::{anyhow, bail};
use ballast_gossip::{CertBundle, RpcError};
use ballast_node::agent::admin_client::{AdminClient, AdminClientError};
use ballast_node::agent::wire::{AdminError, NodeStatus, Refusal};
use ballast_store::{NodeId, ScheduleEntry, VmId};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::JoinSet;

/// Bound on a status or list call during discovery.
const QUICK_CALL_TIMEOUT: Duration = Duration::from_secs(8);

/// Runs an admin command's future on a small runtime of its own.
pub fn block_on<F: Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(f)
}

/// One node as the CLI reached it.
#[derive(Clone)]
pub struct Member {
    /// The node id.
    pub node: NodeId,
    /// Its RPC address.
    pub addr: SocketAddr,
    /// Its own status, when it answered.
    pub status: Option<NodeStatus>,
    /// Why it did not answer, when it did not.
    pub error: Option<String>,
}

/// A cluster reached through the admin API.
pub struct Cluster {
    cert: CertBundle,
    /// The members found, by node id.
    pub members: BTreeMap<NodeId, Member>,
    /// Where the bundle came from (for messages).
    pub bundle_path: std::path::PathBuf,
    /// The nodes the bundle names.
    known: Vec<KnownNode>,
}

impl Cluster {
    /// Loads the admin bundle, finds a node that answers and learns the others.
    pub async fn connect(args: &AdminArgs) -> anyhow::Result<Self> {
        let bundle = args.load()?;
        let cert = bundle.cert_bundle()?;
        let mut cluster = Self {
            cert,
            members: BTreeMap::new(),
            bundle_path: bundle.file_path.clone(),
            known: bundle.file.nodes.clone(),
        };
        cluster.discover(&bundle).await?;
        Ok(cluster)
    }

    /// A client of the node at `addr`, with the call bound `timeout`.
    pub fn client(&self, addr: SocketAddr, timeout: Duration) -> anyhow::Result<AdminClient> {
        AdminClient::connect_with_timeout(&self.cert, addr, timeout)
            .map_err(|e| explain(e, addr, &self.bundle_path))
    }

    async fn discover(&mut self, bundle: &AdminBundle) -> anyhow::Result<()> {
        if bundle.file.nodes.is_empty() {
            bail!(
                "{} names no nodes; add one with `ballast node add` or pass --node-addr HOST:PORT",
                bundle.file_path.display()
            );
        }
        let mut failures = Vec::new();
        for known in &bundle.file.nodes {
            let client = self.client(known.addr, QUICK_CALL_TIMEOUT)?;
            match client.status().await {
                Ok(status) => {
                    self.learn(status, known.addr).await;
                    return Ok(());
                }
                Err(e) => {
                    let e = explain(e, known.addr, &bundle.file_path);
                    // Authentication problems will not get better at the next node.
                    if is_auth_problem(&e) {
                        return Err(e);
                    }
                    failures.push(format!("{} ({}): {e:#}", known.name, known.addr));
                }
            }
        }
        Err(anyhow!(
            "cannot reach the cluster through any node of {}:\n  {}",
            bundle.file_path.display(),
            failures.join("\n  ")
        ))
    }

    /// Records the entry node and asks every peer it sees for its own status.
    async fn learn(&mut self, entry: NodeStatus, entry_addr: SocketAddr) {
        let mut set = JoinSet::new();
        for peer in &entry.peers {
            if peer.node == entry.node {
                continue;
            }
            let addr = peer.summary.rpc_addr;
            let node = peer.node.clone();
            match self.client(addr, QUICK_CALL_TIMEOUT) {
                Ok(c) => {
                    set.spawn(async move { (node, addr, c.status().await) });
                }
                Err(e) => {
                    self.members.insert(
                        node.clone(),
                        Member {
                            node,
                            addr,
                            status: None,
                            error: Some(format!("{e:#}")),
                        },
                    );
                }
            }
        }
        self.members.insert(
            entry.node.clone(),
            Member {
                node: entry.node.clone(),
                addr: entry_addr,
                status: Some(entry),
                error: None,
            },
        );
        while let Some(joined) = set.join_next().await {
            let Ok((node, addr, result)) = joined else {
                continue;
            };
            let (status, error) = match result {
                Ok(s) => (Some(s), None),
                Err(e) => (
                    None,
                    Some(format!("{:#}", explain(e, addr, &self.bundle_path))),
                ),
            };
            self.members.insert(
                node.clone(),
                Member {
                    node,
                    addr,
                    status,
                    error,
                },
            );
        }
    }

    /// Adds the nodes the bundle names that the membership view does not show (down,
    /// partitioned, or not joined yet): asked directly, listed unreachable if silent.
    pub async fn probe_known(&mut self) {
        let mut set = JoinSet::new();
        for k in &self.known {
            let seen = self.members.values().any(|m| m.addr == k.addr)
                || self.members.contains_key(&NodeId::from(k.name.as_str()));
            if seen {
                continue;
            }
            if let Ok(c) = self.client(k.addr, QUICK_CALL_TIMEOUT) {
                let k = k.clone();
                set.spawn(async move {
                    let r = c.status().await;
                    (k, r)
                });
            }
        }
        while let Some(joined) = set.join_next().await {
            let Ok((k, result)) = joined else { continue };
            let (node, status, error) = match result {
                Ok(s) => (s.node.clone(), Some(s), None),
                Err(e) => (
                    NodeId::from(k.name.as_str()),
                    None,
                    Some(format!("{:#}", explain(e, k.addr, &self.bundle_path))),
                ),
            };
            self.members.entry(node.clone()).or_insert(Member {
                node,
                addr: k.addr,
                status,
                error,
            });
        }
    }

    /// The member named `node`, or an error listing the known ones.
    pub fn member(&self, node: &str) -> anyhow::Result<&Member> {
        self.members.get(&NodeId::from(node)).ok_or_else(|| {
            let known: Vec<&str> = self.members.keys().map(NodeId::as_str).collect();
            anyhow!(
                "node {node} is not a live member of the cluster (known: {})",
                known.join(", ")
            )
        })
    }

    /// Every reachable member's schedule.
    pub async fn schedules(&self) -> anyhow::Result<Vec<(NodeId, Vec<ScheduleEntry>)>> {
        let mut set = JoinSet::new();
        for m in self.members.values().filter(|m| m.status.is_some()) {
            let c = self.client(m.addr, QUICK_CALL_TIMEOUT)?;
            let node = m.node.clone();
            let addr = m.addr;
            set.spawn(async move { (node, addr, c.list_vms().await) });
        }
        let mut out = Vec::new();
        while let Some(joined) = set.join_next().await {
            let (node, addr, result) = joined?;
            let entries = result.map_err(|e| explain(e, addr, &self.bundle_path))?;
            out.push((node, entries));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The node that holds `vm` (as `Running` or in a handoff) and its entry.
    pub async fn find_vm(&self, vm: &VmId) -> anyhow::Result<(Member, ScheduleEntry)> {
        for (node, entries) in self.schedules().await? {
            if let Some(e) = entries.into_iter().find(|e| &e.vm == vm) {
                let m = self
                    .members
                    .get(&node)
                    .cloned()
                    .ok_or_else(|| anyhow!("lost {node}"))?;
                return Ok((m, e));
            }
        }
        bail!("VM {vm} was not found on any reachable node")
    }

    /// Calls `forget` on every reachable member except `node`; returns who was told.
    pub async fn forget_node(&self, node: &NodeId) -> anyhow::Result<Vec<String>> {
        let mut told = Vec::new();
        for m in self.members.values() {
            if &m.node == node || m.status.is_none() {
                continue;
            }
            let c = self.client(m.addr, QUICK_CALL_TIMEOUT)?;
            c.forget_node(node)
                .await
                .map_err(|e| explain(e, m.addr, &self.bundle_path))?;
            told.push(m.node.to_string());
        }
        if told.is_empty() {
            bail!("no reachable node other than {node} to tell");
        }
        Ok(told)
    }
}

fn is_auth_problem(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    s.contains("not an admin certificate")
        || s.contains("not signed by this cluster")
        || s.contains("closed the connection")
}

/// Turns a client error into a message that says what happened and what to do.
pub fn explain(e: AdminClientError, addr: SocketAddr, bundle: &std::path::Path) -> anyhow::Error {
    match e {
        AdminClientError::Refused(Refusal::Forbidden) => anyhow!(
            "{addr} refused the call: the certificate named in {} is not an admin \
             certificate (a node certificate cannot call the admin API); use the admin \
             bundle `ballast cluster init` wrote",
            bundle.display()
        ),
        AdminClientError::Rpc {
            source: RpcError::Connect { reason, .. },
            ..
        } if reason.contains("invalid peer certificate") => anyhow!(
            "TLS with {addr} failed ({reason}): that node's certificate is not signed by \
             the CA of the admin bundle {}; it is a node of another cluster, or the bundle \
             is another cluster's (not signed by this cluster's CA)",
            bundle.display()
        ),
        AdminClientError::Rpc {
            source: RpcError::Connect { reason, .. },
            ..
        } if is_tls_trust_failure(&reason) => anyhow!(
            "TLS with {addr} failed ({reason}): the node did not accept the admin \
             certificate in {} (not signed by this cluster's CA?)",
            bundle.display()
        ),
        AdminClientError::Rpc {
            source: RpcError::Connect { reason, .. },
            ..
        } => anyhow!("cannot reach the agent at {addr}: {reason} (is it running?)"),
        AdminClientError::Rpc {
            source: RpcError::Frame(f),
            ..
        } if f.to_string().contains("connection lost") => anyhow!(
            "{addr} closed the connection ({f}): it did not accept the admin certificate \
             in {} (is it of this cluster?), or the agent stopped",
            bundle.display()
        ),
        AdminClientError::Rpc {
            source: RpcError::Timeout { .. },
            ..
        } => anyhow!("the agent at {addr} did not answer in time (is it running and reachable?)"),
        AdminClientError::Admin(AdminError::NotFound(vm)) => anyhow!("VM {vm} not found"),
        other => anyhow!("{addr}: {other}"),
    }
}

fn is_tls_trust_failure(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    [
        "unknownissuer",
        "unknown ca",
        "unknownca",
        "badcertificate",
        "bad certificate",
        "certificaterequired",
        "invalid peer certificate",
    ]
    .iter()
    .any(|k| r.contains(k))
}
