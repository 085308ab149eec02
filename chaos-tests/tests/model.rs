//! The model check of the handoff protocol: it must find no violation of I1/I2 and must
//! find a committed handoff, and it must find the violations of each planted bug (a
//! checker that cannot fail proves nothing).
//!
//! With `BALLAST_CHAOS_BIN` set (scripts/test sets it to the release binary) the full
//! default model runs as a process; otherwise a smaller model runs in-process, since an
//! unoptimized build explores states about ten times slower.

use ballast_chaos::model::{self, Bounds, HandoffModel, COMMITS, CONCURRENT, I1, I2};
use ballast_node::handoff::{PlantedBug, SourceCopy};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(300);

fn small() -> Bounds {
    Bounds {
        duplicates: 0,
        ..Bounds::default()
    }
}

/// Runs the release model check (`ballast-chaos model ARGS`), which must pass
/// exhaustively; returns its report.
fn model_binary_passes(bin: &str, args: &[&str], source_copy: SourceCopy) -> String {
    let out = Command::new(bin)
        .args(["model", "--timeout-secs", "300", "--source-copy"])
        .arg(source_copy.as_str())
        .args(args)
        .output()
        .expect("run ballast-chaos model");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}");
    assert!(
        out.status.success(),
        "model check {args:?} ({source_copy}) failed:\n{text}"
    );
    assert!(text.contains("exhaustive in"), "{text}");
    text
}

#[test]
fn model_check_finds_no_violation_and_a_commit() {
    for source_copy in SourceCopy::ALL.iter().copied() {
        check_clean(source_copy);
    }
}

/// The correct machine over hypervisors that keep (QEMU) or end (libvirt) the source
/// copy at the switchover.
fn check_clean(source_copy: SourceCopy) {
    if let Ok(bin) = std::env::var("BALLAST_CHAOS_BIN") {
        model_binary_passes(&bin, &[], source_copy);
        return;
    }
    let report = model::run(
        HandoffModel {
            bounds: small(),
            bug: PlantedBug::None,
            source_copy,
        },
        2,
        false,
        TIMEOUT,
    );
    println!("source copy {source_copy}:\n{}", report.render());
    assert!(report.violations().is_empty(), "{}", report.render());
    assert!(report.exhausted, "{}", report.render());
    assert!(
        report.unique_states > 10_000,
        "suspiciously small: {}",
        report.unique_states
    );
    let commits = report
        .properties
        .iter()
        .find(|p| p.name == COMMITS)
        .expect("property");
    assert!(commits.trace.is_some(), "no committed handoff reachable");
    assert!(report.ok());
}

/// Concurrent handoffs (issue 18): both VMs start on one node, which hands both off at
/// once to the next (limits of 2 each way, and 2 VMs' memory in flight), under the same
/// faults. Both source-copy kinds; the check must reach two handoffs out at once.
#[test]
fn model_check_of_two_handoffs_at_once_finds_no_violation() {
    for source_copy in SourceCopy::ALL.iter().copied() {
        if let Ok(bin) = std::env::var("BALLAST_CHAOS_BIN") {
            let text = model_binary_passes(&bin, &["--limit", "2"], source_copy);
            let found = format!("\"{CONCURRENT}\": example found");
            assert!(text.contains(&found), "{text}");
            continue;
        }
        let report = model::run(
            HandoffModel {
                bounds: Bounds {
                    limit: 2,
                    ..small()
                },
                bug: PlantedBug::None,
                source_copy,
            },
            2,
            false,
            TIMEOUT,
        );
        println!("k=2, source copy {source_copy}:\n{}", report.render());
        assert!(report.ok(), "{}", report.render());
        assert!(report.exhausted, "{}", report.render());
        let concurrent = report
            .properties
            .iter()
            .find(|p| p.name == CONCURRENT)
            .expect("property");
        assert!(
            concurrent.trace.is_some(),
            "two handoffs at once never reached"
        );
    }
}

#[test]
fn model_check_finds_each_planted_bug() {
    for (bug, source_copy) in [
        (PlantedBug::PromoteOnTimeout, SourceCopy::Kept),
        (PlantedBug::AckBeforeDurable, SourceCopy::Kept),
        (PlantedBug::AbortAfterSwitchover, SourceCopy::Ended),
    ] {
        let report = model::run(
            HandoffModel {
                bounds: small(),
                bug,
                source_copy,
            },
            2,
            false,
            TIMEOUT,
        );
        let violated: Vec<_> = report.violations().iter().map(|p| p.name).collect();
        assert!(
            violated.contains(&I1) || violated.contains(&I2),
            "{bug:?} not found:\n{}",
            report.render()
        );
        assert!(!report.ok());
    }
}

#[test]
fn binary_exits_1_on_a_planted_bug() {
    let Ok(bin) = std::env::var("BALLAST_CHAOS_BIN") else {
        return;
    };
    let out = Command::new(bin)
        .args(["model", "--bug", "ack-before-durable"])
        .output()
        .expect("run ballast-chaos model");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("VIOLATED") && text.contains("counterexample"),
        "{text}"
    );
}
