//! `ballast node revoke` (issue 16), as an operator runs it on a cluster bootstrapped with
//! the CLI (three sim agents): the other nodes drop the revoked node and refuse its
//! handshakes (it hears from no one), `status` shows the revocation, and a node restarted
//! afterwards still refuses it. A read-only bundle cannot revoke. Prints the time taken
//! (the goal, 10 s, is recorded in docs/operations.md; the wait here is bounded at 30 s
//! so that a slow machine does not fail it).

mod cli_util;

use ballast_local_cluster::{AgentProcess, HeldPort};
use ballast_node::agent::AdminClient;
use ballast_store::NodeId;
use cli_util::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

fn poll<T>(what: &str, bound: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The peers node `addr` sees, through the admin API.
fn peers_of(
    rt: &tokio::runtime::Runtime,
    admin: &ballast_gossip::CertBundle,
    addr: std::net::SocketAddr,
) -> Option<Vec<String>> {
    rt.block_on(async {
        let c = AdminClient::connect_with_timeout(admin, addr, Duration::from_secs(3)).ok()?;
        let s = c.status().await.ok()?;
        Some(s.peers.iter().map(|p| p.node.to_string()).collect())
    })
}

#[test]
fn a_revoked_node_is_refused_everywhere_within_10_s_and_after_restarts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let ports: Vec<HeldPort> = (0..3)
        .map(|_| HeldPort::loopback().expect("port"))
        .collect();
    let addrs: Vec<std::net::SocketAddr> = ports.iter().map(HeldPort::addr).collect();
    let common = ["--driver", "sim", "--metrics-listen", "127.0.0.1:0"];
    let a0 = addrs[0].to_string();
    let mut args = vec![
        "cluster", "init", "--name", "rev", "--dir", "c", "--node", "node-1",
    ];
    args.extend(["--addr", a0.as_str()]);
    args.extend(common);
    ok(&args, d);
    for i in 1..3 {
        let a = addrs[i].to_string();
        let mut args = vec!["node", "add", NODES[i], "--addr", a.as_str(), "--dir", "c"];
        args.extend(common);
        ok(&args, d);
    }
    ok(
        &[
            "admin",
            "issue",
            "viewer",
            "--role",
            "read-only",
            "--dir",
            "c",
        ],
        d,
    );
    let bin = Path::new(env!("CARGO_BIN_EXE_ballast"));
    let config = |i: usize| -> PathBuf { d.join("c/nodes").join(NODES[i]).join("agent.toml") };
    let start = |i: usize| {
        let log = config(i).with_file_name("agent.log");
        AgentProcess::start(&[], bin, &config(i), &ports[i], &log, &[]).expect("start agent")
    };
    let mut agents: Vec<AgentProcess> = (0..3).map(start).collect();
    let admin = ballast_gossip::load_cert_bundle(
        &d.join("c/ballast-admin/admin.pem"),
        &d.join("c/ballast-admin/admin.key"),
        &d.join("c/ballast-admin/ca.pem"),
    )
    .expect("admin bundle");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    poll("full membership", Duration::from_secs(60), || {
        (0..3)
            .all(|i| peers_of(&rt, &admin, addrs[i]).is_some_and(|p| p.len() == 2))
            .then_some(())
    });

    // A read-only bundle cannot revoke.
    let o = ballast(
        &["node", "revoke", "node-3", "--admin", "c/admins/viewer"],
        d,
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("read-only"), "{}", stderr(&o));

    let revoked_at = Instant::now();
    let told = json(
        &[
            "node",
            "revoke",
            "node-3",
            "--admin",
            "c/ballast-admin",
            "--json",
        ],
        d,
    );
    assert_eq!(
        told["told"],
        serde_json::json!(["node-1", "node-2"]),
        "{told}"
    );
    let third = NodeId::from("node-3").to_string();
    let took = poll("node-3 refused everywhere", Duration::from_secs(30), || {
        let p1 = peers_of(&rt, &admin, addrs[0])?;
        let p2 = peers_of(&rt, &admin, addrs[1])?;
        let p3 = peers_of(&rt, &admin, addrs[2])?;
        (!p1.contains(&third) && !p2.contains(&third) && p3.is_empty())
            .then(|| revoked_at.elapsed())
    });
    println!(
        "node-3 refused by every node {:.2} s after `ballast node revoke`",
        took.as_secs_f64()
    );

    let status = ok(&["status", "--admin", "c/ballast-admin"], d);
    assert!(
        status.contains("Revoked: node-3") && status.contains("refused by node-1, node-2"),
        "{status}"
    );
    let s: Value = json(&["status", "--json", "--admin", "c/ballast-admin"], d);
    assert_eq!(s["revoked"][0]["node"], "node-3", "{s}");

    // node-1 restarted (kill -9) still refuses node-3, which keeps trying.
    agents[0].kill();
    agents[0] = start(0);
    poll(
        "node-1 back, seeing node-2",
        Duration::from_secs(60),
        || {
            peers_of(&rt, &admin, addrs[0])
                .is_some_and(|p| p == vec!["node-2".to_owned()])
                .then_some(())
        },
    );
    for _ in 0..20 {
        let p1 = peers_of(&rt, &admin, addrs[0]).unwrap_or_default();
        assert!(
            !p1.contains(&third),
            "restarted node-1 lets node-3 in: {p1:?}"
        );
        let p3 = peers_of(&rt, &admin, addrs[2]).unwrap_or_default();
        assert!(p3.is_empty(), "node-3 hears from {p3:?}");
        std::thread::sleep(Duration::from_millis(150));
    }
    drop(agents);
}
