//! The agent's configuration, read from TOML. Every option has a default and a doc
//! comment; `ballast config default` prints them all and `ballast config check` validates
//! a file. Unknown keys are errors, so a typo never silently falls back to a default.

use crate::load::{HostCapacity, LoadMode, Weights};
use crate::policy::{PolicyConfig, PolicyConfigError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
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
    /// TCP address of the Prometheus metrics endpoint; none disables it.
    pub metrics_listen: Option<SocketAddr>,
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
    pub sample_interval_ms: u64,
    /// Weight of a new sample in the exponential smoothing, in (0, 1].
    pub smoothing_alpha: f64,
}

impl Default for LoadSection {
    fn default() -> Self {
        Self {
            mode: LoadMode::Measured,
            weights: Weights::default(),
            sample_interval_ms: 5_000,
            smoothing_alpha: 0.3,
        }
    }
}

/// When rounds run and how many migrations may be under way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalancingSection {
    /// Time between two rounds, in milliseconds.
    pub round_interval_ms: u64,
    /// Random extra delay added to each interval, up to this many milliseconds.
    pub round_jitter_ms: u64,
    /// A balancing session that takes longer than this is dropped.
    pub session_timeout_ms: u64,
    /// Outgoing migrations under way at once on this node.
    pub max_outgoing: usize,
    /// Incoming migrations under way at once on this node.
    pub max_incoming: usize,
    /// Whether this node starts rounds at all (it still answers its peers).
    pub enabled: bool,
}

impl Default for BalancingSection {
    fn default() -> Self {
        Self {
            round_interval_ms: 10_000,
            round_jitter_ms: 2_000,
            session_timeout_ms: 5_000,
            max_outgoing: 1,
            max_incoming: 1,
            enabled: true,
        }
    }
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
        };
        Self::Invalid {
            field,
            reason: e.to_string(),
        }
    }
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
        let cfg: Self = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            ConfigError::Parse {
                path: path.map(Into::into),
                line,
                column,
                message: e.message().to_owned(),
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
    }

    /// Checks every value's range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: &str| {
            Err(ConfigError::Invalid {
                field: field.into(),
                reason: reason.into(),
            })
        };
        if self.node.id.is_empty()
            || self.node.id.len() > 63
            || !self.node.id.chars().all(is_id_char)
        {
            return invalid(
                "node.id",
                "must be 1-63 characters of a-z, A-Z, 0-9, '-', '_' or '.'",
            );
        }
        if self.node.cluster.is_empty() {
            return invalid("node.cluster", "must not be empty");
        }
        let w = &self.load.weights;
        for (field, v) in [
            ("load.weights.cpu", w.cpu),
            ("load.weights.io", w.io),
            ("load.weights.mem", w.mem),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return invalid(
                    field,
                    &format!("a weight must be a finite number >= 0, got {v}"),
                );
            }
        }
        if w.cpu + w.io + w.mem <= 0.0 {
            return invalid("load.weights", "at least one weight must be above 0");
        }
        let h = &self.host;
        for (field, v) in [
            ("host.cpu_cores", h.cpu_cores),
            ("host.cpu_speed", h.cpu_speed),
            ("host.io_bytes_per_s", h.io_bytes_per_s),
            ("host.mem_bytes", h.mem_bytes),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return invalid(
                    field,
                    &format!("a capacity must be a finite number > 0, got {v}"),
                );
            }
        }
        if !(self.load.smoothing_alpha > 0.0 && self.load.smoothing_alpha <= 1.0) {
            return invalid("load.smoothing_alpha", "must be in (0, 1]");
        }
        if self.load.sample_interval_ms == 0 {
            return invalid("load.sample_interval_ms", "must be above 0");
        }
        if self.balancing.round_interval_ms == 0 {
            return invalid("balancing.round_interval_ms", "must be above 0");
        }
        if self.balancing.max_outgoing == 0 || self.balancing.max_incoming == 0 {
            return invalid(
                "balancing.max_outgoing",
                "max_outgoing and max_incoming must be at least 1",
            );
        }
        self.policy.validate()?;
        Ok(())
    }

    /// The configuration as TOML (with every default filled in).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
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
    fn a_negative_weight_is_refused_by_name() {
        let e = AgentConfig::from_toml_str("[load.weights]\ncpu = -1.0\n")
            .expect_err("negative weight");
        assert!(e.to_string().starts_with("load.weights.cpu:"), "{e}");
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
    fn bad_policy_values_are_refused() {
        let e = AgentConfig::from_toml_str("[policy]\nmin_gain = -0.5\n")
            .expect_err("negative min_gain");
        assert!(e.to_string().contains("policy.min_gain"), "{e}");
        assert!(AgentConfig::from_toml_str("[policy]\nmax_moves_per_session = 0\n").is_err());
        assert!(AgentConfig::from_toml_str("[node]\nid = \"bad id!\"\n").is_err());
    }
}
