//! `ballast config default` (the full documented configuration with every default) and
//! `ballast config check FILE` (every error with its line, plus the certificate files).

use crate::config_doc::documented_toml;
use ballast_node::config::{AgentConfig, ConfigError};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Most errors `config check` reports before it stops looking.
const ERRORS_MAX: usize = 50;

/// Arguments of `ballast config`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Print the full agent configuration with every default, documented.
    Default,
    /// Validate an agent configuration: every error with its line and reason.
    Check {
        /// The file to check.
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// One problem found in a file.
#[derive(Debug, Clone, Serialize, PartialEq)]
struct Problem {
    line: Option<usize>,
    column: Option<usize>,
    message: String,
}

#[derive(Serialize)]
struct CheckReport {
    file: PathBuf,
    valid: bool,
    node: Option<String>,
    cluster: Option<String>,
    errors: Vec<Problem>,
}

/// Runs `ballast config ...`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        Cmd::Default => {
            let header = "ballast agent configuration: every option with its default.\n\
                          Save it, edit what differs, and check it with `ballast config check FILE`.";
            print!("{}", documented_toml(&AgentConfig::default(), header)?);
            Ok(())
        }
        Cmd::Check { file, json } => check(&file, json),
    }
}

fn check(file: &Path, json: bool) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => anyhow::bail!("cannot read {}: {e}", file.display()),
    };
    let (cfg, mut errors) = parse_all(&text);
    if let Some(cfg) = &cfg {
        errors.extend(check_files(file, cfg));
    }
    let report = CheckReport {
        file: file.to_owned(),
        valid: errors.is_empty(),
        node: cfg.as_ref().map(|c| c.node.id.clone()),
        cluster: cfg.as_ref().map(|c| c.node.cluster.clone()),
        errors,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.valid {
        println!(
            "{}: ok (node {}, cluster {})",
            file.display(),
            report.node.as_deref().unwrap_or("?"),
            report.cluster.as_deref().unwrap_or("?")
        );
    } else {
        for p in &report.errors {
            match (p.line, p.column) {
                (Some(l), Some(c)) => eprintln!("{}:{l}:{c}: {}", file.display(), p.message),
                (Some(l), None) => eprintln!("{}:{l}: {}", file.display(), p.message),
                _ => eprintln!("{}: {}", file.display(), p.message),
            }
        }
    }
    if report.valid {
        Ok(())
    } else {
        anyhow::bail!(
            "{} is not valid: {} error(s)",
            file.display(),
            report.errors.len()
        )
    }
}

/// Parses `text`, collecting every parse error: after each one the offending line (or
/// table) is blanked out and parsing starts over, so later errors are found too.
/// Returns the configuration when everything but range checks passed.
fn parse_all(text: &str) -> (Option<AgentConfig>, Vec<Problem>) {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut errors = Vec::new();
    for _ in 0..ERRORS_MAX {
        let current = lines.join("\n");
        match AgentConfig::from_toml_str(&current) {
            Ok(cfg) if errors.is_empty() => return (Some(cfg), errors),
            Ok(_) => return (None, by_line(errors)),
            Err(ConfigError::Parse {
                line,
                column,
                message,
                ..
            }) => {
                let message = message.trim().replace('\n', " ");
                errors.push(Problem {
                    line: Some(line),
                    column: Some(column),
                    message,
                });
                if !blank_out(&mut lines, line) {
                    return (None, by_line(errors));
                }
            }
            Err(ConfigError::Invalid { field, reason }) => {
                errors.push(Problem {
                    line: line_of_key(&current, &field),
                    column: None,
                    message: format!("{field}: {reason}"),
                });
                return (None, by_line(errors));
            }
            Err(other) => {
                errors.push(Problem {
                    line: None,
                    column: None,
                    message: other.to_string(),
                });
                return (None, errors);
            }
        }
    }
    (None, errors)
}

/// The problems in file order (those without a line last).
fn by_line(mut errors: Vec<Problem>) -> Vec<Problem> {
    errors.sort_by_key(|p| (p.line.unwrap_or(usize::MAX), p.column));
    errors
}

/// Blanks out 1-based `line` (a table header takes its keys with it); false when
/// nothing could be removed (the error would repeat forever).
fn blank_out(lines: &mut [String], line: usize) -> bool {
    let Some(idx) = line.checked_sub(1).filter(|i| *i < lines.len()) else {
        return false;
    };
    if lines[idx].trim().is_empty() {
        return false;
    }
    let is_header = lines[idx].trim_start().starts_with('[');
    lines[idx].clear();
    if is_header {
        for l in lines.iter_mut().skip(idx + 1) {
            if l.trim_start().starts_with('[') {
                break;
            }
            l.clear();
        }
    }
    true
}

/// The 1-based line where dotted `field` (e.g. `host.cpu_cores`) is set, if it is.
fn line_of_key(text: &str, field: &str) -> Option<usize> {
    let (table, key) = field.rsplit_once('.').unwrap_or(("", field));
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            current = h.trim().to_owned();
            continue;
        }
        let Some((k, _)) = l.split_once('=') else {
            continue;
        };
        if current == table && k.trim() == key {
            return Some(i + 1);
        }
    }
    // A whole-table field (e.g. `load.weights`) points at its header.
    text.lines()
        .position(|l| l.trim() == format!("[{field}]"))
        .map(|i| i + 1)
}

/// The certificate files the config names: readable, of this node, of this cluster.
fn check_files(file: &Path, cfg: &AgentConfig) -> Vec<Problem> {
    let mut cfg = cfg.clone();
    if let Some(dir) = file.parent() {
        cfg.resolve_relative_to(dir);
    }
    let t = &cfg.tls;
    let problem = |message: String| Problem {
        line: None,
        column: None,
        message,
    };
    match ballast_gossip::load_cert_bundle(&t.cert, &t.key, &t.ca_cert) {
        Err(e) => vec![problem(format!("tls: {e}"))],
        Ok(b) if b.role != ballast_gossip::Role::Node => vec![problem(format!(
            "tls.cert: {} is an admin certificate; an agent needs a node certificate",
            t.cert.display()
        ))],
        Ok(b) if b.name != cfg.node.id => vec![problem(format!(
            "tls.cert: the certificate is of node {:?} but node.id is {:?}",
            b.name, cfg.node.id
        ))],
        Ok(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parse_error_is_reported_with_its_line() {
        let text =
            "[node]\nid = \"a\"\nbogus = 1\n\n[host]\ncpu_cores = \"many\"\n\n[nope]\nx = 1\n";
        let (cfg, errors) = parse_all(text);
        assert!(cfg.is_none());
        let lines: Vec<Option<usize>> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![Some(3), Some(6), Some(8)], "{errors:?}");
        assert!(errors[0].message.contains("bogus"), "{errors:?}");
        assert!(errors[1].message.contains("many"), "{errors:?}");
        assert!(errors[2].message.contains("nope"), "{errors:?}");
    }

    #[test]
    fn a_range_error_points_at_its_key() {
        let text = "[node]\nid = \"a\"\n\n[host]\nmem_bytes = 0.0\n";
        let (_, errors) = parse_all(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, Some(5));
        assert!(
            errors[0].message.starts_with("host.mem_bytes"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_valid_text_parses() {
        let (cfg, errors) = parse_all("[node]\nid = \"n1\"\n");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(cfg.expect("config").node.id, "n1");
    }
}
