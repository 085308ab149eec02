//! The agent's configuration, read from TOML. Every option has a default and a doc
//! comment; `ballast config default` prints them all and `ballast config check` validates
//! a file. Unknown keys are errors, so a typo never silently falls back to a default.

use crate::driver::exec::ExecConfig;
use crate::driver::libvirt::LibvirtConfig;
use crate::driver::qemu::QemuConfig;
use crate::driver::sim::SimConfig;
use crate::handoff::HandoffConfig;
#[cfg(feature = "planted-bugs")]
use crate::handoff::PlantedBug;
use crate::load::{HostCapacity, LoadMode, Weights};
use crate::policy::{PolicyConfig, PolicyConfigError};
use ballast_core::units::Millis;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};

/// Who this agent is and where it keeps its state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// This node's id; must equal the name in its certificate.
    pub id: String,
    /// The cluster's id; the store refuses a data directory of another cluster.
    pub cluster: String,
    /// Where the sled store and driver state live (relative paths are relative to the
    /// config file's directory).
    pub data_dir: PathBuf,
    /// UDP address of the QUIC endpoint (gossip and RPC).
    pub listen: SocketAddr,
    /// Address other nodes reach this one at (defaults to `listen`).
    pub advertise: Option<SocketAddr>,
    /// Addresses of nodes to join through.
    pub seeds: Vec<SocketAddr>,
    /// TCP address of the Prometheus metrics endpoint; `"off"` disables it.
    #[serde(with = "addr_or_off")]
    pub metrics_listen: Option<SocketAddr>,
    /// This host's tags (`gpu`, `zone=a`), which VMs' `requires` rules name; gossiped.
    pub tags: Vec<String>,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            id: "node-1".into(),
            cluster: "ballast".into(),
            data_dir: PathBuf::from("data"),
            listen: SocketAddr::from(([0, 0, 0, 0], 7420)),
            advertise: None,
            seeds: Vec::new(),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9420))),
            tags: Vec::new(),
        }
    }
}

/// The node's certificate and the cluster CA (PEM files written by `ballast cluster init`
/// and `ballast node add`; relative paths are relative to the config file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// The cluster CA certificate.
    pub ca_cert: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key (mode 0600).
    pub key: PathBuf,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            ca_cert: "ca.pem".into(),
            cert: "node.pem".into(),
            key: "node.key".into(),
        }
    }
}

/// How VM loads are measured and weighed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadSection {
    /// `measured` (smoothed CPU, I/O, memory use) or `target` (each VM's reservation).
    /// Must be the same on every node of a cluster.
    pub mode: LoadMode,
    /// Weights of CPU, I/O and memory; the same on every node of a cluster.
    pub weights: Weights,
    /// How often VM usage is sampled, in milliseconds.
    #[serde(alias = "sample_interval_ms")]
    pub sample_interval: Millis,
    /// Weight of a new sample in the exponential smoothing, in (0, 1].
    pub smoothing_alpha: f64,
}

impl Default for LoadSection {
    fn default() -> Self {
        Self {
            mode: LoadMode::Measured,
            weights: Weights::default(),
            sample_interval: Millis::new(5_000),
            smoothing_alpha: 0.3,
        }
    }
}

/// When rounds run and how many migrations may be under way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalancingSection {
    /// Time between two rounds, in milliseconds.
    #[serde(alias = "round_interval_ms")]
    pub round_interval: Millis,
    /// Random extra delay added to each interval, up to this many milliseconds.
    #[serde(alias = "round_jitter_ms")]
    pub round_jitter: Millis,
    /// A balancing session that takes longer than this is dropped.
    #[serde(alias = "session_timeout_ms")]
    pub session_timeout: Millis,
    /// Outgoing migrations under way at once on this node.
    pub max_outgoing: NonZeroUsize,
    /// Incoming migrations under way at once on this node.
    pub max_incoming: NonZeroUsize,
    /// Guest memory, in bytes, of the VMs migrating to or from this node at once; a
    /// migration that would pass it waits (one alone always runs).
    pub max_bytes_in_flight: NonZeroU64,
    /// Whether this node starts rounds at all (it still answers its peers).
    pub enabled: bool,
    /// Advise only: sessions run and decide as usual, and `ballast sessions` shows the
    /// moves they would make (outcome `dry-run:<decision>`), but nothing moves.
    pub dry_run: bool,
    /// Most session records kept in the store (`ballast sessions`), across restarts.
    pub history_max: NonZeroUsize,
    /// Session records older than this are dropped from the store.
    pub history_age: Millis,
}

impl Default for BalancingSection {
    fn default() -> Self {
        Self {
            round_interval: Millis::new(10_000),
            round_jitter: Millis::new(2_000),
            session_timeout: Millis::new(5_000),
            // A 10 GbE host: four migrations each way, and at most 64 GiB of guest
            // memory on the wire (about a minute at line rate).
            max_outgoing: NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN),
            max_incoming: NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN),
            max_bytes_in_flight: NonZeroU64::new(64 << 30).unwrap_or(NonZeroU64::MIN),
            enabled: true,
            dry_run: false,
            history_max: NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN),
            history_age: Millis::new(30 * 86_400_000),
        }
    }
}

/// The gossip endpoint's knobs (the `ballast-gossip` crate's `EndpointConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GossipSection {
    /// Period of chitchat's gossip rounds, in milliseconds.
    #[serde(alias = "interval_ms")]
    pub interval: Millis,
    /// Phi above which the failure detector marks a node dead.
    pub phi_threshold: f64,
    /// How long a dead node stays in the gossip state before it is forgotten, in ms.
    #[serde(alias = "dead_grace_ms")]
    pub dead_grace: Millis,
    /// Bound on one RPC (sessions, handoff messages, admin calls), in milliseconds.
    #[serde(alias = "rpc_timeout_ms")]
    pub rpc_timeout: Millis,
    /// Bound on a QUIC handshake, in milliseconds.
    #[serde(alias = "connect_timeout_ms")]
    pub connect_timeout: Millis,
    /// Limit of one RPC frame's payload, in bytes.
    pub max_rpc_frame_bytes: usize,
}

impl Default for GossipSection {
    fn default() -> Self {
        Self {
            interval: Millis::new(500),
            phi_threshold: 8.0,
            dead_grace: Millis::new(3_600_000),
            rpc_timeout: Millis::new(10_000),
            connect_timeout: Millis::new(5_000),
            max_rpc_frame_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Which hypervisor driver the agent uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverKind {
    /// The simulated hypervisor (`[driver.sim]`).
    #[default]
    Sim,
    /// QEMU (`[driver.qemu]`).
    Qemu,
    /// An external plugin speaking `docs/driver-protocol.md` (`[driver.exec]`).
    Exec,
    /// libvirt (`[driver.libvirt]`; a build with the cargo feature `libvirt`).
    Libvirt,
}

/// The hypervisor driver and its settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriverSection {
    /// `sim`, `qemu`, `exec` or `libvirt`.
    pub kind: DriverKind,
    /// Settings of the sim driver (its `host` is set to the node id when empty; a
    /// relative `state_dir` is relative to `node.data_dir`).
    pub sim: SimConfig,
    /// Settings of the qemu driver (a relative `state_dir` is relative to
    /// `node.data_dir`).
    pub qemu: QemuConfig,
    /// Settings of the exec driver (its `command` is required when `kind = "exec"`; a
    /// relative `working_dir` is relative to `node.data_dir`).
    pub exec: ExecConfig,
    /// Settings of the libvirt driver (a relative `state_dir` is relative to
    /// `node.data_dir`).
    pub libvirt: LibvirtConfig,
}

/// Start-up and periodic reconciliation of hypervisor and schedule (docs/design.md §Drivers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileSection {
    /// Time between two reconciliations, in milliseconds.
    #[serde(alias = "interval_ms")]
    pub interval: Millis,
}

impl Default for ReconcileSection {
    fn default() -> Self {
        Self {
            interval: Millis::new(10_000),
        }
    }
}

/// Fault injection for tests and the chaos harness, only in builds with the test hooks
/// (cargo features `failpoints`, `planted-bugs`); a release build refuses the section as
/// an unknown field. The environment variable `BALLAST_FAILPOINTS` (comma separated)
/// adds to `exit_at`.
#[cfg(any(feature = "failpoints", feature = "planted-bugs"))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailpointsSection {
    /// Handoff steps at which the agent kills itself (SIGKILL): `before:OP` /
    /// `after:OP` around a store transition (`begin_migrate_out`, `commit_migrate_out`,
    /// `abort_migrate_out`, `forget_transfer`, `accept_incoming`, `promote_incoming`,
    /// `drop_incoming`), `before-send:MSG` / `after-send:MSG` around a handoff message
    /// (`prepare`, `prepared`, `commit`, `commit_ack`, `abort`, `query_outcome`,
    /// `outcome`, `prepare_refused`). An unknown name is refused at its line.
    #[cfg(feature = "failpoints")]
    pub exit_at: Vec<crate::failpoints::Failpoint>,
    /// Send every handoff message twice (duplicates must change nothing).
    #[cfg(feature = "failpoints")]
    pub duplicate_sends: bool,
    /// A deliberate handoff bug (`None`, `PromoteOnTimeout`, `AckBeforeDurable`), so the
    /// chaos harness can show that its checkers catch a broken protocol. Never set it
    /// outside that test.
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: PlantedBug,
}

/// The whole agent configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Identity, addresses and state directory.
    pub node: NodeSection,
    /// Certificates.
    pub tls: TlsSection,
    /// What this host offers (its capacities).
    pub host: HostCapacity,
    /// The load model.
    pub load: LoadSection,
    /// The balancing policy (threshold, min_gain, cooldown, moves per session...), in
    /// load units: a host's load is the sum of its VMs' loads, ~1 when it is full.
    pub policy: PolicyConfig,
    /// Round timing and migration limits.
    pub balancing: BalancingSection,
    /// The gossip endpoint.
    pub gossip: GossipSection,
    /// The hypervisor driver.
    pub driver: DriverSection,
    /// The handoff machine's intervals and limits (`handoffs_max` is raised to
    /// `balancing.max_outgoing + balancing.max_incoming` when lower).
    pub handoff: HandoffConfig,
    /// Reconciliation of the hypervisor with the schedule.
    pub reconcile: ReconcileSection,
    /// Fault injection (test builds only).
    #[cfg(any(feature = "failpoints", feature = "planted-bugs"))]
    pub failpoints: FailpointsSection,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has a wrong or unknown key.
    #[error("{}line {line}, column {column}: {message}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Parse {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A value is out of its range.
    #[error("{field}: {reason}")]
    Invalid {
        /// The dotted key, e.g. `host.cpu_cores`.
        field: String,
        /// Why it cannot be used.
        reason: String,
    },
}

impl From<PolicyConfigError> for ConfigError {
    fn from(e: PolicyConfigError) -> Self {
        let field = match &e {
            PolicyConfigError::Negative { field, .. } => format!("policy.{field}"),
            PolicyConfigError::NoMoves => "policy.max_moves_per_session".into(),
            PolicyConfigError::PeerSamples(_) => "policy.peer_samples".into(),
        };
        Self::Invalid {
            field,
            reason: e.to_string(),
        }
    }
}

/// `text` as a table without its `[failpoints]` section, when that section holds
/// exactly what ballast 0.1 wrote into every agent.toml (nothing turned on); `None`
/// otherwise. Only a build without test hooks needs this (one with them reads the
/// section).
fn without_inert_failpoints(text: &str) -> Option<toml::Table> {
    let mut table: toml::Table = toml::from_str(text).ok()?;
    let section = table.remove("failpoints")?;
    let inert: toml::Table =
        toml::from_str("exit_at = []\nduplicate_sends = false\nplanted_bug = \"None\"\n").ok()?;
    let section = section.as_table()?;
    let only_defaults = section
        .iter()
        .all(|(k, v)| inert.get(k).is_some_and(|d| d == v));
    only_defaults.then_some(table)
}

impl AgentConfig {
    /// Parses and validates a configuration held in a string.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, None)
    }

    /// Reads, parses and validates a configuration file; relative paths in it are made
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut cfg = Self::parse(&text, Some(path))?;
        if let Some(dir) = path.parent() {
            cfg.resolve_relative_to(dir);
        }
        Ok(cfg)
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Self, ConfigError> {
        let parsed = toml::from_str(text).or_else(|e| match without_inert_failpoints(text) {
            // The file of a node set up by ballast 0.1, which wrote the section with its
            // defaults into every agent.toml: read as if it were not there.
            Some(table) if e.message().starts_with("unknown field `failpoints`") => {
                tracing::warn!(
                    "agent.toml has the [failpoints] section that ballast 0.1 wrote, all at its defaults: ignored (this build has no test hooks; remove the section)"
                );
                table.try_into::<Self>().map_err(|_| e)
            }
            _ => Err(e),
        });
        let cfg: Self = parsed.map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            let mut message = e.message().to_owned();
            if message.starts_with("unknown field `failpoints`") {
                message.push_str(
                    "; [failpoints] is a test hook that this build does not have \
                     (cargo features `failpoints`, `planted-bugs`): remove the section",
                );
            }
            // A bad value: say whose (toml names the line, not the key).
            let key = text.lines().nth(line - 1).and_then(|l| l.split_once('='));
            let key = key.map(|(k, _)| k.trim()).filter(|k| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.\"".contains(c))
            });
            if let Some(key) = key.filter(|k| !message.contains(*k)) {
                message = format!("{key}: {message}");
            }
            ConfigError::Parse {
                path: path.map(Into::into),
                line,
                column,
                message,
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Makes the relative paths in the configuration relative to `dir`.
    pub fn resolve_relative_to(&mut self, dir: &Path) {
        for p in [
            &mut self.node.data_dir,
            &mut self.tls.ca_cert,
            &mut self.tls.cert,
            &mut self.tls.key,
        ] {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        let data = self.node.data_dir.clone();
        for p in [
            &mut self.driver.sim.state_dir,
            &mut self.driver.qemu.state_dir,
            &mut self.driver.qemu.image_dir,
            &mut self.driver.libvirt.state_dir,
        ] {
            if p.is_relative() {
                *p = data.join(&*p);
            }
        }
        if let Some(p) = &mut self.driver.exec.working_dir {
            if p.is_relative() {
                *p = data.join(&*p);
            }
        }
    }

    /// Checks every value's range, section by section; the first problem is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.node.validate()?;
        self.load.validate()?;
        validate_host(&self.host)?;
        self.policy.validate()?;
        self.balancing.validate()?;
        self.gossip.validate()?;
        self.driver.validate()?;
        validate_handoff(&self.handoff)?;
        self.reconcile.validate()
    }

    /// The configuration as TOML (with every default filled in).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// `Option<SocketAddr>` as TOML: an address, or `"off"` for none (TOML has no null, so a
/// left-out key would bring the default back).
mod addr_or_off {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    use std::net::SocketAddr;

    pub(super) fn serialize<S: Serializer>(
        v: &Option<SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.collect_str(a),
            None => s.serialize_str("off"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text == "off" {
            return Ok(None);
        }
        text.parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("expected HOST:PORT or \"off\", got {text:?}")))
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// `Ok` when `ok`, else the error for `field` with `reason`.
/// Most tags one host may carry (they are gossiped).
pub const TAGS_MAX: usize = 32;

fn ensure(ok: bool, field: &str, reason: impl Into<String>) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        })
    }
}

/// Every one of `fields` (dotted key, value) must be above 0.
fn above_zero(fields: &[(&str, u64)]) -> Result<(), ConfigError> {
    fields
        .iter()
        .try_for_each(|(field, v)| ensure(*v > 0, field, "must be above 0"))
}

/// `Ok` when `v` lies in `[1 KiB, 64 MiB]` (frame and line limits).
fn frame_limit(field: &str, v: usize) -> Result<(), ConfigError> {
    ensure(
        (1024..=64 * 1024 * 1024).contains(&v),
        field,
        "must be in [1024, 64 MiB]",
    )
}

impl NodeSection {
    fn validate(&self) -> Result<(), ConfigError> {
        // The same rule as the node certificate's name, so a config never names a
        // node that no certificate could prove.
        ensure(
            ballast_gossip::validate_name(&self.id).is_ok(),
            "node.id",
            "must be 1-63 letters, digits or '-', starting with a letter and not ending with '-'",
        )?;
        ensure(
            !self.cluster.is_empty(),
            "node.cluster",
            "must not be empty",
        )?;
        ensure(
            self.tags.len() <= TAGS_MAX,
            "node.tags",
            format!("at most {TAGS_MAX} tags"),
        )?;
        for tag in &self.tags {
            ballast_core::rules::check_tag(tag).map_err(|e| ConfigError::Invalid {
                field: "node.tags".into(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }
}

impl LoadSection {
    fn validate(&self) -> Result<(), ConfigError> {
        let w = &self.weights;
        for (field, v) in [
            ("load.weights.cpu", w.cpu),
            ("load.weights.io", w.io),
            ("load.weights.mem", w.mem),
        ] {
            ensure(
                v.is_finite() && v >= 0.0,
                field,
                format!("a weight must be a finite number >= 0, got {v}"),
            )?;
        }
        ensure(
            w.cpu + w.io + w.mem > 0.0,
            "load.weights",
            "at least one weight must be above 0",
        )?;
        ensure(
            self.smoothing_alpha > 0.0 && self.smoothing_alpha <= 1.0,
            "load.smoothing_alpha",
            "must be in (0, 1]",
        )?;
        above_zero(&[("load.sample_interval", self.sample_interval.get())])
    }
}

/// `[host]`: every capacity a finite number above 0.
fn validate_host(h: &HostCapacity) -> Result<(), ConfigError> {
    for (field, v) in [
        ("host.cpu_cores", h.cpu_cores),
        ("host.cpu_speed", h.cpu_speed),
        ("host.io_bytes_per_s", h.io_bytes_per_s),
        ("host.mem_bytes", h.mem_bytes),
    ] {
        ensure(
            v.is_finite() && v > 0.0,
            field,
            format!("a capacity must be a finite number > 0, got {v}"),
        )?;
    }
    Ok(())
}

impl BalancingSection {
    fn validate(&self) -> Result<(), ConfigError> {
        above_zero(&[
            ("balancing.round_interval", self.round_interval.get()),
            ("balancing.session_timeout", self.session_timeout.get()),
            ("balancing.history_age", self.history_age.get()),
        ])
    }
}

impl GossipSection {
    fn validate(&self) -> Result<(), ConfigError> {
        above_zero(&[
            ("gossip.interval", self.interval.get()),
            ("gossip.rpc_timeout", self.rpc_timeout.get()),
            ("gossip.connect_timeout", self.connect_timeout.get()),
        ])?;
        ensure(
            self.phi_threshold.is_finite() && self.phi_threshold > 0.0,
            "gossip.phi_threshold",
            "must be a finite number > 0",
        )?;
        frame_limit("gossip.max_rpc_frame_bytes", self.max_rpc_frame_bytes)
    }
}

impl ReconcileSection {
    fn validate(&self) -> Result<(), ConfigError> {
        above_zero(&[("reconcile.interval", self.interval.get())])
    }
}

impl DriverSection {
    /// `[driver.exec]`: a command when the exec driver is chosen, and limits that let a
    /// plugin work at all. (`[driver.sim]` holds only values its types keep in range.)
    fn validate(&self) -> Result<(), ConfigError> {
        if let Err(why) = self.libvirt.validate() {
            let (key, message) = why.split_once(": ").unwrap_or(("driver.libvirt", &why));
            ensure(false, key, message)?;
        }
        let e = &self.exec;
        ensure(
            self.kind != DriverKind::Exec
                || e.command.first().is_some_and(|p| !p.trim().is_empty()),
            "driver.exec.command",
            "must name the plugin program when driver.kind = \"exec\"",
        )?;
        above_zero(&[
            ("driver.exec.timeout", e.timeout.get()),
            ("driver.exec.migrate_timeout", e.migrate_timeout.get()),
            ("driver.exec.hello_timeout", e.hello_timeout.get()),
        ])?;
        ensure(
            e.restart_backoff_max.get() >= e.restart_backoff.get(),
            "driver.exec.restart_backoff_max",
            "must be at least restart_backoff",
        )?;
        frame_limit("driver.exec.max_line_bytes", e.max_line_bytes)?;
        ensure(
            e.max_in_flight >= 1,
            "driver.exec.max_in_flight",
            "must be at least 1",
        )
    }
}

/// `[handoff]`: every interval above 0.
fn validate_handoff(h: &HandoffConfig) -> Result<(), ConfigError> {
    above_zero(&[
        ("handoff.prepare_retry", h.prepare_retry.get()),
        ("handoff.prepare_timeout", h.prepare_timeout.get()),
        ("handoff.migrate_timeout", h.migrate_timeout.get()),
        ("handoff.commit_retry", h.commit_retry.get()),
        ("handoff.query_interval", h.query_interval.get()),
        ("handoff.store_retry", h.store_retry.get()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_round_trip() {
        let d = AgentConfig::default();
        d.validate().expect("defaults validate");
        assert_eq!(AgentConfig::from_toml_str(&d.to_toml()).expect("parses"), d);
        assert_eq!(
            AgentConfig::from_toml_str("").expect("empty file = defaults"),
            d
        );
    }

    #[test]
    fn metrics_can_be_turned_off_and_stay_off() {
        let c =
            AgentConfig::from_toml_str("[node]\nmetrics_listen = \"off\"\n").expect("off parses");
        assert_eq!(c.node.metrics_listen, None);
        assert_eq!(
            AgentConfig::from_toml_str(&c.to_toml())
                .expect("round trip")
                .node
                .metrics_listen,
            None
        );
        assert!(AgentConfig::from_toml_str("[node]\nmetrics_listen = \"nowhere\"\n").is_err());
    }

    #[test]
    fn node_ids_follow_the_certificate_rule() {
        for bad in ["", "1abc", "a_b", "a.b", "ends-", "bad id"] {
            let text = format!("[node]\nid = \"{bad}\"\n");
            assert!(
                AgentConfig::from_toml_str(&text).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(AgentConfig::from_toml_str("[node]\nid = \"rack1-host-07\"\n").is_ok());
    }

    #[test]
    fn a_negative_weight_is_refused_by_name() {
        let e = AgentConfig::from_toml_str("[load.weights]\ncpu = -1.0\n")
            .expect_err("negative weight");
        assert!(e.to_string().starts_with("load.weights.cpu:"), "{e}");
    }

    #[test]
    fn each_migration_limit_is_refused_by_its_own_name() {
        for key in ["max_outgoing", "max_incoming", "max_bytes_in_flight"] {
            let e =
                AgentConfig::from_toml_str(&format!("[balancing]\nenabled = true\n{key} = 0\n"))
                    .expect_err("zero limit");
            let text = e.to_string();
            assert!(text.contains("line 3") && text.contains(key), "{text}");
        }
    }

    #[test]
    fn a_duration_is_read_with_its_unit_or_in_milliseconds_under_the_old_key() {
        let cfg =
            AgentConfig::from_toml_str("[balancing]\nround_interval = \"2s\"\n").expect("new key");
        assert_eq!(cfg.balancing.round_interval, Millis::secs(2));
        let cfg =
            AgentConfig::from_toml_str("[balancing]\nround_interval_ms = 2500\n").expect("old key");
        assert_eq!(cfg.balancing.round_interval, Millis::new(2_500));
        let e = AgentConfig::from_toml_str("[balancing]\nround_interval = \"2 fortnights\"\n")
            .expect_err("no unit");
        assert!(e.to_string().contains("line 2"), "{e}");
        let e =
            AgentConfig::from_toml_str("[balancing]\nround_interval = \"0s\"\n").expect_err("zero");
        assert!(
            e.to_string().starts_with("balancing.round_interval:"),
            "{e}"
        );
    }

    #[test]
    fn a_probability_out_of_range_is_refused_at_its_line() {
        let e = AgentConfig::from_toml_str("[driver.sim]\nseed = 1\nfail_prob = 2.0\n")
            .expect_err("fail_prob 2");
        match e {
            ConfigError::Parse { line, message, .. } => {
                assert_eq!(line, 3, "{message}");
                assert!(message.contains("[0, 1]"), "{message}");
            }
            other => panic!("not a parse error: {other}"),
        }
        let ok = AgentConfig::from_toml_str("[driver.sim]\nfail_prob = 0.5\n").expect("0.5");
        assert_eq!(ok.driver.sim.fail_prob.get(), 0.5);
    }

    #[cfg(feature = "failpoints")]
    #[test]
    fn an_unknown_failpoint_is_refused_at_its_line() {
        let e = AgentConfig::from_toml_str("[failpoints]\nexit_at = [\"after:nothing\"]\n")
            .expect_err("unknown failpoint");
        assert!(matches!(e, ConfigError::Parse { line: 2, .. }), "{e}");
        assert!(e.to_string().contains("after:nothing"), "{e}");
    }

    /// ballast 0.1 wrote `[failpoints]` with its defaults into every agent.toml: a build
    /// without test hooks reads such a file (an upgrade keeps the host's config), and
    /// still refuses a section that turns anything on.
    #[cfg(not(any(feature = "failpoints", feature = "planted-bugs")))]
    #[test]
    fn the_inert_failpoints_section_of_0_1_is_ignored_and_any_other_refused() {
        let of_0_1 = "[policy]\nthreshold = 0.05\n\n[failpoints]\nexit_at = []\n\
                      duplicate_sends = false\nplanted_bug = \"None\"\n";
        let cfg = AgentConfig::from_toml_str(of_0_1).expect("0.1's file");
        assert_eq!(cfg.policy.threshold, 0.05);
        for on in [
            "[failpoints]\nexit_at = [\"before:commit\"]\n",
            "[failpoints]\nduplicate_sends = true\n",
            "[failpoints]\nplanted_bug = \"SkipFlush\"\n",
        ] {
            let e = AgentConfig::from_toml_str(on).expect_err(on);
            assert!(e.to_string().contains("test hook"), "{on}: {e}");
        }
    }

    #[test]
    fn a_zero_capacity_is_refused_by_name() {
        let e = AgentConfig::from_toml_str("[host]\nmem_bytes = 0.0\n").expect_err("zero capacity");
        assert!(e.to_string().starts_with("host.mem_bytes:"), "{e}");
    }

    #[test]
    fn a_typo_is_reported_with_its_line() {
        let e = AgentConfig::from_toml_str("[node]\nid = \"a\"\n\n[policy]\nthreshhold = 0.1\n")
            .expect_err("typo");
        match e {
            ConfigError::Parse {
                line, ref message, ..
            } => {
                assert_eq!(line, 5, "{e}");
                assert!(message.contains("threshhold"), "{message}");
            }
            other => panic!("expected a parse error, got {other}"),
        }
    }

    #[test]
    fn the_exec_driver_needs_a_command_and_sane_limits() {
        let e = AgentConfig::from_toml_str("[driver]\nkind = \"exec\"\n")
            .expect_err("exec without command");
        assert!(e.to_string().starts_with("driver.exec.command:"), "{e}");
        let c = AgentConfig::from_toml_str(
            "[driver]\nkind = \"exec\"\n[driver.exec]\ncommand = [\"python3\", \"p.py\"]\n\
             working_dir = \"plug\"\ntimeout_ms = 7000\n[driver.exec.env]\nA = \"1\"\n",
        )
        .expect("exec config parses");
        assert_eq!(c.driver.kind, DriverKind::Exec);
        assert_eq!(c.driver.exec.command, ["python3", "p.py"]);
        assert_eq!(c.driver.exec.timeout.get(), 7000);
        assert_eq!(c.driver.exec.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(
            AgentConfig::from_toml_str(&c.to_toml()).expect("round trip"),
            c
        );
        let mut r = c.clone();
        r.node.data_dir = PathBuf::from("/d");
        r.resolve_relative_to(Path::new("/etc"));
        assert_eq!(r.driver.exec.working_dir, Some(PathBuf::from("/d/plug")));
        let e = AgentConfig::from_toml_str("[driver.exec]\nmax_in_flight = 0\n")
            .expect_err("no request allowed");
        assert!(
            e.to_string().starts_with("driver.exec.max_in_flight:"),
            "{e}"
        );
        assert!(AgentConfig::from_toml_str("[driver.exec]\ncomand = []\n").is_err());
    }

    #[test]
    fn bad_policy_values_are_refused() {
        let e = AgentConfig::from_toml_str("[policy]\nmin_gain = -0.5\n")
            .expect_err("negative min_gain");
        assert!(e.to_string().contains("policy.min_gain"), "{e}");
        assert!(AgentConfig::from_toml_str("[policy]\nmax_moves_per_session = 0\n").is_err());
        assert!(AgentConfig::from_toml_str("[node]\nid = \"bad id!\"\n").is_err());
    }
}
