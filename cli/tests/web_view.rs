//! The agent's web server as its users meet it (real agents with the sim driver, curl,
//! a raw socket, headless Chromium): the web view shows the whole cluster from any
//! agent and follows it live; `/api/v1` is the CLI's `--json`; bad requests are cut
//! off; bound beyond loopback it wants a client certificate of the cluster.

mod agent_util;
mod cli_util;
mod web_util;

use agent_util::*;
use ballast_store::VmId;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use web_util::*;

/// The address node `i`'s web server listens on (from its log; the config says port 0).
fn web_addr(c: &Cluster, i: usize) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(port) = c.logged_metrics_port(i) {
            return SocketAddr::from(([127, 0, 0, 1], port));
        }
        assert!(Instant::now() < deadline, "node {i} logged no web address");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `check` every 300 ms until it holds, for at most `bound`.
fn wait_for(bound: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn loads(status: &Value) -> Vec<f64> {
    status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["load"].as_f64().expect("load"))
        .collect()
}

/// Creates `count` VMs named `PREFIX-NN` of `cpu` cores on node `i`.
fn create_vms(
    c: &Cluster,
    i: usize,
    (prefix, count): (&str, usize),
    cpu: f64,
    pinned: bool,
) -> Vec<VmId> {
    let vms: Vec<VmId> = (0..count)
        .map(|k| VmId::from(format!("{prefix}-{k:02}")))
        .collect();
    run_bounded(Duration::from_secs(60), async {
        let admin = c.admin(i);
        for vm in &vms {
            admin
                .create_vm(vm, &spec(cpu), Some(&nid(c, i)), pinned)
                .await
                .expect("create VM");
        }
    });
    vms
}

#[test]
fn the_web_view_shows_every_host_the_loads_spreading_and_the_sessions() {
    let started = Instant::now();
    let mut c = Cluster::new(&vec![NodeOpts::default(); 5]);
    c.start_all();
    run_bounded(
        Duration::from_secs(60),
        c.wait_membership(Duration::from_secs(40)),
    );
    // The view of n3, while every VM goes to n1: any agent shows the whole cluster.
    let web = web_addr(&c, 2);
    let url = format!("http://{web}/");
    let profile = tempfile::tempdir().expect("profile dir");
    // Pinned, so that they all stay on n1 until the first look.
    let vms = create_vms(&c, 0, ("web", 40), 0.6, true);
    wait_for(Duration::from_secs(30), "n1 loaded in n3's API", || {
        loads(&get_json(web, "/api/v1/status"))[0] > 0.5
    });

    let dom = dump_dom(&url, profile.path(), 3000);
    let before = hosts_shown(&dom);
    let names: Vec<&str> = before.iter().map(|h| h.node.as_str()).collect();
    assert_eq!(
        names,
        ["n1", "n2", "n3", "n4", "n5"],
        "hosts shown: {before:?}"
    );
    assert!(before.iter().all(|h| h.state == "active"), "{before:?}");
    assert_eq!(before[0].vms, 40, "{before:?}");
    assert!(before[0].load > 0.5, "n1 shown loaded: {before:?}");
    assert!(
        before[1..].iter().all(|h| h.load < 0.05 && h.vms == 0),
        "the others shown idle: {before:?}"
    );

    // Unpinned, the VMs spread; the page follows without a reload (it polls).
    run_bounded(Duration::from_secs(60), async {
        let admin = c.admin(0);
        for vm in &vms {
            admin.unpin(vm).await.expect("unpin");
        }
    });
    wait_for(Duration::from_secs(60), "the VMs spread", || {
        let l = loads(&get_json(web, "/api/v1/status"));
        l.iter().all(|x| *x > 0.05) && l[0] < 0.5
    });
    let dom = dump_dom(&url, profile.path(), 3000);
    let after = hosts_shown(&dom);
    assert_eq!(after.len(), 5, "hosts shown: {after:?}");
    assert!(
        after[0].load < before[0].load - 0.3,
        "n1's load shown fell: {before:?} then {after:?}"
    );
    assert!(
        after[1..].iter().all(|h| h.load > 0.05 && h.vms > 0),
        "the others shown loaded: {after:?}"
    );
    // A VM in a handoff is in both schedules for a moment.
    let shown: u32 = after.iter().map(|h| h.vms).sum();
    assert!((40..=45).contains(&shown), "{shown} VMs shown: {after:?}");
    let sessions = sessions_shown(&dom);
    assert!(sessions > 0, "no session shown:\n{dom}");
    assert!(dom.contains("n1 → "), "a session of n1 shown:\n{dom}");
    assert!(
        dom.contains("href=\"#vm-web-"),
        "moves linked to their VM:\n{dom}"
    );
    assert!(chart_points(&dom) >= 1, "the chart has points:\n{dom}");
    let history = get_json(web, "/api/v1/history");
    assert_eq!(history["interval_ms"], 5000, "{history:#}");
    // One sample every 5 s: the loaded cluster is in the next one at the latest.
    wait_for(
        Duration::from_secs(15),
        "a loaded sample in the history",
        || {
            let h = get_json(web, "/api/v1/history");
            let samples = h["samples"].as_array().cloned().unwrap_or_default();
            samples
                .iter()
                .any(|p| p["max_load"].as_f64().is_some_and(|l| l > 0.05))
        },
    );

    let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-view.png");
    let _ = std::fs::remove_file(&png);
    screenshot(&url, profile.path(), &png, 1000);
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
        "a PNG of {} bytes",
        bytes.len()
    );
    eprintln!("screenshot: {} ({} bytes)", png.display(), bytes.len());

    // A drained host and a host gone are marked, not left out.
    run_bounded(Duration::from_secs(30), async {
        c.admin(3).drain().await.expect("drain n4");
    });
    c.kill(4);
    wait_for(
        Duration::from_secs(60),
        "n4 draining, n5 unreachable",
        || {
            let s = get_json(web, "/api/v1/status");
            s["nodes"][3]["state"] == "draining" && s["nodes"][4]["state"] == "unreachable"
        },
    );
    let dom = dump_dom(&url, profile.path(), 8000);
    let states: Vec<(String, String)> = hosts_shown(&dom)
        .into_iter()
        .map(|h| (h.node, h.state))
        .collect();
    let want = [
        ("n1", "active"),
        ("n2", "active"),
        ("n3", "active"),
        ("n4", "draining"),
        ("n5", "unreachable"),
    ]
    .map(|(n, s)| (n.to_owned(), s.to_owned()));
    assert_eq!(states, want, "states shown");
    eprintln!("test took {:?}", started.elapsed());
    c.assert_no_double_run();
}

/// Two agents whose rounds are 5 s apart (so that the cluster holds still long enough
/// for two calls to see the same), 3 VMs created on n1 and 2 on n2, an admin bundle for
/// the CLI, and n2's web address.
fn quiet_pair() -> (Cluster, std::path::PathBuf, SocketAddr) {
    let mut c = Cluster::new(&vec![NodeOpts::default(); 2]);
    for n in &c.nodes {
        set_in_config(
            &n.config,
            "round_interval = \"300ms\"",
            "round_interval = \"5s\"",
        );
    }
    c.start_all();
    run_bounded(
        Duration::from_secs(60),
        c.wait_membership(Duration::from_secs(40)),
    );
    create_vms(&c, 0, ("a", 3), 3.0, false);
    create_vms(&c, 1, ("b", 2), 0.5, false);
    let bundle = c.write_admin_bundle();
    let web = web_addr(&c, 1);
    (c, bundle, web)
}

/// `ballast ARGS --json --admin BUNDLE`.
fn cli_json(bundle: &Path, args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--json", "--admin", bundle.to_str().expect("utf-8 path")]);
    cli_util::json(&all, bundle.parent().expect("bundle parent"))
}

/// The ages in a status report change from one call to the next: both must have them,
/// the comparison leaves them out.
fn without_ages(mut v: Value) -> Value {
    for n in v["nodes"].as_array_mut().into_iter().flatten() {
        let o = n.as_object_mut().expect("row");
        assert!(o.contains_key("last_seen") && o.contains_key("last_heard_ms_ago"));
        o.remove("last_seen");
        o.remove("last_heard_ms_ago");
    }
    v
}

/// The API's answer equals the CLI's, called just before or just after it (the cluster
/// may change between two calls: a few tries).
fn assert_api_is_cli(cli: impl Fn() -> Value, api: impl Fn() -> Value) -> Value {
    let mut last = (Value::Null, Value::Null);
    for _ in 0..8 {
        let before = cli();
        let got = api();
        let after = cli();
        if got == before || got == after {
            return got;
        }
        last = (before, got);
    }
    panic!(
        "the API never equalled the CLI:\nCLI: {:#}\nAPI: {:#}",
        last.0, last.1
    );
}

#[test]
fn api_status_is_the_cli_status_json() {
    let (_c, bundle, web) = quiet_pair();
    let got = assert_api_is_cli(
        || without_ages(cli_json(&bundle, &["status"])),
        || without_ages(get_json(web, "/api/v1/status")),
    );
    assert_eq!(got["nodes"].as_array().map(Vec::len), Some(2), "{got:#}");
    assert_eq!(got["total_vms"], 5, "{got:#}");
    assert!(got["max_load"].as_f64().is_some_and(|l| l > 0.1), "{got:#}");
}

#[test]
fn api_vms_is_the_cli_vm_list_json() {
    let (_c, bundle, web) = quiet_pair();
    let got = assert_api_is_cli(
        || cli_json(&bundle, &["vm", "list"]),
        || get_json(web, "/api/v1/vms"),
    );
    assert_eq!(got["vms"].as_array().map(Vec::len), Some(5), "{got:#}");
    let n1 = assert_api_is_cli(
        || cli_json(&bundle, &["vm", "list", "--node", "n1"]),
        || get_json(web, "/api/v1/vms?node=n1"),
    );
    let rows = n1["vms"].as_array().expect("vms");
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r["node"] == "n1"),
        "{n1:#}"
    );
}

#[test]
fn api_sessions_is_the_cli_sessions_json() {
    let (_c, bundle, web) = quiet_pair();
    wait_for(Duration::from_secs(30), "a session that moved VMs", || {
        get_json(web, "/api/v1/sessions?moves=true")["sessions"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
    });
    let got = assert_api_is_cli(
        || cli_json(&bundle, &["sessions"]),
        || get_json(web, "/api/v1/sessions"),
    );
    assert!(
        got["sessions"].as_array().is_some_and(|s| !s.is_empty()),
        "{got:#}"
    );
    let moved = assert_api_is_cli(
        || {
            cli_json(
                &bundle,
                &["sessions", "--moves", "--limit", "3", "--node", "n1"],
            )
        },
        || get_json(web, "/api/v1/sessions?moves=true&limit=3&node=n1"),
    );
    let rows = moved["sessions"].as_array().expect("sessions");
    assert!(!rows.is_empty() && rows.len() <= 3, "{moved:#}");
    assert!(rows
        .iter()
        .all(|s| !s["moves"].as_array().expect("moves").is_empty()));
}

/// One agent without balancing (not started).
fn one_quiet_node() -> Cluster {
    Cluster::new(&[NodeOpts {
        balancing: false,
        ..NodeOpts::default()
    }])
}

/// Node `i`'s agent is still running and logged `reason`.
fn assert_alive_and_logged(c: &mut Cluster, i: usize, reason: &str) {
    assert!(!c.exited(i), "the agent exited");
    let logs = c.logs(i);
    assert!(logs.contains(reason), "{reason:?} not logged:\n{logs}");
}

#[test]
fn bad_requests_are_refused_or_cut_off_and_the_agent_serves_on() {
    let mut c = one_quiet_node();
    c.start_all();
    let web = web_addr(&c, 0);
    let get = |path: &str, extra: &[&str]| {
        curl(&format!("http://{web}{path}"), extra).expect("an HTTP answer")
    };
    wait_for(Duration::from_secs(20), "the agent answers", || {
        curl(&format!("http://{web}/api/v1/status"), &[]).is_ok_and(|a| a.code == 200)
    });
    assert_eq!(get("/nowhere", &[]).code, 404);
    assert_eq!(get("/api/v1/nowhere", &[]).code, 404);
    assert_eq!(get("/api/v2/status", &[]).code, 404);
    // Read-only: nothing but GET.
    assert_eq!(get("/api/v1/status", &["-X", "POST"]).code, 405);
    assert_eq!(get("/api/v1/vms", &["-X", "DELETE"]).code, 405);
    assert_eq!(get("/api/v1/sessions?limit=0", &[]).code, 400);
    assert_eq!(get("/api/v1/sessions?moves=maybe", &[]).code, 400);
    let metrics = get("/metrics", &[]);
    assert_eq!(metrics.code, 200);
    assert!(metrics.body.contains("# EOF"), "{}", metrics.body);

    // A request head of 64 KiB: refused at once (431), the connection closed.
    let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let (answer, closed) = raw(web, &big, Duration::from_secs(10));
    assert!(closed.is_some(), "an oversized request left open");
    assert!(answer.starts_with("HTTP/1.1 431"), "oversized: {answer:?}");

    // A request head that never ends: cut after the 5 s read bound.
    let (answer, closed) = raw(
        web,
        b"GET / HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(15),
    );
    let after = closed.expect("a slow request left open");
    assert!(
        after >= Duration::from_secs(4) && after < Duration::from_secs(10),
        "cut after {after:?}"
    );
    assert!(
        !answer.contains("200 OK"),
        "slow request answered: {answer:?}"
    );
    // Not HTTP at all.
    let (answer, _) = raw(web, b"\x16\x03\x01hello\r\n\r\n", Duration::from_secs(5));
    assert!(
        answer.starts_with("HTTP/1.1 400") || answer.is_empty(),
        "{answer:?}"
    );

    // The agent serves on and said why it cut the connections.
    assert_eq!(get("/api/v1/status", &[]).code, 200);
    assert_alive_and_logged(&mut c, 0, "web: connection cut");
}

#[test]
fn bound_beyond_loopback_it_wants_a_client_certificate_of_the_cluster() {
    let mut c = one_quiet_node();
    set_in_config(
        &c.nodes[0].config,
        "metrics_listen = \"127.0.0.1:0\"",
        "metrics_listen = \"0.0.0.0:0\"",
    );
    c.start_all();
    let bundle = c.write_admin_bundle();
    let port = web_addr(&c, 0).port();
    let url = format!("https://127.0.0.1:{port}/api/v1/status");
    let file = |name: &str| bundle.join(name).to_str().expect("utf-8").to_owned();
    let (ca, cert, key) = (file("ca.pem"), file("admin.pem"), file("admin.key"));

    // With the admin certificate (what a browser imports as PKCS#12): the API answers.
    let with_cert = ["--cacert", &ca, "--cert", &cert, "--key", &key];
    wait_for(
        Duration::from_secs(20),
        "the agent answers over TLS",
        || curl(&url, &with_cert).is_ok_and(|a| a.code == 200),
    );
    let a = curl(&url, &with_cert).expect("answer");
    let status: Value = serde_json::from_str(&a.body).expect("JSON");
    assert_eq!(status["nodes"][0]["node"], "n1", "{status:#}");
    // Read-only there too.
    let post = curl(&url, &[&with_cert[..], &["-X", "POST"]].concat()).expect("answer");
    assert_eq!(post.code, 405);

    // Without a client certificate: refused.
    let r = curl(&url, &["--cacert", &ca]);
    assert!(r.is_err(), "answered without a client certificate: {r:?}");
    // With a certificate of another cluster's CA: refused.
    let other = ballast_gossip::create_ca("other").expect("ca");
    let stranger =
        ballast_gossip::issue_admin_cert(&other, "ops", ballast_gossip::AdminRole::Operator)
            .expect("cert");
    let dir = tempfile::tempdir().expect("dir");
    let (scert, skey, sca) = (
        dir.path().join("s.pem"),
        dir.path().join("s.key"),
        dir.path().join("sca.pem"),
    );
    ballast_gossip::save_cert_bundle(&stranger, &scert, &skey, &sca).expect("save");
    let r = curl(
        &url,
        &[
            "--cacert",
            &ca,
            "--cert",
            scert.to_str().expect("utf-8"),
            "--key",
            skey.to_str().expect("utf-8"),
        ],
    );
    assert!(r.is_err(), "answered a stranger's certificate: {r:?}");
    // Plain HTTP on the TLS port: no answer.
    let r = curl(&format!("http://127.0.0.1:{port}/api/v1/status"), &[]);
    assert!(r.as_ref().map_or(true, |a| a.code != 200), "{r:?}");

    assert_alive_and_logged(&mut c, 0, "TLS handshake refused");
}

#[test]
fn a_node_certificate_may_read_through_the_admin_api_but_not_change() {
    // What another agent's web view does: status, schedule, recent sessions with its
    // node certificate. Every change still wants an admin certificate.
    let mut c = one_quiet_node();
    c.start_all();
    let peer = ballast_gossip::issue_node_cert(&c.ca, "n9", &[]).expect("node cert");
    let addr = c.nodes[0].addr;
    run_bounded(Duration::from_secs(60), async {
        let as_node = ballast_node::agent::AdminClient::connect_with_timeout(
            &peer,
            addr,
            Duration::from_secs(10),
        )
        .expect("client");
        let mut status = None;
        for _ in 0..50 {
            if let Ok(s) = as_node.status().await {
                status = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(status.expect("status as a node").node.as_str(), "n1");
        assert!(as_node.list_vms().await.expect("list as a node").is_empty());
        as_node.recent_sessions().await.expect("sessions as a node");
        let refused = as_node
            .create_vm(&VmId::from("nope"), &spec(0.1), None, false)
            .await
            .expect_err("a node created a VM through the admin API");
        assert!(
            refused
                .to_string()
                .contains("not allowed for this certificate role"),
            "{refused}"
        );
        as_node
            .drain()
            .await
            .expect_err("a node drained another through the admin API");
        assert!(c.admin(0).list_vms().await.expect("list").is_empty());
    });
}
