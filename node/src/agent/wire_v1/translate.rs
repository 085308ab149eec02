//! Between protocol version 1 (ballast 0.1) and this build's messages.
//!
//! Towards a node of 0.1 a message may not fit: 0.1 knows no placement rules, so a VM
//! with rules never goes there (its rules would be lost on the way), and 0.1 has no
//! admin API in common with this build. Such a message is [`NotInV1`]; the caller keeps
//! it (a handoff `Prepare` is answered as refused). Everything 0.1 sends fits, with no
//! rules, no tags and no held group VMs.

use super as v1;
use crate::agent::wire::{
    AdminError, CandidateFactors, Placement, Refusal, Request, Response, SessionRequest,
    SessionResponse, SideFigures,
};
use crate::handoff::{HandoffMsg, Payload, RefuseReason};
use ballast_core::rules::{Holdings, PlacementRules};
use ballast_store::{VmId, VmSpec};

/// A message that protocol version 1 cannot carry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotInV1 {
    /// The VM has placement rules, which ballast 0.1 would drop.
    #[error("VM {0} has placement rules, which a node of ballast 0.1 would drop")]
    Rules(VmId),
    /// The admin API of this build is not 0.1's.
    #[error("admin requests are not sent to nodes of ballast 0.1")]
    Admin,
}

fn spec_to_v1(vm: &VmId, spec: VmSpec) -> Result<v1::VmSpec, NotInV1> {
    if !spec.rules.is_empty() {
        return Err(NotInV1::Rules(vm.clone()));
    }
    Ok(v1::VmSpec {
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        target: spec.target,
        disks: spec.disks,
        extra_args: spec.extra_args,
        driver_opts: spec.driver_opts,
    })
}

fn spec_of_v1(spec: v1::VmSpec) -> VmSpec {
    VmSpec {
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        target: spec.target,
        disks: spec.disks,
        extra_args: spec.extra_args,
        driver_opts: spec.driver_opts,
        rules: Box::default(),
    }
}

/// `figures` for a node of 0.1: only the candidates without rules (0.1 could pull
/// the others and drop their rules).
fn figures_to_v1(f: SideFigures) -> v1::SideFigures {
    v1::SideFigures {
        load: f.load,
        free_mem_bytes: f.free_mem_bytes,
        candidates: f
            .candidates
            .into_iter()
            .filter(|c| c.rules.is_empty())
            .map(|c| v1::CandidateFactors {
                vm: c.vm,
                factors: c.factors,
                load_here: c.load_here,
                mem_bytes: c.mem_bytes,
                pinned: c.pinned,
                last_moved_unix_ms: c.last_moved_unix_ms,
            })
            .collect(),
    }
}

fn figures_of_v1(f: v1::SideFigures) -> SideFigures {
    SideFigures {
        load: f.load,
        free_mem_bytes: f.free_mem_bytes,
        candidates: f
            .candidates
            .into_iter()
            .map(|c| CandidateFactors {
                vm: c.vm,
                factors: c.factors,
                load_here: c.load_here,
                mem_bytes: c.mem_bytes,
                pinned: c.pinned,
                last_moved_unix_ms: c.last_moved_unix_ms,
                rules: PlacementRules::default(),
            })
            .collect(),
        holdings: Holdings::default(),
    }
}

/// A handoff message for a node of 0.1.
pub(crate) fn handoff_to_v1(msg: HandoffMsg) -> Result<v1::HandoffMsg, NotInV1> {
    Ok(match msg {
        HandoffMsg::Prepare { vm, epoch, payload } => {
            let spec = spec_to_v1(&vm, payload.spec)?;
            v1::HandoffMsg::Prepare {
                vm,
                epoch,
                payload: v1::Payload {
                    spec,
                    factors: payload.factors,
                },
            }
        }
        HandoffMsg::Prepared { vm, epoch, target } => {
            v1::HandoffMsg::Prepared { vm, epoch, target }
        }
        HandoffMsg::PrepareRefused { vm, epoch, reason } => v1::HandoffMsg::PrepareRefused {
            vm,
            epoch,
            reason: match reason {
                RefuseReason::StaleEpoch => v1::RefuseReason::StaleEpoch,
                // Nothing stored in either case; 0.1 tries another node later.
                RefuseReason::Busy | RefuseReason::BreaksRule => v1::RefuseReason::Busy,
                RefuseReason::NoRoom => v1::RefuseReason::NoRoom,
                RefuseReason::Failed => v1::RefuseReason::Failed,
            },
        },
        HandoffMsg::Commit { vm, epoch } => v1::HandoffMsg::Commit { vm, epoch },
        HandoffMsg::CommitAck { vm, epoch } => v1::HandoffMsg::CommitAck { vm, epoch },
        HandoffMsg::Abort { vm, epoch } => v1::HandoffMsg::Abort { vm, epoch },
        HandoffMsg::QueryOutcome { vm, epoch } => v1::HandoffMsg::QueryOutcome { vm, epoch },
        HandoffMsg::Outcome { vm, epoch, outcome } => {
            v1::HandoffMsg::Outcome { vm, epoch, outcome }
        }
    })
}

/// A handoff message from a node of 0.1.
pub(crate) fn handoff_of_v1(msg: v1::HandoffMsg) -> HandoffMsg {
    match msg {
        v1::HandoffMsg::Prepare { vm, epoch, payload } => HandoffMsg::Prepare {
            vm,
            epoch,
            payload: Payload {
                spec: spec_of_v1(payload.spec),
                factors: payload.factors,
            },
        },
        v1::HandoffMsg::Prepared { vm, epoch, target } => {
            HandoffMsg::Prepared { vm, epoch, target }
        }
        v1::HandoffMsg::PrepareRefused { vm, epoch, reason } => HandoffMsg::PrepareRefused {
            vm,
            epoch,
            reason: match reason {
                v1::RefuseReason::StaleEpoch => RefuseReason::StaleEpoch,
                v1::RefuseReason::Busy => RefuseReason::Busy,
                v1::RefuseReason::NoRoom => RefuseReason::NoRoom,
                v1::RefuseReason::Failed => RefuseReason::Failed,
            },
        },
        v1::HandoffMsg::Commit { vm, epoch } => HandoffMsg::Commit { vm, epoch },
        v1::HandoffMsg::CommitAck { vm, epoch } => HandoffMsg::CommitAck { vm, epoch },
        v1::HandoffMsg::Abort { vm, epoch } => HandoffMsg::Abort { vm, epoch },
        v1::HandoffMsg::QueryOutcome { vm, epoch } => HandoffMsg::QueryOutcome { vm, epoch },
        v1::HandoffMsg::Outcome { vm, epoch, outcome } => {
            HandoffMsg::Outcome { vm, epoch, outcome }
        }
    }
}

/// A request for a node of 0.1. `Sent` becomes 0.1's `Close` (0.1 closes a session it
/// sends from; its peer learns of the VMs when they arrive).
pub(crate) fn request_to_v1(req: Request) -> Result<v1::Request, NotInV1> {
    Ok(match req {
        Request::Session(s) => v1::Request::Session(match s {
            SessionRequest::Open { session, figures } => {
                if let Some(c) = figures.candidates.iter().find(|c| !c.rules.is_empty()) {
                    // The offer's loads come back in the candidates' order: they cannot
                    // be filtered here; the initiator leaves them out (session.rs).
                    return Err(NotInV1::Rules(c.vm.clone()));
                }
                v1::SessionRequest::Open {
                    session,
                    figures: figures_to_v1(figures),
                }
            }
            SessionRequest::Pull { session, vms } => v1::SessionRequest::Pull { session, vms },
            SessionRequest::Close { session } | SessionRequest::Sent { session, .. } => {
                v1::SessionRequest::Close { session }
            }
        }),
        Request::Handoff(msg) => v1::Request::Handoff(handoff_to_v1(msg)?),
        Request::Place(p) => v1::Request::Place(v1::Placement {
            spec: spec_to_v1(&p.vm, p.spec)?,
            vm: p.vm,
            pinned: p.pinned,
        }),
        Request::Admin(_) => return Err(NotInV1::Admin),
    })
}

/// A request from a node of 0.1, or `Err` with the refusal to answer (its admin API).
pub(crate) fn request_of_v1(req: v1::Request) -> Result<Request, v1::Refusal> {
    Ok(match req {
        v1::Request::Session(s) => Request::Session(match s {
            v1::SessionRequest::Open { session, figures } => SessionRequest::Open {
                session,
                figures: figures_of_v1(figures),
            },
            v1::SessionRequest::Pull { session, vms } => SessionRequest::Pull { session, vms },
            v1::SessionRequest::Close { session } => SessionRequest::Close { session },
        }),
        v1::Request::Handoff(msg) => Request::Handoff(handoff_of_v1(msg)),
        v1::Request::Place(p) => Request::Place(Placement {
            vm: p.vm,
            spec: spec_of_v1(p.spec),
            pinned: p.pinned,
        }),
        v1::Request::Admin(_) => {
            return Err(v1::Refusal::Invalid(format!(
                "this node runs ballast {} (protocol {}): use its own `ballast` command",
                env!("CARGO_PKG_VERSION"),
                ballast_gossip::PROTOCOL_VERSION
            )))
        }
    })
}

fn admin_error_to_v1(e: AdminError) -> v1::AdminError {
    match e {
        AdminError::NotFound(vm) => v1::AdminError::NotFound(vm),
        AdminError::AlreadyExists { vm, detail } => v1::AdminError::AlreadyExists { vm, detail },
        AdminError::Busy { vm, detail } => v1::AdminError::Busy {
            vm,
            detail: detail.into(),
        },
        AdminError::UnknownNode(n) => v1::AdminError::UnknownNode(n),
        AdminError::NoNode => v1::AdminError::NoNode,
        AdminError::Invalid(s) => v1::AdminError::Invalid(s),
        AdminError::Driver(s) => v1::AdminError::Driver(s),
        AdminError::Store(s) => v1::AdminError::Store(s),
        AdminError::Forward { node, reason } => v1::AdminError::Forward { node, reason },
        AdminError::Timeout(s) => v1::AdminError::Timeout(s),
        // Nothing changed in each: 0.1 reads them as invalid input, with the text.
        e @ (AdminError::NotCreated { .. }
        | AdminError::BreaksRule { .. }
        | AdminError::NoLegalNode { .. }) => v1::AdminError::Invalid(e.to_string()),
    }
}

fn admin_error_of_v1(e: v1::AdminError) -> AdminError {
    match e {
        v1::AdminError::NotFound(vm) => AdminError::NotFound(vm),
        v1::AdminError::AlreadyExists { vm, detail } => AdminError::AlreadyExists { vm, detail },
        v1::AdminError::Busy { vm, detail } => AdminError::Busy {
            vm,
            detail: detail.into(),
        },
        v1::AdminError::UnknownNode(n) => AdminError::UnknownNode(n),
        v1::AdminError::NoNode => AdminError::NoNode,
        v1::AdminError::Invalid(s) => AdminError::Invalid(s),
        v1::AdminError::Driver(s) => AdminError::Driver(s),
        v1::AdminError::Store(s) => AdminError::Store(s),
        v1::AdminError::Forward { node, reason } => AdminError::Forward { node, reason },
        v1::AdminError::Timeout(s) => AdminError::Timeout(s),
    }
}

fn refusal_to_v1(r: Refusal) -> v1::Refusal {
    match r {
        Refusal::Forbidden | Refusal::ReadOnlyRole => v1::Refusal::Forbidden,
        Refusal::Invalid(s) => v1::Refusal::Invalid(s),
        Refusal::Overloaded => v1::Refusal::Overloaded,
        Refusal::ShuttingDown => v1::Refusal::ShuttingDown,
    }
}

fn refusal_of_v1(r: v1::Refusal) -> Refusal {
    match r {
        v1::Refusal::Forbidden => Refusal::Forbidden,
        v1::Refusal::Invalid(s) => Refusal::Invalid(s),
        v1::Refusal::Overloaded => Refusal::Overloaded,
        v1::Refusal::ShuttingDown => Refusal::ShuttingDown,
    }
}

/// This build's answer to a request of a node of 0.1, in 0.1's terms.
pub(crate) fn response_to_v1(resp: Response) -> v1::Response {
    match resp {
        Response::Session(s) => v1::Response::Session(match s {
            SessionResponse::Offer {
                session,
                figures,
                loads_there,
            } => v1::SessionResponse::Offer {
                session,
                figures: figures_to_v1(figures),
                loads_there,
            },
            SessionResponse::Busy => v1::SessionResponse::Busy,
            SessionResponse::Draining => v1::SessionResponse::Draining,
            SessionResponse::Done => v1::SessionResponse::Done,
            SessionResponse::NoSession => v1::SessionResponse::NoSession,
        }),
        Response::HandoffQueued => v1::Response::HandoffQueued,
        Response::Placed(r) => v1::Response::Placed(r.map_err(admin_error_to_v1)),
        // 0.1 has no warnings: the VM is placed.
        Response::PlacedWithWarning { node, .. } => v1::Response::Placed(Ok(node)),
        Response::Refused(r) => v1::Response::Refused(refusal_to_v1(r)),
        // Never answered to 0.1 (its admin requests are refused before).
        Response::Admin(_) => v1::Response::Refused(v1::Refusal::Forbidden),
    }
}

/// A node of 0.1's answer, in this build's terms.
pub(crate) fn response_of_v1(resp: v1::Response) -> Response {
    match resp {
        v1::Response::Session(s) => Response::Session(match s {
            v1::SessionResponse::Offer {
                session,
                figures,
                loads_there,
            } => SessionResponse::Offer {
                session,
                figures: figures_of_v1(figures),
                loads_there,
            },
            v1::SessionResponse::Busy => SessionResponse::Busy,
            v1::SessionResponse::Draining => SessionResponse::Draining,
            v1::SessionResponse::Done => SessionResponse::Done,
            v1::SessionResponse::NoSession => SessionResponse::NoSession,
        }),
        v1::Response::HandoffQueued => Response::HandoffQueued,
        v1::Response::Placed(r) => Response::Placed(r.map_err(admin_error_of_v1)),
        v1::Response::Admin(Ok(never)) => match never {},
        v1::Response::Admin(Err(e)) => Response::Admin(Err(admin_error_of_v1(e))),
        v1::Response::Refused(r) => Response::Refused(refusal_of_v1(r)),
    }
}

impl crate::agent::wire::AgentRequest {
    /// `req` in the version a node that speaks protocol versions up to `protocol` reads.
    pub(crate) fn for_protocol(protocol: u32, req: Request) -> Result<Self, NotInV1> {
        if super::speaks_only_v1(protocol) {
            request_to_v1(req).map(Self::V1)
        } else {
            Ok(Self::V2(req))
        }
    }
}

impl crate::agent::wire::AgentResponse {
    /// The answer in this build's terms, whichever version it came in.
    pub(crate) fn into_current(self) -> Response {
        match self {
            Self::V1(r) => response_of_v1(r),
            Self::V2(r) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::wire::AgentRequest;
    use ballast_gossip::frame::{decode_frame, encode_frame};

    fn prepare(rules: PlacementRules) -> HandoffMsg {
        HandoffMsg::Prepare {
            vm: VmId::from("vm-1"),
            epoch: 3,
            payload: Payload {
                spec: VmSpec {
                    vcpus: 2,
                    memory_mib: 512,
                    disks: vec!["/var/lib/vm-1.qcow2".into()],
                    rules: Box::new(rules),
                    ..VmSpec::default()
                },
                factors: Default::default(),
            },
        }
    }

    #[test]
    fn a_handoff_without_rules_crosses_to_0_1_and_back_unchanged() {
        let msg = prepare(PlacementRules::default());
        let v1 = handoff_to_v1(msg.clone()).expect("0.1 carries it");
        assert_eq!(handoff_of_v1(v1), msg);
        let commit = HandoffMsg::Commit {
            vm: VmId::from("vm-1"),
            epoch: 3,
        };
        assert_eq!(
            handoff_of_v1(handoff_to_v1(commit.clone()).expect("v1")),
            commit
        );
    }

    #[test]
    fn a_vm_with_placement_rules_is_never_sent_to_0_1() {
        let rules = PlacementRules {
            anti_affinity: vec!["db".into()],
            ..PlacementRules::default()
        };
        assert!(matches!(
            handoff_to_v1(prepare(rules.clone())),
            Err(NotInV1::Rules(_))
        ));
        let req = Request::Handoff(prepare(rules));
        assert!(AgentRequest::for_protocol(1, req.clone()).is_err());
        assert_eq!(
            AgentRequest::for_protocol(2, req.clone()).expect("v2"),
            AgentRequest::V2(req)
        );
    }

    #[test]
    fn a_version_1_frame_starts_with_the_variant_0_1_wrote() {
        // 0.1's `AgentRequest` had one variant, its version-1 request (index 0); the
        // frame's payload starts after its 9-byte header with that index.
        let req = AgentRequest::for_protocol(1, Request::Handoff(prepare(Default::default())))
            .expect("v1");
        let frame = encode_frame(&req, 1 << 20).expect("encode");
        assert_eq!(frame[9], 0, "variant V1");
        let back: AgentRequest = decode_frame(&frame, 1 << 20).expect("decode");
        assert_eq!(back, req);
        let v2 = AgentRequest::V2(Request::Handoff(prepare(Default::default())));
        assert_eq!(
            encode_frame(&v2, 1 << 20).expect("encode")[9],
            1,
            "variant V2"
        );
    }
}
