//! Typed outcomes of the agent's work, each with one definition of its text: what a
//! balancing session ended with ([`SessionOutcome`]), why a VM is busy for an operator's
//! move ([`BusyDetail`]), and why a move did not start or resolve ([`MoveRefused`]). The
//! admin wire carries the first two as the strings it always carried, so their JSON and
//! bytes are unchanged.

use ballast_core::handoff::StartError;
use ballast_core::policy::Stay;
use ballast_store::VmId;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The moves a session planned, by direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlanKind {
    /// The initiator sends.
    Send,
    /// The initiator receives (it pulls from the peer).
    Receive,
    /// One VM each way.
    Swap,
}
ballast_core::named_enum!(PlanKind { Send => "send", Receive => "receive", Swap => "swap" });

/// What a balancing session ended with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum SessionOutcome {
    /// Not decided yet (a record still being filled).
    Undecided,
    /// Moves were planned and handed to the movers (`send`, `receive`, `swap`).
    Moved(PlanKind),
    /// `balancing.dry_run`: moves planned, none made (`dry-run:send` …).
    DryRun(PlanKind),
    /// The policy planned no move (`stay:GainTooSmall` …).
    Stay(Stay),
    /// The peer was in another session or at its incoming limit (`busy`).
    PeerBusy,
    /// This node already had a session with that peer (`busy:self`).
    SelfBusy,
    /// The peer is draining (`draining`).
    PeerDraining,
    /// The session failed on the way (`failed:<why>`).
    Failed(String),
}

impl SessionOutcome {
    /// The metrics label: the text before any `:` (`send`, `dry-run`, `stay`, `busy`,
    /// `failed`…).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Undecided => "",
            Self::Moved(k) => k.as_str(),
            Self::DryRun(_) => "dry-run",
            Self::Stay(_) => "stay",
            Self::PeerBusy | Self::SelfBusy => "busy",
            Self::PeerDraining => "draining",
            Self::Failed(_) => "failed",
        }
    }

    /// Whether the session planned moves (made or, in a dry run, only planned).
    pub fn planned_moves(&self) -> bool {
        matches!(self, Self::Moved(_) | Self::DryRun(_))
    }
}

impl fmt::Display for SessionOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Undecided => Ok(()),
            Self::Moved(k) => f.write_str(k.as_str()),
            Self::DryRun(k) => write!(f, "dry-run:{k}"),
            Self::Stay(why) => write!(f, "stay:{why}"),
            Self::PeerBusy => f.write_str("busy"),
            Self::SelfBusy => f.write_str("busy:self"),
            Self::PeerDraining => f.write_str("draining"),
            Self::Failed(why) => write!(f, "failed:{why}"),
        }
    }
}

/// Text that is no session outcome.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown session outcome {0:?}")]
pub struct UnknownOutcome(String);

impl FromStr for SessionOutcome {
    type Err = UnknownOutcome;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownOutcome(s.to_owned());
        Ok(match s.split_once(':') {
            None => match s {
                "" => Self::Undecided,
                "busy" => Self::PeerBusy,
                "draining" => Self::PeerDraining,
                other => Self::Moved(other.parse().map_err(|_| unknown())?),
            },
            Some(("dry-run", k)) => Self::DryRun(k.parse().map_err(|_| unknown())?),
            Some(("stay", why)) => Self::Stay(why.parse().map_err(|_| unknown())?),
            Some(("busy", "self")) => Self::SelfBusy,
            Some(("failed", why)) => Self::Failed(why.to_owned()),
            Some(_) => return Err(unknown()),
        })
    }
}

impl From<SessionOutcome> for String {
    fn from(o: SessionOutcome) -> Self {
        o.to_string()
    }
}

impl TryFrom<String> for SessionOutcome {
    type Error = UnknownOutcome;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Why a VM could not be moved by an operator right now (`AdminError::Busy`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum BusyDetail {
    /// The node hands off `balancing.max_outgoing` VMs already: worth retrying shortly.
    OutgoingLimit,
    /// The VMs migrating to or from the node hold `balancing.max_bytes_in_flight` of
    /// memory, with this one's: worth retrying shortly.
    BytesLimit,
    /// Anything else, as the agent said it.
    Other(String),
}

impl BusyDetail {
    /// Whether a retry shortly may succeed (a limit of migrations under way).
    pub fn is_limit(&self) -> bool {
        matches!(self, Self::OutgoingLimit | Self::BytesLimit)
    }
}

const OUTGOING_LIMIT_TEXT: &str = "outgoing migration limit reached";
const BYTES_LIMIT_TEXT: &str = "migration bytes limit reached (balancing.max_bytes_in_flight)";

impl fmt::Display for BusyDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutgoingLimit => f.write_str(OUTGOING_LIMIT_TEXT),
            Self::BytesLimit => f.write_str(BYTES_LIMIT_TEXT),
            Self::Other(s) => f.write_str(s),
        }
    }
}

impl From<String> for BusyDetail {
    fn from(s: String) -> Self {
        if s == OUTGOING_LIMIT_TEXT {
            Self::OutgoingLimit
        } else if s == BYTES_LIMIT_TEXT {
            Self::BytesLimit
        } else {
            Self::Other(s)
        }
    }
}

impl From<BusyDetail> for String {
    fn from(d: BusyDetail) -> Self {
        d.to_string()
    }
}

/// Why a move did not start, or did not resolve in time.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MoveRefused {
    /// `balancing.max_outgoing` handoffs out are under way.
    #[error("{OUTGOING_LIMIT_TEXT}")]
    OutgoingLimit,
    /// `balancing.max_bytes_in_flight` would be passed.
    #[error("{BYTES_LIMIT_TEXT}")]
    BytesLimit,
    /// The VM is not in this node's schedule.
    #[error("VM {0} is not on this node")]
    NotHere(VmId),
    /// The store could not be read.
    #[error("store: {0}")]
    Store(String),
    /// The handoff machine refused to start it.
    #[error(transparent)]
    Start(StartError),
    /// The agent is stopping.
    #[error("agent shutting down")]
    ShuttingDown,
    /// The handoff outlasted every timeout the machine has.
    #[error("handoff did not resolve in time")]
    TimedOut,
}

impl From<StartError> for MoveRefused {
    fn from(e: StartError) -> Self {
        match e {
            StartError::OutgoingLimit(_) => Self::OutgoingLimit,
            StartError::BytesLimit(_) => Self::BytesLimit,
            other => Self::Start(other),
        }
    }
}

impl From<MoveRefused> for BusyDetail {
    fn from(r: MoveRefused) -> Self {
        match r {
            MoveRefused::OutgoingLimit => Self::OutgoingLimit,
            MoveRefused::BytesLimit => Self::BytesLimit,
            other => Self::Other(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_outcomes_keep_their_text() {
        let all = [
            (SessionOutcome::Undecided, ""),
            (SessionOutcome::Moved(PlanKind::Send), "send"),
            (SessionOutcome::Moved(PlanKind::Receive), "receive"),
            (SessionOutcome::Moved(PlanKind::Swap), "swap"),
            (SessionOutcome::DryRun(PlanKind::Swap), "dry-run:swap"),
            (
                SessionOutcome::Stay(Stay::GainTooSmall),
                "stay:GainTooSmall",
            ),
            (SessionOutcome::PeerBusy, "busy"),
            (SessionOutcome::SelfBusy, "busy:self"),
            (SessionOutcome::PeerDraining, "draining"),
            (
                SessionOutcome::Failed("session timed out".into()),
                "failed:session timed out",
            ),
        ];
        for (o, text) in all {
            assert_eq!(o.to_string(), text);
            assert_eq!(text.parse::<SessionOutcome>(), Ok(o.clone()));
            let json = serde_json::to_string(&o).expect("json");
            assert_eq!(json, format!("{text:?}"));
            assert_eq!(
                serde_json::from_str::<SessionOutcome>(&json).expect("back"),
                o
            );
            assert_eq!(o.label(), text.split(':').next().unwrap_or(text));
        }
        assert!("stay:Bored".parse::<SessionOutcome>().is_err());
        assert!("sent".parse::<SessionOutcome>().is_err());
    }

    #[test]
    fn busy_details_keep_their_text() {
        let limit = BusyDetail::from(MoveRefused::OutgoingLimit);
        assert_eq!(limit, BusyDetail::OutgoingLimit);
        assert_eq!(
            BusyDetail::from(limit.to_string()),
            BusyDetail::OutgoingLimit
        );
        let other = BusyDetail::from(MoveRefused::TimedOut);
        assert_eq!(BusyDetail::from(other.to_string()), other);
    }
}
