//! The agent configuration rendered as documented TOML: every table and key with a
//! comment saying what it does, and every default filled in. `ballast config default`
//! prints it and `ballast cluster init` / `node add` write node configs with it.
//!
//! The values come from serializing an [`AgentConfig`], so they never drift from the
//! agent's defaults; the comments come from [`DOCS`], and a test checks that every key
//! the agent knows has one. Optional keys that are unset are shown commented out.

use ballast_node::config::AgentConfig;
use std::fmt::Write as _;

/// One documented table or key: its dotted path, its doc, and for optional keys an
/// example value shown commented out when the key is unset.
struct KeyDoc {
    path: &'static str,
    doc: &'static str,
    example: Option<&'static str>,
}

const fn doc(path: &'static str, doc: &'static str) -> KeyDoc {
    KeyDoc {
        path,
        doc,
        example: None,
    }
}

const fn optional(path: &'static str, doc: &'static str, example: &'static str) -> KeyDoc {
    KeyDoc {
        path,
        doc,
        example: Some(example),
    }
}

/// The docs, in the order keys are printed inside their table.
const DOCS: &[KeyDoc] = &[
    doc("node", "Who this agent is and where it keeps its state."),
    doc("node.id", "This node's id; must equal the name in its certificate."),
    doc("node.cluster", "The cluster's name; the store refuses a data directory of another cluster."),
    doc("node.data_dir", "Where the sled store and driver state live (relative to this file's directory)."),
    doc("node.listen", "UDP address of the QUIC endpoint (gossip and RPC)."),
    optional("node.advertise", "Address other nodes reach this one at (defaults to `listen`).", "\"10.0.0.1:7420\""),
    doc("node.seeds", "Addresses of nodes to join through."),
    optional("node.metrics_listen", "TCP address of the agent's HTTP server: Prometheus metrics (GET /metrics), the read-only API (/api/v1) and the web view (/). On a loopback address plain HTTP; on any other HTTPS with a client certificate of the cluster CA required. \"off\" disables it.", "\"127.0.0.1:9420\""),
    doc("node.tags", "This host's tags (`gpu`, `zone=a`; lowercase letters, digits, '-', '_', '.'): VMs' `--requires` rules name them (docs/operations.md, placement rules)."),
    doc("tls", "Certificates (PEM, relative to this file's directory), written by `ballast cluster init` / `node add`."),
    doc("tls.ca_cert", "The cluster CA certificate."),
    doc("tls.cert", "This node's certificate."),
    doc("tls.key", "This node's private key (mode 0600)."),
    doc("host", "What this host offers to VMs."),
    doc("host.cpu_cores", "Physical cores (or hardware threads) usable by VMs."),
    doc("host.cpu_speed", "Per-core speed relative to the cluster's reference core (1.0 = reference)."),
    doc("host.io_bytes_per_s", "I/O bytes per second the host sustains."),
    doc("host.mem_bytes", "Memory available to VMs, in bytes."),
    doc("load", "How VM loads are measured and weighed."),
    doc("load.mode", "\"measured\" (smoothed CPU, I/O, memory use) or \"target\" (each VM's reservation); the same on every node."),
    doc("load.sample_interval", "How often VM usage is sampled."),
    doc("load.smoothing_alpha", "Weight of a new sample in the exponential smoothing, in (0, 1]."),
    doc("load.weights", "Weights of CPU, I/O and memory in a VM's load; the same on every node."),
    doc("load.weights.cpu", "Weight of CPU use."),
    doc("load.weights.io", "Weight of I/O activity."),
    doc("load.weights.mem", "Weight of memory."),
    doc("policy", "The balancing policy, in load units (a host's load is the sum of its VMs' loads, ~1 when full)."),
    doc("policy.threshold", "No session unless the sender's load exceeds the receiver's by more than this."),
    doc("policy.min_gain", "A move must lower the pair's larger load by at least this much (hysteresis)."),
    doc("policy.cooldown", "A VM that moved is not moved again for this long (but see cooldown_allows_onward)."),
    doc("policy.cooldown_allows_onward", "Whether a VM in its cooldown may still move on while its sender stays busier than the receiver by more than threshold after the move (never back across the pair's balance)."),
    doc("policy.max_moves_per_session", "How many moves one session may plan (nearest-half-difference rule re-applied)."),
    doc("policy.sender", "Which side of a pair sends: \"busier\" or \"initiator\"."),
    doc("policy.peer_choice", "How a round picks its peer: \"uniform\", \"two-choice\" (the more different of two) or \"most-different\" (of peer_samples)."),
    doc("policy.peer_samples", "How many random peers \"most-different\" samples before pairing with the one whose load differs most."),
    doc("policy.swaps", "Whether a session may swap two VMs (one each way, net transfer nearest half the difference) when no single move gains enough."),
    doc("policy.swap_min_gain", "A swap must lower the pair's larger load by at least this much (two migrations must buy more than one)."),
    doc("balancing", "When rounds run and how many migrations may be under way."),
    doc("balancing.round_interval", "Time between two rounds."),
    doc("balancing.round_jitter", "Random extra delay added to each interval, up to this long."),
    doc("balancing.session_timeout", "A balancing session that takes longer than this is dropped."),
    doc("balancing.max_outgoing", "Outgoing migrations under way at once on this node."),
    doc("balancing.max_incoming", "Incoming migrations under way at once on this node."),
    doc("balancing.max_bytes_in_flight", "Guest memory, in bytes, of the VMs migrating to or from this node at once; a migration that would pass it waits (one alone always runs)."),
    doc("balancing.enabled", "Whether this node starts rounds at all (it still answers its peers)."),
    doc("balancing.dry_run", "Advise only: sessions decide as usual and `ballast sessions` shows the moves they would make (outcome dry-run:<decision>), but nothing moves."),
    doc("balancing.history_max", "Most balancing session records each node keeps in its store for `ballast sessions` (kept across restarts; the oldest go first)."),
    doc("balancing.history_age", "Session records older than this are dropped from the store."),
    doc("gossip", "The gossip endpoint."),
    doc("gossip.interval", "Period of gossip rounds."),
    doc("gossip.phi_threshold", "Phi above which the failure detector marks a node dead."),
    doc("gossip.dead_grace", "How long a dead node stays in the gossip state before it is forgotten."),
    doc("gossip.rpc_timeout", "Bound on one RPC (sessions, handoff messages, admin calls)."),
    doc("gossip.connect_timeout", "Bound on a QUIC handshake."),
    doc("gossip.max_rpc_frame_bytes", "Limit of one RPC frame's payload, in bytes."),
    doc("driver", "The hypervisor driver."),
    doc("driver.kind", "\"sim\" (simulated hypervisor), \"qemu\", \"exec\" (an external plugin) or \"libvirt\" (a build with --features libvirt)."),
    doc("driver.sim", "The sim driver (a relative state_dir is relative to node.data_dir)."),
    doc("driver.sim.state_dir", "Directory of the run log and, in process mode, of the VM sockets."),
    doc("driver.sim.host", "Name written in every run record; empty means the node id."),
    doc("driver.sim.seed", "Seed of failure injection and of VM seeds not named in the spec."),
    doc("driver.sim.migration", "How long a migration's transfer phase lasts."),
    doc("driver.sim.fail_prob", "Probability in [0, 1] that a migration fails before its switchover."),
    doc("driver.sim.fail_next", "The next this many migrations fail before their switchover."),
    doc(
        "driver.sim.fail_next_starts",
        "The next this many starts of a new VM answer with an error although the VM started.",
    ),
    doc("driver.sim.mode", "\"in_process\" or \"process\" (each VM a detached `ballast sim-vm` process)."),
    doc("driver.sim.source_copy", "What a completed migration leaves of the source copy: \"kept\" (paused until the handoff finishes it, as QEMU) or \"ended\" (gone at once, as libvirt)."),
    doc("driver.sim.vm_command", "Process mode: the command that runs one VM; empty means this binary's `sim-vm`."),
    doc("driver.qemu", "The qemu driver (a relative state_dir or image_dir is relative to node.data_dir)."),
    doc("driver.qemu.binary", "The QEMU system emulator to run (looked up in PATH when relative)."),
    doc("driver.qemu.state_dir", "One directory per VM (QMP socket, pid file, spec); keep the path short."),
    doc("driver.qemu.machine", "The QEMU machine type (-machine); the same on both sides of a migration."),
    doc("driver.qemu.accel", "\"auto\" (KVM when usable, else TCG), \"kvm\" or \"tcg\"."),
    doc("driver.qemu.migration_host", "Address incoming migration streams listen on; reachable from the other hosts."),
    doc("driver.qemu.port_range", "Inclusive range of TCP ports for incoming migrations, [first, last]."),
    doc("driver.qemu.downtime_limit", "Maximum downtime of a live migration."),
    doc("driver.qemu.bandwidth_mbps", "Bandwidth cap of a live migration (memory and each local disk's copy) in megabits per second; 0 keeps QEMU's default."),
    doc("driver.qemu.extra_args", "Arguments appended to every VM's command line (before the spec's own)."),
    doc("driver.qemu.disk_interface", "Bus of disks given as a bare path: \"virtio\", \"ide\" or \"scsi\"."),
    doc("driver.qemu.image_dir", "This host's local disk images: a relative disk path names a file here; moved local disks are created here."),
    doc("driver.qemu.shared_paths", "Path prefixes on storage every host shares; other disks are local and copied by a move (default [\"/\"]: all absolute paths shared)."),
    doc("driver.qemu.keep_source_disks", "Keep the source's copy of a moved local disk, renamed <file>.moved-<unix ms>, instead of deleting it."),
    doc("driver.qemu.qemu_img", "The qemu-img program, to create the destination's copy of a local disk."),
    doc("driver.qemu.timeouts", "Timeouts of the qemu driver."),
    doc("driver.qemu.timeouts.qmp", "One QMP command (connect, greeting, reply)."),
    doc("driver.qemu.timeouts.start", "Launching a QEMU process until its QMP socket listens."),
    doc("driver.qemu.timeouts.stop", "A graceful quit before the process is killed."),
    doc("driver.qemu.timeouts.migration", "A whole outgoing migration; past it the migration is cancelled."),
    doc("driver.qemu.timeouts.poll", "Interval between two query-migrate polls during a migration."),
    doc("driver.exec", "The exec driver: a plugin speaking docs/driver-protocol.md on stdin/stdout."),
    doc("driver.exec.command", "The plugin's program (looked up in PATH when relative) and arguments; required for kind = \"exec\"."),
    doc("driver.exec.env", "Extra environment variables of the plugin (it also inherits the agent's)."),
    optional("driver.exec.working_dir", "Working directory of the plugin (relative to node.data_dir); the agent's when unset.", "\"plugin\""),
    doc("driver.exec.timeout", "How long the plugin may take to answer one request; past it, it is killed and restarted."),
    doc("driver.exec.migrate_timeout", "The same limit for migrate_out, which lasts as long as the transfer."),
    doc("driver.exec.hello_timeout", "The same limit for the hello handshake of a freshly started plugin."),
    doc("driver.exec.restart_backoff", "Wait before restarting a failed plugin; doubled after each further failure in a row."),
    doc("driver.exec.restart_backoff_max", "Upper bound of the restart wait."),
    doc("driver.exec.max_line_bytes", "Longest line accepted from (or sent to) the plugin, in bytes."),
    doc("driver.exec.max_in_flight", "Most requests in flight at once; further calls wait (within their timeout)."),
    doc("driver.exec.source_copy", "What the plugin's completed migration leaves of the source: \"kept\" (paused until finish_outgoing) or \"ended\" (the hypervisor ends it; the handoff rolls forward). Must agree with the plugin's hello."),
    doc("driver.libvirt", "The libvirt driver (docs/operations.md, ballast on libvirt hosts; a relative state_dir is relative to node.data_dir)."),
    doc("driver.libvirt.uri", "This host's libvirtd, as the agent connects to it."),
    optional("driver.libvirt.peer_uri", "This host's libvirtd as the other hosts' libvirtd reach it (qemu+tls://, qemu+ssh://); required to receive VMs.", "\"qemu+tls://host-b.example/system\""),
    optional("driver.libvirt.migrate_uri", "Where migration streams to this host go (tcp://ADDRESS[:PORT]); default: libvirt's (the hostname).", "\"tcp://10.0.0.2\""),
    optional("driver.libvirt.listen_address", "Address this host's QEMU listens on for incoming migrations and disk copies.", "\"10.0.0.2\""),
    doc("driver.libvirt.shared_paths", "Path prefixes on storage every host shares: disks under them are not copied; every other writable disk is."),
    doc("driver.libvirt.allow_unsafe", "Migrate disks under shared_paths even where libvirt does not recognise the storage as shared (VIR_MIGRATE_UNSAFE)."),
    optional("driver.libvirt.port_range", "Ports [first, last] for incoming migrations' memory streams, one picked per incoming VM; needs migrate_uri; the disk copy's port stays libvirt's; default: libvirt's qemu.conf migration_port_min/max.", "[49152, 49215]"),
    doc("driver.libvirt.remove_source_disks", "After a committed move, delete the source host's files of the disks the migration copied (default false: they stay, as after virsh migrate --copy-storage-all)."),
    doc("driver.libvirt.bandwidth_mibps", "Bandwidth cap of a migration in MiB/s; 0 is unlimited."),
    doc("driver.libvirt.tls", "Encrypt migration streams with libvirt's TLS (VIR_MIGRATE_TLS; needs migrate_tls in qemu.conf)."),
    doc("driver.libvirt.state_dir", "The driver's own records (incoming reservations, outgoing migrations)."),
    doc("driver.libvirt.call_timeout", "Bound on one libvirt call (not on migrations)."),
    doc("driver.libvirt.migrate_timeout", "Bound on one migration; past it the migration is aborted while it still can be."),
    doc("driver.libvirt.qemu_img", "The qemu-img program, used to pre-create copied disks on the destination."),
    doc("handoff", "The handoff machine's intervals and limits."),
    doc("handoff.prepare_retry", "Source: re-send Prepare this often while waiting for Prepared."),
    doc("handoff.prepare_timeout", "Source: abort if Prepared has not come this long after the first Prepare."),
    doc("handoff.migrate_timeout", "Source: cancel and abort a migration still running after this long."),
    doc("handoff.commit_retry", "Source, after its commit point: re-send Commit this often until acknowledged."),
    doc("handoff.query_interval", "Destination: ask the source for the outcome this often while waiting."),
    doc("handoff.store_retry", "Re-run a failed store operation after this long."),
    doc("handoff.handoffs_max", "Most handoffs at once (raised to max_outgoing + max_incoming when lower)."),
    doc("reconcile", "Reconciliation of the hypervisor with the schedule."),
    doc("reconcile.interval", "Time between two reconciliations."),
    doc("failpoints", "Fault injection for tests and the chaos harness; never set in production."),
    doc("failpoints.exit_at", "Handoff steps at which the agent kills itself (see docs/design-agent.md, Failpoints)."),
    doc("failpoints.duplicate_sends", "Send every handoff message twice (duplicates must change nothing)."),
    doc("failpoints.planted_bug", "A deliberate handoff bug for the chaos harness's self-test; never set it elsewhere."),
];

fn doc_of(path: &str) -> Option<&'static KeyDoc> {
    DOCS.iter().find(|d| d.path == path)
}

/// Position of a key in [`DOCS`], so keys print in a deliberate order; unknown keys last.
fn rank(path: &str) -> usize {
    DOCS.iter()
        .position(|d| d.path == path)
        .unwrap_or(usize::MAX)
}

/// The configuration as TOML with a comment on every table and key.
pub fn documented_toml(cfg: &AgentConfig, header: &str) -> anyhow::Result<String> {
    let value = toml::Value::try_from(cfg)?;
    let toml::Value::Table(root) = value else {
        anyhow::bail!("the configuration did not serialize to a table");
    };
    let mut out = String::new();
    for line in header.lines() {
        let _ = writeln!(out, "# {line}");
    }
    render_table(&mut out, "", &root);
    Ok(out)
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Writes the keys of `table` (at dotted `prefix`), then its sub-tables.
fn render_table(out: &mut String, prefix: &str, table: &toml::Table) {
    let mut scalars: Vec<(String, Option<&toml::Value>)> = Vec::new();
    let mut tables: Vec<(String, &toml::Table)> = Vec::new();
    for (k, v) in table {
        match v {
            toml::Value::Table(t) => tables.push((k.clone(), t)),
            other => scalars.push((k.clone(), Some(other))),
        }
    }
    // Optional keys the config leaves unset: shown commented out with an example.
    for d in DOCS.iter().filter(|d| d.example.is_some()) {
        if let Some((parent, key)) = d.path.rsplit_once('.') {
            if parent == prefix && !table.contains_key(key) {
                scalars.push((key.to_owned(), None));
            }
        }
    }
    scalars.sort_by_key(|(k, _)| rank(&join(prefix, k)));
    tables.sort_by_key(|(k, _)| rank(&join(prefix, k)));
    for (key, value) in scalars {
        let path = join(prefix, &key);
        let d = doc_of(&path);
        let _ = writeln!(out, "# {}", d.map_or("(undocumented)", |d| d.doc));
        match value {
            Some(v) => {
                let _ = writeln!(out, "{} = {v}", toml_key(&key));
            }
            None => {
                let example = d.and_then(|d| d.example).unwrap_or("\"\"");
                let _ = writeln!(out, "# {} = {example}", toml_key(&key));
            }
        }
    }
    for (key, sub) in tables {
        let path = join(prefix, &key);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "# {}",
            doc_of(&path).map_or("(undocumented)", |d| d.doc)
        );
        let _ = writeln!(out, "[{path}]");
        render_table(out, &path, sub);
    }
}

/// A key as TOML writes it: bare when it can be, quoted otherwise.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// Every dotted key and table the configuration has without a doc (empty when all are
/// documented).
#[cfg(test)]
fn undocumented(cfg: &AgentConfig) -> Vec<String> {
    fn walk(prefix: &str, t: &toml::Table, missing: &mut Vec<String>) {
        for (k, v) in t {
            let path = join(prefix, k);
            if doc_of(&path).is_none() {
                missing.push(path.clone());
            }
            if let toml::Value::Table(sub) = v {
                walk(&path, sub, missing);
            }
        }
    }
    let mut missing = Vec::new();
    if let Ok(toml::Value::Table(root)) = toml::Value::try_from(cfg) {
        walk("", &root, &mut missing);
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_the_agent_config_is_documented() {
        let missing = undocumented(&AgentConfig::default());
        assert!(missing.is_empty(), "keys without a doc: {missing:?}");
    }

    #[test]
    fn the_documented_defaults_parse_back_to_the_defaults() {
        let text = documented_toml(&AgentConfig::default(), "header").expect("render");
        assert!(text.starts_with("# header\n"));
        assert!(text.contains("# node.id") || text.contains("# This node's id"));
        assert!(
            text.contains("\nmetrics_listen = \"127.0.0.1:9420\""),
            "{text}"
        );
        assert!(text.contains("# advertise = \"10.0.0.1:7420\""), "{text}");
        let back = AgentConfig::from_toml_str(&text).expect("parses");
        assert_eq!(back, AgentConfig::default());
    }

    #[test]
    fn set_optional_keys_are_written() {
        let mut cfg = AgentConfig::default();
        cfg.node.advertise = Some("10.1.2.3:7000".parse().expect("addr"));
        let text = documented_toml(&cfg, "").expect("render");
        assert!(text.contains("\nadvertise = \"10.1.2.3:7000\""), "{text}");
        assert_eq!(AgentConfig::from_toml_str(&text).expect("parses"), cfg);
    }
}
