//! `ballast simulate` as a user runs it: JSON shape, plot file, bad arguments.

mod cli_util;

use cli_util::*;
use std::path::Path;

/// Where the commands run: `simulate` reads and writes no files but `--plot`'s.
fn here() -> &'static Path {
    Path::new(".")
}

#[test]
fn json_has_every_documented_field() {
    let v = json(
        &[
            "simulate",
            "--hosts",
            "200",
            "--scenario",
            "hotspot",
            "--seed",
            "5",
            "--rounds",
            "40",
            "--json",
        ],
        here(),
    );
    assert_eq!(v["scenario"], "hotspot");
    assert_eq!(v["hosts"], 200);
    assert_eq!(v["seed"], 5);
    assert!(v["vms"].as_u64().is_some_and(|n| n > 1000));
    let rounds = v["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 41, "round 0 plus 40 rounds");
    for k in [
        "round",
        "max_over_mean",
        "cv",
        "migrations",
        "sessions",
        "swaps",
    ] {
        assert!(!rounds[1][k].is_null(), "rounds[].{k}");
    }
    for k in [
        "rounds_to_1_10",
        "rounds_to_1_05",
        "final_max_over_mean",
        "migrations",
        "load_moved",
        "sessions",
        "swaps",
    ] {
        assert!(v["summary"].get(k).is_some(), "summary.{k}");
    }
    assert_eq!(v["baseline"]["name"], "central-greedy");
    for k in ["final_max_over_mean", "migrations", "load_moved"] {
        assert!(v["baseline"][k].as_f64().is_some(), "baseline.{k}");
    }
    assert!(v["elapsed_s"].as_f64().is_some_and(|s| s > 0.0));
    // The hotspot starts far from balanced and ends near it.
    assert!(rounds[0]["max_over_mean"].as_f64().unwrap_or(0.0) > 3.0);
    assert!(v["summary"]["final_max_over_mean"].as_f64().unwrap_or(9.0) < 1.15);
}

#[test]
fn plot_writes_a_png() {
    let dir = tempfile::tempdir().expect("tempdir");
    let png = dir.path().join("imbalance.png");
    let png_arg = png.to_str().expect("utf-8 path");
    ok(
        &[
            "simulate", "--hosts", "100", "--rounds", "20", "--plot", png_arg,
        ],
        here(),
    );
    let bytes = std::fs::read(&png).expect("plot written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        bytes.len() > 5_000,
        "suspiciously small plot: {} bytes",
        bytes.len()
    );
}

#[test]
fn human_output_has_tables_and_the_baseline() {
    let text = ok(&["simulate", "--hosts", "100", "--rounds", "20"], here());
    for needle in [
        "max/mean",
        "central-greedy",
        "migrations",
        "rounds to max/mean <= 1.05",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn bad_arguments_exit_2_with_a_reason() {
    for (args, needle) in [
        (&["simulate", "--scenario", "nope"][..], "unknown scenario"),
        (&["simulate", "--hosts", "1"][..], "hosts"),
        (
            &["simulate", "--sender", "whoever"][..],
            "busier or initiator",
        ),
        (&["simulate", "--bogus"][..], "--bogus"),
        (
            &["simulate", "--peer-choice", "best"][..],
            "uniform, two-choice or most-different",
        ),
        (&["simulate", "--peer-samples", "0"][..], "peer-samples"),
        (&["simulate", "--swaps", "maybe"][..], "swaps"),
    ] {
        fails(args, here(), 2, needle);
    }
    // A negative min_gain is bad usage.
    fails(
        &[
            "simulate",
            "--min-gain=-1",
            "--rounds",
            "1",
            "--hosts",
            "10",
        ],
        here(),
        2,
        "expected a number >= 0",
    );
}

#[test]
fn variants_run_side_by_side_with_swaps_and_peer_samples() {
    let v = json(
        &[
            "simulate",
            "--hosts",
            "200",
            "--scenario",
            "hotspot",
            "--rounds",
            "30",
            "--variants",
            "--json",
        ],
        here(),
    );
    let rows = v.as_array().expect("rows");
    assert!(rows.len() >= 8, "{} rows", rows.len());
    let samples: Vec<u64> = rows
        .iter()
        .filter_map(|r| r["peer_samples"].as_u64())
        .collect();
    for d in [1, 2, 4, 8, 16] {
        assert!(
            samples.contains(&d),
            "no variant samples {d} peers: {samples:?}"
        );
    }
    assert!(rows.iter().any(|r| r["swaps"] == true) && rows.iter().any(|r| r["swaps"] == false));
    let last = rows.last().expect("rows");
    assert_eq!(last["variant"], "the flags' policy (default)");
    assert_eq!(last["peer_choice"], "most-different");
    for r in rows {
        assert!(r["migrations"].as_u64().is_some_and(|m| m > 0), "{r}");
        assert!(r["sessions"].as_u64().is_some_and(|s| s > 0), "{r}");
        assert!(r["migrations_vs_greedy"].as_f64().is_some(), "{r}");
    }
}
