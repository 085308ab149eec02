//! Failpoints: named handoff steps at which the agent kills itself (SIGKILL), so tests
//! and the chaos harness can crash a side exactly before or after a flush or a message.
//!
//! Names: `before:OP` / `after:OP` around a store transition (`OP` as the store names it)
//! and `before-send:MSG` / `after-send:MSG` around a handoff message (`MSG` as
//! `HandoffMsg::kind` names it). Set in `[failpoints] exit_at` or in the environment
//! variable [`FAILPOINTS_ENV`] (comma separated).

use std::collections::BTreeSet;

/// The environment variable that adds failpoints (comma separated).
pub const FAILPOINTS_ENV: &str = "BALLAST_FAILPOINTS";

/// Store transitions a failpoint may name.
pub const STORE_OPS: &[&str] = &[
    "begin_migrate_out",
    "abort_migrate_out",
    "commit_migrate_out",
    "forget_transfer",
    "accept_incoming",
    "promote_incoming",
    "drop_incoming",
];

/// Handoff messages a failpoint may name.
pub const MESSAGES: &[&str] = &[
    "prepare",
    "prepared",
    "prepare_refused",
    "commit",
    "commit_ack",
    "abort",
    "query_outcome",
    "outcome",
];

/// Checks a failpoint name; `Err` says what is wrong.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = match name.split_once(':') {
        Some(("before" | "after", op)) => STORE_OPS.contains(&op),
        Some(("before-send" | "after-send", msg)) => MESSAGES.contains(&msg),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "unknown failpoint {name:?} (before:OP, after:OP, before-send:MSG, after-send:MSG)"
        ))
    }
}

/// Every failpoint name there is (for tests that try them all).
pub fn all_names() -> Vec<String> {
    let mut out = Vec::new();
    for op in STORE_OPS {
        out.push(format!("before:{op}"));
        out.push(format!("after:{op}"));
    }
    for msg in MESSAGES {
        out.push(format!("before-send:{msg}"));
        out.push(format!("after-send:{msg}"));
    }
    out
}

/// The armed failpoints of one agent.
#[derive(Clone, Debug, Default)]
pub struct Failpoints {
    armed: BTreeSet<String>,
}

impl Failpoints {
    /// The failpoints of the configuration plus those of [`FAILPOINTS_ENV`]; unknown
    /// names are an error.
    pub fn new(configured: &[String]) -> Result<Self, String> {
        let mut armed = BTreeSet::new();
        let from_env = std::env::var(FAILPOINTS_ENV).unwrap_or_default();
        let env_names = from_env.split(',').map(str::trim).filter(|s| !s.is_empty());
        for name in configured.iter().map(String::as_str).chain(env_names) {
            check_name(name)?;
            armed.insert(name.to_owned());
        }
        if !armed.is_empty() {
            tracing::warn!(failpoints = ?armed, "failpoints armed: this agent will kill itself");
        }
        Ok(Self { armed })
    }

    /// Whether any failpoint is armed.
    pub fn any(&self) -> bool {
        !self.armed.is_empty()
    }

    /// Kills the process now if `kind:what` is armed.
    pub fn hit(&self, kind: &str, what: &str) {
        if self.armed.is_empty() {
            return;
        }
        let name = format!("{kind}:{what}");
        if self.armed.contains(&name) {
            die(&name);
        }
    }
}

/// Kills this process with SIGKILL (no destructors, no flush), like a crash.
fn die(name: &str) -> ! {
    eprintln!("ballast agent: failpoint {name} hit, killing myself");
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for n in all_names() {
            assert_eq!(check_name(&n), Ok(()), "{n}");
        }
        assert!(check_name("after:nothing").is_err());
        assert!(check_name("during:prepare").is_err());
        assert!(check_name("prepare").is_err());
    }
}
