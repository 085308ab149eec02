//! [`AdminClient`]: the typed client of the admin API, used by the CLI (`ballast vm`,
//! `status`, `drain`, `demo`) and the chaos harness, so neither opens sled while an agent
//! runs. One async method per admin request; each call is one RPC (mutual TLS with an
//! admin certificate) with a bounded timeout.

use super::wire::{
    AdminError, AdminRequest, AdminResponse, AgentRequest, AgentResponse, NodeStatus, Refusal,
    Request, Response, SessionRecord, StoreView,
};
use ballast_core::rules::PlacementRules;
use ballast_gossip::{CertBundle, RpcClient, RpcClientConfig, RpcError, TlsBundle};
use ballast_store::{NodeId, ScheduleEntry, VmId, VmSpec};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// Default bound on one admin call (a `MoveVm` waits for the whole handoff).
pub const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// An admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// The certificate files could not be read. Nothing was sent.
    #[error("admin certificate: {0}")]
    Certificate(#[source] ballast_gossip::PkiError),
    /// The certificate could not be used for TLS. Nothing was sent.
    #[error("admin certificate: {0}")]
    Tls(#[source] ballast_gossip::TlsError),
    /// The client endpoint could not be created. Nothing was sent.
    #[error("admin client: {0}")]
    Client(#[source] ballast_gossip::EndpointError),
    /// The call did not complete (connect, timeout, stream). The request may or may not
    /// have been carried out.
    #[error("RPC to {addr}: {source}")]
    Rpc {
        /// The node called.
        addr: SocketAddr,
        /// What went wrong.
        source: RpcError,
    },
    /// The node refused the request without handling it. Nothing changed.
    #[error("refused by the node: {0}")]
    Refused(Refusal),
    /// The node handled the request and reports a failure (see the variant for whether
    /// anything changed).
    #[error("{0}")]
    Admin(AdminError),
    /// The node answered something this client does not expect (version skew).
    #[error("unexpected answer from the node: {0}")]
    Unexpected(String),
    /// The node does not speak this client's admin protocol (TLS refused its ALPN): it
    /// runs another release, such as ballast 0.1. Nothing was sent.
    #[error(
        "the node at {addr} runs another release of ballast (it refused protocol {protocol}): \
         use that release's `ballast` command for it, or upgrade it (docs/operations.md §Upgrading)"
    )]
    OtherRelease {
        /// The node called.
        addr: SocketAddr,
        /// The protocol version this client speaks.
        protocol: u32,
    },
}

/// A client of one node's admin API.
#[derive(Clone)]
pub struct AdminClient {
    rpc: RpcClient,
    addr: SocketAddr,
}

impl AdminClient {
    /// A client presenting `admin` (an admin certificate with its key and the cluster CA)
    /// to the node at `addr`. Must be called inside a tokio runtime. No traffic yet: the
    /// connection is made by the first call.
    pub fn connect(admin: &CertBundle, addr: SocketAddr) -> Result<Self, AdminClientError> {
        Self::connect_with_timeout(admin, addr, ADMIN_CALL_TIMEOUT)
    }

    /// [`AdminClient::connect`] with another bound on each call.
    pub fn connect_with_timeout(
        admin: &CertBundle,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Self, AdminClientError> {
        let tls = TlsBundle::from_cert_bundle(admin).map_err(AdminClientError::Tls)?;
        let bind_ip = if addr.ip().is_loopback() {
            Ipv4Addr::LOCALHOST
        } else {
            Ipv4Addr::UNSPECIFIED
        };
        let config = RpcClientConfig {
            bind_addr: (bind_ip, 0).into(),
            timeout,
            ..RpcClientConfig::default()
        };
        let rpc = RpcClient::new(tls, config).map_err(AdminClientError::Client)?;
        Ok(Self { rpc, addr })
    }

    /// [`AdminClient::connect`] reading the PEM files written by `ballast cluster init`.
    pub fn connect_files(
        ca_cert: &Path,
        cert: &Path,
        key: &Path,
        addr: SocketAddr,
    ) -> Result<Self, AdminClientError> {
        let bundle = ballast_gossip::load_cert_bundle(cert, key, ca_cert)
            .map_err(AdminClientError::Certificate)?;
        Self::connect(&bundle, addr)
    }

    /// The node this client calls.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn call(&self, req: AdminRequest) -> Result<AdminResponse, AdminClientError> {
        let request = AgentRequest::V2(Request::Admin(req));
        let resp: AgentResponse =
            self.rpc
                .call(self.addr, None, &request)
                .await
                .map_err(|source| {
                    if matches!(source, RpcError::NoCommonProtocol { .. }) {
                        AdminClientError::OtherRelease {
                            addr: self.addr,
                            protocol: ballast_gossip::PROTOCOL_VERSION,
                        }
                    } else {
                        AdminClientError::Rpc {
                            addr: self.addr,
                            source,
                        }
                    }
                })?;
        match resp {
            AgentResponse::V2(Response::Admin(Ok(r))) => Ok(r),
            AgentResponse::V2(Response::Admin(Err(e))) => Err(AdminClientError::Admin(e)),
            AgentResponse::V2(Response::Refused(r)) => Err(AdminClientError::Refused(r)),
            other => Err(AdminClientError::Unexpected(format!("{other:?}"))),
        }
    }

    fn unexpected(r: AdminResponse) -> AdminClientError {
        AdminClientError::Unexpected(format!("{r:?}"))
    }

    /// Creates a VM on `node` (or, with `None`, on the less loaded of two random live
    /// nodes); returns the node that holds it.
    pub async fn create_vm(
        &self,
        vm: &VmId,
        spec: &VmSpec,
        node: Option<&NodeId>,
        pinned: bool,
    ) -> Result<NodeId, AdminClientError> {
        self.create_vm_reporting(vm, spec, node, pinned)
            .await
            .map(|(node, _warning)| node)
    }

    /// [`create_vm`](Self::create_vm), also returning the warning of a VM created
    /// although a hypervisor call on the way failed.
    pub async fn create_vm_reporting(
        &self,
        vm: &VmId,
        spec: &VmSpec,
        node: Option<&NodeId>,
        pinned: bool,
    ) -> Result<(NodeId, Option<String>), AdminClientError> {
        let req = AdminRequest::CreateVm {
            vm: vm.clone(),
            spec: spec.clone(),
            node: node.cloned(),
            pinned,
        };
        match self.call(req).await? {
            AdminResponse::Created { node } => Ok((node, None)),
            AdminResponse::CreatedWithWarning { node, warning } => Ok((node, Some(warning))),
            other => Err(Self::unexpected(other)),
        }
    }

    /// This node's schedule entries.
    pub async fn list_vms(&self) -> Result<Vec<ScheduleEntry>, AdminClientError> {
        match self.call(AdminRequest::ListVms).await? {
            AdminResponse::Vms(v) => Ok(v),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Takes this host's existing VMs named in `names` (all when empty) into its
    /// schedule; returns the VMs adopted.
    pub async fn adopt_vms(&self, names: &[String]) -> Result<Vec<VmId>, AdminClientError> {
        let req = AdminRequest::AdoptVms {
            names: names.to_vec(),
        };
        match self.call(req).await? {
            AdminResponse::Adopted(v) => Ok(v),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Gives a VM of this node back to the hypervisor's operator (unmanaged, never moved).
    pub async fn release_vm(&self, vm: &VmId) -> Result<(), AdminClientError> {
        self.done(AdminRequest::ReleaseVm { vm: vm.clone() }).await
    }

    /// Deletes a VM of this node.
    pub async fn delete_vm(&self, vm: &VmId) -> Result<(), AdminClientError> {
        self.done(AdminRequest::DeleteVm { vm: vm.clone() }).await
    }

    /// Pins a VM of this node (balancing never moves it).
    pub async fn pin(&self, vm: &VmId) -> Result<(), AdminClientError> {
        let req = AdminRequest::SetPinned {
            vm: vm.clone(),
            pinned: true,
        };
        self.done(req).await
    }

    /// Unpins a VM of this node.
    pub async fn unpin(&self, vm: &VmId) -> Result<(), AdminClientError> {
        let req = AdminRequest::SetPinned {
            vm: vm.clone(),
            pinned: false,
        };
        self.done(req).await
    }

    /// The node's status: summary, peers, handoffs in flight, counters.
    pub async fn status(&self) -> Result<NodeStatus, AdminClientError> {
        match self.call(AdminRequest::Status).await? {
            AdminResponse::Status(s) => Ok(*s),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Everything the node's store holds.
    pub async fn snapshot(&self) -> Result<StoreView, AdminClientError> {
        match self.call(AdminRequest::Snapshot).await? {
            AdminResponse::Snapshot(s) => Ok(*s),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Starts draining the node.
    pub async fn drain(&self) -> Result<(), AdminClientError> {
        self.done(AdminRequest::Drain).await
    }

    /// Stops draining the node.
    pub async fn undrain(&self) -> Result<(), AdminClientError> {
        self.done(AdminRequest::Undrain).await
    }

    /// Tells the node that `node` is gone for good (`ballast node forget`).
    pub async fn forget_node(&self, node: &NodeId) -> Result<(), AdminClientError> {
        self.done(AdminRequest::ForgetNode { node: node.clone() })
            .await
    }

    /// Gives the node an operator-signed revocation (`ballast node revoke`).
    pub async fn revoke_node(
        &self,
        revocation: &ballast_gossip::Revocation,
    ) -> Result<(), AdminClientError> {
        self.done(AdminRequest::RevokeNode {
            revocation: revocation.clone(),
        })
        .await
    }

    /// Moves a VM of this node to `to` now; returns `(committed, epoch)` once the source
    /// side resolved the handoff.
    pub async fn move_vm(&self, vm: &VmId, to: &NodeId) -> Result<(bool, u64), AdminClientError> {
        let req = AdminRequest::MoveVm {
            vm: vm.clone(),
            to: to.clone(),
            force: false,
        };
        match self.call(req).await? {
            AdminResponse::Moved { committed, epoch } => Ok((committed, epoch)),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Moves `vm` (of this node) to `to`, like [`Self::move_vm`], but a move still under
    /// way when the answer is due is not an error: `None` (follow the VM's entry).
    /// `force` moves it even where it breaks a hard placement rule (recorded).
    pub async fn start_move(
        &self,
        vm: &VmId,
        to: &NodeId,
        force: bool,
    ) -> Result<Option<(bool, u64)>, AdminClientError> {
        let req = AdminRequest::MoveVm {
            vm: vm.clone(),
            to: to.clone(),
            force,
        };
        match self.call(req).await? {
            AdminResponse::Moved { committed, epoch } => Ok(Some((committed, epoch))),
            AdminResponse::MoveUnderway => Ok(None),
            other => Err(Self::unexpected(other)),
        }
    }

    /// The sessions this node started from `since_unix_ms` on that concern `vm` (all
    /// when `None`), from its kept history; newest last.
    pub async fn session_history(
        &self,
        since_unix_ms: u64,
        vm: Option<VmId>,
    ) -> Result<Vec<SessionRecord>, AdminClientError> {
        match self
            .call(AdminRequest::SessionHistory { since_unix_ms, vm })
            .await?
        {
            AdminResponse::Sessions(s) => Ok(s),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Replaces the placement rules of a VM of this node; returns the hard rule it now
    /// breaks where it is, if any.
    pub async fn set_rules(
        &self,
        vm: &VmId,
        rules: &PlacementRules,
    ) -> Result<Option<String>, AdminClientError> {
        let req = AdminRequest::SetRules {
            vm: vm.clone(),
            rules: rules.clone(),
        };
        match self.call(req).await? {
            AdminResponse::RulesSet { breaks } => Ok(breaks),
            other => Err(Self::unexpected(other)),
        }
    }

    /// The last balancing sessions of the node, newest last.
    pub async fn recent_sessions(&self) -> Result<Vec<SessionRecord>, AdminClientError> {
        match self.call(AdminRequest::RecentSessions).await? {
            AdminResponse::Sessions(s) => Ok(s),
            other => Err(Self::unexpected(other)),
        }
    }

    async fn done(&self, req: AdminRequest) -> Result<(), AdminClientError> {
        match self.call(req).await? {
            AdminResponse::Done => Ok(()),
            other => Err(Self::unexpected(other)),
        }
    }
}
