//! The offline commands as a user runs them, in a temporary directory: `cluster init`,
//! `node add`, `config default`, `config check`, `completions`, and bad usage (exit 2)
//! against failures (exit 1).

mod cli_util;

use cli_util::*;

#[test]
fn cluster_init_and_node_add_write_complete_node_directories() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let o = ballast(
        &[
            "cluster",
            "init",
            "--name",
            "prod",
            "--dir",
            "c",
            "--addr",
            "127.0.0.1:17001",
            "--driver",
            "sim",
            "--json",
        ],
        d,
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(report["cluster"], "prod");
    assert_eq!(report["node"]["name"], "node-1");
    for f in [
        "c/ca/ca.pem",
        "c/ca/ca.key",
        "c/ballast-admin/admin.toml",
        "c/ballast-admin/admin.pem",
        "c/ballast-admin/admin.key",
        "c/nodes/node-1/agent.toml",
        "c/nodes/node-1/node.key",
    ] {
        assert!(d.join(f).is_file(), "{f} missing");
    }
    let o = ballast(
        &[
            "node",
            "add",
            "node-2",
            "--addr",
            "127.0.0.1:17002",
            "--dir",
            "c",
            "--metrics-listen",
            "127.0.0.1:0",
            "--driver",
            "sim",
        ],
        d,
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = ballast(
        &[
            "node",
            "add",
            "node-3",
            "--addr",
            "127.0.0.1:17003",
            "--seed",
            "127.0.0.1:17002",
            "--dir",
            "c",
            "--driver",
            "exec",
            "--exec-command",
            "python3",
            "--exec-arg",
            "examples/qemu_plugin.py",
        ],
        d,
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    // Each generated config passes `config check`, and names its seeds.
    for n in ["node-1", "node-2", "node-3"] {
        let file = format!("c/nodes/{n}/agent.toml");
        let o = ballast(&["config", "check", &file, "--json"], d);
        assert_eq!(code(&o), 0, "{n}: {}{}", stdout(&o), stderr(&o));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        assert_eq!(r["valid"], true);
        assert_eq!(r["node"], n);
        assert_eq!(r["cluster"], "prod");
    }
    let cfg2 = ballast_node::config::AgentConfig::load(&d.join("c/nodes/node-2/agent.toml"))
        .expect("load");
    assert_eq!(
        cfg2.node.seeds,
        vec!["127.0.0.1:17001".parse().expect("addr")],
        "default seeds: the known nodes"
    );
    assert_eq!(
        cfg2.node.metrics_listen,
        Some("127.0.0.1:0".parse().expect("addr"))
    );
    let cfg3 = ballast_node::config::AgentConfig::load(&d.join("c/nodes/node-3/agent.toml"))
        .expect("load");
    assert_eq!(
        cfg3.node.seeds,
        vec!["127.0.0.1:17002".parse().expect("addr")]
    );
    assert_eq!(cfg3.driver.kind, ballast_node::config::DriverKind::Exec);
    assert_eq!(
        cfg3.driver.exec.command,
        ["python3", "examples/qemu_plugin.py"]
    );

    // The admin bundle names all three nodes.
    let admin = std::fs::read_to_string(d.join("c/ballast-admin/admin.toml")).expect("admin.toml");
    for port in ["17001", "17002", "17003"] {
        assert!(admin.contains(port), "{admin}");
    }

    // No second cluster in the same directory, no second node of the same name.
    let o = ballast(&["cluster", "init", "--name", "prod", "--dir", "c"], d);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("already holds a cluster"),
        "{}",
        stderr(&o)
    );
    let o = ballast(
        &[
            "node",
            "add",
            "node-2",
            "--addr",
            "127.0.0.1:17002",
            "--dir",
            "c",
        ],
        d,
    );
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    // node add against a directory without a CA.
    let o = ballast(
        &[
            "node",
            "add",
            "node-9",
            "--addr",
            "127.0.0.1:17009",
            "--dir",
            "elsewhere",
        ],
        d,
    );
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("no cluster CA"), "{}", stderr(&o));
}

#[test]
fn config_default_is_complete_and_valid() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = ballast(&["config", "default"], tmp.path());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(!text.contains("(undocumented)"), "{text}");
    for key in [
        "[node]",
        "round_interval = \"10s\"",
        "[policy]",
        "threshold",
        "[driver.sim]",
        "# advertise =",
    ] {
        assert!(text.contains(key), "{key} missing");
    }
    let parsed = ballast_node::config::AgentConfig::from_toml_str(&text).expect("parses");
    assert_eq!(parsed, ballast_node::config::AgentConfig::default());
}

#[test]
fn config_check_reports_each_error_with_its_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    std::fs::write(
        d.join("bad.toml"),
        "[node]\nid = \"n1\"\nidd = \"typo\"\n\n[host]\ncpu_cores = \"many\"\n",
    )
    .expect("write");
    let o = ballast(&["config", "check", "bad.toml"], d);
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(err.contains("bad.toml:3:"), "{err}");
    assert!(err.contains("idd"), "{err}");
    assert!(err.contains("bad.toml:6:"), "{err}");
    assert!(err.contains("2 error(s)"), "{err}");

    std::fs::write(d.join("range.toml"), "[load]\nsmoothing_alpha = 7.0\n").expect("write");
    let o = ballast(&["config", "check", "range.toml", "--json"], d);
    assert_eq!(code(&o), 1);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(r["valid"], false);
    assert_eq!(r["errors"][0]["line"], 2);

    // A syntactically valid file whose certificates are missing.
    std::fs::write(d.join("nocert.toml"), "[node]\nid = \"n1\"\n").expect("write");
    let o = ballast(&["config", "check", "nocert.toml"], d);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("tls"), "{}", stderr(&o));

    let o = ballast(&["config", "check", "missing.toml"], d);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("cannot read missing.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_usage_exits_2_with_a_clear_message() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let cases: &[(&[&str], &str)] = &[
        (&["status", "--bogus"], "--bogus"),
        (&["sessions", "--limit", "0"], "--limit"),
        (&["vm", "move", "v1"], "--to"),
        (&["frobnicate"], "frobnicate"),
        (
            &[
                "cluster", "init", "--name", "x", "--dir", "x", "--driver", "exec",
            ],
            "--exec-command",
        ),
        (
            &["vm", "create", "v1", "--vcpus", "1", "--memory", "12XB"],
            "unknown unit 'XB'",
        ),
        (
            &["vm", "create", "v1", "--vcpus", "0", "--memory", "1G"],
            "--vcpus",
        ),
        (
            &[
                "vm", "create", "v1", "--vcpus", "1", "--memory", "1G", "--target", "gpu=1",
            ],
            "gpu",
        ),
        (
            &[
                "node",
                "add",
                "bad_name",
                "--addr",
                "127.0.0.1:1",
                "--dir",
                "x",
            ],
            "not a valid name",
        ),
        (
            &["node", "add", "n", "--addr", "0.0.0.0:7420", "--dir", "x"],
            "not 0.0.0.0",
        ),
        (&["cluster", "init", "--dir", "x"], "--name"),
        (&["completions", "tcsh"], "tcsh"),
    ];
    for (args, needle) in cases {
        fails(args, d, 2, needle);
    }
    // --help is not an error.
    let o = ballast(&["vm", "create", "--help"], d);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("--memory"));
}

#[test]
fn admin_commands_without_a_bundle_fail_with_a_hint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fails(&["status"], tmp.path(), 1, "no admin bundle");
    // An agent config given where the admin bundle belongs.
    std::fs::write(
        tmp.path().join("agent.toml"),
        "[node]\nid = \"n\"\n[tls]\nca_cert = \"x\"\n",
    )
    .expect("write");
    fails(
        &["status", "--config", "agent.toml"],
        tmp.path(),
        1,
        "agent config",
    );
    // Garbage in admin.toml.
    std::fs::create_dir(tmp.path().join("ballast-admin")).expect("mkdir");
    std::fs::write(tmp.path().join("ballast-admin/admin.toml"), "cluster = 3\n").expect("write");
    fails(&["vm", "list"], tmp.path(), 1, "line 1");
}

#[test]
fn an_agent_with_a_missing_or_invalid_config_fails_with_the_reason() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fails(
        &["agent", "--config", "missing.toml"],
        tmp.path(),
        1,
        "missing.toml",
    );
    std::fs::write(
        tmp.path().join("bad.toml"),
        "[node]\nid = \"n1\"\nport = 1\n",
    )
    .expect("write");
    fails(&["agent", "--config", "bad.toml"], tmp.path(), 1, "line 3");
    let o = ballast(&["agent"], tmp.path());
    assert_eq!(code(&o), 2, "no --config is bad usage");
}

#[test]
fn completions_are_printed_for_each_shell() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for shell in ["bash", "zsh", "fish"] {
        let o = ballast(&["completions", shell], tmp.path());
        assert_eq!(code(&o), 0, "{shell}");
        let text = stdout(&o);
        assert!(
            text.contains("drain") && text.contains("cluster"),
            "{shell}"
        );
    }
}
