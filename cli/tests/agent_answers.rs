//! What `ballast` tells the operator is what the schedule and the hypervisor hold, also
//! when the hypervisor fails on the way (real agents, sim driver fault injection and a
//! misbehaving exec plugin, the CLI as a user runs it): a create whose start answer is
//! lost but whose VM runs is a success with a warning; a failed start or a spec the
//! driver refuses leaves nothing behind; a delete whose stop fails changes nothing; a
//! move whose destination dies before resuming the VM is not reported "moved".

mod agent_util;
mod cli_util;

use agent_util::*;
use std::path::Path;
use std::time::Duration;

use cli_util::with_admin as cli;

/// Two agents without balancing, started, with an admin bundle; `extra` goes into
/// n1's `[driver.sim]`.
fn two_nodes(extra: &str) -> (Cluster, std::path::PathBuf) {
    let quiet = NodeOpts {
        balancing: false,
        ..NodeOpts::default()
    };
    let first = NodeOpts {
        extra: extra.to_owned(),
        ..quiet.clone()
    };
    let mut c = Cluster::new(&[first, quiet]);
    c.start_all();
    let bundle = c.write_admin_bundle();
    run_bounded(
        Duration::from_secs(40),
        c.wait_membership(Duration::from_secs(20)),
    );
    (c, bundle)
}

/// The VMs in node `i`'s schedule.
fn entries_on(c: &Cluster, i: usize) -> Vec<String> {
    let mut snaps = Vec::new();
    run_bounded(Duration::from_secs(20), async {
        snaps = c.snapshots().await;
    });
    snaps[i]
        .as_ref()
        .map(|s| s.entries.iter().map(|e| e.vm.to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn a_create_whose_start_answer_is_lost_but_runs_is_reported_created() {
    let (c, bundle) = two_nodes("fail_next_starts = 1");
    let o = cli(
        &bundle,
        &[
            "vm", "create", "g1", "--vcpus", "1", "--memory", "256M", "--node", "n1",
        ],
    );
    let (out, err) = (cli_util::stdout(&o), cli_util::stderr(&o));
    if cli_util::code(&o) != 0 {
        c.print_log_tails(40);
    }
    assert_eq!(cli_util::code(&o), 0, "create failed: {out}{err}");
    assert!(out.contains("VM g1 created on n1"), "{out}");
    assert!(
        err.contains("warning:") && err.contains("but it runs"),
        "no warning about the failed start: {err}"
    );
    // What was said is what holds: g1 is in n1's schedule and its VM runs there.
    assert_eq!(entries_on(&c, 0), ["g1"]);
    let show = cli_util::stdout(&cli(&bundle, &["vm", "show", "g1"]));
    assert!(show.contains("state:    running"), "{show}");
    let runs = c.run_records();
    assert!(
        runs.iter()
            .any(|r| r.vm.as_ref().is_some_and(|v| v.as_str() == "g1")),
        "g1 never ran: {runs:?}"
    );
    c.assert_no_double_run();
}

#[test]
fn a_spec_the_driver_refuses_leaves_nothing_behind() {
    let (c, bundle) = two_nodes("");
    let o = cli(
        &bundle,
        &[
            "vm",
            "create",
            "g2",
            "--vcpus",
            "1",
            "--memory",
            "256M",
            "--node",
            "n1",
            "--opt",
            "profile=bogus",
        ],
    );
    let err = cli_util::stderr(&o);
    assert_eq!(cli_util::code(&o), 1, "{err}");
    assert!(
        err.contains("VM g2 was not created on n1 (nothing of it is left)")
            && err.contains("invalid VM spec"),
        "{err}"
    );
    assert!(!err.contains("hypervisor: "), "repeated prefix: {err}");
    // No entry anywhere, no VM process, and reconciliation never tries it.
    assert!(entries_on(&c, 0).is_empty(), "an entry was kept");
    let show = cli(&bundle, &["vm", "show", "g2"]);
    assert_eq!(cli_util::code(&show), 1);
    assert!(cli_util::stderr(&show).contains("not found"));
    std::thread::sleep(Duration::from_millis(2_500)); // two reconcile passes
    assert!(
        !c.logs(0).contains("reconcile: start failed"),
        "reconciliation kept starting the refused VM"
    );
    assert!(c
        .run_records()
        .iter()
        .all(|r| r.vm.as_ref().is_none_or(|v| v.as_str() != "g2")));
    // The name is free again: a valid create of g2 works.
    let o = cli(
        &bundle,
        &[
            "vm", "create", "g2", "--vcpus", "1", "--memory", "256M", "--node", "n1",
        ],
    );
    assert_eq!(cli_util::code(&o), 0, "{}", cli_util::stderr(&o));
}

/// Two agents without balancing, n2 armed to die right after it takes a VM over (its
/// entry says `Running`) and before it resumes it; `vm` created on n1.
fn dying_destination(vm: &str) -> (Cluster, std::path::PathBuf) {
    let quiet = NodeOpts {
        balancing: false,
        ..NodeOpts::default()
    };
    let mut c = Cluster::new(&[quiet.clone(), quiet]);
    c.start(0, "");
    c.start(1, "after:promote_incoming");
    let bundle = c.write_admin_bundle();
    run_bounded(Duration::from_secs(40), async {
        c.wait_membership(Duration::from_secs(20)).await;
        c.admin(0)
            .create_vm(&vm.into(), &spec(1.0), Some(&nid(&c, 0)), false)
            .await
            .expect("create");
    });
    (c, bundle)
}

/// The destination dies right after it took the VM over (its entry says `Running`)
/// and before it resumed the paused copy: `vm move` must not say "moved".
#[test]
fn a_move_whose_destination_dies_before_resuming_is_not_reported_moved() {
    let (mut c, bundle) = dying_destination("g3");
    let o = cli(
        &bundle,
        &["vm", "move", "g3", "--to", "n2", "--timeout", "8", "--json"],
    );
    let (out, err) = (cli_util::stdout(&o), cli_util::stderr(&o));
    assert!(c.exited(1), "the failpoint did not fire: {out}{err}");
    assert_eq!(cli_util::code(&o), 4, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["moved"], true, "{report}");
    assert_eq!(report["running"], false, "{report}");
    assert!(
        err.contains("committed, but g3 does not run yet: n2 does not answer"),
        "{err}"
    );
    // vm show says where it is and why it does not run, instead of "not found".
    let o = cli(&bundle, &["vm", "show", "g3"]);
    let err = cli_util::stderr(&o);
    assert_eq!(cli_util::code(&o), 4, "{err}");
    assert!(
        err.contains("VM g3 was handed over by n1 to n2") && err.contains("n2 does not answer"),
        "{err}"
    );
    // n2 back: it resumes g3, which then runs there (and only there).
    c.start(1, "");
    run_bounded(Duration::from_secs(60), async {
        wait_until(Duration::from_secs(40), "g3 running on n2", || async {
            let o = cli(&bundle, &["vm", "show", "g3"]);
            let out = cli_util::stdout(&o);
            cli_util::code(&o) == 0 && out.contains("node:     n2") && out.contains("running")
        })
        .await;
    });
    c.assert_no_double_run();
}

/// A plugin written from docs/driver-protocol.md that misbehaves on purpose, by VM
/// name: `lost-*` starts and then answers garbage (the agent kills and restarts it),
/// `fail-*` fails its start with `io` before starting anything, `stuck-*` cannot be
/// stopped. VMs are kept in a file, so a restarted plugin finds them.
const ANSWERS_PLUGIN: &str = r#"
import json, os, sys
path = os.path.join(sys.argv[1], "vms.json")
def load():
    try:
        with open(path) as f: return json.load(f)
    except FileNotFoundError: return {}
def save(vms):
    with open(path + ".tmp", "w") as f: json.dump(vms, f)
    os.replace(path + ".tmp", path)
def send(o):
    sys.stdout.write(json.dumps(o) + "\n"); sys.stdout.flush()
for line in sys.stdin:
    req = json.loads(line); rid = req["id"]; m = req["method"]
    vm = req.get("params", {}).get("vm"); vms = load()
    if m == "hello": send({"id": rid, "result": {"protocol": 1, "name": "answers"}})
    elif m in ("list", "adopt"): send({"id": rid, "result": [{"vm": k, "state": "running"} for k in vms]})
    elif m == "start" and vm.startswith("lost-"):
        vms[vm] = True; save(vms); sys.stdout.write("garbage\n"); sys.stdout.flush()
    elif m == "start" and vm.startswith("fail-"):
        send({"id": rid, "error": {"kind": "io", "message": "cannot start " + vm}})
    elif m == "start":
        vms[vm] = True; save(vms); send({"id": rid, "result": None})
    elif m == "stop" and vm.startswith("stuck-"):
        send({"id": rid, "error": {"kind": "io", "message": "cannot stop " + vm}})
    elif m == "stop":
        vms.pop(vm, None); save(vms); send({"id": rid, "result": None})
    elif m == "usage" and vm in vms:
        send({"id": rid, "result": {"cpu_time_s": 0.0, "io_bytes": 0, "mem_bytes": 0}})
    elif m == "usage":
        send({"id": rid, "error": {"kind": "not_found", "message": vm}})
    else:
        send({"id": rid, "error": {"kind": "unsupported", "message": m}})
"#;

/// The exec plugin's VMs (its state file).
fn plugin_vms(state: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(state.join("vms.json")).unwrap_or_else(|_| "{}".into());
    let vms: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).expect("plugin state");
    vms.keys().cloned().collect()
}

#[test]
fn changes_on_a_misbehaving_plugin_say_what_holds() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let plugin = scratch.path().join("answers_plugin.py");
    std::fs::write(&plugin, ANSWERS_PLUGIN).expect("write plugin");
    let state = scratch.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    let exec = NodeOpts {
        balancing: false,
        driver: Some(format!(
            "[driver]\nkind = \"exec\"\n\n[driver.exec]\ncommand = [\"python3\", {:?}, {:?}]\nrestart_backoff = \"100ms\"",
            plugin.display().to_string(),
            state.display().to_string()
        )),
        ..NodeOpts::default()
    };
    let quiet = NodeOpts {
        balancing: false,
        ..NodeOpts::default()
    };
    let mut c = Cluster::new(&[exec, quiet]);
    c.start_all();
    let bundle = c.write_admin_bundle();
    run_bounded(
        Duration::from_secs(40),
        c.wait_membership(Duration::from_secs(20)),
    );
    let create = |name: &str| {
        cli(
            &bundle,
            &[
                "vm", "create", name, "--vcpus", "1", "--memory", "256M", "--node", "n1",
            ],
        )
    };

    // Garbage after starting: the VM runs, so the create succeeded (with a warning).
    let o = create("lost-1");
    let err = cli_util::stderr(&o);
    assert_eq!(cli_util::code(&o), 0, "{err}");
    assert!(
        err.contains("warning:") && err.contains("but it runs"),
        "{err}"
    );
    assert_eq!(entries_on(&c, 0), ["lost-1"]);
    assert_eq!(plugin_vms(&state), ["lost-1"]);
    let o = create("lost-1");
    assert_eq!(cli_util::code(&o), 1);
    assert!(cli_util::stderr(&o).contains("already exists"));

    // A start that fails: no entry, no VM.
    let o = create("fail-1");
    let err = cli_util::stderr(&o);
    assert_eq!(cli_util::code(&o), 1, "{err}");
    assert!(
        err.contains("VM fail-1 was not created on n1 (nothing of it is left)")
            && err.contains("cannot start fail-1"),
        "{err}"
    );
    assert_eq!(entries_on(&c, 0), ["lost-1"]);
    assert_eq!(plugin_vms(&state), ["lost-1"]);

    // A delete whose stop fails changes nothing, and says so.
    assert_eq!(cli_util::code(&create("stuck-1")), 0);
    let o = cli(&bundle, &["vm", "delete", "stuck-1"]);
    let err = cli_util::stderr(&o);
    assert_eq!(cli_util::code(&o), 1, "{err}");
    assert!(err.contains("cannot stop stuck-1"), "{err}");
    assert_eq!(entries_on(&c, 0), ["lost-1", "stuck-1"]);
    assert_eq!(plugin_vms(&state), ["lost-1", "stuck-1"]);
    let o = cli(&bundle, &["vm", "delete", "lost-1"]);
    assert_eq!(cli_util::code(&o), 0, "{}", cli_util::stderr(&o));
    assert_eq!(entries_on(&c, 0), ["stuck-1"]);
    assert_eq!(plugin_vms(&state), ["stuck-1"]);

    // Adopt and release need a driver that can; the exec driver cannot: refused, and
    // nothing changed (the released VM would otherwise run on, claimed by nobody).
    for args in [
        &["vm", "adopt", "--all", "--node", "n1"][..],
        &["vm", "release", "stuck-1"][..],
    ] {
        let o = cli(&bundle, args);
        let err = cli_util::stderr(&o);
        assert_eq!(cli_util::code(&o), 1, "{args:?}: {err}");
        assert!(err.contains("the exec driver cannot"), "{args:?}: {err}");
        assert_eq!(entries_on(&c, 0), ["stuck-1"], "{args:?}");
        assert_eq!(plugin_vms(&state), ["stuck-1"], "{args:?}");
    }
}

/// A drain whose move committed to a node that died before resuming the VM ends with
/// exit 4 naming the VM and that node, instead of "drained".
#[test]
fn a_drain_whose_destination_dies_before_resuming_says_so() {
    let (mut c, bundle) = dying_destination("g4");
    let o = cli(&bundle, &["drain", "n1", "--timeout", "30"]);
    let (out, err) = (cli_util::stdout(&o), cli_util::stderr(&o));
    assert!(c.exited(1), "the failpoint did not fire: {out}{err}");
    assert_eq!(cli_util::code(&o), 4, "{out}{err}");
    assert!(
        err.contains("g4 to n2 (n2 does not answer") && !out.contains("drained"),
        "{out}{err}"
    );
    // n2 back: g4 runs there, and a drain of the empty n1 now ends cleanly.
    c.start(1, "");
    run_bounded(Duration::from_secs(60), async {
        wait_until(Duration::from_secs(40), "g4 running on n2", || async {
            let o = cli(&bundle, &["vm", "show", "g4"]);
            cli_util::code(&o) == 0 && cli_util::stdout(&o).contains("node:     n2")
        })
        .await;
    });
    let o = cli(&bundle, &["drain", "n1", "--timeout", "30"]);
    assert_eq!(cli_util::code(&o), 0, "{}", cli_util::stderr(&o));
    c.assert_no_double_run();
}
