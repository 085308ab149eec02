//! The agent's wire protocol: one versioned enum for balancing sessions, handoff
//! messages, node-to-node placement and the admin API, carried by the gossip crate's RPC
//! channel (bincode 2 inside its size-limited frame).
//!
//! [`AgentRequest`] and [`AgentResponse`] are enums whose first variant is the protocol
//! version, so bincode writes the version first and an unknown version is a decode
//! error, never a panic. Inside a version, an unknown kind is a decode error too.
//! Everything decoded is validated ([`Request::validate`]) before the agent acts on it.

pub use super::outcome::{BusyDetail, PlanKind, SessionOutcome};
use crate::driver::MigrationProgress;
use crate::handoff::HandoffMsg;
use ballast_core::handoff::{HandoffStep, Role};
use ballast_core::rules::{Holdings, PlacementRules};
use ballast_gossip::LoadSummary;
use ballast_store::{LoadFactors, NodeId, ScheduleEntry, Transferred, VmId, VmSpec};
use serde::{Deserialize, Serialize};

/// Most candidates one side of a session sends.
pub const SESSION_CANDIDATES_MAX: usize = 4_096;
/// Most VMs a `Pull` may name.
pub const PULL_VMS_MAX: usize = 64;
/// Longest VM id or node id accepted from the wire, in bytes.
pub const ID_LEN_MAX: usize = 256;

/// A request, versioned: bincode writes the variant first, so a node of ballast 0.1,
/// whose one variant was its version-1 request, and this build read each other's
/// version-1 requests alike.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AgentRequest {
    /// Protocol version 1 (ballast 0.1), frozen in [`super::wire_v1`].
    V1(super::wire_v1::Request),
    /// Protocol version 2 (this build).
    V2(Request),
}

/// A response, versioned like the request it answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AgentResponse {
    /// Protocol version 1 (ballast 0.1).
    V1(super::wire_v1::Response),
    /// Protocol version 2.
    V2(Response),
}

/// Version 2 requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Node → node: a balancing session step (docs/design.md §Balancing).
    Session(SessionRequest),
    /// Node → node: a handoff message (docs/design.md §Handoff), queued to the handoff machine.
    Handoff(HandoffMsg),
    /// Node → node: place a new VM here (a forwarded admin `CreateVm`).
    Place(Placement),
    /// Admin → node: the admin API (admin certificate required).
    Admin(AdminRequest),
}

/// Version 2 responses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to a session step.
    Session(SessionResponse),
    /// The handoff message was queued to the machine (its answers travel as messages).
    HandoffQueued,
    /// Answer to a `Place` (the node that holds the VM now).
    Placed(Result<NodeId, AdminError>),
    /// Answer to an admin request.
    Admin(Result<AdminResponse, AdminError>),
    /// The request was not handled; nothing changed.
    Refused(Refusal),
    /// Answer to a `Place`: the VM exists on `node`, but a hypervisor call on the way
    /// failed (it runs after all, or the agent starts it); `warning` says what.
    PlacedWithWarning {
        /// The node that holds the VM.
        node: NodeId,
        /// What did not go as asked.
        warning: String,
    },
}

/// Why a request was not handled at all. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The caller's certificate does not allow this request (e.g. an admin request
    /// from a node, or a session from an admin).
    #[error("not allowed for this certificate role")]
    Forbidden,
    /// The request failed validation.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The agent's input queue is full; try again later.
    #[error("agent overloaded, try again")]
    Overloaded,
    /// The agent is shutting down.
    #[error("agent is shutting down")]
    ShuttingDown,
    /// The caller's admin certificate has the role `read-only` and the request changes
    /// something (docs/design.md, "Admin roles").
    #[error("the caller's admin certificate is read-only: it may read, not change")]
    ReadOnlyRole,
}

/// One VM offered in a session: its raw factors and what it weighs on its holder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateFactors {
    /// The VM.
    pub vm: VmId,
    /// Its raw load factors (docs/design.md §Load), host independent.
    pub factors: LoadFactors,
    /// Its load on the host that holds it, as that host computes it.
    pub load_here: f64,
    /// Memory it needs, in bytes.
    pub mem_bytes: u64,
    /// Pinned VMs never move by balancing.
    pub pinned: bool,
    /// Unix ms of its last move (for the cooldown).
    pub last_moved_unix_ms: Option<u64>,
    /// Its placement rules (docs/design.md §Placement rules).
    pub rules: PlacementRules,
}

/// One side's figures in a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SideFigures {
    /// The side's fresh load `L`.
    pub load: f64,
    /// Memory it can still take, in bytes.
    pub free_mem_bytes: u64,
    /// Its movable VMs (Running, not in a handoff), with raw factors.
    pub candidates: Vec<CandidateFactors>,
    /// What the side's host holds for the placement rules: its tags and every VM in its
    /// schedule that belongs to a group (running, leaving or arriving).
    pub holdings: Holdings,
}

/// A balancing session step from the initiator (A) to its peer (B).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SessionRequest {
    /// A opens a session: its load and its candidates' raw factors.
    Open {
        /// A's id for the session (echoed back).
        session: u64,
        /// A's figures.
        figures: SideFigures,
    },
    /// A decided that B sends these VMs to A (the busier side sends, or B's half of a
    /// swap); closes the session.
    Pull {
        /// The session.
        session: u64,
        /// The VMs, in order.
        vms: Vec<VmId>,
    },
    /// A is done with the session (decided to stay).
    Close {
        /// The session.
        session: u64,
    },
    /// A decided to send B these VMs (already queued on A); closes the session. B
    /// counts them as its own until they arrive, so its next session sees them.
    Sent {
        /// The session.
        session: u64,
        /// The VMs, in order.
        vms: Vec<VmId>,
    },
}

/// B's answer to a session step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SessionResponse {
    /// B's fresh figures, and what each of A's candidates would weigh on B (same order).
    Offer {
        /// The session.
        session: u64,
        /// B's figures (its own candidates weighed on B, for a pull).
        figures: SideFigures,
        /// `load_B(v)` for each of A's candidates, in A's order.
        loads_there: Vec<f64>,
    },
    /// B is in another session (or at its incoming limit); try next round.
    Busy,
    /// B is draining and takes no VMs.
    Draining,
    /// The step was taken (Pull queued, Close done).
    Done,
    /// No such session here (expired or never opened).
    NoSession,
}

/// A new VM to place on the receiving node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// The VM.
    pub vm: VmId,
    /// Its spec.
    pub spec: VmSpec,
    /// Start pinned.
    pub pinned: bool,
}

/// The admin API (docs/design.md §Operations). Every request acts on the node it is sent to,
/// except `CreateVm` which may forward to another node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Creates a VM on `node`, or when `None` on the less loaded of two random live,
    /// active nodes (this one included).
    CreateVm {
        /// The VM.
        vm: VmId,
        /// Its spec.
        spec: VmSpec,
        /// Where to put it.
        node: Option<NodeId>,
        /// Start pinned.
        pinned: bool,
    },
    /// This node's schedule.
    ListVms,
    /// Deletes a VM of this node (stops it, then removes its entry).
    DeleteVm {
        /// The VM.
        vm: VmId,
    },
    /// Pins (`true`) or unpins a VM of this node.
    SetPinned {
        /// The VM.
        vm: VmId,
        /// The new setting.
        pinned: bool,
    },
    /// This node's status: summary, peers, handoffs in flight, counters.
    Status,
    /// Everything the node's store holds (schedule, transfer records, epochs).
    Snapshot,
    /// Starts draining this node: it takes no VMs and hands all of its VMs off.
    Drain,
    /// Stops draining.
    Undrain,
    /// `ballast node forget NODE`: NODE is gone for good; resolve its handoffs alone.
    ForgetNode {
        /// The node.
        node: NodeId,
    },
    /// Moves a VM of this node to `to` now (ignores threshold, gain, pinning and
    /// cooldown) and answers when the source side resolved it, or `MoveUnderway` when
    /// that takes longer than most of `gossip.rpc_timeout`.
    MoveVm {
        /// The VM.
        vm: VmId,
        /// The destination.
        to: NodeId,
        /// Move even if the VM breaks a hard placement rule there; the break is recorded
        /// (`PlacementRules::forced_on`).
        force: bool,
    },
    /// The last balancing sessions this node took part in, newest last.
    RecentSessions,
    /// `ballast vm adopt`: takes this host's existing VMs named in `names` (every
    /// running or defined one when empty) into this node's schedule.
    AdoptVms {
        /// The hypervisor's names of the VMs (they become their VM ids).
        names: Vec<String>,
    },
    /// `ballast vm release`: removes a VM from this node's schedule and gives it back to
    /// the hypervisor's operator; it keeps running and is never moved again.
    ReleaseVm {
        /// The VM.
        vm: VmId,
    },
    /// The sessions this node started, kept in its store across restarts, from
    /// `since_unix_ms` on, that concern `vm` (all when `None`); newest last.
    SessionHistory {
        /// Unix ms of the oldest session wanted.
        since_unix_ms: u64,
        /// Only the sessions that planned or weighed this VM.
        vm: Option<VmId>,
    },
    /// `ballast vm set`: replaces the placement rules of a VM of this node.
    SetRules {
        /// The VM.
        vm: VmId,
        /// Its new rules (`forced_on` is cleared).
        rules: PlacementRules,
    },
    /// `ballast node revoke NODE`: the operator-signed revocation of a node name; the
    /// node checks, enforces, keeps and gossips it.
    RevokeNode {
        /// The signed revocation.
        revocation: ballast_gossip::Revocation,
    },
}

/// Answers to admin requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AdminResponse {
    /// The VM was created on this node.
    Created {
        /// Where it runs.
        node: NodeId,
    },
    /// The schedule.
    Vms(Vec<ScheduleEntry>),
    /// The request was carried out.
    Done,
    /// The node's status.
    Status(Box<NodeStatus>),
    /// The store's contents.
    Snapshot(Box<StoreView>),
    /// The outcome of a `MoveVm`.
    Moved {
        /// True if the move committed, false if it aborted.
        committed: bool,
        /// The epoch of the move.
        epoch: u64,
    },
    /// Recent sessions.
    Sessions(Vec<SessionRecord>),
    /// The VMs an `AdoptVms` took into the schedule (already adopted ones included).
    Adopted(Vec<VmId>),
    /// A `MoveVm` that had not resolved when the answer was due (a large VM's live
    /// migration outlasts an RPC): the handoff goes on; the VM's entry says how it ends.
    MoveUnderway,
    /// The VM was created, but a hypervisor call on the way failed: it runs after all,
    /// or its entry stays and the agent starts it; `warning` says which.
    CreatedWithWarning {
        /// Where it is.
        node: NodeId,
        /// What did not go as asked.
        warning: String,
    },
    /// `SetRules` done; `breaks` names the hard rule the VM now breaks where it is
    /// (balancing moves it to a legal node when one has room).
    RulesSet {
        /// The rule broken here, if any.
        breaks: Option<String>,
    },
}

/// Why an admin request failed. Each variant says whether anything changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AdminError {
    /// No such VM on this node. Nothing changed.
    #[error("VM {0} is not on this node")]
    NotFound(VmId),
    /// The VM already exists (here, or was placed elsewhere). Nothing changed.
    #[error("VM {vm} already exists: {detail}")]
    AlreadyExists {
        /// The VM.
        vm: VmId,
        /// What the store said.
        detail: String,
    },
    /// The VM is in a handoff (or otherwise not in the state the request needs).
    /// Nothing changed.
    #[error("VM {vm} is busy: {detail}")]
    Busy {
        /// The VM.
        vm: VmId,
        /// Why (`BusyDetail::OutgoingLimit`: worth retrying shortly).
        detail: BusyDetail,
    },
    /// The named node is not a live member. Nothing changed.
    #[error("node {0} is not a live member")]
    UnknownNode(NodeId),
    /// No live active node can take the VM. Nothing changed.
    #[error("no node can take the VM")]
    NoNode,
    /// The input is not acceptable (bad id, bad spec). Nothing changed.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The hypervisor failed (the text names it). For `DeleteVm` nothing changed.
    #[error("{0}")]
    Driver(String),
    /// The store failed; the request may not have taken effect.
    #[error("store: {0}")]
    Store(String),
    /// Forwarding to another node failed; the VM may or may not exist there.
    #[error("forwarding to {node} failed: {reason}")]
    Forward {
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// The request timed out inside the agent; it may still take effect.
    #[error("timed out: {0}")]
    Timeout(String),
    /// `CreateVm`: the hypervisor refused or failed the start, and nothing of the VM is
    /// left (its entry was removed, the hypervisor holds no copy).
    #[error("VM {vm} was not created on {node} (nothing of it is left): {reason}")]
    NotCreated {
        /// The VM.
        vm: VmId,
        /// The node that tried.
        node: NodeId,
        /// What the hypervisor said.
        reason: String,
    },
    /// The VM would break a hard placement rule on that node; nothing changed.
    #[error("VM {vm} may not be on {node}: {rule}")]
    BreaksRule {
        /// The VM.
        vm: VmId,
        /// The node.
        node: NodeId,
        /// The rule.
        rule: String,
    },
    /// No active node may take the VM under its hard placement rules; nothing changed.
    #[error("no node may take VM {vm}: {reason} (`--node NODE --force` places it anyway)")]
    NoLegalNode {
        /// The VM.
        vm: VmId,
        /// The rule that rules every node out.
        reason: String,
    },
}

/// A node's status for `ballast status`, the chaos harness and tests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// This node.
    pub node: NodeId,
    /// The summary it publishes (load, capacities, VM count, state, address).
    pub summary: LoadSummary,
    /// Whether it is draining, and how many VMs are left to hand off.
    pub draining: bool,
    /// The live peers it sees.
    pub peers: Vec<PeerStatus>,
    /// Handoffs in flight.
    pub handoffs: Vec<HandoffInfo>,
    /// Counters since the agent started.
    pub counters: Counters,
    /// VMs the hypervisor runs that no entry of this node claims (reported, not killed).
    pub unclaimed_vms: Vec<VmId>,
    /// The placement rules as they stand on this node.
    pub rules: NodeRules,
    /// Gossiped state this node refused because it did not verify against its node's
    /// own signature (docs/design.md, "Signed node state").
    pub forged: ForgedGossip,
    /// The node names this node refuses (revoked), with when.
    pub revoked: Vec<RevokedNode>,
    /// When this node's certificate expires (Unix seconds).
    pub cert_expires_unix: i64,
    /// Peers that share no protocol version with this node (left alone).
    pub incompatible: Vec<ballast_gossip::IncompatiblePeer>,
}

/// A revoked node name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedNode {
    /// The name.
    pub node: String,
    /// When it was revoked (Unix ms).
    pub unix_ms: u64,
}

/// The forged gossip one node refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgedGossip {
    /// Refusals since the agent started.
    pub total: u64,
    /// The most recent ones (at most 16), oldest first.
    pub recent: Vec<ballast_gossip::ForgedState>,
}

/// The placement rules as they stand on one node (docs/design.md §Placement rules).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeRules {
    /// The node's tags and its VMs that belong to a group.
    pub holdings: Holdings,
    /// Its VMs that break a hard rule here.
    pub breaks: Vec<RuleBreak>,
    /// VMs its drain found no legal destination for.
    pub drain_blocked: Vec<RuleSkip>,
}

/// A VM that breaks a hard placement rule where it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleBreak {
    /// The VM.
    pub vm: VmId,
    /// The rule, as `status` writes it.
    pub rule: String,
    /// An operator forced it here (`--force`); otherwise it waits for a legal host with
    /// room (balancing repairs it), or its rules were set after it was placed.
    pub forced: bool,
}

/// A live peer as this node sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer.
    pub node: NodeId,
    /// Its summary as gossiped.
    pub summary: LoadSummary,
    /// Milliseconds since this node last heard new gossip from the peer (its heartbeat
    /// or a key advanced); `None` from an agent that does not report it.
    #[serde(default)]
    pub last_heard_ms_ago: Option<u64>,
}

/// One handoff in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffInfo {
    /// The VM.
    pub vm: VmId,
    /// The other side.
    pub peer: NodeId,
    /// The epoch.
    pub epoch: u64,
    /// This node's side (`source` or `destination` in JSON).
    pub role: Role,
    /// The step (`preparing`, `migrating`, `waiting`, `settling` … in JSON).
    pub step: HandoffStep,
    /// The source's last report of the migration's bytes, while it migrates.
    #[serde(default)]
    pub progress: Option<MigrationProgress>,
}

/// Counters since the agent started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Rounds run.
    pub rounds: u64,
    /// Sessions opened by this node.
    pub sessions_opened: u64,
    /// Handoffs committed (either side).
    pub handoffs_committed: u64,
    /// Handoffs aborted (either side).
    pub handoffs_aborted: u64,
    /// Handoffs committed as source.
    pub committed_out: u64,
    /// Handoffs committed as destination.
    pub committed_in: u64,
}

/// What a node's store holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreView {
    /// The schedule.
    pub entries: Vec<ScheduleEntry>,
    /// Transfer records not yet forgotten.
    pub transfers: Vec<Transferred>,
    /// Highest epoch seen per VM.
    pub highest_epochs: Vec<(VmId, u64)>,
}

/// One balancing session as decided (kept for tests and `status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session id.
    pub session: u64,
    /// The initiator.
    pub initiator: NodeId,
    /// The peer.
    pub peer: NodeId,
    /// The initiator's load.
    pub load_initiator: f64,
    /// The peer's fresh load.
    pub load_peer: f64,
    /// `send`, `receive`, `swap`, `dry-run:<kind>`, `stay:<reason>`, `busy`, `busy:self`,
    /// `draining`, `failed:<why>` in JSON.
    pub outcome: SessionOutcome,
    /// The moves planned, in order.
    pub moves: Vec<PlannedVm>,
    /// The initiator's candidates as the policy saw them (`load_there` = on the peer,
    /// as the peer computed it).
    pub initiator_candidates: Vec<CandidateView>,
    /// The peer's candidates as the policy saw them (`load_there` = on the initiator,
    /// as the initiator computed it).
    pub peer_candidates: Vec<CandidateView>,
    /// Free memory of the initiator and of the peer, in bytes.
    pub free_mem_bytes: (u64, u64),
    /// When the session started (Unix ms); for a session that reached the policy, the
    /// policy's `now`.
    pub now_unix_ms: u64,
    /// Candidates of the busier side that a placement rule kept from moving, with the
    /// rule (at most [`RULE_SKIPS_MAX`]).
    pub skipped_by_rule: Vec<RuleSkip>,
}

/// Most rule skips a session record keeps.
pub const RULE_SKIPS_MAX: usize = 8;

/// A candidate a placement rule kept from moving in a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleSkip {
    /// The VM.
    pub vm: VmId,
    /// The rule, as `status` writes it (`anti-affinity group db (with db-2)`).
    pub rule: String,
}

/// One candidate VM as a session's policy call saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateView {
    /// The VM.
    pub vm: VmId,
    /// Its load on its holder.
    pub load_here: f64,
    /// Its load on the other side.
    pub load_there: f64,
    /// Memory it needs, in bytes.
    pub mem_bytes: u64,
    /// Pinned.
    pub pinned: bool,
    /// Unix ms of its last move.
    pub last_moved_unix_ms: Option<u64>,
}

/// One move planned in a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedVm {
    /// The VM.
    pub vm: VmId,
    /// Its load on the sender.
    pub load_from: f64,
    /// Its load on the receiver.
    pub load_to: f64,
    /// Sender → receiver.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// Set when the move repairs a hard placement rule the VM broke on the sender.
    pub repairs: Option<String>,
}

fn check_id(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > ID_LEN_MAX {
        return Err(format!("{what} must be 1-{ID_LEN_MAX} bytes"));
    }
    Ok(())
}

pub(crate) fn check_figures(f: &SideFigures) -> Result<(), String> {
    if !f.load.is_finite() || f.load < 0.0 {
        return Err("load must be finite and >= 0".into());
    }
    if f.candidates.len() > SESSION_CANDIDATES_MAX {
        return Err("too many candidates".into());
    }
    for c in &f.candidates {
        check_id("vm id", c.vm.as_str())?;
        let x = c.factors;
        if ![x.cpu, x.io, x.mem, c.load_here]
            .iter()
            .all(|v| v.is_finite() && *v >= 0.0)
        {
            return Err(format!("bad factors for {}", c.vm));
        }
        c.rules
            .validate()
            .map_err(|e| format!("rules of {}: {e}", c.vm))?;
    }
    let h = &f.holdings;
    if h.tags.len() > crate::config::TAGS_MAX || h.vms.len() > SESSION_CANDIDATES_MAX {
        return Err("too many tags or held VMs".into());
    }
    h.tags
        .iter()
        .try_for_each(|t| ballast_core::rules::check_tag(t))
        .map_err(|e| e.to_string())?;
    for v in &h.vms {
        check_id("vm id", v.vm.as_str())?;
        if v.anti_affinity.len() + v.affinity.len() > 2 * ballast_core::rules::RULES_LIST_LEN_MAX {
            return Err(format!("too many groups for {}", v.vm));
        }
    }
    Ok(())
}

impl AdminRequest {
    /// The request's name in logs (`create_vm`, `move_vm` …).
    pub fn name(&self) -> &'static str {
        match self {
            AdminRequest::CreateVm { .. } => "create_vm",
            AdminRequest::ListVms => "list_vms",
            AdminRequest::DeleteVm { .. } => "delete_vm",
            AdminRequest::SetPinned { .. } => "set_pinned",
            AdminRequest::Status => "status",
            AdminRequest::Snapshot => "snapshot",
            AdminRequest::Drain => "drain",
            AdminRequest::Undrain => "undrain",
            AdminRequest::ForgetNode { .. } => "forget_node",
            AdminRequest::MoveVm { .. } => "move_vm",
            AdminRequest::RecentSessions => "recent_sessions",
            AdminRequest::AdoptVms { .. } => "adopt_vms",
            AdminRequest::ReleaseVm { .. } => "release_vm",
            AdminRequest::SessionHistory { .. } => "session_history",
            AdminRequest::SetRules { .. } => "set_rules",
            AdminRequest::RevokeNode { .. } => "revoke_node",
        }
    }

    /// Whether the request only reads (status, schedule, store contents, sessions): those
    /// a read-only admin certificate and a node certificate may also make (the web view
    /// of another agent gathers the cluster).
    pub fn reads_only(&self) -> bool {
        match self {
            AdminRequest::Status
            | AdminRequest::ListVms
            | AdminRequest::Snapshot
            | AdminRequest::RecentSessions
            | AdminRequest::SessionHistory { .. } => true,
            AdminRequest::CreateVm { .. }
            | AdminRequest::DeleteVm { .. }
            | AdminRequest::SetPinned { .. }
            | AdminRequest::Drain
            | AdminRequest::Undrain
            | AdminRequest::ForgetNode { .. }
            | AdminRequest::MoveVm { .. }
            | AdminRequest::AdoptVms { .. }
            | AdminRequest::ReleaseVm { .. }
            | AdminRequest::SetRules { .. }
            | AdminRequest::RevokeNode { .. } => false,
        }
    }
}

impl Request {
    /// Checks the bounds the agent relies on; `Err` says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Request::Session(SessionRequest::Open { figures, .. }) => check_figures(figures),
            Request::Session(
                SessionRequest::Pull { vms, .. } | SessionRequest::Sent { vms, .. },
            ) => {
                if vms.len() > PULL_VMS_MAX {
                    return Err("too many VMs in a session's moves".into());
                }
                vms.iter().try_for_each(|v| check_id("vm id", v.as_str()))
            }
            Request::Session(SessionRequest::Close { .. }) => Ok(()),
            Request::Handoff(msg) => msg.validate().map_err(|e| e.to_string()),
            Request::Place(p) => {
                check_id("vm id", p.vm.as_str())?;
                p.spec.rules.validate().map_err(|e| e.to_string())
            }
            Request::Admin(a) => match a {
                AdminRequest::CreateVm { vm, node, spec, .. } => {
                    check_id("vm id", vm.as_str())?;
                    spec.rules.validate().map_err(|e| e.to_string())?;
                    node.as_ref()
                        .map_or(Ok(()), |n| check_id("node id", n.as_str()))
                }
                AdminRequest::DeleteVm { vm } | AdminRequest::SetPinned { vm, .. } => {
                    check_id("vm id", vm.as_str())
                }
                AdminRequest::MoveVm { vm, to, .. } => {
                    check_id("vm id", vm.as_str())?;
                    check_id("node id", to.as_str())
                }
                AdminRequest::SetRules { vm, rules } => {
                    check_id("vm id", vm.as_str())?;
                    rules.validate().map_err(|e| e.to_string())
                }
                AdminRequest::ForgetNode { node } => check_id("node id", node.as_str()),
                _ => Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_gossip::frame::{decode_frame, encode_frame};

    fn round_trip(req: AgentRequest) {
        let frame = encode_frame(&req, 1 << 20).expect("encode");
        let back: AgentRequest = decode_frame(&frame, 1 << 20).expect("decode");
        assert_eq!(back, req);
    }

    #[test]
    fn every_request_kind_round_trips() {
        let vm = VmId::from("v1");
        let figures = SideFigures {
            load: 0.5,
            free_mem_bytes: 7,
            candidates: vec![CandidateFactors {
                vm: vm.clone(),
                factors: LoadFactors {
                    cpu: 1.0,
                    io: 2.0,
                    mem: 3.0,
                },
                load_here: 0.1,
                mem_bytes: 5,
                pinned: false,
                last_moved_unix_ms: Some(9),
                rules: PlacementRules {
                    anti_affinity: vec!["db".into()],
                    requires: vec!["zone=a".into()],
                    ..Default::default()
                },
            }],
            holdings: Holdings {
                tags: vec!["gpu".into()],
                vms: Vec::new(),
            },
        };
        let reqs = vec![
            Request::Session(SessionRequest::Open {
                session: 1,
                figures,
            }),
            Request::Session(SessionRequest::Pull {
                session: 1,
                vms: vec![vm.clone()],
            }),
            Request::Session(SessionRequest::Close { session: 1 }),
            Request::Handoff(HandoffMsg::Commit {
                vm: vm.clone(),
                epoch: 3,
            }),
            Request::Place(Placement {
                vm: vm.clone(),
                spec: VmSpec::default(),
                pinned: true,
            }),
            Request::Admin(AdminRequest::CreateVm {
                vm: vm.clone(),
                spec: VmSpec::default(),
                node: Some(NodeId::from("n")),
                pinned: false,
            }),
            Request::Admin(AdminRequest::ListVms),
            Request::Admin(AdminRequest::DeleteVm { vm: vm.clone() }),
            Request::Admin(AdminRequest::SetPinned {
                vm: vm.clone(),
                pinned: true,
            }),
            Request::Admin(AdminRequest::Status),
            Request::Admin(AdminRequest::Snapshot),
            Request::Admin(AdminRequest::Drain),
            Request::Admin(AdminRequest::Undrain),
            Request::Admin(AdminRequest::ForgetNode {
                node: NodeId::from("n"),
            }),
            Request::Admin(AdminRequest::MoveVm {
                vm: vm.clone(),
                to: NodeId::from("n"),
                force: true,
            }),
            Request::Admin(AdminRequest::SetRules {
                vm,
                rules: PlacementRules::default(),
            }),
            Request::Admin(AdminRequest::RecentSessions),
        ];
        for r in reqs {
            assert_eq!(r.validate(), Ok(()), "{r:?}");
            round_trip(AgentRequest::V2(r));
        }
    }

    #[test]
    fn an_unknown_version_is_a_decode_error() {
        let frame = encode_frame(
            &AgentRequest::V2(Request::Admin(AdminRequest::Status)),
            1024,
        )
        .expect("encode");
        let mut bad = frame.clone();
        // The payload starts after the 9-byte frame header; its first byte is the
        // version variant.
        bad[9] = 7;
        assert!(decode_frame::<AgentRequest>(&bad, 1024).is_err());
    }

    #[test]
    fn bad_input_is_refused_by_validate() {
        let r = Request::Session(SessionRequest::Pull {
            session: 1,
            vms: vec![VmId::from(""); 1],
        });
        assert!(r.validate().is_err());
        let r = Request::Session(SessionRequest::Open {
            session: 1,
            figures: SideFigures {
                load: f64::NAN,
                free_mem_bytes: 0,
                candidates: vec![],
                holdings: Holdings::default(),
            },
        });
        assert!(r.validate().is_err());
        // Rules with a bad tag or group are refused, whoever sends them.
        let bad_tag = Request::Session(SessionRequest::Open {
            session: 1,
            figures: SideFigures {
                load: 0.0,
                free_mem_bytes: 0,
                candidates: vec![],
                holdings: Holdings {
                    tags: vec!["GPU!".into()],
                    vms: Vec::new(),
                },
            },
        });
        assert!(bad_tag.validate().is_err());
        let bad_group = Request::Admin(AdminRequest::SetRules {
            vm: VmId::from("v"),
            rules: PlacementRules {
                anti_affinity: vec!["has space".into()],
                ..Default::default()
            },
        });
        let err = bad_group.validate().expect_err("bad group");
        assert!(err.contains("bad group name"), "{err}");
    }
}
