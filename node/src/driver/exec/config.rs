//! Configuration of the `exec` driver: the `[driver.exec]` section of the agent's TOML.

use ballast_core::handoff::SourceCopy;
use ballast_core::units::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The `exec` driver's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecConfig {
    /// The plugin's command line: program (looked up in `PATH` when relative) and
    /// arguments. Required.
    pub command: Vec<String>,
    /// Extra environment variables for the plugin (it also inherits the agent's).
    pub env: BTreeMap<String, String>,
    /// Working directory of the plugin; the agent's when unset.
    pub working_dir: Option<PathBuf>,
    /// How long the plugin may take to answer one request, in milliseconds. Past it the
    /// plugin counts as hung: it is killed and restarted on the next call.
    #[serde(alias = "timeout_ms")]
    pub timeout: Millis,
    /// The same limit for `migrate_out`, which lasts as long as the transfer.
    #[serde(alias = "migrate_timeout_ms")]
    pub migrate_timeout: Millis,
    /// The same limit for the `hello` handshake of a freshly started plugin (an
    /// interpreter may take a while to start on a busy host).
    #[serde(alias = "hello_timeout_ms")]
    pub hello_timeout: Millis,
    /// Wait before restarting a plugin that failed, in milliseconds; doubled after each
    /// further failure in a row, up to `restart_backoff_max_ms`.
    #[serde(alias = "restart_backoff_ms")]
    pub restart_backoff: Millis,
    /// Upper bound of the restart wait, in milliseconds.
    #[serde(alias = "restart_backoff_max_ms")]
    pub restart_backoff_max: Millis,
    /// Longest line accepted from (or sent to) the plugin, in bytes.
    pub max_line_bytes: usize,
    /// Most requests in flight at once; further calls wait (within their timeout).
    pub max_in_flight: usize,
    /// What the plugin's completed migration leaves of the source copy: `"kept"`
    /// (default: paused until `finish_outgoing`) or `"ended"` (the hypervisor ends it, as
    /// libvirt does; the handoff then rolls forward). A plugin that says so in `hello`
    /// must agree with this setting, else it is refused.
    pub source_copy: SourceCopy,
}

impl Default for ExecConfig {
    fn default() -> Self {
        Self {
            command: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            timeout: Millis::new(30_000),
            migrate_timeout: Millis::new(600_000),
            hello_timeout: Millis::new(30_000),
            restart_backoff: Millis::new(500),
            restart_backoff_max: Millis::new(30_000),
            max_line_bytes: 1 << 20,
            max_in_flight: 64,
            source_copy: SourceCopy::Kept,
        }
    }
}

impl ExecConfig {
    /// [`Self::timeout_ms`] as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout.get().max(1))
    }
    /// [`Self::hello_timeout_ms`] as a duration.
    pub fn hello_timeout(&self) -> Duration {
        Duration::from_millis(self.hello_timeout.get().max(1))
    }
    /// [`Self::migrate_timeout_ms`] as a duration.
    pub fn migrate_timeout(&self) -> Duration {
        Duration::from_millis(self.migrate_timeout.get().max(1))
    }
    /// The wait before the next restart after `failures` failures in a row.
    pub fn backoff(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let shift = (failures - 1).min(20);
        let ms = self.restart_backoff.get().saturating_mul(1 << shift);
        Duration::from_millis(ms.min(self.restart_backoff_max.get()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_backs_off() {
        let c: ExecConfig =
            toml::from_str("command = [\"python3\", \"plugin.py\"]\ntimeout_ms = 5\n")
                .expect("parse");
        assert_eq!(c.command, ["python3", "plugin.py"]);
        assert_eq!(c.timeout.get(), 5);
        assert_eq!(
            c.restart_backoff.get(),
            ExecConfig::default().restart_backoff.get()
        );
        assert!(toml::from_str::<ExecConfig>("comand = []").is_err());
        assert_eq!(c.backoff(0), Duration::ZERO);
        assert_eq!(c.backoff(1), Duration::from_millis(500));
        assert_eq!(c.backoff(3), Duration::from_millis(2_000));
        assert_eq!(c.backoff(99), Duration::from_millis(30_000));
    }
}
