//! `ballast completions SHELL`: a completion script for bash, zsh, fish, elvish or PowerShell.

use clap_complete::Shell;

/// Arguments of `ballast completions`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The shell to complete for.
    shell: Shell,
}

/// Prints the script on stdout.
pub fn run(args: Args, cmd: &mut clap::Command) -> anyhow::Result<()> {
    clap_complete::generate(args.shell, cmd, "ballast", &mut std::io::stdout());
    Ok(())
}
