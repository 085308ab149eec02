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
use ballast_node::units::Millis;
use ballast_store::VmId;
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
    /// Only the sessions of the last DURATION (`90m`, `12h`, `2d`), from each node's
    /// kept history (it survives restarts; `balancing.history_max`, `history_age`).
    #[arg(long, value_name = "DURATION", value_parser = parse_since)]
    since: Option<Millis>,
    /// Only the sessions that planned, weighed or kept this VM (from the kept history).
    #[arg(long, value_name = "VM")]
    vm: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

fn parse_since(s: &str) -> Result<Millis, String> {
    s.parse::<Millis>()
        .map_err(|_| format!("expected a duration such as 90m, 12h or 2d, got {s:?}"))
}

use ballast_node::report::sessions::{sessions_report, SessionsReport};

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
            let filter = (args.since.is_some() || args.vm.is_some()).then(|| {
                let since = args.since.map_or(0, |d| {
                    ballast_node::agent::unix_ms().saturating_sub(d.get())
                });
                (since, args.vm.as_deref().map(VmId::from))
            });
            set.spawn(async move {
                let r = match filter {
                    Some((since, vm)) => client.session_history(since, vm).await,
                    None => client.recent_sessions().await,
                };
                (node, r)
            });
        }
        let mut records = Vec::new();
        while let Some(joined) = set.join_next().await {
            match joined? {
                (_, Ok(r)) => records.extend(r),
                (node, Err(e)) => unreachable.push((node, e.to_string())),
            }
        }
        let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
        let report = sessions_report(
            records,
            unreachable,
            args.node.as_deref(),
            args.moves,
            limit,
        );
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
    use ballast_node::agent::wire::{PlanKind, RuleSkip, SessionOutcome};
    use ballast_node::report::sessions::{MoveRow, SessionRow};

    #[test]
    fn the_table_names_nodes_loads_outcome_and_moves() {
        let report = SessionsReport {
            sessions: vec![SessionRow {
                session: 3,
                at_unix_ms: 8_000,
                initiator: "n3".into(),
                peer: "n1".into(),
                load_initiator: 0.8,
                load_peer: 0.2,
                outcome: SessionOutcome::Moved(PlanKind::Send),
                moves: vec![MoveRow {
                    vm: "vm-b".into(),
                    from: "n3".into(),
                    to: "n1".into(),
                    load_from: 0.3,
                    load_to: 0.15,
                    repairs: Some("anti-affinity group db (with vm-d)".into()),
                }],
                skipped_by_rule: vec![RuleSkip {
                    vm: "vm-c".into(),
                    rule: "requires tag gpu".into(),
                }],
            }],
            unreachable: vec![("n4".into(), "timed out".into())],
        };
        let text = render(&report, 10_000);
        for want in [
            "2.0s ago",
            "n3 → n1",
            "0.800 / 0.200",
            "send",
            "vm-b n3→n1 (0.300→0.150) repairs anti-affinity group db (with vm-d)",
            "vm-c kept by rule: requires tag gpu",
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
