//! `status`: one row per node (state, load, VMs, capacity, last seen, migrations in
//! flight) and the cluster's max/mean load.
//!
//! "Last seen" is gossip's view: the freshest age, among the nodes that answered, of
//! the last gossip heard from a node (its heartbeat or a key advanced). A node that
//! answered but that no peer reports is `now`; one that neither answered nor appears in
//! any peer's view is `unreachable`.

use super::{age, missing_of, Member, MissingNode};
use ballast_gossip::NodeRunState;
use ballast_store::NodeId;
use serde::Serialize;
use std::collections::BTreeMap;

/// One node in `status --json`.
#[derive(Clone, Debug, Serialize)]
pub struct NodeRow {
    /// The node id.
    pub node: String,
    /// Its RPC address.
    pub addr: String,
    /// `active`, `draining` or `unreachable`.
    pub state: String,
    /// Its load (sum of its VMs' loads; ~1 is full).
    pub load: f64,
    /// VMs in its schedule.
    pub vms: u32,
    /// CPU capacity in reference cores.
    pub cpu_capacity: f64,
    /// Memory capacity in bytes.
    pub mem_capacity_bytes: f64,
    /// Free memory in bytes.
    pub mem_free_bytes: f64,
    /// Handoffs in flight on this node.
    pub migrations_in_flight: usize,
    /// Milliseconds since gossip from it was last heard: the smallest age among the
    /// peer views of the nodes that answered; `None` when no answering node lists it.
    pub last_heard_ms_ago: Option<u64>,
    /// `last_heard_ms_ago` for people (`0.4s ago`, `12s ago`); else `now` when it
    /// answered this call, else `unreachable`.
    pub last_seen: String,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// The whole `status --json` object.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    /// One row per node, by id.
    pub nodes: Vec<NodeRow>,
    /// Nodes that answered and are active.
    pub active_nodes: usize,
    /// Sum of the VM counts of the nodes that answered.
    pub total_vms: u64,
    /// Largest load among active nodes.
    pub max_load: f64,
    /// Mean load of active nodes.
    pub mean_load: f64,
    /// `max_load / mean_load` (1 is perfect balance; 0 when there is no load).
    pub max_over_mean: f64,
    /// Handoffs in flight in the cluster.
    pub migrations_in_flight: usize,
    /// True when some nodes did not answer (their rows are `unreachable`, and their
    /// VMs are not in `total_vms`).
    pub partial: bool,
    /// The nodes that did not answer, and how many VMs each held when last heard of.
    pub missing: Vec<MissingNode>,
    /// Placement rules: node tags, VMs that break a rule and why, drain blocks.
    pub rules: super::rules::RulesReport,
    /// Gossiped state the nodes refused because it did not verify against its node's
    /// own signature (forged or falsely relayed): the total, and the recent ones.
    pub forged_gossip: ForgedReport,
    /// Revoked node names, with the nodes that answered and refuse each.
    pub revoked: Vec<RevokedRow>,
    /// Nodes whose certificate expires within 30 days (or has), soonest first.
    pub certs_expiring: Vec<CertExpiry>,
    /// Peers the answering nodes leave alone for sharing no protocol version with them
    /// (an agent of another release), by node.
    pub incompatible: Vec<ballast_gossip::IncompatiblePeer>,
}

/// How far ahead `status` warns of a certificate's expiry.
pub const CERT_WARN_DAYS: i64 = 30;

/// A node certificate that expires soon.
#[derive(Clone, Debug, Serialize)]
pub struct CertExpiry {
    /// The node.
    pub node: String,
    /// When its certificate expires (Unix seconds).
    pub expires_unix: i64,
    /// The same as a date (UTC).
    pub date: String,
    /// Whole days left (negative once expired).
    pub days_left: i64,
}

/// The answering members whose certificate expires within [`CERT_WARN_DAYS`] of `now`.
fn certs_expiring<'a>(
    members: impl IntoIterator<Item = &'a Member>,
    now_unix: i64,
) -> Vec<CertExpiry> {
    let mut out: Vec<CertExpiry> = members
        .into_iter()
        .filter_map(|m| {
            let s = m.status.as_ref()?;
            let left = s.cert_expires_unix.saturating_sub(now_unix);
            (left < CERT_WARN_DAYS * 86_400).then(|| CertExpiry {
                node: m.node.to_string(),
                expires_unix: s.cert_expires_unix,
                date: ballast_gossip::utc_date(s.cert_expires_unix),
                days_left: left.div_euclid(86_400),
            })
        })
        .collect();
    out.sort_by_key(|c| c.expires_unix);
    out
}

/// A revoked node name as the answering nodes report it.
#[derive(Clone, Debug, Serialize)]
pub struct RevokedRow {
    /// The revoked name.
    pub node: String,
    /// When it was revoked (Unix ms).
    pub unix_ms: u64,
    /// The answering nodes that refuse it.
    pub refused_by: Vec<String>,
}

/// The revoked names the members that answered refuse.
fn revoked_of<'a>(members: impl IntoIterator<Item = &'a Member>) -> Vec<RevokedRow> {
    let mut by_node: BTreeMap<String, RevokedRow> = BTreeMap::new();
    for m in members {
        let Some(s) = &m.status else { continue };
        for r in &s.revoked {
            by_node
                .entry(r.node.clone())
                .or_insert_with(|| RevokedRow {
                    node: r.node.clone(),
                    unix_ms: r.unix_ms,
                    refused_by: Vec::new(),
                })
                .refused_by
                .push(m.node.to_string());
        }
    }
    by_node.into_values().collect()
}

/// Forged gossip as the answering nodes report it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ForgedReport {
    /// Refusals since each answering agent started, summed.
    pub total: u64,
    /// The recent ones, newest first.
    pub recent: Vec<ForgedRow>,
}

/// One forged state a node refused.
#[derive(Clone, Debug, Serialize)]
pub struct ForgedRow {
    /// The node that refused it.
    pub seen_by: String,
    /// The node the state claimed to be.
    pub node: String,
    /// What did not verify.
    pub reason: String,
    /// When (Unix ms).
    pub unix_ms: u64,
}

/// The forged gossip the members that answered refused.
fn forged_of<'a>(members: impl IntoIterator<Item = &'a Member>) -> ForgedReport {
    let mut report = ForgedReport::default();
    for m in members {
        let Some(s) = &m.status else { continue };
        report.total += s.forged.total;
        report
            .recent
            .extend(s.forged.recent.iter().map(|f| ForgedRow {
                seen_by: m.node.to_string(),
                node: f.node.clone(),
                reason: f.reason.clone(),
                unix_ms: f.unix_ms,
            }));
    }
    report.recent.sort_by_key(|r| std::cmp::Reverse(r.unix_ms));
    report
}

/// The freshest age of the last gossip heard from each node, over the peer views of
/// the members that answered.
fn heard_ages<'a>(members: impl IntoIterator<Item = &'a Member>) -> BTreeMap<NodeId, u64> {
    let mut ages: BTreeMap<NodeId, u64> = BTreeMap::new();
    for s in members.into_iter().filter_map(|m| m.status.as_ref()) {
        for p in &s.peers {
            if let Some(ms) = p.last_heard_ms_ago {
                ages.entry(p.node.clone())
                    .and_modify(|a| *a = (*a).min(ms))
                    .or_insert(ms);
            }
        }
    }
    ages
}

/// What the LAST SEEN column says.
fn last_seen(heard_ms_ago: Option<u64>, answered: bool) -> String {
    match (heard_ms_ago, answered) {
        (Some(ms), _) => age(ms),
        (None, true) => "now".to_owned(),
        (None, false) => "unreachable".to_owned(),
    }
}

/// The row of one member, given the age of the last gossip heard from it.
fn row(m: &Member, heard_ms_ago: Option<u64>) -> NodeRow {
    let seen = last_seen(heard_ms_ago, m.status.is_some());
    match &m.status {
        Some(s) => NodeRow {
            node: m.node.to_string(),
            addr: m.addr.to_string(),
            state: match (s.draining, s.summary.state) {
                (true, _) | (_, NodeRunState::Draining) => "draining",
                _ => "active",
            }
            .to_owned(),
            load: s.summary.load,
            vms: s.summary.vm_count,
            cpu_capacity: s.summary.cpu_capacity,
            mem_capacity_bytes: s.summary.mem_capacity,
            mem_free_bytes: s.summary.mem_free,
            migrations_in_flight: s.handoffs.len(),
            last_heard_ms_ago: heard_ms_ago,
            last_seen: seen,
            error: None,
        },
        None => NodeRow {
            node: m.node.to_string(),
            addr: m.addr.to_string(),
            state: "unreachable".to_owned(),
            load: 0.0,
            vms: 0,
            cpu_capacity: 0.0,
            mem_capacity_bytes: 0.0,
            mem_free_bytes: 0.0,
            migrations_in_flight: 0,
            last_heard_ms_ago: heard_ms_ago,
            last_seen: seen,
            error: m.error.clone(),
        },
    }
}

/// The report of these members.
pub fn report_of(members: &BTreeMap<NodeId, Member>) -> StatusReport {
    let missing = missing_of(members);
    let ages = heard_ages(members.values());
    let nodes: Vec<NodeRow> = members
        .values()
        .map(|m| row(m, ages.get(&m.node).copied()))
        .collect();
    let active: Vec<&NodeRow> = nodes.iter().filter(|n| n.state == "active").collect();
    let max_load = active.iter().map(|n| n.load).fold(0.0, f64::max);
    let mean_load = if active.is_empty() {
        0.0
    } else {
        active.iter().map(|n| n.load).sum::<f64>() / active.len() as f64
    };
    StatusReport {
        active_nodes: active.len(),
        total_vms: nodes.iter().map(|n| u64::from(n.vms)).sum(),
        max_load,
        mean_load,
        max_over_mean: if mean_load > 0.0 {
            max_load / mean_load
        } else {
            0.0
        },
        migrations_in_flight: nodes.iter().map(|n| n.migrations_in_flight).sum(),
        nodes,
        partial: !missing.is_empty(),
        missing,
        rules: super::rules::report(members.values()),
        forged_gossip: forged_of(members.values()),
        revoked: revoked_of(members.values()),
        incompatible: {
            let mut all: BTreeMap<String, ballast_gossip::IncompatiblePeer> = BTreeMap::new();
            for s in members.values().filter_map(|m| m.status.as_ref()) {
                for p in &s.incompatible {
                    all.insert(p.node.clone(), p.clone());
                }
            }
            all.into_values().collect()
        },
        certs_expiring: certs_expiring(
            members.values(),
            i64::try_from(crate::agent::unix_ms() / 1_000).unwrap_or(i64::MAX),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::wire::{Counters, NodeStatus, PeerStatus};
    use ballast_gossip::{LoadSummary, PROTOCOL_VERSION};

    fn summary(load: f64) -> LoadSummary {
        LoadSummary {
            load,
            cpu_capacity: 8.0,
            io_capacity: 1e9,
            mem_capacity: 16.0 * 1024.0 * 1024.0 * 1024.0,
            mem_free: 8.0 * 1024.0 * 1024.0 * 1024.0,
            vm_count: 2,
            state: NodeRunState::Active,
            rpc_addr: "127.0.0.1:7000".parse().expect("addr"),
            protocol_version: PROTOCOL_VERSION,
            protocol_min: ballast_gossip::PROTOCOL_MIN,
            tags: Vec::new(),
        }
    }

    /// A member that answered, seeing `peers` as `(id, ms ago)`.
    fn answered(id: &str, peers: &[(&str, Option<u64>)]) -> Member {
        Member {
            node: NodeId::from(id),
            addr: "127.0.0.1:7000".parse().expect("addr"),
            status: Some(NodeStatus {
                node: NodeId::from(id),
                summary: summary(0.5),
                draining: false,
                peers: peers
                    .iter()
                    .map(|(p, ms)| PeerStatus {
                        node: NodeId::from(*p),
                        summary: summary(0.5),
                        last_heard_ms_ago: *ms,
                    })
                    .collect(),
                handoffs: Vec::new(),
                counters: Counters::default(),
                unclaimed_vms: Vec::new(),
                rules: Default::default(),
                forged: Default::default(),
                revoked: Vec::new(),
                cert_expires_unix: i64::MAX,
                incompatible: Vec::new(),
            }),
            error: None,
        }
    }

    fn silent(id: &str) -> Member {
        Member {
            node: NodeId::from(id),
            addr: "127.0.0.1:7001".parse().expect("addr"),
            status: None,
            error: Some("connection refused".into()),
        }
    }

    fn members(ms: Vec<Member>) -> BTreeMap<NodeId, Member> {
        ms.into_iter().map(|m| (m.node.clone(), m)).collect()
    }

    fn node<'a>(r: &'a StatusReport, id: &str) -> &'a NodeRow {
        r.nodes.iter().find(|n| n.node == id).expect("row")
    }

    #[test]
    fn last_seen_is_the_freshest_gossip_age_among_answering_peers() {
        let r = report_of(&members(vec![
            answered("a", &[("b", Some(900)), ("c", Some(12_400)), ("d", None)]),
            answered("b", &[("a", Some(400)), ("c", Some(15_000))]),
            silent("c"),
            answered("d", &[]),
            silent("e"),
        ]));
        assert_eq!(node(&r, "a").last_heard_ms_ago, Some(400));
        assert_eq!(node(&r, "a").last_seen, "0.4s ago");
        assert_eq!(node(&r, "b").last_seen, "0.9s ago");
        // Stopped, still in the peers' views: unreachable, but heard 12 s ago.
        let c = node(&r, "c");
        assert_eq!(
            (c.state.as_str(), c.last_seen.as_str()),
            ("unreachable", "12s ago")
        );
        assert_eq!(c.last_heard_ms_ago, Some(12_400));
        // Answered, but no peer reports an age: now.
        assert_eq!(node(&r, "d").last_heard_ms_ago, None);
        assert_eq!(node(&r, "d").last_seen, "now");
        // Neither answered nor in any view.
        assert_eq!(node(&r, "e").last_seen, "unreachable");
        assert_eq!(r.active_nodes, 3);
    }

    #[test]
    fn json_shows_the_age() {
        let r = report_of(&members(vec![
            answered("a", &[("b", Some(12_345))]),
            answered("b", &[("a", Some(430))]),
        ]));
        let j = serde_json::to_value(&r).expect("json");
        assert_eq!(j["nodes"][0]["last_heard_ms_ago"], 430, "{j}");
        assert_eq!(j["nodes"][0]["last_seen"], "0.4s ago", "{j}");
        assert_eq!(j["nodes"][1]["last_heard_ms_ago"], 12_345, "{j}");
        assert_eq!(j["nodes"][1]["last_seen"], "12s ago", "{j}");
    }
}
