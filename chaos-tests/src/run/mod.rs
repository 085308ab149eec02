//! `ballast-chaos run`: real agent processes on loopback, a workload that keeps
//! balancing busy, faults drawn from a seed, and the invariant checks of docs/design.md §Handoff.
//!
//! Files:
//! - [`plan`]: the fault schedule, a pure function of the seed.
//! - [`cluster`]: the agent processes, their files, and the process-level faults.
//! - [`netfault`]: partitions and packet loss with `tc` on loopback.
//! - [`netns`]: the run's private network namespace (re-exec under `unshare --net`).
//! - [`workload`]: VM specs (random-walk usage) and names.
//! - [`observe`]: sweeps of every agent's store view and status; counters.
//! - [`invariants`]: the I1-I4 checks, pure.
//! - `harness`: the run itself, phase by phase.
//! - [`report`]: the summary and the JSON object.

pub mod cluster;
mod harness;
pub mod invariants;
pub mod netfault;
pub mod netns;
pub mod observe;
pub mod plan;
pub mod report;
pub mod workload;

use ballast_node::handoff::{PlantedBug, SourceCopy};
use plan::FaultKind;
pub use report::Report;
use std::path::PathBuf;
use std::time::Duration;

/// The shape of one run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Agents to start (2..=16).
    pub agents: usize,
    /// How long the workload and the faults last.
    pub duration: Duration,
    /// Seed of the fault schedule and of the workload.
    pub seed: u64,
    /// VMs created at the start.
    pub vms: usize,
    /// Fault kinds to inject.
    pub faults: Vec<FaultKind>,
    /// A deliberate handoff bug in every agent (`None` for the real protocol).
    pub plant_bug: PlantedBug,
    /// What the sim hypervisors leave of a source copy after the switchover: `Kept`
    /// (paused until finished, as QEMU over QMP) or `Ended` (as libvirt).
    pub source_copy: SourceCopy,
    /// Bound on the settle phase after the faults (I3).
    pub settle: Duration,
    /// The `ballast` binary.
    pub ballast_bin: PathBuf,
    /// Keep the run's directory here instead of a removed temporary one.
    pub keep_dir: Option<PathBuf>,
    /// Progress lines on stderr.
    pub verbose: bool,
}

/// A run that could not be carried out (as opposed to one that found violations).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is unusable. Nothing was started.
    #[error("invalid run: {0}")]
    Invalid(String),
    /// The cluster could not be set up or driven. Everything started was stopped.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// The agents never formed a cluster. Everything started was stopped.
    #[error("the agents did not form a cluster: {0}")]
    NoCluster(String),
    /// Another local failure (runtime, temporary directory, admin client).
    #[error("{0}")]
    Local(String),
}

/// Runs the harness; `Ok` carries the report, whatever it found.
pub fn run(cfg: &RunConfig) -> Result<Report, RunError> {
    if !(2..=16).contains(&cfg.agents) {
        return Err(RunError::Invalid("--agents must be 2..=16".into()));
    }
    if cfg.duration < Duration::from_secs(10) {
        return Err(RunError::Invalid("--duration must be at least 10s".into()));
    }
    if !cfg.ballast_bin.exists() {
        return Err(RunError::Invalid(format!(
            "agent binary {} not found (build it, or set BALLAST_BIN)",
            cfg.ballast_bin.display()
        )));
    }
    has_test_hooks(&cfg.ballast_bin)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| RunError::Local(format!("runtime: {e}")))?;
    rt.block_on(harness::run(cfg))
}

/// Refuses an agent binary built without the test hooks (its default config has no
/// `[failpoints]`): its agents would ignore every failpoint and reject the configs the
/// harness writes.
fn has_test_hooks(bin: &std::path::Path) -> Result<(), RunError> {
    let out = std::process::Command::new(bin)
        .args(["config", "default"])
        .output()
        .map_err(|e| RunError::Local(format!("running {} config default: {e}", bin.display())))?;
    if String::from_utf8_lossy(&out.stdout).contains("\n[failpoints]") {
        Ok(())
    } else {
        Err(RunError::Invalid(format!(
            "agent binary {} has no test hooks; build one with \
             `cargo build --profile release-hooks --workspace --bins` \
             (target/release-hooks/ballast) or set BALLAST_BIN",
            bin.display()
        )))
    }
}

/// Parses a duration: `120`, `120s`, `30m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected seconds, or a number with s, m or h"))?;
    Ok(Duration::from_secs(n * mult))
}

/// Parses a comma separated list of fault kinds.
pub fn parse_faults(s: &str) -> Result<Vec<FaultKind>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let k: FaultKind = part.parse()?;
        if !out.contains(&k) {
            out.push(k);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_fault_lists_parse() {
        assert_eq!(parse_duration("120"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(
            parse_faults("kill,pause, kill"),
            Ok(vec![FaultKind::Kill, FaultKind::Pause])
        );
        assert!(parse_faults("kill,meteor").is_err());
    }
}
