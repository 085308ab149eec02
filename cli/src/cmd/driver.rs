//! `ballast driver ...`: commands about hypervisor drivers. `driver check` runs the
//! driver conformance suite on an exec plugin (`driver_check`).

use super::driver_check;

/// Arguments of `ballast driver`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Run the driver conformance suite on an exec plugin (two instances of it, standing
    /// for two hosts) and print each case with pass or fail; exit 0 only when all pass.
    Check(driver_check::Args),
}

/// Runs `ballast driver ...`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        Cmd::Check(args) => driver_check::run(args),
    }
}
