//! Whether a VM may be on a host: the hard rules (required tags, anti-affinity) checked
//! against what the host holds.

use super::PlacementRules;
use crate::types::VmId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One VM a host holds (running, leaving or arriving), as the rules see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldVm {
    /// The VM.
    pub vm: VmId,
    /// Its anti-affinity groups.
    pub anti_affinity: Vec<String>,
    /// Its affinity groups.
    pub affinity: Vec<String>,
}

/// What one host holds, for the rules: its tags and the VMs in its schedule that belong
/// to a group (the others do not matter to any rule).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holdings {
    /// The host's tags.
    pub tags: Vec<String>,
    /// Its VMs that belong to a group.
    pub vms: Vec<HeldVm>,
}

impl Holdings {
    /// The holdings of a host with `tags` whose schedule holds `entries`.
    pub fn of<'a>(
        tags: &[String],
        entries: impl IntoIterator<Item = (&'a VmId, &'a PlacementRules)>,
    ) -> Self {
        let vms = entries
            .into_iter()
            .filter(|(_, r)| !r.anti_affinity.is_empty() || !r.affinity.is_empty())
            .map(|(vm, r)| HeldVm {
                vm: vm.clone(),
                anti_affinity: r.anti_affinity.clone(),
                affinity: r.affinity.clone(),
            })
            .collect();
        Self {
            tags: tags.to_vec(),
            vms,
        }
    }

    /// Whether the host has the tag a requirement names.
    pub fn has_tag(&self, requirement: &str) -> bool {
        self.tags.iter().any(|t| t == requirement)
    }

    /// A VM of anti-affinity group `group` here other than those in `except`.
    pub fn anti_affinity_member(&self, group: &str, except: &[&VmId]) -> Option<&VmId> {
        self.vms
            .iter()
            .find(|h| h.anti_affinity.iter().any(|g| g == group) && !except.contains(&&h.vm))
            .map(|h| &h.vm)
    }

    /// A VM of affinity group `group` here other than those in `except`.
    pub fn affinity_member(&self, group: &str, except: &[&VmId]) -> Option<&VmId> {
        self.vms
            .iter()
            .find(|h| h.affinity.iter().any(|g| g == group) && !except.contains(&&h.vm))
            .map(|h| &h.vm)
    }
}

/// A hard rule a VM breaks (or would break) on a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokenRule {
    /// The host lacks a tag the VM requires.
    Requires {
        /// The required tag.
        tag: String,
    },
    /// Another member of one of the VM's anti-affinity groups is on the host.
    AntiAffinity {
        /// The group.
        group: String,
        /// The other member.
        with: VmId,
    },
}

impl fmt::Display for BrokenRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Requires { tag } => write!(f, "requires tag {tag}"),
            Self::AntiAffinity { group, with } => {
                write!(f, "anti-affinity group {group} (with {with})")
            }
        }
    }
}

/// The first hard rule `vm` (with `rules`) breaks on a host holding `host`, counting
/// every VM there but itself and those in `leaving`.
pub fn broken_here(
    vm: &VmId,
    rules: &PlacementRules,
    host: &Holdings,
    leaving: &[&VmId],
) -> Option<BrokenRule> {
    if let Some(tag) = rules.requires.iter().find(|r| !host.has_tag(r)) {
        return Some(BrokenRule::Requires { tag: tag.clone() });
    }
    let mut except = Vec::with_capacity(leaving.len() + 1);
    except.push(vm);
    except.extend_from_slice(leaving);
    rules.anti_affinity.iter().find_map(|g| {
        host.anti_affinity_member(g, &except)
            .map(|with| BrokenRule::AntiAffinity {
                group: g.clone(),
                with: with.clone(),
            })
    })
}

/// Whether a host holding `host` may take `vm`: `Err` names the hard rule it would break.
pub fn admit(vm: &VmId, rules: &PlacementRules, host: &Holdings) -> Result<(), BrokenRule> {
    broken_here(vm, rules, host, &[]).map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(anti: &[&str], requires: &[&str]) -> PlacementRules {
        PlacementRules {
            anti_affinity: anti.iter().map(|s| s.to_string()).collect(),
            requires: requires.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_host_refuses_a_second_group_member_and_a_missing_tag() {
        let db1 = rules(&["db"], &[]);
        let host = Holdings::of(&["gpu".to_owned()], [(&VmId::from("db-1"), &db1)]);
        let db2 = VmId::from("db-2");
        assert_eq!(
            admit(&db2, &rules(&["db"], &[]), &host),
            Err(BrokenRule::AntiAffinity {
                group: "db".into(),
                with: "db-1".into()
            })
        );
        // The member itself does not count, nor one that leaves.
        assert_eq!(admit(&"db-1".into(), &db1, &host), Ok(()));
        assert_eq!(
            broken_here(&db2, &db1, &host, &[&"db-1".into()]),
            None,
            "db-1 leaves"
        );
        assert_eq!(admit(&db2, &rules(&["web"], &["gpu"]), &host), Ok(()));
        let err = admit(&db2, &rules(&[], &["zone=a"]), &host).expect_err("no zone tag");
        assert_eq!(err.to_string(), "requires tag zone=a");
    }
}
