//! `ballast demo --agents 5 --vms 60 --duration 40 --json` as the issue states it: five
//! real agent processes balance 60 VMs created on one of them; the final JSON object
//! reports every VM found and max/mean <= 1.10, and the demo leaves nothing behind.

use std::process::Command;

#[test]
fn the_demo_balances_60_vms_over_5_agents_and_cleans_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args([
            "demo",
            "--agents",
            "5",
            "--vms",
            "60",
            "--duration",
            "40",
            "--json",
        ])
        .env("TMPDIR", tmp.path())
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Only the JSON object on stdout.
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    println!("demo summary: {v}");
    assert_eq!(v["agents"], 5);
    assert_eq!(v["vms"], 60);
    assert_eq!(v["vms_found"], 60, "{v}");
    let ratio = v["final_max_over_mean"].as_f64().expect("ratio");
    assert!((1.0..=1.10).contains(&ratio), "{v}");
    assert!(v["migrations"].as_u64().expect("migrations") > 0, "{v}");
    assert!(v["seconds"].as_f64().expect("seconds") > 0.0);
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("tmp").collect();
    assert!(left.is_empty(), "the demo left {left:?}");
}

#[test]
fn bad_demo_arguments_are_usage_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["demo", "--agents", "1"])
        .output()
        .expect("run demo");
    assert_eq!(out.status.code(), Some(2));
}
