//! Running the `ballast` binary as a user does, for the CLI tests: one command in a
//! directory with no admin bundle or config inherited from the environment, and the
//! checks every test makes of its exit code and output.

#![allow(dead_code)]

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `ballast ARGS --admin BUNDLE` in the bundle's directory.
pub fn with_admin(bundle: &Path, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    let b = bundle.to_str().expect("utf-8 path");
    all.extend(["--admin", b]);
    ballast(&all, bundle.parent().expect("bundle parent"))
}

/// Runs `ballast ARGS` in `cwd`, ignoring `BALLAST_CONFIG` and `BALLAST_ADMIN`.
pub fn ballast(args: &[&str], cwd: &Path) -> Output {
    run_binary(Path::new(env!("CARGO_BIN_EXE_ballast")), args, cwd)
}

/// Runs `BIN ARGS` (a `ballast` of some release) as [`ballast`] does.
pub fn run_binary(bin: &Path, args: &[&str], cwd: &Path) -> Output {
    Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .env_remove("BALLAST_CONFIG")
        .env_remove("BALLAST_ADMIN")
        .output()
        .expect("run ballast")
}

/// The exit code (the command was not killed by a signal).
pub fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs a command that must succeed and returns its stdout.
pub fn ok(args: &[&str], cwd: &Path) -> String {
    let o = ballast(args, cwd);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{args:?} failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Runs a command that must succeed and print JSON.
pub fn json(args: &[&str], cwd: &Path) -> Value {
    serde_json::from_str(&ok(args, cwd)).expect("JSON output")
}

/// Runs a command that must fail with `exit` and say `needle` on stderr.
pub fn fails(args: &[&str], cwd: &Path, exit: i32, needle: &str) {
    let o = ballast(args, cwd);
    assert_eq!(code(&o), exit, "{args:?}: {}", stderr(&o));
    assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
}
