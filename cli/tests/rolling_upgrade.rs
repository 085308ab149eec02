//! A rolling upgrade from ballast 0.1.0 (issue 16), as docs/operations.md §Upgrading tells
//! an operator to run it: three agents of release 0.1.0 (built from its git tag by
//! `scripts/ballast-0.1.0`, cached), bootstrapped with 0.1.0's CLI; then each agent in
//! turn is stopped and started again from this build with the same agent.toml and data
//! directory, while the cluster keeps balancing 30 VMs created on node-1: 15 by 0.1.0's
//! CLI at the start (so the old node-1 hands VMs to the upgraded node-2), 15 by this
//! build's once node-1 is upgraded (so it hands VMs to the old node-3).
//!
//! Every check lists every schedule (0.1.0's CLI reads the 0.1.0 nodes, this build's CLI
//! the upgraded ones, both at once) and fails the test if a VM is in no schedule, or is
//! `running` on two nodes, in two checks in a row (a single listing is not atomic across
//! nodes: one handoff may fall between two nodes' answers). The test requires handoffs in
//! both directions between an old and a new agent, and at the end, with every agent
//! upgraded, each VM exactly once, running.

mod cli_util;

use ballast_local_cluster::{log_tail, AgentProcess, HeldPort};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];
const VMS: usize = 30;
const ADMIN: &str = "c/ballast-admin";

/// Which build a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Release {
    Old,
    New,
}

/// The `ballast` of release 0.1.0, built (once) by scripts/ballast-0.1.0.
fn old_binary() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ballast-0.1.0");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/ballast-0.1.0");
    assert!(out.status.success(), "scripts/ballast-0.1.0 failed");
    let path = PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim());
    assert!(path.is_file(), "{} is not a file", path.display());
    path
}

fn run_ok(bin: &Path, args: &[&str], cwd: &Path) -> String {
    let o = cli_util::run_binary(bin, args, cwd);
    assert!(
        o.status.success(),
        "{} {args:?} failed: {}{}",
        bin.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Sets `key = value` in `section` of an agent.toml, which must hold `key = default`.
fn set(text: &mut String, key: &str, default: &str, value: &str) {
    let old = format!("\n{key} = {default}\n");
    assert!(text.contains(&old), "agent.toml has no `{key} = {default}`");
    *text = text.replacen(&old, &format!("\n{key} = {value}\n"), 1);
}

/// Where one VM's entries are, in one check: (node, state) per entry.
type Placement = BTreeMap<String, Vec<(String, String)>>;

/// One check: every schedule, listed by the CLI of each node's release.
struct Check {
    releases: [Release; 3],
    vms: Placement,
}

impl Check {
    fn running_on(&self, vm: &str) -> Vec<&str> {
        self.vms.get(vm).map_or_else(Vec::new, |entries| {
            entries
                .iter()
                .filter(|(_, s)| s == "running")
                .map(|(n, _)| n.as_str())
                .collect()
        })
    }

    /// How many entries each node holds.
    fn per_node(&self) -> BTreeMap<&str, usize> {
        let mut n = BTreeMap::new();
        for (node, _) in self.vms.values().flatten() {
            *n.entry(node.as_str()).or_default() += 1;
        }
        n
    }

    fn release_of(&self, node: &str) -> Release {
        let i = NODES.iter().position(|n| *n == node).expect("known node");
        self.releases[i]
    }
}

struct Cluster {
    dir: PathBuf,
    old: PathBuf,
    new: PathBuf,
    agents: Vec<AgentProcess>,
    releases: [Release; 3],
    checks: usize,
    previous: Option<Check>,
    /// VMs created so far (`vm-01` ..).
    created: usize,
    /// Where each VM last ran alone, and every node's release then.
    last_running: BTreeMap<String, (String, [Release; 3])>,
    /// Handoffs seen, by (source release, destination release).
    moves: BTreeMap<(Release, Release), usize>,
}

impl Cluster {
    fn config(&self, i: usize) -> PathBuf {
        self.dir.join("c/nodes").join(NODES[i]).join("agent.toml")
    }

    fn log(&self, i: usize, release: Release) -> PathBuf {
        let name = match release {
            Release::Old => "agent-0.1.0.log",
            Release::New => "agent.log",
        };
        self.config(i).with_file_name(name)
    }

    /// Lists every schedule: both CLIs at once, each keeping the nodes of its release.
    /// `None` when a node of the current releases did not answer (restarting).
    fn list(&self) -> Option<Check> {
        let spawn = |bin: &Path| {
            Command::new(bin)
                .args(["vm", "list", "--json", "--admin", ADMIN])
                .current_dir(&self.dir)
                .env_remove("BALLAST_CONFIG")
                .env_remove("BALLAST_ADMIN")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run ballast vm list")
        };
        // 0.1.0's CLI fails when no node of its release answers.
        let old = self
            .releases
            .contains(&Release::Old)
            .then(|| spawn(&self.old));
        let new = spawn(&self.new);
        // Both reaped before either output is looked at.
        let old = old.map(std::process::Child::wait_with_output);
        let new = new.wait_with_output();
        let old: Value = match old {
            Some(o) => serde_json::from_slice(&o.ok()?.stdout).ok()?,
            None => Value::Array(Vec::new()),
        };
        let new: Value = serde_json::from_slice(&new.ok()?.stdout).ok()?;
        let missing: Vec<&str> = new["missing"]
            .as_array()?
            .iter()
            .filter_map(|m| m["node"].as_str().or(m.as_str()))
            .collect();
        let mut vms = Placement::new();
        for (rows, release) in [
            (old.as_array()?, Release::Old),
            (new["vms"].as_array()?, Release::New),
        ] {
            for r in rows {
                let node = r["node"].as_str()?;
                let i = NODES.iter().position(|n| *n == node)?;
                if self.releases[i] != release {
                    continue;
                }
                vms.entry(r["vm"].as_str()?.to_owned())
                    .or_default()
                    .push((node.to_owned(), r["state"].as_str()?.to_owned()));
            }
        }
        let new_nodes_answer = (0..3)
            .filter(|&i| self.releases[i] == Release::New)
            .all(|i| !missing.contains(&NODES[i]));
        new_nodes_answer.then_some(Check {
            releases: self.releases,
            vms,
        })
    }

    /// One check against the previous one; returns it.
    fn check(&mut self) -> Option<&Check> {
        let Some(check) = self.list() else {
            self.previous = None;
            return None;
        };
        self.checks += 1;
        if let Some(prev) = &self.previous {
            for v in 1..=self.created {
                let vm = format!("vm-{v:02}");
                let (was, is) = (prev.running_on(&vm), check.running_on(&vm));
                assert!(
                    !(was.len() > 1 && is.len() > 1 && was == is),
                    "{vm} running on {is:?} in two checks in a row ({:?})",
                    check.vms.get(&vm)
                );
                assert!(
                    prev.vms.contains_key(&vm) || check.vms.contains_key(&vm),
                    "{vm} is in no schedule in two checks in a row"
                );
            }
        }
        // A handoff: the VM runs on one node, and last ran on another, both of the same
        // release then as now.
        for v in 1..=self.created {
            let vm = format!("vm-{v:02}");
            let [to] = check.running_on(&vm)[..] else {
                continue;
            };
            let to = to.to_owned();
            if let Some((from, releases)) = self.last_running.get(&vm) {
                let same = |n: &str| {
                    let i = NODES.iter().position(|m| *m == n).expect("known node");
                    releases[i] == check.releases[i]
                };
                if *from != to && same(from) && same(&to) {
                    let key = (check.release_of(from), check.release_of(&to));
                    *self.moves.entry(key).or_default() += 1;
                }
            }
            self.last_running.insert(vm, (to, check.releases));
        }
        self.previous = Some(check);
        self.previous.as_ref()
    }

    /// Checks until `done` holds of a check, failing after `bound`.
    fn check_until(&mut self, what: &str, bound: Duration, done: impl Fn(&Self, &Check) -> bool) {
        let deadline = Instant::now() + bound;
        loop {
            if self.check().is_some() {
                let check = self.previous.as_ref().expect("just checked");
                if done(self, check) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; handoffs seen {:?}; last check: {:?}",
                self.moves,
                self.previous.as_ref().map(Check::per_node)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The operator's step for one host: stop its agent, start this build on the same
    /// config; then wait until it answers.
    fn upgrade(&mut self, i: usize) {
        let started = Instant::now();
        self.agents[i].stop(Duration::from_secs(20));
        self.releases[i] = Release::New;
        self.previous = None;
        let log = self.log(i, Release::New);
        self.agents[i] =
            AgentProcess::start_binding(&self.new, &self.config(i), &log).expect("start new agent");
        self.check_until(
            &format!("upgraded {} to answer", NODES[i]),
            Duration::from_secs(60),
            |_, _| true,
        );
        println!(
            "{} upgraded in {:.1} s; handoffs so far {:?}",
            NODES[i],
            started.elapsed().as_secs_f64(),
            self.moves
        );
    }

    /// Creates the next `n` VMs on node-1 with the CLI `bin`.
    fn create(&mut self, bin: &Path, n: usize) {
        for _ in 0..n {
            self.created += 1;
            let vm = format!("vm-{:02}", self.created);
            let target = "cpu=2,io=0,mem=256M";
            let args = ["vm", "create", &vm, "--vcpus", "1", "--memory", "256M"];
            let mut args = args.to_vec();
            args.extend(["--target", target, "--node", NODES[0], "--admin", ADMIN]);
            run_ok(bin, &args, &self.dir);
        }
    }

    fn moved(&self, from: Release, to: Release) -> usize {
        self.moves.get(&(from, to)).copied().unwrap_or(0)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, node) in NODES.iter().enumerate() {
                for release in [Release::Old, Release::New] {
                    let log = self.log(i, release);
                    if log.exists() {
                        eprintln!("--- {node} ({release:?}) ---\n{}", log_tail(&log, 40));
                    }
                }
            }
        }
    }
}

#[test]
fn a_cluster_of_0_1_0_upgraded_node_by_node_loses_nothing_and_moves_both_ways() {
    let old = old_binary();
    let new = PathBuf::from(env!("CARGO_BIN_EXE_ballast"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    // Free ports; released before the agents bind them (0.1.0 binds its own).
    let addrs: Vec<String> = (0..3)
        .map(|_| HeldPort::loopback().expect("port").addr().to_string())
        .collect();
    let common = ["--driver", "sim", "--metrics-listen", "127.0.0.1:0"];
    let mut args = vec!["cluster", "init", "--name", "upgrade", "--dir", "c"];
    args.extend(["--node", NODES[0], "--addr", addrs[0].as_str()]);
    args.extend(common);
    run_ok(&old, &args, d);
    for i in 1..3 {
        let mut args = vec![
            "node",
            "add",
            NODES[i],
            "--addr",
            addrs[i].as_str(),
            "--dir",
            "c",
        ];
        args.extend(common);
        run_ok(&old, &args, d);
    }
    let mut cluster = Cluster {
        dir: d.to_owned(),
        old: old.clone(),
        new,
        agents: Vec::new(),
        releases: [Release::Old; 3],
        checks: 0,
        previous: None,
        created: 0,
        last_running: BTreeMap::new(),
        moves: BTreeMap::new(),
    };
    // Loads from the VMs' targets; short rounds, two moves per session and slow
    // migrations, so that balancing is still under way while the agents are replaced.
    for i in 0..3 {
        let path = cluster.config(i);
        let mut text = std::fs::read_to_string(&path).expect("agent.toml");
        set(&mut text, "mode", "\"measured\"", "\"target\"");
        set(&mut text, "round_interval_ms", "10000", "1000");
        set(&mut text, "round_jitter_ms", "2000", "500");
        set(&mut text, "max_moves_per_session", "8", "2");
        set(&mut text, "migration_ms", "200", "1500");
        std::fs::write(&path, text).expect("write agent.toml");
    }
    for i in 0..3 {
        let log = cluster.log(i, Release::Old);
        let agent = AgentProcess::start_binding(&old, &cluster.config(i), &log).expect("start");
        cluster.agents.push(agent);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = cli_util::run_binary(&old, &["status", "--json", "--admin", ADMIN], d);
        let s: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let heard = s["nodes"]
            .as_array()
            .is_some_and(|ns| ns.iter().all(|n| n["last_heard_ms_ago"].is_u64()));
        if s["active_nodes"] == 3 && heard {
            break;
        }
        assert!(Instant::now() < deadline, "0.1.0 cluster never formed: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // This build's CLI cannot speak to 0.1.0's agents (TLS refuses its protocol): it
    // says so and points to the way out.
    let o = cli_util::run_binary(&cluster.new, &["status", "--admin", ADMIN], d);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("§Upgrading"),
        "this build's status on a 0.1.0 cluster: {err}"
    );
    // Half the VMs on node-1; node-2 first: the busy old node-1 hands VMs to it.
    cluster.create(&old, VMS / 2);
    cluster.upgrade(1);
    cluster.check_until(
        "a handoff from an old to a new agent",
        Duration::from_secs(90),
        |c, _| c.moved(Release::Old, Release::New) > 0,
    );
    // node-1, given the other half by this build's CLI: a new agent handing VMs to the
    // old node-3.
    cluster.upgrade(0);
    let new_cli = cluster.new.clone();
    cluster.create(&new_cli, VMS - VMS / 2);
    cluster.check_until(
        "a handoff from a new to an old agent",
        Duration::from_secs(90),
        |c, _| c.moved(Release::New, Release::Old) > 0,
    );
    cluster.upgrade(2);
    cluster.check_until(
        "every VM exactly once, running, on an all-new cluster, balanced",
        Duration::from_secs(180),
        |_, check| {
            let per_node = check.per_node();
            check.vms.len() == VMS
                && check
                    .vms
                    .values()
                    .all(|e| e.len() == 1 && e[0].1 == "running")
                && NODES
                    .iter()
                    .all(|n| per_node.get(n).is_some_and(|&k| k >= VMS / 3 - 2))
        },
    );
    println!(
        "{} checks; handoffs old→new {}, new→old {}, new→new {}, old→old {}",
        cluster.checks,
        cluster.moved(Release::Old, Release::New),
        cluster.moved(Release::New, Release::Old),
        cluster.moved(Release::New, Release::New),
        cluster.moved(Release::Old, Release::Old),
    );
    // The upgraded cluster's own CLI sees every node and every VM.
    let list: Value = serde_json::from_str(&run_ok(
        &cluster.new,
        &["vm", "list", "--json", "--admin", ADMIN],
        d,
    ))
    .expect("JSON");
    assert_eq!(list["vms"].as_array().map(Vec::len), Some(VMS), "{list}");
    assert_eq!(list["missing"], serde_json::json!([]), "{list}");
    drop(cluster);
}
