//! The CLI's view of a running cluster through the admin API: find a node that answers
//! (from the admin bundle), learn the others from its membership view, and fan calls
//! out to all of them. Errors are turned into messages that say what to do.

use crate::admin_bundle::{AdminArgs, AdminBundle, KnownNode};
use crate::exit_status::Unfinished;
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

pub use ballast_node::report::{missing_of, Member, MissingNode};

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
            known: bundle
                .file
                .nodes
                .iter()
                .chain(&bundle.other_nodes)
                .cloned()
                .collect(),
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
        let peers: Vec<(NodeId, SocketAddr)> = entry
            .peers
            .iter()
            .filter(|p| p.node != entry.node)
            .map(|p| (p.node.clone(), p.summary.rpc_addr))
            .collect();
        self.members.insert(
            entry.node.clone(),
            Member {
                node: entry.node.clone(),
                addr: entry_addr,
                status: Some(entry),
                error: None,
            },
        );
        self.probe(peers).await;
    }

    /// Asks each of `targets` for its status, at once; records who answered and why
    /// the others did not (a member already known to answer is kept).
    async fn probe(&mut self, targets: Vec<(NodeId, SocketAddr)>) {
        let mut set = JoinSet::new();
        for (node, addr) in targets {
            match self.client(addr, QUICK_CALL_TIMEOUT) {
                Ok(c) => {
                    set.spawn(async move { (node, addr, c.status().await) });
                }
                Err(e) => self.record(Member {
                    node,
                    addr,
                    status: None,
                    error: Some(format!("{e:#}")),
                }),
            }
        }
        while let Some(joined) = set.join_next().await {
            let Ok((node, addr, result)) = joined else {
                continue;
            };
            let member = match result {
                Ok(s) => Member {
                    node: s.node.clone(),
                    addr,
                    status: Some(s),
                    error: None,
                },
                Err(e) => Member {
                    node,
                    addr,
                    status: None,
                    error: Some(format!("{:#}", explain(e, addr, &self.bundle_path))),
                },
            };
            self.record(member);
        }
    }

    fn record(&mut self, m: Member) {
        let answered = m.status.is_some();
        match self.members.get_mut(&m.node) {
            Some(known) if known.status.is_some() || !answered => {}
            Some(known) => *known = m,
            None => {
                self.members.insert(m.node.clone(), m);
            }
        }
    }

    /// Adds the nodes the bundle names that the membership view does not show (down,
    /// partitioned, or not joined yet): asked directly, listed unreachable if silent.
    pub async fn probe_known(&mut self) {
        let targets: Vec<(NodeId, SocketAddr)> = self
            .known
            .iter()
            .filter(|k| {
                !(self.members.values().any(|m| m.addr == k.addr)
                    || self.members.contains_key(&NodeId::from(k.name.as_str())))
            })
            .map(|k| (NodeId::from(k.name.as_str()), k.addr))
            .collect();
        self.probe(targets).await;
    }

    /// Reaches every node anyone knows of: the peers that any answering member sees
    /// (not only the entry node, whose view may be young after a restart) and the
    /// bundle's nodes. Needed before an answer about the whole cluster.
    pub async fn reach_all(&mut self) {
        let mut targets: Vec<(NodeId, SocketAddr)> = Vec::new();
        for s in self.members.values().filter_map(|m| m.status.as_ref()) {
            for p in &s.peers {
                if !self.members.contains_key(&p.node) && !targets.iter().any(|t| t.0 == p.node) {
                    targets.push((p.node.clone(), p.summary.rpc_addr));
                }
            }
        }
        self.probe(targets).await;
        self.probe_known().await;
    }

    /// The members that did not answer, with the VM count a member that answered last
    /// heard from each.
    pub fn missing(&self) -> Vec<MissingNode> {
        missing_of(&self.members)
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

    /// Every reachable member's schedule, and the members whose part is missing.
    pub async fn schedules(&self) -> anyhow::Result<Schedules> {
        let mut set = JoinSet::new();
        for m in self.members.values().filter(|m| m.status.is_some()) {
            let c = self.client(m.addr, QUICK_CALL_TIMEOUT)?;
            let node = m.node.clone();
            let addr = m.addr;
            set.spawn(async move { (node, addr, c.list_vms().await) });
        }
        let mut out = Schedules {
            answered: Vec::new(),
            missing: self.missing(),
        };
        while let Some(joined) = set.join_next().await {
            let (node, addr, result) = joined?;
            match result {
                Ok(entries) => out.answered.push((node, entries)),
                Err(e) => out.missing.push(MissingNode {
                    vms: self
                        .members
                        .get(&node)
                        .and_then(|m| m.status.as_ref().map(|s| s.summary.vm_count)),
                    node: node.to_string(),
                    reason: format!("{:#}", explain(e, addr, &self.bundle_path)),
                }),
            }
        }
        out.answered.sort_by(|a, b| a.0.cmp(&b.0));
        out.missing.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }

    /// The node that holds `vm` (as `Running` or in a handoff) and its entry.
    pub async fn find_vm(&self, vm: &VmId) -> anyhow::Result<(Member, ScheduleEntry)> {
        let schedules = self.schedules().await?;
        for (node, entries) in schedules.answered {
            if let Some(e) = entries.into_iter().find(|e| &e.vm == vm) {
                let m = self
                    .members
                    .get(&node)
                    .cloned()
                    .ok_or_else(|| anyhow!("lost {node}"))?;
                return Ok((m, e));
            }
        }
        if schedules.missing.is_empty() {
            bail!("VM {vm} was not found on any node")
        }
        bail!(
            "VM {vm} was not found on the nodes that answered; {}",
            missing_text(&schedules.missing)
        )
    }

    /// Calls `forget` on every reachable member except `node`; returns who was told.
    pub async fn forget_node(&self, node: &NodeId) -> anyhow::Result<Vec<String>> {
        self.tell_all_but(node, |c| async move { c.forget_node(node).await })
            .await
    }

    /// Revokes node `node`: signs the revocation with the admin bundle and gives it to
    /// every reachable member but `node` (gossip carries it to the others); the members
    /// that took it.
    pub async fn revoke_node(&self, node: &NodeId) -> anyhow::Result<Vec<String>> {
        let tls = ballast_gossip::TlsBundle::from_cert_bundle(&self.cert)?;
        let rev =
            ballast_gossip::Revocation::sign(&tls, node.as_str(), ballast_node::agent::unix_ms())?;
        let rev = &rev;
        self.tell_all_but(node, |c| async move { c.revoke_node(rev).await })
            .await
    }

    /// Makes `call` on every reachable member except `node`, one after another; the
    /// members told. The first refusal ends it with its explanation.
    async fn tell_all_but<F, Fut>(&self, node: &NodeId, call: F) -> anyhow::Result<Vec<String>>
    where
        F: Fn(AdminClient) -> Fut,
        Fut: Future<Output = Result<(), AdminClientError>>,
    {
        let mut told = Vec::new();
        for m in self.members.values() {
            if &m.node == node || m.status.is_none() {
                continue;
            }
            call(self.client(m.addr, QUICK_CALL_TIMEOUT)?)
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

/// Every reachable member's schedule, and the members whose part is missing.
pub struct Schedules {
    /// The schedules of the members that answered, by node.
    pub answered: Vec<(NodeId, Vec<ScheduleEntry>)>,
    /// The members that did not answer.
    pub missing: Vec<MissingNode>,
}

/// `Err(Partial)` naming the `missing` nodes, when any.
pub fn whole(missing: &[MissingNode]) -> Result<(), Unfinished> {
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Unfinished::Partial(missing_text(missing)))
    }
}

/// "n3 did not answer (why); up to 14 VMs may be missing".
pub fn missing_text(missing: &[MissingNode]) -> String {
    let who: Vec<String> = missing
        .iter()
        .map(|m| format!("{} ({})", m.node, m.reason))
        .collect();
    let counted: u32 = missing.iter().filter_map(|m| m.vms).sum();
    let uncounted: Vec<&str> = missing
        .iter()
        .filter(|m| m.vms.is_none())
        .map(|m| m.node.as_str())
        .collect();
    let head = if missing.len() == 1 {
        format!("{} did not answer", who[0])
    } else {
        format!("{} nodes did not answer: {}", missing.len(), who.join(", "))
    };
    let vms = match (counted, uncounted.is_empty()) {
        (n, true) => format!("up to {n} VMs may be missing"),
        (0, false) => "an unknown number of VMs may be missing (no node that answered has heard from it lately)".to_owned(),
        (n, false) => format!(
            "up to {n} VMs may be missing, and those of {} (no node that answered has heard from it lately)",
            uncounted.join(", ")
        ),
    };
    format!("{head}; {vms}")
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
        AdminClientError::Refused(Refusal::ReadOnlyRole) => anyhow!(
            "{addr} refused the call: the admin certificate named in {} has the role \
             read-only, which may only read (status, vm list, vm show, sessions); \
             use an operator's bundle (`ballast admin issue NAME --role operator`, or the \
             one `ballast cluster init` wrote)",
            bundle.display()
        ),
        AdminClientError::Refused(Refusal::Forbidden) => anyhow!(
            "{addr} refused the call: the certificate named in {} is not an admin \
             certificate (a node certificate may only read: status, VM list, sessions); use the admin \
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
