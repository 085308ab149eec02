//! The private network namespace of a run: `ballast-chaos run` re-executes itself under
//! `unshare --net` (util-linux), so its agents, their loopback and the `tc` filters of
//! [`super::netfault`] belong to this run alone and vanish with it. Needs root; without
//! it (or without `unshare`) the run goes on in the host's namespace with the network
//! faults switched off, and says so.

use std::process::{Command, ExitStatus};

/// Set in the re-executed process: it already runs in its own namespace.
pub const NETNS_ENV: &str = "BALLAST_CHAOS_NETNS";

/// Whether this process already runs in the run's private namespace.
pub fn inside() -> bool {
    std::env::var_os(NETNS_ENV).is_some()
}

/// Re-runs this process with the same arguments in a new network namespace and returns
/// its exit status, or `Err` with the reason it could not (then run here instead).
pub fn reexec() -> Result<ExitStatus, String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not root".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("current executable: {e}"))?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(exe)
        .args(args)
        .env(NETNS_ENV, "1")
        .status()
        .map_err(|e| format!("unshare: {e}"))
}
