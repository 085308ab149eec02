//! Certificate expiry and `ballast node renew` (issue 16), as an operator runs them: a
//! node whose certificate ends within 30 days is named by `status` (and `status --json`);
//! `node renew` and a restart of that agent replace the certificate while its VMs stay in
//! its schedule; an agent whose certificate expired does not start and says which file
//! and since when.

mod cli_util;

use ballast_local_cluster::{AgentProcess, HeldPort};
use cli_util::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn status_warns_of_expiry_renew_keeps_the_vms_and_an_expired_certificate_stops_the_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let ports: Vec<HeldPort> = (0..2)
        .map(|_| HeldPort::loopback().expect("port"))
        .collect();
    let common = ["--driver", "sim", "--metrics-listen", "127.0.0.1:0"];
    let a0 = ports[0].addr().to_string();
    let mut args = vec![
        "cluster",
        "init",
        "--name",
        "certs",
        "--dir",
        "c",
        "--addr",
        a0.as_str(),
    ];
    args.extend(common);
    ok(&args, d);
    let a1 = ports[1].addr().to_string();
    let mut args = vec!["node", "add", "node-2", "--addr", a1.as_str(), "--dir", "c"];
    args.extend(common);
    args.extend(["--valid-days", "20"]);
    ok(&args, d);
    fails(
        &[
            "node",
            "add",
            "node-3",
            "--addr",
            "127.0.0.1:7999",
            "--dir",
            "c",
            "--valid-days",
            "0",
        ],
        d,
        2,
        "--valid-days",
    );

    let bin = Path::new(env!("CARGO_BIN_EXE_ballast"));
    let config = |n: &str| -> PathBuf { d.join("c/nodes").join(n).join("agent.toml") };
    let start = |i: usize, n: &str| {
        let log = config(n).with_file_name("agent.log");
        AgentProcess::start(&[], bin, &config(n), &ports[i], &log, &[]).expect("start agent")
    };
    let _n1 = start(0, "node-1");
    let mut n2 = start(1, "node-2");
    let admin = ["--admin", "c/ballast-admin"];
    let run = |args: &[&str]| -> std::process::Output {
        let mut all = args.to_vec();
        all.extend(admin);
        ballast(&all, d)
    };
    let status_json = || -> Option<Value> {
        let o = run(&["status", "--json"]);
        serde_json::from_slice(&o.stdout).ok()
    };
    let members = |s: &Value| -> Option<()> {
        let heard = s["nodes"]
            .as_array()?
            .iter()
            .all(|n| n["last_heard_ms_ago"].is_u64());
        (s["active_nodes"] == 2 && heard).then_some(())
    };
    poll("2 active nodes heard by gossip", || {
        status_json().and_then(|s| members(&s))
    });
    for i in 1..=3 {
        let name = format!("vm-{i}");
        let o = run(&[
            "vm", "create", &name, "--vcpus", "1", "--memory", "256M", "--node", "node-2", "--pin",
        ]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }

    let s = status_json().expect("status");
    let expiring = s["certs_expiring"].as_array().expect("certs_expiring");
    assert_eq!(expiring.len(), 1, "{s}");
    assert_eq!(expiring[0]["node"], "node-2");
    assert_eq!(expiring[0]["days_left"], 19, "{s}");
    let text = stdout(&run(&["status"]));
    assert!(
        text.contains("Certificate of node-2 expires in 19 day(s)")
            && text.contains("ballast node renew node-2 --dir DIR"),
        "{text}"
    );

    let renewed = json(&["node", "renew", "node-2", "--dir", "c", "--json"], d);
    assert_eq!(renewed["node"], "node-2", "{renewed}");
    n2.kill();
    let mut n2 = start(1, "node-2");
    poll("node-2 back with its new certificate", || {
        status_json().and_then(|s| {
            members(&s)?;
            s["certs_expiring"].as_array()?.is_empty().then_some(())
        })
    });
    let list: Value = serde_json::from_slice(&run(&["vm", "list", "--json"]).stdout).expect("json");
    let on_2: Vec<&str> = list["vms"]
        .as_array()
        .expect("vms")
        .iter()
        .filter(|v| v["node"] == "node-2")
        .filter_map(|v| v["vm"].as_str())
        .collect();
    assert_eq!(on_2, vec!["vm-1", "vm-2", "vm-3"], "{list}");

    // An expired certificate: the agent does not start, naming the file and the date.
    n2.kill();
    let ca = ballast_gossip::load_ca(&d.join("c/ca/ca.pem"), &d.join("c/ca/ca.key")).expect("ca");
    let expired = ballast_gossip::issue_node_cert_valid(
        &ca,
        "node-2",
        &[ports[1].addr().ip()],
        ballast_gossip::Validity {
            not_before_unix: 1_700_000_000,
            not_after_unix: 1_700_086_400,
        },
    )
    .expect("cert");
    let node_dir = d.join("c/nodes/node-2");
    ballast_gossip::save_cert_bundle(
        &expired,
        &node_dir.join("node.pem"),
        &node_dir.join("node.key"),
        &node_dir.join("ca.pem"),
    )
    .expect("save");
    let cfg = config("node-2");
    let o = ballast(&["agent", "--config", cfg.to_str().expect("utf-8")], d);
    assert_ne!(code(&o), 0);
    let err = stderr(&o);
    assert!(
        err.contains("node.pem")
            && err.contains("expired on 2023-11-15")
            && err.contains("ballast node renew"),
        "{err}"
    );
}
