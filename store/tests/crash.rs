//! Crash safety with a real process: a child (this test binary, re-executed in "writer
//! mode") runs multi-key transactions in a loop and reports each call before it starts
//! and after it returned `Ok` (so only flushed changes are reported done); the parent
//! SIGKILLs it at random moments, reopens the store and checks that every change reported
//! done is there, that the one call in flight is either fully there or not at all, and
//! that the cross-tree invariants hold. The seed is printed; set
//! `BALLAST_STORE_CRASH_SEED` to replay a run.

mod common;

use ballast_store::{Store, VmState};
use common::{apply_store, check_invariants, me, next_valid_op, Model, Op, CLUSTER};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Set in the child: the store directory it writes to.
const CHILD_DIR_ENV: &str = "BALLAST_STORE_CRASH_CHILD_DIR";
/// Set in the child: the seed of its operation sequence.
const CHILD_SEED_ENV: &str = "BALLAST_STORE_CRASH_CHILD_SEED";
/// Replays a parent run.
const SEED_ENV: &str = "BALLAST_STORE_CRASH_SEED";
/// Marks the child's report lines among the test harness's own output.
const LINE_PREFIX: &str = "@@store-crash ";
/// How many SIGKILLs a run must deliver.
const KILLS: usize = 60;
/// How long the parent lets a child run after it reported ready, at most.
const KILL_DELAY_MS_MAX: u64 = 120;
/// The most calls one child makes if nobody kills it.
const CHILD_OPS_MAX: usize = 5_000;
/// How long the parent waits for a child to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The whole run's time bound.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    // One write per line so a kill cannot interleave two reports.
    let _ = out.write_all(format!("{LINE_PREFIX}{line}\n").as_bytes());
    let _ = out.flush();
}

/// Not a test on its own: the entry point of the writer child. Does nothing unless the
/// parent test below started this binary with `CHILD_DIR_ENV` set.
#[test]
fn writer_child_entry_point() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let store = match Store::open(Path::new(&dir), CLUSTER, &me()) {
        Ok(store) => store,
        Err(e) => {
            report(&format!("FAIL open: {e}"));
            std::process::exit(3);
        }
    };
    let mut model = Model::from_snapshot(&store.snapshot().expect("snapshot"));
    report("READY");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut last: Option<Op> = None;
    for _ in 0..CHILD_OPS_MAX {
        // Now and then replay the last call, as a retried message would.
        let op = match &last {
            Some(op) if rng.random_ratio(1, 20) => op.clone(),
            _ => next_valid_op(&model, &mut rng),
        };
        let json = serde_json::to_string(&op).expect("op encodes");
        report(&format!("BEGIN {json}"));
        let (expected, got) = (model.apply(&op), apply_store(&store, &op));
        if expected != got {
            report(&format!(
                "FAIL {json}: store said {got:?}, model {expected:?}"
            ));
            std::process::exit(4);
        }
        report(&format!("OK {json}"));
        last = Some(op);
    }
    std::process::exit(0);
}

/// What one child run reported.
#[derive(Default)]
struct Reports {
    ready: bool,
    done: Vec<Op>,
    in_flight: Option<Op>,
    failures: Vec<String>,
}

fn parse_reports(lines: &[String]) -> Reports {
    let mut reports = Reports::default();
    for line in lines {
        let Some(at) = line.find(LINE_PREFIX) else {
            continue;
        };
        let body = &line[at + LINE_PREFIX.len()..];
        if body == "READY" {
            reports.ready = true;
        } else if let Some(json) = body.strip_prefix("BEGIN ") {
            reports.in_flight = Some(serde_json::from_str(json).expect("BEGIN line decodes"));
        } else if let Some(json) = body.strip_prefix("OK ") {
            let op: Op = serde_json::from_str(json).expect("OK line decodes");
            assert_eq!(
                reports.in_flight.take().as_ref(),
                Some(&op),
                "OK without its BEGIN"
            );
            reports.done.push(op);
        } else {
            reports.failures.push(body.to_owned());
        }
    }
    reports
}

/// Runs one child, kills it (unless it ends first) and returns its complete report lines
/// and whether it was killed.
fn run_child(
    dir: &Path,
    child_seed: u64,
    kill_early: bool,
    delay: Duration,
) -> (Vec<String>, bool) {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "writer_child_entry_point",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_SEED_ENV, child_seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().expect("child stdout");
    let (ready_tx, ready_rx) = mpsc::sync_channel::<()>(1);
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        // A line cut by the kill has no newline: it was not reported.
        while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 && buf.ends_with(b"\n") {
            let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
            if line.ends_with("READY") {
                let _ = ready_tx.try_send(());
            }
            lines.push(line);
            buf.clear();
        }
        lines
    });
    if !kill_early {
        let _ = ready_rx.recv_timeout(READY_TIMEOUT);
    }
    std::thread::sleep(delay);
    let _ = child.kill(); // SIGKILL; fails only if the child already exited
    let status = child.wait().expect("child reaped");
    let lines = reader.join().expect("reader thread");
    let killed = status.signal() == Some(libc::SIGKILL);
    assert!(
        killed || status.success(),
        "child failed with {status}: {lines:#?}"
    );
    (lines, killed)
}

#[test]
fn sigkill_never_loses_a_flushed_change_or_tears_a_transaction() {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash test seed {seed} (replay with {SEED_ENV}={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::TempDir::new().unwrap();
    let started = Instant::now();
    let mut model = Model::default();
    let mut created: BTreeSet<String> = BTreeSet::new();
    let (mut kills, mut rounds, mut done_ops) = (0, 0, 0);
    let (mut in_flight_kept, mut in_flight_lost) = (0, 0);
    while kills < KILLS {
        rounds += 1;
        assert!(
            rounds <= KILLS * 3,
            "seed {seed}: too few children were killed while running"
        );
        assert!(
            started.elapsed() < RUN_TIMEOUT,
            "seed {seed}: run exceeded {RUN_TIMEOUT:?}"
        );
        let kill_early = rng.random_ratio(1, 8);
        let delay = Duration::from_millis(rng.random_range(0..=KILL_DELAY_MS_MAX));
        let (lines, killed) = run_child(dir.path(), rng.random(), kill_early, delay);
        kills += usize::from(killed);
        let reports = parse_reports(&lines);
        assert!(
            reports.failures.is_empty(),
            "seed {seed} round {rounds}: {:?}",
            reports.failures
        );
        assert!(
            reports.ready || reports.done.is_empty(),
            "seed {seed}: ops before READY"
        );

        for op in &reports.done {
            model.apply(op);
            if let Op::Create { vm, .. } = op {
                created.insert(vm.clone());
            }
        }
        done_ops += reports.done.len();

        let store = Store::open(dir.path(), CLUSTER, &me()).unwrap_or_else(|e| {
            panic!("seed {seed} round {rounds}: reopen after SIGKILL failed: {e}")
        });
        let snapshot = store.snapshot().expect("snapshot");
        drop(store);
        if !model.matches(&snapshot) {
            // Only the call in flight may have landed, and then completely.
            let op = reports.in_flight.as_ref().unwrap_or_else(|| {
                panic!("seed {seed} round {rounds}: store differs from the reported changes\nstore {snapshot:#?}\nmodel {model:#?}")
            });
            let mut with_op = model.clone();
            with_op.apply(op);
            assert!(
                with_op.matches(&snapshot),
                "seed {seed} round {rounds}: store is neither before nor after {op:?}\nstore {snapshot:#?}\nbefore {model:#?}"
            );
            model = with_op;
            if let Op::Create { vm, .. } = op {
                created.insert(vm.clone());
            }
            in_flight_kept += 1;
        } else if reports.in_flight.is_some() {
            in_flight_lost += 1;
        }
        check_invariants(&snapshot).unwrap_or_else(|e| panic!("seed {seed} round {rounds}: {e}"));
        for vm in &created {
            let here = snapshot.entries.iter().any(|e| e.vm.as_str() == vm);
            let left = snapshot.transfers.iter().any(|t| t.vm.as_str() == vm);
            assert!(
                here || left,
                "seed {seed} round {rounds}: {vm} is in neither the schedule nor the transfers"
            );
        }
        for e in &snapshot.entries {
            if let VmState::MigratingOut { epoch, .. } = e.state {
                assert!(snapshot
                    .transfers
                    .iter()
                    .all(|t| !(t.vm == e.vm && t.epoch == epoch)));
            }
        }
    }
    let final_model = Model::from_snapshot(
        &Store::open(dir.path(), CLUSTER, &me())
            .unwrap()
            .snapshot()
            .unwrap(),
    );
    println!(
        "crash test: {kills} SIGKILLs in {rounds} runs, {done_ops} calls reported done, \
         in-flight call found applied {in_flight_kept} times and absent {in_flight_lost} times, \
         {} entries and {} transfer records at the end, {:.1} s",
        final_model.entries.len(),
        final_model.transfers.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        done_ops >= KILLS,
        "seed {seed}: children made too little progress to test anything"
    );
    assert!(
        !final_model.transfers.is_empty(),
        "seed {seed}: no handoff ever committed"
    );
}
