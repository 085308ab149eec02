//! `sessions`: the recent balancing sessions of every reachable node, newest first: who
//! paired with whom, both loads, what the policy decided and which VMs it planned to move.

use crate::agent::wire::{RuleSkip, SessionOutcome, SessionRecord};
use serde::Serialize;

/// One planned move in `sessions --json` (the sender re-checks it before it starts).
#[derive(Clone, Debug, Serialize)]
pub struct MoveRow {
    /// The VM.
    pub vm: String,
    /// The sender.
    pub from: String,
    /// The receiver.
    pub to: String,
    /// Its load on the sender.
    pub load_from: f64,
    /// Its load on the receiver.
    pub load_to: f64,
    /// The hard placement rule the move repairs (the VM broke it on the sender).
    pub repairs: Option<String>,
}

/// One session in `sessions --json`.
#[derive(Clone, Debug, Serialize)]
pub struct SessionRow {
    /// The session id.
    pub session: u64,
    /// When it started (Unix ms).
    pub at_unix_ms: u64,
    /// The node that started it.
    pub initiator: String,
    /// The node it paired with.
    pub peer: String,
    /// The initiator's load.
    pub load_initiator: f64,
    /// The peer's load (fresh from the peer when it answered, else gossip's).
    pub load_peer: f64,
    /// `send`, `receive`, `swap`, `dry-run:<kind>`, `stay:<reason>`, `busy`, `busy:self`,
    /// `draining` or `failed:<reason>` in JSON.
    pub outcome: SessionOutcome,
    /// The moves it planned.
    pub moves: Vec<MoveRow>,
    /// Candidates of the busier side that a placement rule kept from moving.
    pub skipped_by_rule: Vec<RuleSkip>,
}

/// The whole `sessions --json` object.
#[derive(Clone, Debug, Serialize)]
pub struct SessionsReport {
    /// The sessions, newest first.
    pub sessions: Vec<SessionRow>,
    /// Nodes whose sessions are missing, with the reason.
    pub unreachable: Vec<(String, String)>,
}

fn row(r: SessionRecord) -> SessionRow {
    SessionRow {
        session: r.session,
        at_unix_ms: r.now_unix_ms,
        initiator: r.initiator.to_string(),
        peer: r.peer.to_string(),
        load_initiator: r.load_initiator,
        load_peer: r.load_peer,
        outcome: r.outcome,
        moves: r
            .moves
            .into_iter()
            .map(|m| MoveRow {
                vm: m.vm.to_string(),
                from: m.from.to_string(),
                to: m.to.to_string(),
                load_from: m.load_from,
                load_to: m.load_to,
                repairs: m.repairs,
            })
            .collect(),
        skipped_by_rule: r.skipped_by_rule,
    }
}

/// Selects and orders the rows: newest first, filtered, at most `limit`.
pub fn select(
    records: Vec<SessionRecord>,
    node: Option<&str>,
    moves_only: bool,
    limit: usize,
) -> Vec<SessionRow> {
    let mut rows: Vec<SessionRow> = records
        .into_iter()
        .filter(|r| !moves_only || !r.moves.is_empty())
        .filter(|r| node.is_none_or(|n| r.initiator.as_str() == n || r.peer.as_str() == n))
        .map(row)
        .collect();
    rows.sort_by(|a, b| {
        b.at_unix_ms
            .cmp(&a.at_unix_ms)
            .then(a.initiator.cmp(&b.initiator))
            .then(a.session.cmp(&b.session))
    });
    rows.truncate(limit);
    rows
}

/// The report of `records` gathered from the nodes that answered and the nodes that did
/// not (`unreachable`, with the reason): filtered, newest first, at most `limit`.
pub fn sessions_report(
    records: Vec<SessionRecord>,
    mut unreachable: Vec<(String, String)>,
    node: Option<&str>,
    moves_only: bool,
    limit: usize,
) -> SessionsReport {
    unreachable.sort();
    SessionsReport {
        sessions: select(records, node, moves_only, limit),
        unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::wire::{PlanKind, PlannedVm};
    use crate::policy::Stay;
    use ballast_store::{NodeId, VmId};

    fn rec(session: u64, at: u64, a: &str, b: &str, moved: &[&str]) -> SessionRecord {
        SessionRecord {
            session,
            initiator: NodeId::from(a),
            peer: NodeId::from(b),
            load_initiator: 0.8,
            load_peer: 0.2,
            outcome: if moved.is_empty() {
                SessionOutcome::Stay(Stay::GainTooSmall)
            } else {
                SessionOutcome::Moved(PlanKind::Send)
            },
            moves: moved
                .iter()
                .map(|vm| PlannedVm {
                    vm: VmId::from(*vm),
                    load_from: 0.3,
                    load_to: 0.15,
                    from: NodeId::from(a),
                    to: NodeId::from(b),
                    repairs: None,
                })
                .collect(),
            initiator_candidates: Vec::new(),
            peer_candidates: Vec::new(),
            free_mem_bytes: (0, 0),
            now_unix_ms: at,
            skipped_by_rule: Vec::new(),
        }
    }

    #[test]
    fn newest_first_filtered_and_limited() {
        let records = vec![
            rec(1, 1_000, "n1", "n2", &["a"]),
            rec(2, 3_000, "n2", "n3", &[]),
            rec(3, 2_000, "n3", "n1", &["b", "c"]),
            rec(4, 4_000, "n2", "n3", &["d"]),
        ];
        let all = select(records.clone(), None, false, 10);
        let ids: Vec<u64> = all.iter().map(|r| r.session).collect();
        assert_eq!(ids, [4, 2, 3, 1]);
        let moved: Vec<u64> = select(records.clone(), None, true, 10)
            .iter()
            .map(|r| r.session)
            .collect();
        assert_eq!(moved, [4, 3, 1]);
        let n1: Vec<u64> = select(records.clone(), Some("n1"), false, 10)
            .iter()
            .map(|r| r.session)
            .collect();
        assert_eq!(n1, [3, 1], "started or answered by n1");
        assert_eq!(select(records, None, false, 2).len(), 2);
    }
}
