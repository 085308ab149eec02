//! Exit statuses beyond 0 (done) and 1 (failed) for answers that are neither: scripts
//! tell them apart without parsing text. 2 is a bad command line (clap).

/// An answer that is true but not the whole story; its text goes to standard error
/// after the command printed what it knows.
#[derive(Debug, thiserror::Error)]
pub enum Unfinished {
    /// Some nodes did not answer: what was printed lacks their part (exit 3).
    #[error("partial answer: {0}")]
    Partial(String),
    /// A move committed, but its destination has not resumed the VM yet (exit 4).
    #[error("{0}")]
    NotResumed(String),
}

impl Unfinished {
    /// The process exit status for it.
    pub fn exit_status(&self) -> u8 {
        match self {
            Self::Partial(_) => 3,
            Self::NotResumed(_) => 4,
        }
    }
}

/// The exit status of a command's error: [`Unfinished`]'s own, else 1.
pub fn of(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<Unfinished>()
        .map_or(1, Unfinished::exit_status)
}
