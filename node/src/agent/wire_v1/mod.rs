//! Protocol version 1: the messages of ballast 0.1, frozen, so that a cluster of 0.1
//! agents can be upgraded one host at a time (docs/operations.md, "Upgrading").
//!
//! bincode is not self-describing: these types must encode exactly as 0.1's did. Each
//! is a copy of 0.1's type of the same name (`node/src/agent/wire.rs`,
//! `node/src/handoff/messages.rs` and `payload.rs`, `store/src/types.rs` at tag 0.1.0),
//! variants and fields in the same order; never change them. [`translate`] turns them
//! into this build's messages and back.

/// Whether a node whose highest protocol version is `protocol` speaks only version 1
/// (ballast 0.1): it reads these frozen messages and knows no placement rules.
pub(crate) fn speaks_only_v1(protocol: u32) -> bool {
    protocol < 2
}

pub(crate) mod translate;

use ballast_core::handoff::Outcome;
use ballast_core::hypervisor::MigrationTarget;
use ballast_store::{LoadFactors, NodeId, VmId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// 0.1's requests (the content of `AgentRequest::V1`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// A balancing session step.
    Session(SessionRequest),
    /// A handoff message.
    Handoff(HandoffMsg),
    /// Place a new VM here (a forwarded `vm create`).
    Place(Placement),
    /// 0.1's admin API: decoded so that the answer can say why it is refused.
    Admin(AdminRequest),
}

/// 0.1's responses (the content of `AgentResponse::V1`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to a session step.
    Session(SessionResponse),
    /// The handoff message was queued.
    HandoffQueued,
    /// Answer to a `Place`.
    Placed(Result<NodeId, AdminError>),
    /// Answer to an admin request: never given by this build (it refuses 0.1's admin
    /// requests), so its content cannot occur.
    Admin(Result<NoAdminAnswer, AdminError>),
    /// Not handled; nothing changed.
    Refused(Refusal),
}

/// No value: this build never answers 0.1's admin requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NoAdminAnswer {}

/// 0.1's refusals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Not allowed for the caller's certificate.
    Forbidden,
    /// The request failed validation.
    Invalid(String),
    /// The input queue is full.
    Overloaded,
    /// Shutting down.
    ShuttingDown,
}

/// A VM offered in a session (0.1: no placement rules).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateFactors {
    /// The VM.
    pub vm: VmId,
    /// Raw load factors.
    pub factors: LoadFactors,
    /// Its load on its holder.
    pub load_here: f64,
    /// Memory it needs, in bytes.
    pub mem_bytes: u64,
    /// Pinned.
    pub pinned: bool,
    /// Unix ms of its last move.
    pub last_moved_unix_ms: Option<u64>,
}

/// One side's figures (0.1: no holdings).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SideFigures {
    /// Fresh load.
    pub load: f64,
    /// Memory it can still take, in bytes.
    pub free_mem_bytes: u64,
    /// Its movable VMs.
    pub candidates: Vec<CandidateFactors>,
}

/// A session step (0.1: no `Sent`; A closes after deciding to send).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SessionRequest {
    /// A opens a session.
    Open {
        /// A's id for the session.
        session: u64,
        /// A's figures.
        figures: SideFigures,
    },
    /// B sends these VMs to A.
    Pull {
        /// The session.
        session: u64,
        /// The VMs.
        vms: Vec<VmId>,
    },
    /// A is done (decided to send, or to stay).
    Close {
        /// The session.
        session: u64,
    },
}

/// B's answer to a session step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SessionResponse {
    /// B's figures and what A's candidates weigh on B.
    Offer {
        /// The session.
        session: u64,
        /// B's figures.
        figures: SideFigures,
        /// `load_B(v)` of A's candidates, in A's order.
        loads_there: Vec<f64>,
    },
    /// B is in another session.
    Busy,
    /// B is draining.
    Draining,
    /// The step was taken.
    Done,
    /// No such session.
    NoSession,
}

/// 0.1's VM spec (no placement rules).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// The programmed reservation.
    pub target: Option<LoadFactors>,
    /// Disk images.
    pub disks: Vec<String>,
    /// Extra hypervisor arguments.
    pub extra_args: Vec<String>,
    /// Driver-specific options.
    pub driver_opts: BTreeMap<String, String>,
}

/// A new VM to place.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// The VM.
    pub vm: VmId,
    /// Its spec.
    pub spec: VmSpec,
    /// Start pinned.
    pub pinned: bool,
}

/// What travels with a `Prepare`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// How to run the VM.
    pub spec: VmSpec,
    /// Its last load factors.
    pub factors: LoadFactors,
}

/// 0.1's handoff messages (the same as this build's but for the payload's spec and the
/// refusal reasons).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)] // Each variant is this build's `HandoffMsg` variant of that name.
pub enum HandoffMsg {
    Prepare {
        vm: VmId,
        epoch: u64,
        payload: Payload,
    },
    Prepared {
        vm: VmId,
        epoch: u64,
        target: MigrationTarget,
    },
    PrepareRefused {
        vm: VmId,
        epoch: u64,
        reason: RefuseReason,
    },
    Commit {
        vm: VmId,
        epoch: u64,
    },
    CommitAck {
        vm: VmId,
        epoch: u64,
    },
    Abort {
        vm: VmId,
        epoch: u64,
    },
    QueryOutcome {
        vm: VmId,
        epoch: u64,
    },
    Outcome {
        vm: VmId,
        epoch: u64,
        outcome: Outcome,
    },
}

/// Why a destination refused a `Prepare` (0.1: no `BreaksRule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // This build's `RefuseReason` variants of the same names.
pub enum RefuseReason {
    StaleEpoch,
    Busy,
    NoRoom,
    Failed,
}

/// 0.1's admin requests: only decoded, to be refused with a reason its CLI prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)] // 0.1's admin requests, never acted on.
pub enum AdminRequest {
    CreateVm {
        vm: VmId,
        spec: VmSpec,
        node: Option<NodeId>,
        pinned: bool,
    },
    ListVms,
    DeleteVm {
        vm: VmId,
    },
    SetPinned {
        vm: VmId,
        pinned: bool,
    },
    Status,
    Snapshot,
    Drain,
    Undrain,
    ForgetNode {
        node: NodeId,
    },
    MoveVm {
        vm: VmId,
        to: NodeId,
    },
    RecentSessions,
}

/// 0.1's admin errors (in `Placed`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // This build's `AdminError` variants of the same names.
pub enum AdminError {
    NotFound(VmId),
    AlreadyExists { vm: VmId, detail: String },
    Busy { vm: VmId, detail: String },
    UnknownNode(NodeId),
    NoNode,
    Invalid(String),
    Driver(String),
    Store(String),
    Forward { node: NodeId, reason: String },
    Timeout(String),
}
