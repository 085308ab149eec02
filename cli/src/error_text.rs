//! How the `ballast` command prints an error: the whole chain of causes on one line,
//! outermost first, each said once. Many errors already end with their cause's text
//! (`metrics listener 127.0.0.1:9420: Address already in use`); a cause that the line
//! already says is not repeated.

/// The error and its causes, `: `-separated, without repeats.
pub fn chain(e: &anyhow::Error) -> String {
    join(e.chain().map(ToString::to_string))
}

fn join(messages: impl IntoIterator<Item = String>) -> String {
    let mut out = String::new();
    for m in messages {
        if m.is_empty() || out.contains(&m) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{chain, join};

    #[test]
    fn a_cause_already_in_the_line_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let text = io.to_string();
        let e = anyhow::Error::new(io)
            .context(format!("metrics listener 127.0.0.1:9420: {text}"))
            .context("the agent could not start");
        assert_eq!(
            chain(&e),
            format!("the agent could not start: metrics listener 127.0.0.1:9420: {text}")
        );
    }

    #[test]
    fn a_cause_quoted_inside_a_message_is_said_once() {
        let got = join([
            "metrics listener 1.2.3.4:9: in use (os error 98); set `metrics_listen`".into(),
            "in use (os error 98)".into(),
        ]);
        assert_eq!(
            got,
            "metrics listener 1.2.3.4:9: in use (os error 98); set `metrics_listen`"
        );
    }

    #[test]
    fn distinct_causes_are_all_kept_outermost_first() {
        let got = join(["creating vm-1".into(), "n2".into(), "timed out".into()]);
        assert_eq!(got, "creating vm-1: n2: timed out");
    }
}
