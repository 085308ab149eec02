//! Failpoints: named handoff steps at which the agent kills itself (SIGKILL), so tests
//! and the chaos harness can crash a side exactly before or after a flush or a message.
//!
//! Names ([`Failpoint`]): `before:OP` / `after:OP` around a store transition (`OP` a
//! [`StoreOpKind`] name) and `before-send:MSG` / `after-send:MSG` around a handoff message
//! (`MSG` a [`MsgKind`] name), and `driver:STEP` inside a driver's migration
//! ([`DriverStep`]). The names are those of the handoff machine's own kinds, so no list
//! is kept here. Armed only in builds with the cargo feature `failpoints`, from
//! `[failpoints] exit_at` or the environment variable `FAILPOINTS_ENV` (comma separated).

use crate::handoff::{MsgKind, StoreOpKind};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One handoff step where an agent can be made to die.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Failpoint {
    /// Before a store transition.
    Before(StoreOpKind),
    /// After a store transition succeeded (and was flushed).
    After(StoreOpKind),
    /// Before a handoff message is sent.
    BeforeSend(MsgKind),
    /// After the peer acknowledged delivery of a handoff message.
    AfterSend(MsgKind),
    /// At a step inside a driver's migration, which the handoff does not see.
    Driver(DriverStep),
}

/// Steps inside the `qemu` driver's migration of a VM with local disks, where the source
/// agent can be made to die (`driver:STEP`), to test recovery in each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DriverStep {
    /// The disk mirrors were started and copy.
    MirrorRunning,
    /// Every mirror is ready; the memory migration is not started.
    MirrorReady,
    /// The memory migration was started.
    MemoryMigrating,
    /// The memory is copied and the source stopped; QEMU waits before the switchover,
    /// the mirrors are not completed yet.
    PausedBeforeSwitchover,
    /// The memory migration completed (the source stopped); the mirrors were completed
    /// in the pause before it.
    SwitchedOver,
}

impl DriverStep {
    /// Every step.
    pub const ALL: [DriverStep; 5] = [
        Self::MirrorRunning,
        Self::MirrorReady,
        Self::MemoryMigrating,
        Self::PausedBeforeSwitchover,
        Self::SwitchedOver,
    ];

    /// The step's name (`mirror-running`...).
    pub fn name(self) -> &'static str {
        match self {
            Self::MirrorRunning => "mirror-running",
            Self::MirrorReady => "mirror-ready",
            Self::MemoryMigrating => "memory-migrating",
            Self::PausedBeforeSwitchover => "paused-before-switchover",
            Self::SwitchedOver => "switched-over",
        }
    }
}

/// Kills the process at driver step `step` when this process's agent armed
/// `driver:STEP`; nothing in a build without the cargo feature `failpoints`.
pub fn driver_step(step: DriverStep) {
    #[cfg(feature = "failpoints")]
    if let Some(f) = armed::PROCESS.get() {
        f.hit(Failpoint::Driver(step));
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = step;
}

impl Failpoint {
    /// Every failpoint there is (for tests that try them all).
    pub fn all() -> Vec<Failpoint> {
        let ops = StoreOpKind::ALL.iter();
        let msgs = MsgKind::ALL.iter();
        ops.clone()
            .flat_map(|&k| [Self::Before(k), Self::After(k)])
            .chain(msgs.flat_map(|&m| [Self::BeforeSend(m), Self::AfterSend(m)]))
            .chain(DriverStep::ALL.map(Self::Driver))
            .collect()
    }
}

impl fmt::Display for Failpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Before(k) => write!(f, "before:{k}"),
            Self::After(k) => write!(f, "after:{k}"),
            Self::BeforeSend(m) => write!(f, "before-send:{m}"),
            Self::AfterSend(m) => write!(f, "after-send:{m}"),
            Self::Driver(s) => write!(f, "driver:{}", s.name()),
        }
    }
}

/// A name that is no failpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown failpoint {0:?} (before:OP, after:OP, before-send:MSG, after-send:MSG, driver:STEP)"
)]
pub struct UnknownFailpoint(String);

impl FromStr for Failpoint {
    type Err = UnknownFailpoint;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownFailpoint(name.to_owned());
        match name.split_once(':') {
            Some(("before", op)) => op.parse().map(Self::Before).map_err(|_| unknown()),
            Some(("after", op)) => op.parse().map(Self::After).map_err(|_| unknown()),
            Some(("before-send", m)) => m.parse().map(Self::BeforeSend).map_err(|_| unknown()),
            Some(("after-send", m)) => m.parse().map(Self::AfterSend).map_err(|_| unknown()),
            Some(("driver", step)) => DriverStep::ALL
                .into_iter()
                .find(|s| s.name() == step)
                .map(Self::Driver)
                .ok_or_else(unknown),
            _ => Err(unknown()),
        }
    }
}

impl TryFrom<String> for Failpoint {
    type Error = UnknownFailpoint;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

impl From<Failpoint> for String {
    fn from(f: Failpoint) -> Self {
        f.to_string()
    }
}

#[cfg(feature = "failpoints")]
pub use armed::{Failpoints, FAILPOINTS_ENV};

/// The test hooks of one agent: armed failpoints and duplicated sends. Empty, and every
/// method a no-op, in a build without the cargo feature `failpoints`.
#[derive(Clone, Debug, Default)]
pub struct TestHooks {
    #[cfg(feature = "failpoints")]
    failpoints: Failpoints,
    #[cfg(feature = "failpoints")]
    duplicate_sends: bool,
}

impl TestHooks {
    /// The hooks `config` arms (plus the failpoints of [`FAILPOINTS_ENV`]); an unknown
    /// name comes back with where it was found.
    #[cfg(feature = "failpoints")]
    pub fn new(
        config: &crate::config::AgentConfig,
    ) -> Result<Self, (&'static str, UnknownFailpoint)> {
        let failpoints =
            Failpoints::new(&config.failpoints.exit_at).map_err(|e| (FAILPOINTS_ENV, e))?;
        // The driver's steps are armed for the process (the first agent of it).
        let _ = armed::PROCESS.set(failpoints.clone());
        Ok(Self {
            failpoints,
            duplicate_sends: config.failpoints.duplicate_sends,
        })
    }

    /// Kills the process if `point` is armed.
    pub fn fail_at(&self, point: Failpoint) {
        #[cfg(feature = "failpoints")]
        self.failpoints.hit(point);
        #[cfg(not(feature = "failpoints"))]
        let _ = point;
    }

    /// How many times to send each handoff message: twice with
    /// `failpoints.duplicate_sends` (duplicates must change nothing), else once.
    pub fn send_copies(&self) -> usize {
        #[cfg(feature = "failpoints")]
        if self.duplicate_sends {
            return 2;
        }
        1
    }
}

#[cfg(feature = "failpoints")]
mod armed {
    use super::{Failpoint, UnknownFailpoint};
    use std::collections::BTreeSet;

    /// The environment variable that adds failpoints (comma separated).
    pub const FAILPOINTS_ENV: &str = "BALLAST_FAILPOINTS";

    /// The failpoints of this process's (first) agent, for [`super::driver_step`].
    pub(super) static PROCESS: std::sync::OnceLock<Failpoints> = std::sync::OnceLock::new();

    /// The armed failpoints of one agent.
    #[derive(Clone, Debug, Default)]
    pub struct Failpoints {
        armed: BTreeSet<Failpoint>,
    }

    impl Failpoints {
        /// The failpoints of the configuration plus those of [`FAILPOINTS_ENV`]; unknown
        /// names are an error.
        pub fn new(configured: &[Failpoint]) -> Result<Self, UnknownFailpoint> {
            let mut armed: BTreeSet<Failpoint> = configured.iter().copied().collect();
            let from_env = std::env::var(FAILPOINTS_ENV).unwrap_or_default();
            let env_names = from_env.split(',').map(str::trim).filter(|s| !s.is_empty());
            for name in env_names {
                armed.insert(name.parse::<Failpoint>()?);
            }
            if !armed.is_empty() {
                let names: Vec<String> = armed.iter().map(ToString::to_string).collect();
                tracing::warn!(failpoints = ?names, "failpoints armed: this agent will kill itself");
            }
            Ok(Self { armed })
        }

        /// Whether any failpoint is armed.
        pub fn any(&self) -> bool {
            !self.armed.is_empty()
        }

        /// Kills the process now if `point` is armed.
        pub fn hit(&self, point: Failpoint) {
            if self.armed.contains(&point) {
                die(point);
            }
        }
    }

    /// Kills this process with SIGKILL (no destructors, no flush), like a crash.
    fn die(point: Failpoint) -> ! {
        eprintln!("ballast agent: failpoint {point} hit, killing myself");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_and_unknown_names_are_refused() {
        let all = Failpoint::all();
        assert_eq!(
            all.len(),
            2 * (StoreOpKind::ALL.len() + MsgKind::ALL.len()) + DriverStep::ALL.len()
        );
        for f in all {
            assert_eq!(f.to_string().parse::<Failpoint>(), Ok(f));
        }
        assert_eq!(
            "after-send:commit".parse::<Failpoint>(),
            Ok(Failpoint::AfterSend(MsgKind::Commit))
        );
        assert!("after:nothing".parse::<Failpoint>().is_err());
        assert!("during:prepare".parse::<Failpoint>().is_err());
        assert!("prepare".parse::<Failpoint>().is_err());
    }
}
