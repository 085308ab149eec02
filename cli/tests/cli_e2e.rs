//! The CLI end to end, as a user runs it, in a temporary directory: `cluster init`,
//! `node add` ×2, three real agent processes started from those configs, 12 VMs created
//! on one node, `status --json`, balancing, `drain`, `undrain`, `vm delete`; and the
//! admin API refusing a node certificate, another cluster's admin certificate, and an
//! unreachable agent, each with its message and exit code 1.

mod cli_util;

use ballast_local_cluster::{AgentProcess, HeldPort};
use cli_util::*;
use serde_json::Value;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bound on each wait of this test.
const WAIT: Duration = Duration::from_secs(90);

/// Polls `f` until it returns `Some`, at most [`WAIT`].
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A port nobody listens on (bound, then released at once).
fn unused_port() -> u16 {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.local_addr().expect("addr").port()
}

/// What an operator edits for a quick test cluster: rounds every few hundred ms, loads
/// from the VMs' reservations, fast simulated migrations.
fn tune(config: &Path) {
    let text = std::fs::read_to_string(config).expect("read config");
    let mut t: toml::Table = toml::from_str(&text).expect("parse config");
    let mut set = |table: &str, key: &str, v: toml::Value| {
        let mut cur = &mut t;
        for part in table.split('.') {
            cur = cur
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .expect("table");
        }
        cur.insert(key.to_owned(), v);
    };
    set("load", "mode", "target".into());
    set("policy", "threshold", 0.004.into());
    set("policy", "min_gain", 0.002.into());
    set("policy", "cooldown", "2s".into());
    set("balancing", "round_interval", "300ms".into());
    set("balancing", "round_jitter", "200ms".into());
    set("gossip", "interval", "250ms".into());
    set("driver.sim", "migration", "50ms".into());
    std::fs::write(config, toml::to_string(&t).expect("render")).expect("write config");
}

fn node_vms(status: &Value, node: &str) -> u64 {
    status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["node"] == node)
        .and_then(|n| n["vms"].as_u64())
        .unwrap_or(u64::MAX)
}

/// Distinct VMs in the schedules (`vm list --json`).
fn distinct_vms(dir: &Path) -> Vec<String> {
    let list = json(&["vm", "list", "--json", "--admin", "c/ballast-admin"], dir);
    assert_eq!(list["partial"], false, "{list}");
    names_in(&list)
}

/// The distinct VM names of a `vm list --json` answer, sorted.
fn names_in(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list["vms"]
        .as_array()
        .expect("vms")
        .iter()
        .map(|r| r["vm"].as_str().expect("vm").to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn a_user_bootstraps_balances_drains_and_deletes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    // The ports are held by the test and handed to each agent (`--stdin-socket`).
    let ports: Vec<HeldPort> = (0..3)
        .map(|_| HeldPort::loopback().expect("port"))
        .collect();
    let addr = |i: usize| ports[i].addr().to_string();
    let common = ["--driver", "sim", "--metrics-listen", "127.0.0.1:0"];
    let mut args = vec!["cluster", "init", "--name", "e2e", "--dir", "c"];
    let a0 = addr(0);
    args.extend(["--addr", a0.as_str()]);
    args.extend(common);
    ok(&args, d);
    for (i, name) in [(1, "node-2"), (2, "node-3")] {
        let a = addr(i);
        let mut args = vec!["node", "add", name, "--addr", a.as_str(), "--dir", "c"];
        args.extend(common);
        ok(&args, d);
    }
    let configs: Vec<PathBuf> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|n| d.join("c/nodes").join(n).join("agent.toml"))
        .collect();
    for c in &configs {
        tune(c);
        ok(&["config", "check", c.to_str().expect("utf-8")], d);
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_ballast"));
    let mut agents: Vec<AgentProcess> = configs
        .iter()
        .zip(&ports)
        .map(|(c, port)| {
            let log = c.with_file_name("agent.log");
            AgentProcess::start(&[], bin, c, port, &log, &[]).expect("start agent")
        })
        .collect();
    let admin = ["--admin", "c/ballast-admin"];
    let with_admin = |args: &[&'static str]| -> Vec<&str> {
        let mut v: Vec<&str> = args.to_vec();
        v.extend(admin);
        v
    };

    // Three active nodes, each heard by gossip from another one (a node answers the
    // admin call before its first gossip reaches the others; until then it is "now").
    wait_for("3 active nodes heard by gossip", || {
        let o = ballast(&with_admin(&["status", "--json"]), d);
        let s: Value = serde_json::from_slice(&o.stdout).ok()?;
        let heard = s["nodes"]
            .as_array()?
            .iter()
            .all(|n| n["last_heard_ms_ago"].is_u64());
        (s["active_nodes"] == 3 && heard).then_some(())
    });

    // 12 VMs on node-1.
    for i in 1..=12 {
        let name = format!("vm-{i}");
        let args = [
            "vm",
            "create",
            &name,
            "--vcpus",
            "2",
            "--memory",
            "1G",
            "--target",
            "cpu=1,mem=1G",
            "--node",
            "node-1",
            "--admin",
            "c/ballast-admin",
            "--json",
        ];
        let v = json(&args, d);
        assert_eq!(v["node"], "node-1", "{v}");
    }
    let status = json(&with_admin(&["status", "--json"]), d);
    assert_eq!(status["active_nodes"], 3, "{status}");
    assert_eq!(distinct_vms(d).len(), 12);
    // Every live node was heard from by gossip recently ("0.4s ago").
    for n in status["nodes"].as_array().expect("nodes") {
        let ms = n["last_heard_ms_ago"].as_u64();
        assert!(ms.is_some_and(|ms| ms < 5_000), "{n}");
        let seen = n["last_seen"].as_str().unwrap_or_default();
        assert!(seen.ends_with("s ago"), "{n}");
    }

    // Balancing spreads them: every node ends up with 3 to 5 and the total stays 12.
    let spread = wait_for("balancing to spread the VMs", || {
        let s = json(&with_admin(&["status", "--json"]), d);
        let counts: Vec<u64> = ["node-1", "node-2", "node-3"]
            .iter()
            .map(|n| node_vms(&s, n))
            .collect();
        let quiet = s["migrations_in_flight"] == 0;
        (quiet && s["total_vms"] == 12 && counts.iter().all(|c| (3..=5).contains(c))).then_some(s)
    });
    assert_eq!(spread["active_nodes"], 3, "{spread}");
    assert_eq!(distinct_vms(d).len(), 12);

    // `sessions` explains the spread: the sessions that moved VMs, newest first, name
    // the VMs created above, and some left node-1, where all of them started.
    let sessions = json(
        &with_admin(&["sessions", "--moves", "--json", "--limit", "200"]),
        d,
    );
    let list = sessions["sessions"].as_array().expect("sessions");
    assert!(!list.is_empty(), "{sessions}");
    let at: Vec<u64> = list
        .iter()
        .filter_map(|s| s["at_unix_ms"].as_u64())
        .collect();
    assert_eq!(at.len(), list.len(), "{sessions}");
    assert!(at.windows(2).all(|w| w[0] >= w[1]), "newest first: {at:?}");
    for s in list {
        let moves = s["moves"].as_array().expect("moves");
        assert!(!moves.is_empty(), "{s}");
        for m in moves {
            let vm = m["vm"].as_str().unwrap_or_default();
            assert!(vm.starts_with("vm-"), "{m}");
            assert_ne!(m["from"], m["to"], "{m}");
        }
    }
    let off_node1 = list
        .iter()
        .flat_map(|s| s["moves"].as_array().into_iter().flatten())
        .any(|m| m["from"] == "node-1");
    assert!(off_node1, "{sessions}");
    let table = ballast(&with_admin(&["sessions", "--node", "node-1"]), d);
    assert!(table.status.success(), "{table:?}");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("OUTCOME") && text.contains("node-1"),
        "{text}"
    );

    // vm show / pin / unpin.
    let shown = json(&with_admin(&["vm", "show", "vm-3", "--json"]), d);
    assert_eq!(shown["vm"], "vm-3");
    assert_eq!(shown["spec"]["memory_mib"], 1024);
    ok(&with_admin(&["vm", "pin", "vm-3"]), d);
    let shown = json(&with_admin(&["vm", "show", "vm-3", "--json"]), d);
    assert_eq!(shown["pinned"], true);

    // vm move: the operator moves the pinned vm-3 to another node (a pin only holds
    // balancing back); it runs there, still pinned. Retried only while a balancing
    // handoff of vm-3 that began before the pin is still under way.
    let target: &'static str = ["node-1", "node-2", "node-3"]
        .into_iter()
        .find(|n| shown["node"] != *n)
        .expect("another node");
    let moved = wait_for("vm-3 moved by the operator", || {
        let o = ballast(
            &with_admin(&["vm", "move", "vm-3", "--to", target, "--pin", "--json"]),
            d,
        );
        if !o.status.success() && stderr(&o).contains("in a handoff already") {
            return None;
        }
        assert!(o.status.success(), "{o:?}");
        Some(serde_json::from_slice::<Value>(&o.stdout).expect("json"))
    });
    assert_eq!(moved["moved"], true, "{moved}");
    assert_eq!(moved["from"], shown["node"], "{moved}");
    assert_eq!(
        (moved["node"].clone(), moved["pinned"].clone()),
        (target.into(), true.into())
    );
    let shown = json(&with_admin(&["vm", "show", "vm-3", "--json"]), d);
    assert_eq!(
        (shown["node"].as_str(), shown["state"].as_str()),
        (Some(target), Some("running"))
    );
    assert_eq!(distinct_vms(d).len(), 12);
    fails(
        &with_admin(&["vm", "move", "vm-3", "--to", target]),
        d,
        1,
        "already on",
    );
    fails(
        &with_admin(&["vm", "move", "vm-3", "--to", "node-9"]),
        d,
        1,
        "not a live member",
    );
    ok(&with_admin(&["vm", "unpin", "vm-3"]), d);

    // Drain node-2: it ends with 0 VMs, the total is still 12.
    let drained = json(
        &with_admin(&["drain", "node-2", "--json", "--timeout", "90"]),
        d,
    );
    assert_eq!(drained["drained"], true, "{drained}");
    let s = json(&with_admin(&["status", "--json"]), d);
    assert_eq!(node_vms(&s, "node-2"), 0, "{s}");
    assert_eq!(distinct_vms(d).len(), 12);
    let node2 = s["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["node"] == "node-2")
        .expect("node-2")
        .clone();
    assert_eq!(node2["state"], "draining", "{node2}");

    // Undrain: node-2 is active again.
    ok(&with_admin(&["undrain", "node-2"]), d);
    wait_for("node-2 active", || {
        let s = json(&with_admin(&["status", "--json"]), d);
        (s["active_nodes"] == 3).then_some(())
    });

    // Delete one VM: 11 left, and it is gone.
    ok(&with_admin(&["vm", "delete", "vm-7"]), d);
    let left = distinct_vms(d);
    assert_eq!(left.len(), 11, "{left:?}");
    assert!(!left.contains(&"vm-7".to_owned()));
    fails(&with_admin(&["vm", "show", "vm-7"]), d, 1, "not found");

    refusals(d);

    // A node that stops shows as unreachable; status still answers, says that its
    // answer is partial and exits 3.
    let all_vms = distinct_vms(d);
    agents[2].kill();
    wait_for("node-3 unreachable", || {
        let o = ballast(&with_admin(&["status", "--json"]), d);
        let s: Value = serde_json::from_slice(&o.stdout).ok()?;
        let n3 = s["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["node"] == "node-3")?
            .clone();
        (n3["state"] == "unreachable" && s["active_nodes"] == 2).then_some(())?;
        assert_eq!(code(&o), 3, "{}", stderr(&o));
        assert_eq!(s["partial"], true, "{s}");
        assert_eq!(s["missing"][0]["node"], "node-3", "{s}");
        Some(())
    });
    // So does vm list: what it prints lacks node-3's VMs, and it says so.
    let o = ballast(&with_admin(&["vm", "list", "--json"]), d);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let l: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(l["partial"], true, "{l}");
    assert_eq!(l["missing"][0]["node"], "node-3", "{l}");
    assert!(
        stderr(&o).contains("partial answer: node-3 (") && stderr(&o).contains("may be missing"),
        "{}",
        stderr(&o)
    );
    // node-3 back: a list entered through it alone, before its gossip knows anyone,
    // still covers every node (the bundle's nodes are asked too).
    let log = configs[2].with_file_name("agent.log");
    agents[2] = AgentProcess::start(&[], bin, &configs[2], &ports[2], &log, &[]).expect("restart");
    let a2 = addr(2);
    let via_n3 = [
        "vm",
        "list",
        "--json",
        "--admin",
        "c/ballast-admin",
        "--node-addr",
        &a2,
    ];
    wait_for("node-3 answers", || {
        let o = ballast(&via_n3, d);
        (code(&o) == 0).then_some(())
    });
    assert_eq!(
        names_in(&json(&via_n3, d)),
        all_vms,
        "a list through the restarted node left VMs out"
    );
    drop(agents);
}

/// Admin calls the agents must refuse, each with a clear message and exit code 1.
fn refusals(d: &Path) {
    // A node certificate dressed as an admin bundle.
    let fake = d.join("node-as-admin");
    std::fs::create_dir(&fake).expect("mkdir");
    for (from, to) in [
        ("ca.pem", "ca.pem"),
        ("node.pem", "admin.pem"),
        ("node.key", "admin.key"),
    ] {
        std::fs::copy(d.join("c/nodes/node-2").join(from), fake.join(to)).expect("copy");
    }
    std::fs::copy(
        d.join("c/ballast-admin/admin.toml"),
        fake.join("admin.toml"),
    )
    .expect("copy");
    // It may read (another agent's web view gathers the cluster with its node
    // certificate), but no change goes through.
    ok(&["status", "--admin", "node-as-admin"], d);
    fails(
        &[
            "vm",
            "create",
            "vm-by-a-node",
            "--vcpus",
            "1",
            "--memory",
            "64M",
            "--node",
            "node-1",
            "--admin",
            "node-as-admin",
        ],
        d,
        1,
        "not an admin certificate",
    );

    // Another cluster's admin bundle pointed at this cluster's nodes.
    ok(
        &[
            "cluster", "init", "--name", "other", "--dir", "o", "--driver", "sim",
        ],
        d,
    );
    std::fs::copy(
        d.join("c/ballast-admin/admin.toml"),
        d.join("o/ballast-admin/admin.toml"),
    )
    .expect("copy");
    fails(
        &["status", "--admin", "o/ballast-admin"],
        d,
        1,
        "another cluster",
    );

    // That cluster's admin certificate next to this cluster's CA: refused before sending.
    let mixed = d.join("mixed");
    std::fs::create_dir(&mixed).expect("mkdir");
    std::fs::copy(d.join("c/ballast-admin/ca.pem"), mixed.join("ca.pem")).expect("copy");
    std::fs::copy(
        d.join("c/ballast-admin/admin.toml"),
        mixed.join("admin.toml"),
    )
    .expect("copy");
    for f in ["admin.pem", "admin.key"] {
        std::fs::copy(d.join("o/ballast-admin").join(f), mixed.join(f)).expect("copy");
    }
    fails(
        &["vm", "list", "--admin", "mixed"],
        d,
        1,
        "not signed by the cluster CA",
    );

    // An agent that is not there.
    let port = unused_port();
    let addr = format!("127.0.0.1:{port}");
    fails(
        &["status", "--admin", "c/ballast-admin", "--node-addr", &addr],
        d,
        1,
        "cannot reach the agent",
    );
}
