//! The log output of `ballast agent` and `ballast bench`: tracing to standard error,
//! filtered by `BALLAST_LOG`, in colour only when standard error is a terminal and
//! `NO_COLOR` is unset or empty (no-color.org), so that logs written to a file or a pipe
//! carry no escape codes.

use std::io::IsTerminal;

/// Starts logging to standard error with `BALLAST_LOG`, or `default` when it is unset or
/// invalid (`None`: no logging without `BALLAST_LOG`).
pub fn init(default: Option<&str>) {
    let filter = match (
        tracing_subscriber::EnvFilter::try_from_env("BALLAST_LOG"),
        default,
    ) {
        (Ok(f), _) => f,
        (Err(_), Some(d)) => tracing_subscriber::EnvFilter::new(d),
        (Err(_), None) => return,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Whether to colour: on a terminal, unless `NO_COLOR` holds a non-empty value.
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::colour;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
        assert!(!colour(false, Some(OsStr::new(""))));
    }
}
