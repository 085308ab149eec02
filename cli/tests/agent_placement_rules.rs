//! Placement rules with real agents (sim driver) and the CLI as an operator runs it
//! (docs/design.md §Placement rules): balancing spreads VMs created on one host without
//! ever breaking a hard rule and repairs the ones forced there; a drain keeps the VMs no
//! other node may take and names them with their rule; bad rules are refused with clear
//! errors, an unsatisfiable group is reported and never made worse, `vm move --to`
//! refuses a rule unless `--force`.

mod agent_util;
mod cli_util;

use agent_util::*;
use ballast_node::agent::wire::StoreView;
use ballast_node::rules::PlacementRules;
use ballast_store::{NodeId, VmId, VmSpec, VmState};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cli_util::with_admin as cli;

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A cluster of `n` in-process sim nodes; `tagged` nodes (by index) get `tags`.
fn cluster(
    n: usize,
    balancing: bool,
    tagged: &[usize],
    tags: &str,
) -> (Cluster, std::path::PathBuf) {
    let opts = NodeOpts {
        balancing,
        sim_mode: "in_process",
        ..NodeOpts::default()
    };
    let mut c = Cluster::new(&vec![opts; n]);
    for &i in tagged {
        set_in_config(
            &c.nodes[i].config,
            "cluster = \"test\"",
            &format!("cluster = \"test\"\ntags = {tags}"),
        );
    }
    c.start_all();
    let bundle = c.write_admin_bundle();
    run_bounded(
        Duration::from_secs(40),
        c.wait_membership(Duration::from_secs(20)),
    );
    (c, bundle)
}

/// Node index of each VM running somewhere (exactly one schedule holds it `Running`).
fn placement(c: &Cluster) -> BTreeMap<VmId, usize> {
    let mut snaps = Vec::new();
    run_bounded(Duration::from_secs(20), async {
        snaps = c.snapshots().await;
    });
    placement_of(&snaps)
}

/// [`placement`] in snapshots already read.
fn placement_of(snaps: &[Option<StoreView>]) -> BTreeMap<VmId, usize> {
    let mut at = BTreeMap::new();
    for (vm, held) in holders(snaps) {
        if let [(i, VmState::Running, _)] = held.as_slice() {
            at.insert(vm, *i);
        }
    }
    at
}

/// The value of metric `name` on the metrics endpoint at `port` (plain HTTP/1.1).
fn metric(port: u16, name: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(str::to_owned)
}

fn with_rules(cpu: f64, rules: PlacementRules) -> VmSpec {
    VmSpec {
        rules: Box::new(rules),
        ..spec(cpu)
    }
}

#[test]
fn balancing_spreads_thirty_vms_and_keeps_every_hard_rule() {
    let seed = std::process::id();
    println!("seed (VM loads): {seed}");
    let (c, _bundle) = cluster(6, true, &[0, 1], "[\"gpu\"]");
    let n1 = nid(&c, 0);
    let mut groups: BTreeMap<String, Vec<VmId>> = BTreeMap::new();
    let mut gpu_vms = Vec::new();
    let mut all = Vec::new();
    run_bounded(Duration::from_secs(150), async {
        let admin = c.admin(0);
        for i in 0..30u32 {
            let cpu = 0.5 + f64::from((i + seed) % 5) * 0.25;
            let mut rules = PlacementRules::default();
            let name = if i < 15 {
                // 5 anti-affinity groups of 3, all forced onto n1 at first.
                let g = format!("grp-{}", i / 3);
                rules.anti_affinity = vec![g.clone()];
                rules.forced_on = Some(n1.clone());
                let vm = VmId::from(format!("{g}-{}", i % 3));
                groups.entry(g).or_default().push(vm.clone());
                vm
            } else if i < 19 {
                rules.requires = vec!["gpu".into()];
                let vm = VmId::from(format!("gpu-{i}"));
                gpu_vms.push(vm.clone());
                vm
            } else {
                VmId::from(format!("plain-{i}"))
            };
            all.push(name.clone());
            let at = admin
                .create_vm(&name, &with_rules(cpu, rules), Some(&n1), false)
                .await
                .unwrap_or_else(|e| panic!("create {name}: {e}"));
            assert_eq!(at, n1);
        }
        let s = admin.status().await.expect("status");
        // Balancing may have repaired some already; what is broken was forced.
        assert!(
            s.rules.breaks.iter().all(|b| b.forced),
            "{:?}",
            s.rules.breaks
        );
        let start = std::time::Instant::now();
        wait_until(
            Duration::from_secs(120),
            "balanced with every rule kept",
            || async {
                let mut loads = Vec::new();
                for i in 0..6 {
                    let Ok(s) = c.admin(i).status().await else {
                        return false;
                    };
                    if !s.handoffs.is_empty() || !s.rules.breaks.is_empty() {
                        return false;
                    }
                    loads.push(s.summary.load);
                }
                let mean = loads.iter().sum::<f64>() / 6.0;
                let max = loads.iter().cloned().fold(0.0, f64::max);
                max / mean <= 1.15
            },
        )
        .await;
        println!("balanced after {:.1} s", start.elapsed().as_secs_f64());
    });
    // The forced members were repaired by sessions, which say so.
    let mut repairs = Vec::new();
    let vms = all;
    let resolved = std::sync::Mutex::new(Vec::new());
    run_bounded(Duration::from_secs(40), async {
        // Balancing goes on: look at a reading in which no handoff is under way.
        wait_until(Duration::from_secs(20), "all resolved", || async {
            let snaps = c.snapshots().await;
            let done = all_resolved(&snaps, &vms);
            if done {
                *resolved.lock().expect("lock") = snaps;
            }
            done
        })
        .await;
        for i in 0..6 {
            for r in c.admin(i).recent_sessions().await.expect("sessions") {
                repairs.extend(r.moves.into_iter().filter_map(|m| m.repairs));
            }
        }
    });
    assert!(
        repairs
            .iter()
            .any(|r| r.starts_with("anti-affinity group grp-")),
        "no session says it repaired a rule: {repairs:?}"
    );
    let at = placement_of(&resolved.lock().expect("lock"));
    for vm in &vms {
        assert!(at.contains_key(vm), "{vm} runs on exactly one node: {at:?}");
    }
    for (g, members) in &groups {
        let mut nodes: Vec<usize> = members.iter().map(|vm| at[vm]).collect();
        nodes.sort_unstable();
        nodes.dedup();
        assert_eq!(
            nodes.len(),
            3,
            "group {g} shares a node: {members:?} on {nodes:?}"
        );
    }
    for vm in &gpu_vms {
        assert!(
            at[vm] <= 1,
            "{vm} runs on n{} without the gpu tag",
            at[vm] + 1
        );
    }
    let mut per_node = [0usize; 6];
    at.values().for_each(|&i| per_node[i] += 1);
    println!("VMs per node: {per_node:?}");
}

#[test]
fn a_drain_keeps_what_no_other_node_may_take_and_names_it() {
    let (c, bundle) = cluster(3, false, &[0], "[\"gpu\"]");
    let (n1, n2, n3) = (nid(&c, 0), nid(&c, 1), nid(&c, 2));
    run_bounded(Duration::from_secs(60), async {
        let admin = c.admin(0);
        let db = |g: &str| PlacementRules {
            anti_affinity: vec![g.to_owned()],
            ..Default::default()
        };
        let gpu = PlacementRules {
            requires: vec!["gpu".into()],
            ..Default::default()
        };
        for (vm, rules, node) in [
            ("db-1", db("db"), &n1),
            ("db-2", db("db"), &n2),
            ("db-3", db("db"), &n3),
            ("render", gpu, &n1),
            ("web-1", PlacementRules::default(), &n1),
            ("web-2", PlacementRules::default(), &n1),
        ] {
            admin
                .create_vm(&VmId::from(vm), &with_rules(0.5, rules), Some(node), false)
                .await
                .unwrap_or_else(|e| panic!("create {vm}: {e}"));
        }
    });
    let o = cli(&bundle, &["drain", "n1", "--timeout", "60"]);
    let out = text(&o);
    println!("{out}");
    assert_eq!(cli_util::code(&o), 1, "{out}");
    assert!(out.contains("keeps 2 VM(s)"), "{out}");
    assert!(out.contains("render (requires tag gpu"), "{out}");
    assert!(out.contains("db-1 (anti-affinity group db"), "{out}");
    let at = placement(&c);
    assert_eq!(at[&VmId::from("render")], 0);
    assert_eq!(at[&VmId::from("db-1")], 0);
    assert_ne!(at[&VmId::from("web-1")], 0, "web-1 left n1");
    assert_ne!(at[&VmId::from("web-2")], 0, "web-2 left n1");
    let mut db_nodes: Vec<usize> = ["db-1", "db-2", "db-3"]
        .iter()
        .map(|v| at[&VmId::from(*v)])
        .collect();
    db_nodes.sort_unstable();
    assert_eq!(db_nodes, vec![0, 1, 2], "nothing moved into a violation");
    // status says the same.
    let o = cli(&bundle, &["status"]);
    let out = text(&o);
    assert!(
        out.contains("drain of n1 keeps render: requires tag gpu"),
        "{out}"
    );
}

/// `ballast vm create NAME --vcpus 1 --memory 64M ARGS...`.
fn create(bundle: &Path, name: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["vm", "create", name, "--vcpus", "1", "--memory", "64M"];
    all.extend_from_slice(args);
    cli(bundle, &all)
}

/// Asserts the exit code and that the output says each of `says`.
fn expect(o: &std::process::Output, code: i32, says: &[&str]) {
    let out = text(o);
    assert_eq!(cli_util::code(o), code, "{out}");
    for s in says {
        assert!(out.contains(s), "{s:?} not in: {out}");
    }
}

#[test]
fn bad_rules_are_refused_and_an_unsatisfiable_group_is_never_made_worse() {
    let (c, bundle) = cluster(3, true, &[], "[]");
    // Syntax: refused by the CLI before anything is sent (exit 2).
    let o = create(&bundle, "x", &["--requires", "GPU!"]);
    expect(&o, 2, &["bad required tag \"GPU!\""]);
    expect(
        &create(&bundle, "x", &["--anti-affinity", "a=b"]),
        2,
        &["bad group name"],
    );
    // A required tag no node has.
    let o = create(&bundle, "x", &["--requires", "gpu"]);
    expect(&o, 1, &["requires tag gpu, and no active node has it"]);
    // Four members of one group on three nodes: the fourth has no legal node.
    for i in 1..=3 {
        let o = create(&bundle, &format!("solo-{i}"), &["--anti-affinity", "solo"]);
        expect(&o, 0, &[]);
    }
    let o = create(&bundle, "solo-4", &["--anti-affinity", "solo"]);
    expect(
        &o,
        1,
        &["no node may take VM solo-4", "anti-affinity group solo"],
    );
    // A rule naming a VM instead of a group.
    let o = create(&bundle, "web", &["--anti-affinity", "solo-1"]);
    expect(&o, 1, &["is the name of a VM"]);
    // Created anyway where the operator says so: reported, never made worse.
    let o = create(
        &bundle,
        "solo-4",
        &["--anti-affinity", "solo", "--node", "n1", "--force"],
    );
    expect(&o, 0, &[]);
    let o = cli(&bundle, &["status"]);
    expect(&o, 0, &["unsatisfiable: anti-affinity group solo"]);
    // n1 holds two members: both break the rule there, and its metric says so.
    let port = c.logged_metrics_port(0).expect("n1 logs its metrics port");
    let mut gauge = String::new();
    for _ in 0..50 {
        gauge = metric(port, "ballast_placement_rules_broken").unwrap_or_default();
        if gauge == "2" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(gauge, "2", "ballast_placement_rules_broken on n1");
    let solo: Vec<VmId> = (1..=4).map(|i| VmId::from(format!("solo-{i}"))).collect();
    for _ in 0..10 {
        let at = placement(&c);
        let mut count = [0usize; 3];
        solo.iter()
            .filter_map(|v| at.get(v))
            .for_each(|&i| count[i] += 1);
        count.sort_unstable();
        assert_eq!(count, [1, 1, 2], "the group is never doubled up further");
        std::thread::sleep(Duration::from_millis(300));
    }
    // vm move --to a node holding a member: refused, unless forced.
    let at = placement(&c);
    let lonely = solo
        .iter()
        .find(|v| solo.iter().filter(|w| at[*w] == at[*v]).count() == 1)
        .expect("a member alone on its node")
        .clone();
    let other = (0..3).find(|&i| i != at[&lonely]).expect("another node");
    let to = NodeId::from(format!("n{}", other + 1));
    let o = cli(
        &bundle,
        &["vm", "move", lonely.as_str(), "--to", to.as_str()],
    );
    expect(&o, 1, &["may not move to", "anti-affinity group solo"]);
    // Affinity: a new member goes where its group is, and balancing keeps it there.
    expect(
        &create(&bundle, "app-a", &["--affinity", "app", "--node", "n2"]),
        0,
        &[],
    );
    let o = create(&bundle, "app-b", &["--affinity", "app"]);
    expect(&o, 0, &["VM app-b created on n2"]);
    std::thread::sleep(Duration::from_secs(1));
    let at = placement(&c);
    assert_eq!(
        at[&VmId::from("app-a")],
        at[&VmId::from("app-b")],
        "the affinity group stays together"
    );
    // vm set: new rules; the VM then breaks none where it is.
    let o = cli(
        &bundle,
        &["vm", "set", lonely.as_str(), "--anti-affinity", "other"],
    );
    expect(&o, 0, &[]);
    let o = cli(&bundle, &["vm", "show", lonely.as_str()]);
    expect(&o, 0, &["rules:    anti-affinity other"]);
    let o = cli(&bundle, &["vm", "set", lonely.as_str()]);
    expect(&o, 1, &["--clear"]);
}
