//! `ballast-chaos`: chaos harness and model check for ballast.
//!
//! Subcommands:
//! - `model`: exhaustive stateright check of the handoff protocol (I1, I2, and that a
//!   handoff can commit). Exits 1 on a violation.
//! - `run`: real agent processes, faults drawn from a seed, checks of I1-I4 (see
//!   `docs/reliability.md`). Exits 1 on a violation, 2 if the run could not be made.

use anyhow::Result;
use ballast_chaos::model::{self, Bounds, HandoffModel};
use ballast_chaos::run::plan::FaultKind;
use ballast_chaos::run::{self as chaos_run, netns, RunConfig};
use ballast_node::handoff::{PlantedBug, SourceCopy};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "ballast-chaos",
    about = "Chaos harness and model check for ballast"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Model-check the handoff protocol (the agent's own state machine) with stateright.
    Model(ModelArgs),
    /// Run real agents on loopback under faults drawn from a seed and check I1-I4.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Agent processes.
    #[arg(long, default_value_t = 5)]
    agents: usize,
    /// How long the workload and the faults last: seconds, or with s, m, h (`30m`).
    #[arg(long, default_value = "120", value_parser = ballast_chaos::run::parse_duration)]
    duration: Duration,
    /// Seed of the fault schedule and the workload (the same seed replays the same faults).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// VMs created at the start.
    #[arg(long, default_value_t = 20)]
    vms: usize,
    /// Hypervisor driver (only `sim` records what runs where, which I2 needs).
    #[arg(long, value_enum, default_value_t = DriverArg::Sim)]
    driver: DriverArg,
    /// Fault kinds, comma separated: kill, host_kill, pause, partition, loss, restart.
    #[arg(long, default_value = "kill,host_kill,pause,partition,loss,restart",
          value_parser = ballast_chaos::run::parse_faults)]
    faults: std::vec::Vec<FaultKind>,
    /// Plant a handoff bug in every agent, to see the checks fail.
    #[arg(long, value_enum, default_value_t = Bug::None)]
    plant_bug: Bug,
    /// What the sim hypervisors leave of a source copy after the switchover: `kept`
    /// (paused until the handoff finishes it) or `ended` (gone at once, as libvirt does).
    #[arg(long, default_value = "kept")]
    source_copy: SourceCopy,
    /// Bound on the settle phase after the faults, seconds (I3).
    #[arg(long, default_value_t = 60)]
    settle: u64,
    /// The `ballast` binary (default: $BALLAST_BIN, or next to this executable).
    #[arg(long, env = "BALLAST_BIN")]
    ballast_bin: Option<PathBuf>,
    /// Keep the run's files (configs, stores, logs, run logs) in this directory.
    #[arg(long)]
    keep_dir: Option<PathBuf>,
    /// Stay in the host's network namespace (no partition or loss faults).
    #[arg(long)]
    no_netns: bool,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
    /// Progress lines on stderr.
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DriverArg {
    Sim,
    Qemu,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// Plant a protocol bug, to see the checker catch it.
    #[arg(long, value_enum, default_value_t = Bug::None)]
    bug: Bug,
    /// Hosts in the model.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// VMs in the model.
    #[arg(long, default_value_t = 2)]
    vms: usize,
    /// Moves started per VM.
    #[arg(long, default_value_t = 1)]
    moves: u8,
    /// Agent crashes (each followed by recovery).
    #[arg(long, default_value_t = 1)]
    crashes: u8,
    /// Duplicated message deliveries.
    #[arg(long, default_value_t = 1)]
    duplicates: u8,
    /// Lost messages (omit for any number).
    #[arg(long)]
    drops: Option<u8>,
    /// Failed migrations or driver calls (1 about triples the state space).
    #[arg(long, default_value_t = 0)]
    driver_failures: u8,
    /// Messages in flight at most (a send beyond it is lost).
    #[arg(long, default_value_t = 2)]
    net_capacity: usize,
    /// Let a VM move to any other node (default: only to the next node).
    #[arg(long)]
    any_destination: bool,
    /// Handoffs each way at once per node (and that many VMs' memory in flight); above
    /// 1, every VM starts on the first node.
    #[arg(long, default_value_t = 1)]
    limit: usize,
    /// What the driver leaves of the source copy after the switchover: `kept` (QEMU over
    /// QMP: paused until finished) or `ended` (libvirt: gone, the move must roll forward).
    #[arg(long, default_value = "kept")]
    source_copy: SourceCopy,
    /// Checker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Depth-first instead of breadth-first.
    #[arg(long)]
    dfs: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Bug {
    None,
    PromoteOnTimeout,
    AckBeforeDurable,
    AbortAfterSwitchover,
}

impl From<Bug> for PlantedBug {
    fn from(b: Bug) -> Self {
        match b {
            Bug::None => PlantedBug::None,
            Bug::PromoteOnTimeout => PlantedBug::PromoteOnTimeout,
            Bug::AckBeforeDurable => PlantedBug::AckBeforeDurable,
            Bug::AbortAfterSwitchover => PlantedBug::AbortAfterSwitchover,
        }
    }
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Model(args) => run_model(args),
        Command::Run(args) => run_chaos(args),
    }
}

/// The `ballast` binary: next to this executable, else in the workspace's target dir
/// (the test-hook build `release-hooks` first: a plain release build has no failpoints).
fn default_ballast_bin() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("ballast")));
    if let Some(p) = beside.filter(|p| p.exists()) {
        return p;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["release-hooks", "debug"] {
        let p = root.join("target").join(profile).join("ballast");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("ballast")
}

fn run_chaos(args: RunArgs) -> Result<ExitCode> {
    let wants_net = args.faults.iter().any(|k| k.needs_network());
    if wants_net && !args.no_netns && !netns::inside() {
        match netns::reexec() {
            Ok(status) => {
                let code = status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(2);
                return Ok(ExitCode::from(code));
            }
            Err(why) => eprintln!("ballast-chaos: no private network namespace ({why}); partition and loss faults are off"),
        }
    }
    anyhow::ensure!(
        args.driver == DriverArg::Sim,
        "--driver qemu is not supported by the chaos run yet: I2 needs the sim driver's run records"
    );
    let cfg = RunConfig {
        agents: args.agents,
        duration: args.duration,
        seed: args.seed,
        vms: args.vms,
        faults: args.faults,
        plant_bug: args.plant_bug.into(),
        source_copy: args.source_copy,
        settle: Duration::from_secs(args.settle),
        ballast_bin: args.ballast_bin.unwrap_or_else(default_ballast_bin),
        keep_dir: args.keep_dir,
        verbose: args.verbose,
    };
    if !args.json {
        println!(
            "ballast-chaos run: seed {} (replay with --seed {})",
            cfg.seed, cfg.seed
        );
    }
    let report = match chaos_run::run(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ballast-chaos run (seed {}): {e}", cfg.seed);
            return Ok(ExitCode::from(2));
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_model(args: ModelArgs) -> Result<ExitCode> {
    anyhow::ensure!(args.nodes >= 2 && args.nodes <= 5, "--nodes must be 2..=5");
    anyhow::ensure!(args.vms >= 1 && args.vms <= 4, "--vms must be 1..=4");
    anyhow::ensure!(
        args.limit >= 1 && args.limit <= args.vms,
        "--limit must be 1..=--vms"
    );
    let model = HandoffModel {
        bounds: Bounds {
            nodes: args.nodes,
            vms: args.vms,
            moves_per_vm: args.moves,
            crashes: args.crashes,
            duplicates: args.duplicates,
            drops: args.drops,
            driver_failures: args.driver_failures,
            net_capacity: args.net_capacity,
            any_destination: args.any_destination,
            limit: args.limit,
        },
        bug: args.bug.into(),
        source_copy: args.source_copy,
    };
    println!(
        "model: {:?}, planted bug {:?}, source copy after switchover: {}",
        model.bounds, model.bug, model.source_copy
    );
    let report = model::run(
        model,
        args.threads,
        args.dfs,
        Duration::from_secs(args.timeout_secs),
    );
    print!("{}", report.render());
    Ok(if report.ok() && report.exhausted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
