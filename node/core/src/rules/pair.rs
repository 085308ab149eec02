//! [`PairRules`]: the placement rules of one balancing session, as the policy asks them
//! (`policy::MoveRules`): may this candidate go to the other host, given the moves
//! planned with it, and does it break a hard rule where it is.

use super::check::{broken_here, BrokenRule, Holdings};
use super::PlacementRules;
use crate::policy::{MoveRules, PlannedMove, Side};
use crate::types::VmId;
use std::fmt;

/// Why a candidate may not go to the other host of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// It would break a hard rule there.
    Hard(BrokenRule),
    /// It would leave members of its affinity group behind on a host the other does not
    /// share (balancing never splits an affinity group).
    SplitsAffinity {
        /// The group.
        group: String,
    },
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hard(rule) => rule.fmt(f),
            Self::SplitsAffinity { group } => write!(f, "affinity group {group}"),
        }
    }
}

/// One side of a session: what its host holds and its candidates' rules (in the order
/// of its candidates).
#[derive(Clone, Copy, Debug)]
pub struct PairSide<'a> {
    /// What the host holds.
    pub holdings: &'a Holdings,
    /// Each candidate's VM and rules, in candidate order.
    pub candidates: &'a [(VmId, PlacementRules)],
}

/// The rules of a session between the local host and a peer.
#[derive(Clone, Copy, Debug)]
pub struct PairRules<'a> {
    /// The local side.
    pub local: PairSide<'a>,
    /// The peer's side.
    pub peer: PairSide<'a>,
}

impl<'a> PairRules<'a> {
    fn side(&self, side: Side) -> &PairSide<'a> {
        match side {
            Side::Local => &self.local,
            Side::Peer => &self.peer,
        }
    }

    /// Why the candidate `index` of `from` may not go to the other host, moving along
    /// with `moving_with` (earlier moves from the same side, same session) and while the
    /// other side's candidate `back` (a swap's other half) leaves that host; `None` when
    /// it may.
    pub fn blocked(
        &self,
        from: Side,
        index: usize,
        moving_with: &[PlannedMove],
        back: Option<usize>,
    ) -> Option<Blocked> {
        let (src, dst) = (self.side(from), self.side(from.other()));
        let (vm, rules) = src.candidates.get(index)?;
        if rules.is_empty() {
            return None;
        }
        let along: Vec<&(VmId, PlacementRules)> = moving_with
            .iter()
            .filter_map(|m| src.candidates.get(m.index))
            .collect();
        let leaving: Vec<&VmId> = back
            .and_then(|j| dst.candidates.get(j))
            .map(|(v, _)| v)
            .into_iter()
            .collect();
        if let Some(rule) = broken_here(vm, rules, dst.holdings, &leaving) {
            return Some(Blocked::Hard(rule));
        }
        for g in &rules.anti_affinity {
            if let Some((with, _)) = along.iter().find(|(_, r)| r.anti_affinity.contains(g)) {
                return Some(Blocked::Hard(BrokenRule::AntiAffinity {
                    group: g.clone(),
                    with: with.clone(),
                }));
            }
        }
        let mut staying_except: Vec<&VmId> = along.iter().map(|(v, _)| v).collect();
        staying_except.push(vm);
        for g in &rules.affinity {
            let left_behind = src.holdings.affinity_member(g, &staying_except).is_some();
            let joins = dst.holdings.affinity_member(g, &leaving).is_some();
            if left_behind && !joins {
                return Some(Blocked::SplitsAffinity { group: g.clone() });
            }
        }
        None
    }
}

impl PairRules<'_> {
    /// The hard rule the candidate `index` of `side` breaks where it is, if any.
    pub fn broken_where_it_is(&self, side: Side, index: usize) -> Option<BrokenRule> {
        let s = self.side(side);
        let (vm, r) = s.candidates.get(index)?;
        if r.is_empty() {
            return None;
        }
        broken_here(vm, r, s.holdings, &[])
    }
}

impl MoveRules for PairRules<'_> {
    fn allows(
        &self,
        from: Side,
        index: usize,
        moving_with: &[PlannedMove],
        back: Option<usize>,
    ) -> bool {
        self.blocked(from, index, moving_with, back).is_none()
    }

    fn breaks_here(&self, side: Side, index: usize) -> bool {
        self.broken_where_it_is(side, index).is_some()
    }
}
