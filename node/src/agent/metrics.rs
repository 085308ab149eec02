//! The agent's Prometheus metrics (prometheus-client) and the counters `status` shows.

use super::wire::Counters;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(String, String)>;

/// Every metric of one agent. Cheap to clone handles; updated from any task.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) rounds: Counter,
    sessions: Family<Labels, Counter>,
    handoffs: Family<Labels, Counter>,
    pub(crate) handoff_seconds: Histogram,
    pub(crate) load: Gauge<f64, AtomicU64>,
    pub(crate) vms: Gauge,
    pub(crate) peers: Gauge,
    pub(crate) unclaimed_vms: Gauge,
    pub(crate) rules_broken: Gauge,
    pub(crate) handoffs_in_flight: Gauge,
    pub(crate) sessions_opened: Counter,
    gossip_refused: Family<Labels, Counter>,
    pub(crate) cert_expiry: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("ballast");
        let m = Self {
            rounds: Counter::default(),
            sessions: Family::default(),
            handoffs: Family::default(),
            handoff_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            load: Gauge::default(),
            vms: Gauge::default(),
            peers: Gauge::default(),
            unclaimed_vms: Gauge::default(),
            rules_broken: Gauge::default(),
            handoffs_in_flight: Gauge::default(),
            sessions_opened: Counter::default(),
            gossip_refused: Family::default(),
            cert_expiry: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When this node's certificate expires (Unix seconds); renew with `ballast node renew`",
            m.cert_expiry.clone(),
        );
        registry.register(
            "gossip_refused",
            "Gossip input this node refused, by reason (forged_state: a peer's state that does not verify against its own node's signature)",
            m.gossip_refused.clone(),
        );
        registry.register("rounds", "Balancing rounds run", m.rounds.clone());
        registry.register(
            "placement_rules_broken",
            "VMs of this node that break a hard placement rule here (forced, or waiting for a legal host)",
            m.rules_broken.clone(),
        );
        registry.register(
            "sessions",
            "Balancing sessions by outcome (initiator side)",
            m.sessions.clone(),
        );
        registry.register(
            "handoffs",
            "Handoffs resolved, by role and outcome",
            m.handoffs.clone(),
        );
        registry.register(
            "handoff_duration_seconds",
            "Source-side handoff duration, start to commit point",
            m.handoff_seconds.clone(),
        );
        registry.register("load", "This node's load L", m.load.clone());
        registry.register("vms", "VMs in this node's schedule", m.vms.clone());
        registry.register(
            "peers",
            "Live peers in the membership view",
            m.peers.clone(),
        );
        registry.register(
            "unclaimed_vms",
            "VMs the hypervisor runs that no schedule entry claims",
            m.unclaimed_vms.clone(),
        );
        registry.register(
            "handoffs_in_flight",
            "Unresolved handoffs on this node",
            m.handoffs_in_flight.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts one session with its outcome (`send`, `receive`, `stay`, `busy`...).
    pub(crate) fn session(&self, outcome: &str) {
        self.sessions
            .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
            .inc();
    }

    /// Counts one resolved handoff.
    pub(crate) fn handoff(&self, role: &str, outcome: &str) {
        self.handoff_counter(role, outcome).inc();
    }

    fn handoff_count(&self, role: &str, outcome: &str) -> u64 {
        self.handoff_counter(role, outcome).get()
    }

    /// The counter of handoffs with this role and outcome.
    fn handoff_counter(&self, role: &str, outcome: &str) -> Counter {
        self.handoffs
            .get_or_create(&vec![
                ("role".to_owned(), role.to_owned()),
                ("outcome".to_owned(), outcome.to_owned()),
            ])
            .clone()
    }

    /// The counters `status` reports.
    pub(crate) fn counters(&self) -> Counters {
        let committed_out = self.handoff_count("source", "committed");
        let committed_in = self.handoff_count("destination", "committed");
        Counters {
            rounds: self.rounds.get(),
            sessions_opened: self.sessions_opened.get(),
            handoffs_committed: committed_out + committed_in,
            handoffs_aborted: self.handoff_count("source", "aborted")
                + self.handoff_count("destination", "aborted"),
            committed_out,
            committed_in,
        }
    }

    /// The text exposition format.
    /// Brings the gossip refusal counters up to the endpoint's.
    pub(crate) fn sync_gossip(&self, stats: &ballast_gossip::EndpointStats) {
        for (reason, value) in [
            ("forged_state", stats.forged_state),
            ("node_id_mismatch", stats.node_id_mismatch),
            ("handshake_failed", stats.handshake_failed),
            ("bad_identity", stats.bad_identity),
            ("gossip_garbage", stats.gossip_garbage),
            ("gossip_oversized", stats.gossip_oversized),
        ] {
            let counter = self
                .gossip_refused
                .get_or_create(&vec![("reason".to_owned(), reason.to_owned())]);
            let seen = counter.get();
            if value > seen {
                counter.inc_by(value - seen);
            }
        }
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
