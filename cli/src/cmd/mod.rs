//! One module per subcommand.

pub mod agent;
pub mod bench;
pub mod completions;
pub mod simulate;
