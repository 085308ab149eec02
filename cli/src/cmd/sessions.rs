//! `ballast sessions`: the recent balancing sessions of every reachable node, newest
//! first: who paired with whom, both loads, what the policy decided and which VMs it
//! planned to move. It answers the operator's question "why did (or didn't) this VM
//! move?". A plan is not yet a move: the sender re-checks each planned VM before its
//! handoff starts, so a VM planned by two sessions at once moves once, and `status` or
//! `vm show` say where it is now.
//!
//! Each agent keeps its last sessions in memory (the ones it started, up to 256); a
//! restarted agent starts with none.

use crate::admin_bundle::AdminArgs;
use crate::cmd::admin::{block_on, Cluster};
use crate::table::{age, new_table};
use ballast_node::agent::wire::{RuleSkip, SessionOutcome, SessionRecord};
use serde::Serialize;
use std::time::Duration;
use tokio::task::JoinSet;

/// Bound on one node's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(8);

/// Arguments of `ballast sessions`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only the sessions this node started or answered.
    #[arg(long)]
    node: Option<String>,
    /// Only the sessions that planned moves (or a swap).
    #[arg(long)]
    moves: bool,
    /// At most this many sessions, newest first.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    limit: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

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

/// The table for people.
pub fn render(r: &SessionsReport, now_unix_ms: u64) -> String {
    let mut t = new_table(&["WHEN", "NODES", "LOADS", "OUTCOME", "PLANNED MOVES"], &[]);
    for s in &r.sessions {
        let mut moves: Vec<String> = s
            .moves
            .iter()
            .map(|m| {
                let repair = m
                    .repairs
                    .as_ref()
                    .map(|r| format!(" repairs {r}"))
                    .unwrap_or_default();
                format!(
                    "{} {}→{} ({:.3}→{:.3}){repair}",
                    m.vm, m.from, m.to, m.load_from, m.load_to
                )
            })
            .collect();
        moves.extend(
            s.skipped_by_rule
                .iter()
                .map(|k| format!("{} kept by rule: {}", k.vm, k.rule)),
        );
        t.add_row(vec![
            age(now_unix_ms.saturating_sub(s.at_unix_ms)),
            format!("{} → {}", s.initiator, s.peer),
            format!("{:.3} / {:.3}", s.load_initiator, s.load_peer),
            s.outcome.to_string(),
            moves.join("\n"),
        ]);
    }
    let mut out = if r.sessions.is_empty() {
        "No sessions recorded (agents keep the sessions they started since their start).\n"
            .to_owned()
    } else {
        format!("{t}\n")
    };
    for (node, why) in &r.unreachable {
        out.push_str(&format!("{node}: sessions missing: {why}\n"));
    }
    out
}

/// Runs `ballast sessions`.
pub fn run(args: Args) -> anyhow::Result<()> {
    block_on(async move {
        let mut cluster = Cluster::connect(&args.admin).await?;
        cluster.probe_known().await;
        if let Some(n) = &args.node {
            cluster.member(n)?;
        }
        let mut set = JoinSet::new();
        let mut unreachable = Vec::new();
        for m in cluster.members.values() {
            if m.status.is_none() {
                let why = m.error.clone().unwrap_or_else(|| "no answer".into());
                unreachable.push((m.node.to_string(), why));
                continue;
            }
            let client = cluster.client(m.addr, CALL_TIMEOUT)?;
            let node = m.node.to_string();
            set.spawn(async move { (node, client.recent_sessions().await) });
        }
        let mut records = Vec::new();
        while let Some(joined) = set.join_next().await {
            match joined? {
                (_, Ok(r)) => records.extend(r),
                (node, Err(e)) => unreachable.push((node, e.to_string())),
            }
        }
        unreachable.sort();
        let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
        let report = SessionsReport {
            sessions: select(records, args.node.as_deref(), args.moves, limit),
            unreachable,
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", render(&report, ballast_node::agent::unix_ms()));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_node::agent::wire::{PlanKind, PlannedVm};
    use ballast_node::policy::Stay;
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

    #[test]
    fn the_table_names_nodes_loads_outcome_and_moves() {
        let report = SessionsReport {
            sessions: select(vec![rec(3, 8_000, "n3", "n1", &["vm-b"])], None, false, 5),
            unreachable: vec![("n4".into(), "timed out".into())],
        };
        let text = render(&report, 10_000);
        for want in [
            "2.0s ago",
            "n3 → n1",
            "0.800 / 0.200",
            "send",
            "vm-b n3→n1 (0.300→0.150)",
            "n4: sessions missing: timed out",
        ] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
        let empty = SessionsReport {
            sessions: Vec::new(),
            unreachable: Vec::new(),
        };
        assert!(render(&empty, 0).starts_with("No sessions recorded"));
    }
}
