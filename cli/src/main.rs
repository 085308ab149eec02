//! `ballast`: the one binary of ballast — run an agent, bootstrap and operate a cluster,
//! demo and simulate. Exit codes: 0 success, 1 failure, 2 bad usage.

mod cmd;
mod plot;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

/// Decentralized VM balancing across hypervisor hosts.
#[derive(Parser, Debug)]
#[command(name = "ballast", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent of this host.
    Agent(cmd::agent::Args),
    /// Run a benchmark and print its figures.
    Bench(cmd::bench::Args),
    /// Simulate thousands of hosts in one process with the agent's own policy code,
    /// next to a central-greedy baseline.
    Simulate(cmd::simulate::Args),
    /// Print a shell completion script.
    Completions(cmd::completions::Args),
    /// One simulated VM process (started by the sim driver in process mode).
    #[command(hide = true)]
    SimVm {
        /// The VM process's own arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        // The VM process builds its own runtime and has its own exit codes.
        Command::SimVm { args } => {
            let code = ballast_node::driver::sim::vm_process_main(args);
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
        Command::Agent(args) => cmd::agent::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Simulate(args) => cmd::simulate::run(args),
        Command::Completions(args) => cmd::completions::run(args, &mut Cli::command()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
