//! Admin roles (issue 16): `ballast admin issue NAME --role read-only` writes a bundle
//! that reads (status, vm list, vm show, sessions) and is refused every change, one test
//! per mutating command, each checking the message names the role and nothing changed.
//! A two-node cluster bootstrapped with the CLI, one VM on node-1 made by the operator.

mod cli_util;

use ballast_local_cluster::{AgentProcess, HeldPort};
use cli_util::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Two agents from `cluster init` + `node add`, the operator's bundle and a read-only one.
struct RolesCluster {
    tmp: tempfile::TempDir,
    _agents: Vec<AgentProcess>,
}

impl RolesCluster {
    fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        let ports: Vec<HeldPort> = (0..2)
            .map(|_| HeldPort::loopback().expect("port"))
            .collect();
        let addr = |i: usize| ports[i].addr().to_string();
        let common = ["--driver", "sim", "--metrics-listen", "127.0.0.1:0"];
        let a0 = addr(0);
        let mut args = vec!["cluster", "init", "--name", "roles", "--dir", "c"];
        args.extend(["--addr", a0.as_str()]);
        args.extend(common);
        ok(&args, d);
        let a1 = addr(1);
        let mut args = vec!["node", "add", "node-2", "--addr", a1.as_str(), "--dir", "c"];
        args.extend(common);
        ok(&args, d);
        let issued = json(
            &[
                "admin",
                "issue",
                "viewer",
                "--role",
                "read-only",
                "--dir",
                "c",
                "--json",
            ],
            d,
        );
        assert_eq!(issued["role"], "read-only", "{issued}");
        assert_eq!(issued["nodes"], 2, "{issued}");
        let bin = Path::new(env!("CARGO_BIN_EXE_ballast"));
        let agents = ["node-1", "node-2"]
            .iter()
            .zip(&ports)
            .map(|(n, port)| {
                let config: PathBuf = d.join("c/nodes").join(n).join("agent.toml");
                let log = config.with_file_name("agent.log");
                AgentProcess::start(&[], bin, &config, port, &log, &[]).expect("start agent")
            })
            .collect();
        let c = Self {
            tmp,
            _agents: agents,
        };
        c.wait_for("2 active nodes heard by gossip", || {
            let o = c.operator(&["status", "--json"]);
            let s: Value = serde_json::from_slice(&o.stdout).ok()?;
            let heard = s["nodes"]
                .as_array()?
                .iter()
                .all(|n| n["last_heard_ms_ago"].is_u64());
            (s["active_nodes"] == 2 && heard).then_some(())
        });
        let o = c.operator(&[
            "vm", "create", "vm-1", "--vcpus", "1", "--memory", "256M", "--node", "node-1",
        ]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        c
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn run(&self, bundle: &str, args: &[&str]) -> std::process::Output {
        let mut all = args.to_vec();
        all.extend(["--admin", bundle]);
        ballast(&all, self.dir())
    }

    fn operator(&self, args: &[&str]) -> std::process::Output {
        self.run("c/ballast-admin", args)
    }

    fn reader(&self, args: &[&str]) -> std::process::Output {
        self.run("c/admins/viewer", args)
    }

    fn wait_for<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The cluster's VMs as the operator sees them: (name, node, pinned, spec with its
    /// rules), sorted.
    fn vms(&self) -> Vec<(String, String, bool, String)> {
        let o = self.operator(&["vm", "list", "--json"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).expect("json");
        let mut out: Vec<(String, String, bool, String)> = v["vms"]
            .as_array()
            .expect("vms")
            .iter()
            .map(|e| {
                (
                    e["vm"].as_str().unwrap_or_default().to_owned(),
                    e["node"].as_str().unwrap_or_default().to_owned(),
                    e["pinned"].as_bool().unwrap_or_default(),
                    e["spec"].to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Runs a mutating command with the read-only bundle: exit 1, a message naming the
    /// role, and the cluster's VMs and nodes as they were.
    fn refused(&self, args: &[&str]) {
        let before = (self.vms(), self.draining());
        let o = self.reader(args);
        let err = stderr(&o);
        assert_eq!(code(&o), 1, "{args:?}: {}{err}", stdout(&o));
        assert!(
            err.contains("has the role read-only"),
            "{args:?} does not name the role: {err}"
        );
        assert_eq!(
            (self.vms(), self.draining()),
            before,
            "{args:?} changed the cluster"
        );
        println!("{args:?} refused: {}", err.trim());
    }

    /// The nodes that are draining.
    fn draining(&self) -> Vec<String> {
        let o = self.operator(&["status", "--json"]);
        let s: Value = serde_json::from_slice(&o.stdout).expect("status json");
        s["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter(|n| n["state"] == "draining" || n["draining"] == true)
            .filter_map(|n| n["node"].as_str().map(str::to_owned))
            .collect()
    }
}

#[test]
fn a_read_only_bundle_reads_status_vms_and_sessions() {
    let c = RolesCluster::start();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["vm", "list"],
        &["vm", "show", "vm-1"],
        &["sessions"],
        &["sessions", "--vm", "vm-1", "--since", "1h"],
    ] {
        let o = c.reader(args);
        assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
    }
    let o = c.reader(&["vm", "show", "vm-1"]);
    assert!(stdout(&o).contains("node-1"), "{}", stdout(&o));
}

#[test]
fn read_only_is_refused_vm_create() {
    let c = RolesCluster::start();
    c.refused(&["vm", "create", "vm-2", "--vcpus", "1", "--memory", "256M"]);
}

#[test]
fn read_only_is_refused_vm_delete() {
    RolesCluster::start().refused(&["vm", "delete", "vm-1"]);
}

#[test]
fn read_only_is_refused_vm_pin() {
    RolesCluster::start().refused(&["vm", "pin", "vm-1"]);
}

#[test]
fn read_only_is_refused_vm_unpin() {
    let c = RolesCluster::start();
    let o = c.operator(&["vm", "pin", "vm-1"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    c.refused(&["vm", "unpin", "vm-1"]);
}

#[test]
fn read_only_is_refused_vm_move() {
    RolesCluster::start().refused(&["vm", "move", "vm-1", "--to", "node-2"]);
}

#[test]
fn read_only_is_refused_vm_set() {
    RolesCluster::start().refused(&["vm", "set", "vm-1", "--anti-affinity", "db"]);
}

#[test]
fn read_only_is_refused_vm_adopt() {
    RolesCluster::start().refused(&["vm", "adopt", "--node", "node-1", "--all"]);
}

#[test]
fn read_only_is_refused_vm_release() {
    RolesCluster::start().refused(&["vm", "release", "vm-1"]);
}

#[test]
fn read_only_is_refused_drain() {
    RolesCluster::start().refused(&["drain", "node-2"]);
}

#[test]
fn read_only_is_refused_undrain() {
    let c = RolesCluster::start();
    let o = c.operator(&["drain", "node-2"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    c.refused(&["undrain", "node-2"]);
}

#[test]
fn read_only_is_refused_node_forget() {
    RolesCluster::start().refused(&["node", "forget", "node-2"]);
}

#[test]
fn admin_issue_refuses_bad_input() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    ok(
        &[
            "cluster", "init", "--name", "x", "--dir", "c", "--driver", "sim",
        ],
        d,
    );
    fails(
        &["admin", "issue", "v", "--role", "root", "--dir", "c"],
        d,
        2,
        "invalid value 'root' for '--role <ROLE>'",
    );
    fails(
        &[
            "admin", "issue", "bad_name", "--role", "operator", "--dir", "c",
        ],
        d,
        2,
        "bad_name",
    );
    fails(
        &[
            "admin", "issue", "v", "--role", "operator", "--dir", "nowhere",
        ],
        d,
        1,
        "holds no cluster CA",
    );
    ok(
        &["admin", "issue", "v", "--role", "operator", "--dir", "c"],
        d,
    );
    fails(
        &["admin", "issue", "v", "--role", "read-only", "--dir", "c"],
        d,
        1,
        "already holds an admin bundle",
    );
}
