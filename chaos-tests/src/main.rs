//! `ballast-chaos`: chaos harness and model check for ballast.
//!
//! Subcommands:
//! - `model`: exhaustive stateright check of the handoff protocol (I1, I2, and that a
//!   handoff can commit). Exits 1 on a violation.

use anyhow::Result;
use ballast_chaos::model::{self, Bounds, HandoffModel};
use ballast_node::handoff::PlantedBug;
use clap::{Parser, Subcommand, ValueEnum};
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
}

impl From<Bug> for PlantedBug {
    fn from(b: Bug) -> Self {
        match b {
            Bug::None => PlantedBug::None,
            Bug::PromoteOnTimeout => PlantedBug::PromoteOnTimeout,
            Bug::AckBeforeDurable => PlantedBug::AckBeforeDurable,
        }
    }
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Model(args) => run_model(args),
    }
}

fn run_model(args: ModelArgs) -> Result<ExitCode> {
    anyhow::ensure!(args.nodes >= 2 && args.nodes <= 5, "--nodes must be 2..=5");
    anyhow::ensure!(args.vms >= 1 && args.vms <= 4, "--vms must be 1..=4");
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
        },
        bug: args.bug.into(),
    };
    println!("model: {:?}, planted bug {:?}", model.bounds, model.bug);
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
