//! `vm list`: one row per schedule entry of the nodes that answered, by VM.

use super::MissingNode;
use ballast_store::{LoadFactors, NodeId, ScheduleEntry, VmSpec, VmState};
use serde::Serialize;

/// One VM as `vm list --json` and `vm show --json` print it.
#[derive(Clone, Debug, Serialize)]
pub struct VmRow {
    /// The VM.
    pub vm: String,
    /// The node whose schedule holds the entry.
    pub node: String,
    /// `running`, `migrating-out`, `incoming`.
    pub state: String,
    /// The other side of a handoff.
    pub peer: Option<String>,
    /// The entry's epoch.
    pub epoch: u64,
    /// Pinned VMs are never moved by balancing.
    pub pinned: bool,
    /// The spec.
    pub spec: VmSpec,
    /// Its last load factors.
    pub factors: LoadFactors,
    /// When its last handoff committed (Unix ms); `None` if it never moved.
    pub last_moved_unix_ms: Option<u64>,
}

impl VmRow {
    /// The row of `entry` held by `node`.
    pub fn new(node: &NodeId, e: &ScheduleEntry) -> Self {
        let (state, peer) = match &e.state {
            VmState::Running => ("running", None),
            VmState::MigratingOut { to, .. } => ("migrating-out", Some(to.to_string())),
            VmState::Incoming { from, .. } => ("incoming", Some(from.to_string())),
        };
        Self {
            vm: e.vm.to_string(),
            node: node.to_string(),
            state: state.to_owned(),
            peer,
            epoch: e.epoch,
            pinned: e.pinned,
            spec: e.spec.clone(),
            factors: e.factors,
            last_moved_unix_ms: e.last_moved_unix_ms,
        }
    }
}

/// What `vm list --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct VmList {
    /// True when some nodes did not answer: `vms` lacks their entries.
    pub partial: bool,
    /// The nodes that did not answer.
    pub missing: Vec<MissingNode>,
    /// One row per schedule entry, by VM.
    pub vms: Vec<VmRow>,
}

/// The list of the `answered` schedules (by node) and the `missing` nodes, only those
/// of `node` when given.
pub fn vm_list(
    answered: &[(NodeId, Vec<ScheduleEntry>)],
    missing: Vec<MissingNode>,
    node: Option<&str>,
) -> VmList {
    let mut rows = Vec::new();
    for (n, entries) in answered {
        if node.is_some_and(|want| want != n.as_str()) {
            continue;
        }
        rows.extend(entries.iter().map(|e| VmRow::new(n, e)));
    }
    rows.sort_by(|a, b| a.vm.cmp(&b.vm).then(a.node.cmp(&b.node)));
    let missing: Vec<MissingNode> = missing
        .into_iter()
        .filter(|m| node.is_none_or(|want| want == m.node))
        .collect();
    VmList {
        partial: !missing.is_empty(),
        missing,
        vms: rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_store::VmId;

    fn entry(vm: &str) -> ScheduleEntry {
        ScheduleEntry {
            vm: VmId::from(vm),
            spec: VmSpec::default(),
            factors: LoadFactors::default(),
            state: VmState::Running,
            epoch: 1,
            pinned: false,
            last_moved_unix_ms: None,
        }
    }

    #[test]
    fn rows_by_vm_filtered_by_node() {
        let answered = vec![
            (NodeId::from("n1"), vec![entry("b"), entry("c")]),
            (NodeId::from("n2"), vec![entry("a")]),
        ];
        let missing = vec![MissingNode {
            node: "n3".into(),
            reason: "timed out".into(),
            vms: Some(2),
        }];
        let all = vm_list(&answered, missing.clone(), None);
        let names: Vec<&str> = all.vms.iter().map(|r| r.vm.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(all.partial);
        let n1 = vm_list(&answered, missing, Some("n1"));
        assert_eq!(n1.vms.len(), 2);
        assert!(!n1.partial, "n3's absence does not matter to n1's list");
    }
}
