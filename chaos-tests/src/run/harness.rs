//! The run, phase by phase: set up (network filter, certificates, agents, membership,
//! initial VMs); chaos (faults from the plan, a workload of creates and deletes, I1
//! sweeps); settle (faults over: every handoff must resolve and the loads come to rest,
//! I1 exact, I3); independence (move a VM, wipe its source, I4); run logs (I2).

use super::cluster::Cluster;
use super::invariants::{self, Confirmer, Ledger, Violation};
use super::netfault::{Installed, NetFaults};
use super::observe::{sweep, CounterBook, Sweep};
use super::plan::{self, FaultEvent, FaultKind, PlanShape};
use super::{netns, workload, Report, RunConfig, RunError};
use ballast_node::agent::wire::{AdminError, StoreView};
use ballast_node::agent::{AdminClient, AdminClientError};
use ballast_node::config::AgentConfig;
use ballast_node::driver::sim::{check_no_double_run, read_runlog, running_intervals};
use ballast_node::handoff::{PlantedBug, SourceCopy};
use ballast_node::load::{LoadMode, LoadModel};
use ballast_node::units::Millis;
use ballast_store::{NodeId, VmId, VmState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Bound on one admin call of a sweep or of the workload.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on an admin `MoveVm` (it waits for the handoff).
const MOVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time between two sweeps / fault steps.
const TICK: Duration = Duration::from_millis(500);
/// Bound on the agents finding each other at the start.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The workload creates and deletes a VM this often.
const WORKLOAD_EVERY: Duration = Duration::from_secs(4);
/// No fault in the first and the last this many milliseconds of the workload.
const FAULT_FREE_HEAD_MS: u64 = 5_000;
const FAULT_FREE_TAIL_MS: u64 = 8_000;
/// After the faults, a handoff must resolve within this (I3).
const HANDOFF_BOUND: Duration = Duration::from_secs(30);
/// Moves tried for the I4 check before it counts as not checkable.
const I4_ATTEMPTS: usize = 10;
/// How long the destination is watched after its source was wiped (I4).
const I4_WATCH: Duration = Duration::from_secs(4);

/// The agents' settings: measured loads, short rounds and intervals so that many
/// handoffs happen, the sim driver in process mode (VMs outlive their agent).
fn tune(cfg: &mut AgentConfig, bug: PlantedBug, source_copy: SourceCopy) {
    cfg.host.cpu_cores = 4.0;
    cfg.load.mode = LoadMode::Measured;
    cfg.load.sample_interval = Millis::new(250);
    cfg.load.smoothing_alpha = 0.5;
    cfg.policy.threshold = 0.02;
    cfg.policy.min_gain = 0.01;
    cfg.policy.cooldown = Millis::new(2_000);
    cfg.policy.max_moves_per_session = 2;
    cfg.balancing.round_interval = Millis::new(300);
    cfg.balancing.round_jitter = Millis::new(200);
    cfg.balancing.session_timeout = Millis::new(3_000);
    let two = std::num::NonZeroUsize::MIN.saturating_add(1);
    cfg.balancing.max_outgoing = two;
    cfg.balancing.max_incoming = two;
    cfg.gossip.interval = Millis::new(100);
    cfg.gossip.rpc_timeout = Millis::new(3_000);
    cfg.gossip.connect_timeout = Millis::new(2_000);
    cfg.handoff.prepare_retry = Millis::new(300);
    cfg.handoff.prepare_timeout = Millis::new(3_000);
    cfg.handoff.commit_retry = Millis::new(300);
    cfg.handoff.query_interval = Millis::new(300);
    cfg.handoff.store_retry = Millis::new(200);
    cfg.handoff.migrate_timeout = Millis::new(15_000);
    cfg.reconcile.interval = Millis::new(1_000);
    cfg.driver.sim.migration = Millis::new(150);
    cfg.failpoints.planted_bug = bug;
    cfg.driver.sim.source_copy = source_copy;
    if bug == PlantedBug::PromoteOnTimeout {
        // The destination's query timer fires while the source still migrates, and some
        // migrations fail: the bug then shows as a VM on two hosts.
        cfg.handoff.query_interval = Millis::new(50);
        cfg.driver.sim.migration = Millis::new(600);
        cfg.driver.sim.fail_prob = ballast_node::units::Probability::new(0.3).expect("in [0, 1]");
    }
}

/// The fault being applied and how to undo it.
enum Undo {
    /// Start the agent again (after a kill).
    Start(usize),
    /// SIGCONT.
    Resume(usize),
    /// Remove the filters.
    Net(Installed),
    /// Restart the agent without its failpoint (if it did not hit it already).
    Disarm(usize),
}

struct Harness<'a> {
    cfg: &'a RunConfig,
    cluster: Cluster,
    clients: Vec<AdminClient>,
    net: Option<NetFaults>,
    report: Report,
    ledger: Ledger,
    confirmer: Confirmer,
    /// Placement-rule violations already reported (by node and first member).
    rules_reported: std::collections::BTreeSet<String>,
    book: CounterBook,
    rng: StdRng,
    next_vm: u64,
    last_views: Vec<Option<StoreView>>,
    /// The views of the last complete sweep, and when it was taken (seconds).
    last_complete: Option<(f64, Vec<(NodeId, StoreView)>)>,
    /// The node restarted with a failpoint, and the failpoint.
    armed: Option<(usize, String)>,
    model: LoadModel,
    threshold: f64,
    t0: Instant,
}

pub(super) async fn run(cfg: &RunConfig) -> Result<Report, RunError> {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("ballast-chaos-")
        .tempdir()
        .map_err(|e| RunError::Local(format!("temporary directory: {e}")))?;
    let root: PathBuf = match &cfg.keep_dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| RunError::Local(format!("{}: {e}", d.display())))?;
            d.clone()
        }
        None => tmp.path().to_owned(),
    };
    let mut report = Report {
        seed: cfg.seed,
        duration_s: cfg.duration.as_secs_f64(),
        agents: cfg.agents,
        planted_bug: format!("{:?}", cfg.plant_bug),
        source_copy: cfg.source_copy.to_string(),
        ..Report::default()
    };
    let mut kinds = cfg.faults.clone();
    let net = setup_net(&mut kinds, &mut report);
    let duration_ms = u64::try_from(cfg.duration.as_millis()).unwrap_or(u64::MAX);
    let schedule = plan::draw(
        cfg.seed,
        &PlanShape {
            agents: cfg.agents,
            start_ms: FAULT_FREE_HEAD_MS,
            end_ms: duration_ms.saturating_sub(FAULT_FREE_TAIL_MS),
            kinds,
        },
    );
    let (bug, source_copy) = (cfg.plant_bug, cfg.source_copy);
    let mut cluster = Cluster::create(&root, cfg.agents, cfg.ballast_bin.clone(), &|c| {
        tune(c, bug, source_copy)
    })?;
    for i in 0..cfg.agents {
        cluster.start(i, None)?;
    }
    let mut probe = AgentConfig::default();
    tune(&mut probe, bug, source_copy);
    let clients = cluster
        .nodes
        .iter()
        .map(|n| AdminClient::connect_with_timeout(cluster.admin(), n.addr, CALL_TIMEOUT))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RunError::Local(e.to_string()))?;
    let mut h = Harness {
        cfg,
        cluster,
        clients,
        net,
        report,
        ledger: Ledger::default(),
        confirmer: Confirmer::default(),
        rules_reported: Default::default(),
        book: CounterBook::new(cfg.agents),
        rng: StdRng::seed_from_u64(cfg.seed ^ 0x5eed_0f10),
        next_vm: 1,
        last_views: vec![None; cfg.agents],
        last_complete: None,
        armed: None,
        model: LoadModel {
            weights: probe.load.weights,
            capacity: probe.host,
        },
        threshold: probe.policy.threshold,
        t0: Instant::now(),
    };
    h.wait_membership().await?;
    h.log(&format!(
        "cluster of {} agents up in {:.1}s",
        cfg.agents,
        started.elapsed().as_secs_f64()
    ));
    h.create_initial().await;
    h.t0 = Instant::now();
    h.chaos(&schedule).await;
    h.settle().await;
    h.independence().await;
    h.check_runlogs();
    let (committed, aborted, rounds) = h.book.totals();
    h.report.handoffs_committed = committed;
    h.report.handoffs_aborted = aborted;
    h.report.rounds = rounds;
    if let Some(net) = &h.net {
        let (cut, lossy) = net.drops();
        h.report.packets_dropped = [cut, lossy];
    }
    h.report.wall_s = started.elapsed().as_secs_f64();
    if cfg.keep_dir.is_none() && !h.report.ok() {
        // Keep the evidence of a failed run.
        let kept = tmp.keep();
        h.report
            .notes
            .push(format!("run directory kept: {}", kept.display()));
    }
    Ok(h.report)
}

/// Sets up the packet filter if network faults are asked for and possible; otherwise
/// drops them from `kinds` with a note.
fn setup_net(kinds: &mut Vec<FaultKind>, report: &mut Report) -> Option<NetFaults> {
    if !kinds.iter().any(|k| k.needs_network()) {
        return None;
    }
    let reason = if netns::inside() {
        match NetFaults::setup() {
            Ok(n) => return Some(n),
            Err(e) => e.to_string(),
        }
    } else {
        "not in a private network namespace (needs root and unshare)".to_owned()
    };
    kinds.retain(|k| !k.needs_network());
    report
        .notes
        .push(format!("partition and loss faults disabled: {reason}"));
    None
}

fn created(r: &Result<NodeId, AdminClientError>) -> Option<bool> {
    match r {
        Ok(_) | Err(AdminClientError::Admin(AdminError::Driver(_))) => Some(true),
        Err(AdminClientError::Refused(_))
        | Err(AdminClientError::Certificate(_))
        | Err(AdminClientError::Tls(_))
        | Err(AdminClientError::Client(_))
        | Err(AdminClientError::Admin(
            AdminError::AlreadyExists { .. }
            | AdminError::Invalid(_)
            | AdminError::NoNode
            | AdminError::UnknownNode(_)
            | AdminError::NotFound(_)
            | AdminError::Busy { .. }
            | AdminError::BreaksRule { .. }
            | AdminError::NoLegalNode { .. },
        )) => Some(false),
        Err(_) => None,
    }
}

impl Harness<'_> {
    fn log(&self, line: &str) {
        if self.cfg.verbose {
            eprintln!("[chaos {:>6.1}s] {line}", self.t0.elapsed().as_secs_f64());
        }
    }

    fn elapsed_s(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// Hosts that can be asked now.
    fn askable(&self) -> Vec<bool> {
        let c = &self.cluster;
        (0..c.nodes.len())
            .map(|i| c.is_up(i) && !c.is_paused(i) && !c.nodes[i].is_wiped())
            .collect()
    }

    /// Hosts that must answer for a sweep to be complete.
    fn present(&self) -> Vec<bool> {
        self.cluster.nodes.iter().map(|n| !n.is_wiped()).collect()
    }

    async fn wait_membership(&mut self) -> Result<(), RunError> {
        let deadline = Instant::now() + JOIN_TIMEOUT;
        let want = self.cfg.agents - 1;
        loop {
            let s = sweep(&self.clients, &self.askable()).await;
            if s.statuses
                .iter()
                .all(|st| st.as_ref().is_some_and(|st| st.peers.len() >= want))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let n1 = self.clients[0].status().await.map(|s| s.peers.len());
                return Err(RunError::NoCluster(format!(
                    "not every agent saw {want} peers within {}s (n1: {n1:?}); last log lines of n1:\n{}",
                    JOIN_TIMEOUT.as_secs(),
                    self.cluster.log_tail(0, 20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn create_one(&mut self, node: Option<usize>) {
        let vm = workload::vm_name(self.next_vm);
        let group = workload::anti_affinity_group(self.next_vm, self.cfg.agents);
        self.next_vm += 1;
        // A group member goes where its group allows: placement picks the node.
        let node = if group.is_some() { None } else { node };
        let spec = workload::vm_spec(&mut self.rng, group);
        let via = node.unwrap_or_else(|| self.rng.random_range(0..self.cfg.agents));
        if !self.askable()[via] {
            return;
        }
        let target = node.map(|i| self.cluster.nodes[i].id.clone());
        let r = self.clients[via]
            .create_vm(&vm, &spec, target.as_ref(), false)
            .await;
        match created(&r) {
            Some(true) => {
                self.ledger.expected.insert(vm);
                self.report.vms_created += 1;
            }
            Some(false) => {}
            None => {
                self.ledger.uncertain.insert(vm);
            }
        }
    }

    async fn create_initial(&mut self) {
        for k in 0..self.cfg.vms {
            let node = k % self.cfg.agents;
            // Uneven on purpose: the first host gets a double share.
            let node = if k % 3 == 0 { 0 } else { node };
            self.create_one(Some(node)).await;
        }
        self.log(&format!("{} VMs created", self.ledger.expected.len()));
    }

    async fn delete_one(&mut self) {
        let expected: Vec<VmId> = self.ledger.expected.iter().cloned().collect();
        if expected.is_empty() {
            return;
        }
        let vm = expected[self.rng.random_range(0..expected.len())].clone();
        let holder = self.last_views.iter().position(|v| {
            v.as_ref().is_some_and(|v| {
                v.entries
                    .iter()
                    .any(|e| e.vm == vm && e.state == VmState::Running)
            })
        });
        let Some(i) = holder else { return };
        if !self.askable()[i] {
            return;
        }
        match self.clients[i].delete_vm(&vm).await {
            Ok(()) => {
                self.ledger.expected.remove(&vm);
                self.report.vms_deleted += 1;
            }
            Err(AdminClientError::Refused(_))
            | Err(AdminClientError::Admin(
                AdminError::NotFound(_) | AdminError::Busy { .. } | AdminError::Driver(_),
            )) => {}
            Err(_) => {
                self.ledger.expected.remove(&vm);
                self.ledger.uncertain.insert(vm);
            }
        }
    }

    fn count(&mut self, kind: FaultKind) {
        *self
            .report
            .faults
            .entry(kind.name().to_owned())
            .or_insert(0) += 1;
    }

    fn restart(&mut self, i: usize, failpoint: Option<&str>) {
        self.book.restarted(i);
        if let Err(e) = self.cluster.start(i, failpoint) {
            self.report
                .notes
                .push(format!("restart of {}: {e}", self.cluster.nodes[i].id));
        }
        // A fresh client: calls on a connection cached to the old process would only
        // time out until its idle timeout.
        let addr = self.cluster.nodes[i].addr;
        if let Ok(c) = AdminClient::connect_with_timeout(self.cluster.admin(), addr, CALL_TIMEOUT) {
            self.clients[i] = c;
        }
    }

    /// The UDP ports of `nodes`' agents (QUIC endpoints and RPC client sockets).
    fn ports(&self, nodes: &[usize]) -> Vec<u16> {
        nodes
            .iter()
            .flat_map(|i| self.cluster.udp_ports(*i))
            .collect()
    }

    fn begin(&mut self, e: &FaultEvent) -> Option<Undo> {
        let i = *e.nodes.first()?;
        let undo = match e.kind {
            FaultKind::Kill => {
                self.cluster.kill_agent(i);
                Undo::Start(i)
            }
            FaultKind::HostKill => {
                let vms = self.cluster.kill_host(i);
                self.log(&format!(
                    "host {} killed with {vms} VM processes",
                    self.cluster.nodes[i].id
                ));
                Undo::Start(i)
            }
            FaultKind::Pause => {
                self.cluster.pause(i);
                Undo::Resume(i)
            }
            FaultKind::Partition | FaultKind::Loss => {
                let others: Vec<usize> = (0..self.cfg.agents)
                    .filter(|j| !e.nodes.contains(j))
                    .collect();
                let (a, b) = (self.ports(&e.nodes), self.ports(&others));
                let net = self.net.as_mut()?;
                let r = if e.kind == FaultKind::Partition {
                    net.partition(&a, &b)
                } else {
                    net.lossy(&a, &b)
                };
                match r {
                    Ok(inst) => Undo::Net(inst),
                    Err(err) => {
                        self.report.notes.push(format!("{}: {err}", e.kind));
                        return None;
                    }
                }
            }
            FaultKind::Restart => {
                let fp = e.failpoint.clone().unwrap_or_default();
                self.cluster.kill_agent(i);
                self.restart(i, Some(&fp));
                self.armed = Some((i, fp));
                Undo::Disarm(i)
            }
        };
        self.count(e.kind);
        self.log(&format!(
            "fault {} on {:?} for {} ms",
            e.kind, e.nodes, e.len_ms
        ));
        Some(undo)
    }

    fn end(&mut self, undo: Undo) {
        match undo {
            Undo::Start(i) => self.restart(i, None),
            Undo::Resume(i) => self.cluster.resume(i),
            Undo::Net(inst) => {
                if let Some(net) = self.net.as_mut() {
                    if let Err(e) = net.clear(inst) {
                        self.report
                            .notes
                            .push(format!("clearing a network fault: {e}"));
                    }
                }
            }
            Undo::Disarm(i) => {
                if self.armed.take().is_some() {
                    self.cluster.kill_agent(i);
                    self.restart(i, None);
                }
            }
        }
    }

    /// Restarts agents that exited on their own: a failpoint hit, or an unexpected exit.
    fn reap(&mut self) {
        for i in 0..self.cfg.agents {
            let c = &mut self.cluster;
            if !c.is_up(i) || c.nodes[i].is_wiped() || !c.exited(i) {
                continue;
            }
            match self.armed.take() {
                Some((j, fp)) if j == i => {
                    self.log(&format!(
                        "failpoint {fp} hit on {}",
                        self.cluster.nodes[i].id
                    ));
                    *self.report.failpoints_hit.entry(fp).or_insert(0) += 1;
                }
                other => {
                    self.armed = other;
                    self.report.unexpected_exits += 1;
                    self.report.notes.push(format!(
                        "agent {} exited unexpectedly at {:.1}s; last log lines:\n{}",
                        self.cluster.nodes[i].id,
                        self.elapsed_s(),
                        self.cluster.log_tail(i, 10)
                    ));
                }
            }
            self.restart(i, None);
        }
    }

    /// One sweep: counters, last views, and (if complete) the I1 check.
    async fn observe(&mut self) -> Option<Sweep> {
        let s = sweep(&self.clients, &self.askable()).await;
        for (i, st) in s.statuses.iter().enumerate() {
            if let Some(st) = st {
                self.book.update(i, st);
            }
        }
        for (i, v) in s.views.iter().enumerate() {
            if v.is_some() {
                self.last_views[i] = v.clone();
            }
        }
        // One node's view is read at one instant: a rule it breaks is real.
        let at = self.elapsed_s();
        for (i, v) in s.views.iter().enumerate() {
            let Some(v) = v else { continue };
            let node = self.cluster.nodes[i].id.clone();
            for found in invariants::rule_problems(&node, v, at) {
                if self.rules_reported.insert(format!("{node} {:?}", found.vm)) {
                    self.log(&format!(
                        "VIOLATION {} {:?}: {}",
                        found.invariant, found.vm, found.evidence
                    ));
                    self.report.violations.push(found);
                }
            }
        }
        if !s.complete(&self.present()) {
            return None;
        }
        self.report.sweeps_checked += 1;
        let views = self.views_of(&s);
        let problems = invariants::sweep_problems(&views, &self.ledger);
        let at = self.elapsed_s();
        let found = self.confirmer.feed(problems, at);
        for v in &found {
            self.log(&format!(
                "VIOLATION {} {:?}: {}",
                v.invariant, v.vm, v.evidence
            ));
        }
        self.report.violations.extend(found);
        self.last_complete = Some((at, views));
        Some(s)
    }

    fn views_of(&self, s: &Sweep) -> Vec<(NodeId, StoreView)> {
        s.views
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((self.cluster.nodes[i].id.clone(), v.clone()?)))
            .collect()
    }

    async fn chaos(&mut self, schedule: &[FaultEvent]) {
        let mut next = 0;
        let mut active: Option<(Instant, Undo)> = None;
        let mut last_work = Instant::now();
        while self.t0.elapsed() < self.cfg.duration {
            let now_ms = u64::try_from(self.t0.elapsed().as_millis()).unwrap_or(u64::MAX);
            if let Some((until, _)) = &active {
                if Instant::now() >= *until {
                    if let Some((_, undo)) = active.take() {
                        self.end(undo);
                    }
                }
            }
            if active.is_none() && next < schedule.len() && schedule[next].at_ms <= now_ms {
                let e = schedule[next].clone();
                next += 1;
                if let Some(undo) = self.begin(&e) {
                    active = Some((Instant::now() + Duration::from_millis(e.len_ms), undo));
                }
            }
            self.reap();
            if last_work.elapsed() >= WORKLOAD_EVERY {
                last_work = Instant::now();
                self.create_one(None).await;
                self.delete_one().await;
            }
            self.observe().await;
            tokio::time::sleep(TICK).await;
        }
        if let Some((_, undo)) = active.take() {
            self.end(undo);
        }
        self.reap();
        let (c, _, _) = self.book.totals();
        self.log(&format!("faults over; {c} handoffs committed so far"));
    }

    /// Handoffs in flight in a sweep: `(vm, epoch)` of non-Running entries and transfers.
    fn in_flight(views: &[(NodeId, StoreView)]) -> Vec<(VmId, u64, String)> {
        let mut out = Vec::new();
        for (n, v) in views {
            for e in &v.entries {
                match &e.state {
                    VmState::Running => {}
                    VmState::MigratingOut { epoch, .. } | VmState::Incoming { epoch, .. } => {
                        out.push((e.vm.clone(), *epoch, format!("{n}: {:?}", e.state)));
                    }
                }
            }
            for t in &v.transfers {
                out.push((t.vm.clone(), t.epoch, format!("{n}: {t:?}")));
            }
        }
        out
    }

    async fn settle(&mut self) {
        let from = Instant::now();
        let mut first_seen: BTreeMap<(VmId, u64), Instant> = BTreeMap::new();
        let mut stuck_reported = false;
        let (mut resolved_at, mut rest_at) = (None, None);
        while from.elapsed() < self.cfg.settle && (resolved_at.is_none() || rest_at.is_none()) {
            self.reap();
            if let Some(s) = self.observe().await {
                let views = self.views_of(&s);
                let flying = Self::in_flight(&views);
                first_seen.retain(|k, _| flying.iter().any(|(v, e, _)| (v, *e) == (&k.0, k.1)));
                for (vm, epoch, what) in &flying {
                    let seen = *first_seen
                        .entry((vm.clone(), *epoch))
                        .or_insert_with(Instant::now);
                    if seen.elapsed() > HANDOFF_BOUND && !stuck_reported {
                        stuck_reported = true;
                        self.report.violations.push(Violation {
                            invariant: "I3",
                            vm: Some(vm.to_string()),
                            evidence: format!(
                                "handoff at epoch {epoch} unresolved {:.0}s after the faults ({what})",
                                seen.duration_since(from).as_secs_f64() + seen.elapsed().as_secs_f64()
                            ),
                        });
                    }
                }
                if resolved_at.is_none()
                    && invariants::resolved(&views)
                    && invariants::final_i1(&views, &self.ledger).is_empty()
                {
                    resolved_at = Some(from.elapsed().as_secs_f64());
                    self.report.vms_expected = self.ledger.expected.len();
                    self.report.vms_found = self.ledger.expected.len();
                }
                let loads: Vec<f64> = s
                    .statuses
                    .iter()
                    .flatten()
                    .map(|st| st.summary.load)
                    .collect();
                let vm_max = views
                    .iter()
                    .flat_map(|(_, v)| v.entries.iter())
                    .map(|e| self.model.load_of(&e.factors))
                    .fold(0.0, f64::max);
                if rest_at.is_none() && invariants::balanced(&loads, vm_max, self.threshold) {
                    rest_at = Some(from.elapsed().as_secs_f64());
                }
            }
            tokio::time::sleep(TICK).await;
        }
        self.report.resolve_s = resolved_at;
        self.report.converge_s = rest_at;
        if resolved_at.is_none() {
            let (taken_s, last_views) = self.last_complete.clone().unwrap_or_default();
            let final_problems = invariants::final_i1(&last_views, &self.ledger);
            self.report.vms_expected = self.ledger.expected.len();
            self.report.vms_found = self.ledger.expected.len().saturating_sub(
                final_problems
                    .iter()
                    .filter(|v| {
                        v.vm.as_ref().is_some_and(|vm| {
                            self.ledger.expected.contains(&VmId::from(vm.as_str()))
                        })
                    })
                    .count(),
            );
            let flying = Self::in_flight(&last_views);
            self.report.violations.push(Violation {
                invariant: "I3",
                vm: None,
                evidence: format!(
                    "no complete sweep without handoffs within {}s after the faults; last complete sweep at {taken_s:.1}s: {} in flight ({:?}), I1 there: {:?}",
                    self.cfg.settle.as_secs(),
                    flying.len(),
                    flying.iter().take(5).map(|f| &f.2).collect::<Vec<_>>(),
                    final_problems.iter().take(5).map(|v| &v.evidence).collect::<Vec<_>>(),
                ),
            });
        }
        if rest_at.is_none() {
            self.report.violations.push(Violation {
                invariant: "I3",
                vm: None,
                evidence: format!(
                    "loads never came to rest (spread <= heaviest VM + threshold) within {}s after the faults",
                    self.cfg.settle.as_secs()
                ),
            });
        }
        self.log(&format!(
            "settled: resolved {resolved_at:?}, at rest {rest_at:?}"
        ));
    }

    /// I4: move a VM, wipe its source, and check the destination did not notice. A move
    /// may abort (a destination still busy with a handoff the faults left behind, a
    /// refused Prepare): the next attempt takes another VM and, in turn, another
    /// destination, and the note keeps both sides' last log lines.
    async fn independence(&mut self) {
        for attempt in 0..I4_ATTEMPTS {
            let s = sweep(&self.clients, &self.askable()).await;
            let views = self.views_of(&s);
            let counts: Vec<(usize, usize)> = s
                .views
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    Some((
                        i,
                        v.as_ref()?
                            .entries
                            .iter()
                            .filter(|e| e.state == VmState::Running)
                            .count(),
                    ))
                })
                .collect();
            let Some(&(src, _)) = counts.iter().max_by_key(|(i, c)| (*c, usize::MAX - i)) else {
                break;
            };
            let mut dsts: Vec<(usize, usize)> =
                counts.iter().copied().filter(|(i, _)| *i != src).collect();
            dsts.sort_by_key(|(i, c)| (*c, *i));
            let Some(&(dst, _)) = dsts.get(attempt % dsts.len().max(1)) else {
                break;
            };
            let Some(vm) = s.views[src].as_ref().and_then(|v| {
                let running: Vec<_> = v
                    .entries
                    .iter()
                    .filter(|e| e.state == VmState::Running)
                    .collect();
                running
                    .get(attempt % running.len().max(1))
                    .map(|e| e.vm.clone())
            }) else {
                break;
            };
            drop(views);
            let (src_id, dst_id) = (
                self.cluster.nodes[src].id.clone(),
                self.cluster.nodes[dst].id.clone(),
            );
            let mover = match AdminClient::connect_with_timeout(
                self.cluster.admin(),
                self.cluster.nodes[src].addr,
                MOVE_TIMEOUT,
            ) {
                Ok(c) => c,
                Err(e) => {
                    self.report.notes.push(format!("I4: admin client: {e}"));
                    return;
                }
            };
            let moved = mover.move_vm(&vm, &dst_id).await;
            let Ok((true, epoch)) = moved else {
                self.report.notes.push(format!(
                    "I4: move of {vm} {src_id}->{dst_id} did not commit: {moved:?}; \
                     last log lines of {src_id}:\n{}\nof {dst_id}:\n{}",
                    self.cluster.log_tail(src, 8),
                    self.cluster.log_tail(dst, 8)
                ));
                continue;
            };
            self.i4_after_move(src, dst, &vm, epoch).await;
            return;
        }
        self.report.violations.push(Violation {
            invariant: "I4",
            vm: None,
            evidence: format!(
                "no VM could be moved to check independence ({I4_ATTEMPTS} attempts)"
            ),
        });
    }

    async fn i4_after_move(&mut self, src: usize, dst: usize, vm: &VmId, epoch: u64) {
        let (src_id, dst_id) = (
            self.cluster.nodes[src].id.clone(),
            self.cluster.nodes[dst].id.clone(),
        );
        let running_on_dst = |v: &Option<StoreView>| {
            v.as_ref()
                .and_then(|v| v.entries.iter().find(|e| &e.vm == vm).cloned())
        };
        // Wait until the destination holds it as Running (bounded), then pin it there.
        let mut before = None;
        for _ in 0..40 {
            let v = self.clients[dst].snapshot().await.ok();
            if let Some(e) =
                running_on_dst(&v).filter(|e| e.state == VmState::Running && e.epoch == epoch)
            {
                before = Some(e);
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let Some(before) = before else {
            self.report.violations.push(Violation {
                invariant: "I4",
                vm: Some(vm.to_string()),
                evidence: format!("moved {src_id}->{dst_id} at epoch {epoch} (committed) but never Running on {dst_id}"),
            });
            return;
        };
        let _ = self.clients[dst].pin(vm).await;
        // The source's VMs die with it.
        let lost: Vec<VmId> = self.clients[src]
            .snapshot()
            .await
            .map(|v| v.entries.into_iter().map(|e| e.vm).collect())
            .unwrap_or_default();
        for v in lost {
            if self.ledger.expected.remove(&v) || self.ledger.uncertain.remove(&v) {
                self.ledger.destroyed.insert(v);
            }
        }
        if let Err(e) = self.cluster.wipe(src) {
            self.report.notes.push(format!("I4: wipe of {src_id}: {e}"));
        }
        let wiped_at = ballast_node::driver::sim::runlog::now_unix_ns();
        for i in 0..self.cfg.agents {
            if i != src && self.askable()[i] {
                let _ = self.clients[i].forget_node(&src_id).await;
            }
        }
        tokio::time::sleep(I4_WATCH).await;
        let after = running_on_dst(&self.clients[dst].snapshot().await.ok());
        let entry_same = after
            .as_ref()
            .is_some_and(|a| a.state == VmState::Running && a.epoch == before.epoch);
        let records = self.all_records();
        let still_running = running_intervals(&records, &self.cluster.crashes)
            .get(vm)
            .is_some_and(|ivs| {
                ivs.iter()
                    .any(|iv| iv.host == dst_id && iv.start_ns < wiped_at && iv.end_ns == u64::MAX)
            });
        let outcome = format!(
            "{vm} moved {src_id}->{dst_id} (epoch {epoch}); {src_id} wiped; {}s later on {dst_id}: entry {}, VM process {}",
            I4_WATCH.as_secs(),
            if entry_same { "unchanged" } else { "CHANGED" },
            if still_running { "still running" } else { "NOT running" }
        );
        self.log(&format!("I4: {outcome}"));
        if !(entry_same && still_running) {
            self.report.violations.push(Violation {
                invariant: "I4",
                vm: Some(vm.to_string()),
                evidence: format!("{outcome}; entry after: {after:?}"),
            });
        }
        self.report.independence = Some(outcome);
    }

    fn all_records(&mut self) -> Vec<ballast_node::driver::sim::RunRecord> {
        let mut all = Vec::new();
        for p in self.cluster.runlog_paths() {
            match read_runlog(&p) {
                Ok(r) => all.extend(r),
                Err(e) => self
                    .report
                    .notes
                    .push(format!("run log {}: {e}", p.display())),
            }
        }
        all
    }

    /// I2 over every host's run log, with the harness's host crashes.
    fn check_runlogs(&mut self) {
        let records = self.all_records();
        let found = check_no_double_run(&records, &self.cluster.crashes);
        self.log(&format!(
            "I2: {} run records, {} double runs",
            records.len(),
            found.len()
        ));
        self.report
            .violations
            .extend(invariants::double_runs(&found));
    }
}
