//! `ballast`: the one binary of ballast — run an agent, bootstrap and operate a cluster,
//! demo and simulate. Exit codes: 0 success, 1 failure, 2 bad usage (an unknown command
//! or flag, a missing or malformed argument such as `--memory 12XB`).

mod admin_bundle;
mod cert_check;
mod cluster_dir;
mod cmd;
mod config_doc;
mod error_text;
mod exit_status;
mod local_cluster;
mod logging;
mod plot;
mod size;
mod table;
mod text_pos;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

/// Decentralized VM balancing across hypervisor hosts.
#[derive(Parser, Debug)]
#[command(
    name = "ballast",
    version,
    about,
    propagate_version = true,
    after_help = "Exit codes: 0 success, 1 failure, 2 bad usage.\n\
                  Admin commands find the cluster through --config FILE (BALLAST_CONFIG), \
                  --admin DIR (BALLAST_ADMIN) or ./ballast-admin."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent of this host.
    Agent(cmd::agent::Args),
    /// Create a cluster (CA, admin certificate, first node).
    Cluster(cmd::cluster::Args),
    /// Add a node (certificate and config) or forget one that is gone for good.
    Node(cmd::node::Args),
    /// Issue another admin bundle with a role: operator or read-only.
    Admin(cmd::admin_issue::Args),
    /// Print the documented default configuration or check a configuration file.
    Config(cmd::config::Args),
    /// Create, list, show, delete, pin, unpin and move VMs.
    Vm(cmd::vm::Args),
    /// Show the cluster's nodes, their load and VMs.
    Status(cmd::status::Args),
    /// Show the recent balancing sessions: who paired, both loads, the decision, the planned
    /// moves.
    Sessions(cmd::sessions::Args),
    /// Move every VM off a node (with progress); it takes no new VMs until undrained.
    Drain(cmd::drain::DrainArgs),
    /// Let a drained node take VMs again.
    Undrain(cmd::drain::UndrainArgs),
    /// Check a hypervisor driver: the conformance suite on an exec plugin.
    Driver(cmd::driver::Args),
    /// Run a local cluster of agents on the sim driver and watch it balance.
    Demo(cmd::demo::Args),
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
        Command::Cluster(args) => cmd::cluster::run(args),
        Command::Node(args) => cmd::node::run(args),
        Command::Admin(args) => cmd::admin_issue::run(args),
        Command::Config(args) => cmd::config::run(args),
        Command::Vm(args) => cmd::vm::run(args),
        Command::Status(args) => cmd::status::run(args),
        Command::Sessions(args) => cmd::sessions::run(args),
        Command::Drain(args) => cmd::drain::run_drain(args),
        Command::Undrain(args) => cmd::drain::run_undrain(args),
        Command::Driver(args) => cmd::driver::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Simulate(args) => cmd::simulate::run(args),
        Command::Completions(args) => cmd::completions::run(args, &mut Cli::command()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let status = exit_status::of(&e);
            let label = if status == 1 { "error" } else { "warning" };
            eprintln!("{label}: {}", error_text::chain(&e));
            ExitCode::from(status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
