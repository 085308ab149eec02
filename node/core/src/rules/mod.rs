//! Placement rules (docs/design.md §Placement rules), as pure functions of plain data.
//!
//! A VM's [`PlacementRules`] travel with its spec: anti-affinity groups (hard: no two
//! members on one host), affinity groups (soft: kept together; balancing never splits
//! one) and required host tags (hard). A host's tags come from its configuration and are
//! gossiped. What a host holds for the rules is its [`Holdings`]: every VM in its
//! schedule (running, leaving or arriving) with its groups, and its tags.
//!
//! - [`syntax`]: what a tag, a requirement and a group name may look like.
//! - [`check`]: whether a VM may be on a host, and which rule it breaks there.
//! - [`pair`]: [`PairRules`], the rules of one balancing session, as the policy asks them.

pub mod check;
pub mod pair;
pub mod syntax;

pub use check::{admit, broken_here, BrokenRule, HeldVm, Holdings};
pub use pair::{Blocked, PairRules, PairSide};
pub use syntax::{check_group, check_requirement, check_tag, RuleSyntaxError};

use crate::types::NodeId;
use serde::{Deserialize, Serialize};

/// Most groups or requirements one VM may carry (each list).
pub const RULES_LIST_LEN_MAX: usize = 16;

/// A VM's placement rules, stored with its spec so they move with it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PlacementRules {
    /// Anti-affinity groups: no two running VMs of one group on one host (hard).
    pub anti_affinity: Vec<String>,
    /// Affinity groups: the group's VMs are kept on one host (soft).
    pub affinity: Vec<String>,
    /// Host tags the VM needs (`gpu`, `zone=a`): only hosts with every one (hard).
    pub requires: Vec<String>,
    /// Set when an operator forced the VM onto this node although a hard rule forbade it
    /// (`vm move --force`, `vm create --force`): the reason `status` gives for the break.
    pub forced_on: Option<NodeId>,
}

impl PlacementRules {
    /// No rule at all.
    pub fn is_empty(&self) -> bool {
        self.anti_affinity.is_empty() && self.affinity.is_empty() && self.requires.is_empty()
    }

    /// Checks every name's syntax and the list lengths.
    pub fn validate(&self) -> Result<(), RuleSyntaxError> {
        for (list, what) in [
            (&self.anti_affinity, "anti-affinity groups"),
            (&self.affinity, "affinity groups"),
            (&self.requires, "required tags"),
        ] {
            if list.len() > RULES_LIST_LEN_MAX {
                return Err(RuleSyntaxError::TooMany {
                    what,
                    max: RULES_LIST_LEN_MAX,
                });
            }
        }
        self.anti_affinity.iter().try_for_each(|g| check_group(g))?;
        self.affinity.iter().try_for_each(|g| check_group(g))?;
        self.requires.iter().try_for_each(|r| check_requirement(r))
    }
}
