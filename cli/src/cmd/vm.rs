//! `ballast vm create|list|show|delete|pin|unpin|move|adopt|release`: VMs through the admin API.
//! Commands on one VM find the node that holds it first.

use crate::admin_bundle::AdminArgs;
use crate::cmd::admin::{block_on, explain, whole, Cluster};
use crate::cmd::landing;
use crate::cmd::rules::{self, RuleArgs};
use crate::exit_status::Unfinished;
use crate::size::{format_mib, parse_memory_mib, parse_target};
use crate::table::{bytes, new_table};
use anyhow::{anyhow, Context};
use ballast_node::agent::wire::AdminError;
use ballast_node::agent::AdminClientError;
use ballast_node::report::vms::{vm_list, VmRow};
use ballast_store::{LoadFactors, NodeId, VmId, VmSpec};
use std::collections::BTreeMap;
use std::time::Duration;

/// Bound on a create or delete call (the agent may start or stop a VM meanwhile).
const CHANGE_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `ballast vm`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Create a VM (on --node, or on the less loaded of two random nodes).
    Create(CreateArgs),
    /// List the VMs of every node (or of one).
    List {
        /// Only this node's VMs.
        #[arg(long)]
        node: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one VM: where it runs, its spec, state and load factors.
    Show {
        /// The VM.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a VM (stop it and remove it from its node's schedule).
    Delete {
        /// The VM.
        name: String,
    },
    /// Pin a VM: balancing never moves it.
    Pin {
        /// The VM.
        name: String,
    },
    /// Unpin a VM.
    Unpin {
        /// The VM.
        name: String,
    },
    /// Move a VM to another node now (live migration, crash-safe handoff); waits until
    /// it runs there.
    Move(crate::cmd::vm_move::MoveArgs),
    /// Take VMs the hypervisor of --node already runs (libvirt domains defined outside
    /// ballast) into its schedule, so balancing may move them.
    Adopt(crate::cmd::vm_adopt::AdoptArgs),
    /// Give a VM back: it leaves the schedule, keeps running, and is never moved again.
    Release {
        /// The VM.
        name: String,
    },
    /// Replace a VM's placement rules (the flags given are its new rules; `--clear`
    /// removes them all).
    Set(SetArgs),
}

/// Arguments of `ballast vm set`.
#[derive(clap::Args, Debug)]
struct SetArgs {
    /// The VM.
    name: String,
    #[command(flatten)]
    rules: RuleArgs,
    /// Remove every rule.
    #[arg(long, conflicts_with_all = ["anti_affinity", "affinity", "requires"])]
    clear: bool,
}

/// Arguments of `ballast vm create`.
#[derive(clap::Args, Debug)]
struct CreateArgs {
    /// The VM's cluster-unique name.
    name: String,
    /// Virtual CPUs.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    vcpus: u32,
    /// Guest memory: 512M, 2G, 1.5G (a plain number is MiB).
    #[arg(long, value_parser = parse_memory_mib)]
    memory: u64,
    /// Reservation used as its load in target mode: cpu=CORES,io=BYTES/s,mem=BYTES
    /// (sizes take K/M/G/T), e.g. cpu=1.5,io=20M,mem=2G.
    #[arg(long, value_parser = parse_target)]
    target: Option<LoadFactors>,
    /// Put it on this node.
    #[arg(long)]
    node: Option<String>,
    #[command(flatten)]
    rules: RuleArgs,
    /// With --node: create it there even if it breaks a hard placement rule (recorded
    /// and shown by `status`; balancing then moves it to a legal node when it can).
    #[arg(long, requires = "node")]
    force: bool,
    /// Pin it there (balancing never moves it).
    #[arg(long)]
    pin: bool,
    /// A disk image (repeatable; driver-specific path or URL).
    #[arg(long = "disk", value_name = "PATH")]
    disks: Vec<String>,
    /// A driver option KEY=VALUE (repeatable; e.g. the sim driver's usage profile).
    #[arg(long = "opt", value_name = "KEY=VALUE", value_parser = parse_opt)]
    opts: Vec<(String, String)>,
    /// Where its disks live (qemu driver): `local` (each host's own; a move copies them)
    /// or `shared` (every host opens the same files). Default: from each disk's path and
    /// the host's `shared_paths`. Same as `--opt storage=...`.
    #[arg(long, value_parser = ["shared", "local"])]
    storage: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_opt(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("'{text}' is not KEY=VALUE"))
}

/// Runs `ballast vm ...`.
pub fn run(args: Args) -> anyhow::Result<()> {
    block_on(async move {
        let mut cluster = Cluster::connect(&args.admin).await?;
        if matches!(args.cmd, Cmd::List { .. } | Cmd::Show { .. }) {
            cluster.reach_all().await;
        }
        match args.cmd {
            Cmd::Create(a) => create(&mut cluster, a).await,
            Cmd::List { node, json } => list(&cluster, node.as_deref(), json).await,
            Cmd::Show { name, json } => show(&cluster, &name, json).await,
            Cmd::Delete { name } => change(&cluster, &name, Change::Delete).await,
            Cmd::Pin { name } => change(&cluster, &name, Change::Pin).await,
            Cmd::Unpin { name } => change(&cluster, &name, Change::Unpin).await,
            Cmd::Move(a) => crate::cmd::vm_move::run_move(&cluster, a).await,
            Cmd::Adopt(a) => crate::cmd::vm_adopt::run_adopt(&cluster, a).await,
            Cmd::Release { name } => change(&cluster, &name, Change::Release).await,
            Cmd::Set(a) => set(&mut cluster, a).await,
        }
    })
}

async fn create(cluster: &mut Cluster, a: CreateArgs) -> anyhow::Result<()> {
    let vm = VmId::from(a.name.as_str());
    let mut rules = a.rules.rules()?;
    // Affinity is a preference: a node already holding a member of the group first.
    let mut preferred = None;
    if !rules.is_empty() {
        cluster.reach_all().await;
        let schedules = cluster.schedules().await?;
        rules::groups_are_not_vms(&vm, &rules, schedules.answered.iter().flat_map(|(_, e)| e))?;
        if a.node.is_none() {
            preferred = rules::affinity_home(&rules, &schedules.answered);
        }
    }
    if a.force {
        rules.forced_on = a.node.as_deref().map(NodeId::from);
    }
    let spec = VmSpec {
        vcpus: a.vcpus,
        memory_mib: a.memory,
        target: a.target,
        disks: a.disks,
        extra_args: Vec::new(),
        driver_opts: a
            .opts
            .into_iter()
            .chain(a.storage.map(|s| ("storage".to_owned(), s)))
            .collect::<BTreeMap<_, _>>(),
        rules: Box::new(rules),
    };
    let via = match &a.node {
        Some(n) => cluster.member(n)?,
        None => cluster
            .members
            .values()
            .find(|m| m.status.is_some())
            .ok_or_else(|| anyhow!("no node answered"))?,
    };
    let client = cluster.client(via.addr, CHANGE_CALL_TIMEOUT)?;
    let node = a.node.as_deref().map(NodeId::from);
    let first = match &preferred {
        Some(home) => {
            client
                .create_vm_reporting(&vm, &spec, Some(home), a.pin)
                .await
        }
        None => {
            client
                .create_vm_reporting(&vm, &spec, node.as_ref(), a.pin)
                .await
        }
    };
    let created = match first {
        // The group's node may not take it (a hard rule, no room): anywhere legal.
        Err(AdminClientError::Admin(AdminError::BreaksRule { .. } | AdminError::Driver(_)))
            if preferred.is_some() =>
        {
            client.create_vm_reporting(&vm, &spec, None, a.pin).await
        }
        other => other,
    };
    let (placed, warning) = created
        .map_err(|e| explain(e, via.addr, &cluster.bundle_path))
        .with_context(|| format!("creating VM {vm}"))?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "vm": vm.0, "node": placed.0, "warning": warning })
        );
    } else {
        println!(
            "VM {vm} created on {placed} ({} vCPU, {})",
            spec.vcpus,
            format_mib(spec.memory_mib)
        );
        if let Some(w) = &warning {
            eprintln!("warning: {w}");
        }
    }
    Ok(())
}

async fn list(cluster: &Cluster, node: Option<&str>, json: bool) -> anyhow::Result<()> {
    if let Some(n) = node {
        cluster.member(n)?;
    }
    let schedules = cluster.schedules().await?;
    let list = vm_list(&schedules.answered, schedules.missing, node);
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(whole(&list.missing)?);
    }
    let mut t = new_table(
        &["VM", "NODE", "STATE", "VCPUS", "MEMORY", "PINNED", "EPOCH"],
        &[3, 4, 6],
    );
    for r in &list.vms {
        let state = match &r.peer {
            Some(p) => format!("{} ({p})", r.state),
            None => r.state.clone(),
        };
        t.add_row(vec![
            r.vm.clone(),
            r.node.clone(),
            state,
            r.spec.vcpus.to_string(),
            format_mib(r.spec.memory_mib),
            if r.pinned { "yes" } else { "" }.to_owned(),
            r.epoch.to_string(),
        ]);
    }
    println!("{t}");
    println!("{} VM entries", list.vms.len());
    Ok(whole(&list.missing)?)
}

async fn show(cluster: &Cluster, name: &str, json: bool) -> anyhow::Result<()> {
    let vm = VmId::from(name);
    let (member, entry) = match cluster.find_vm(&vm).await {
        Ok(found) => found,
        Err(e) => {
            // Not in any answering schedule: maybe handed over to a node that is down.
            let Some((from, to, epoch)) = landing::handed_over(cluster, &vm).await else {
                return Err(e);
            };
            let now = landing::look(cluster, &vm, &to).await;
            return Err(Unfinished::NotResumed(format!(
                "VM {vm} was handed over by {from} to {to} (epoch {epoch}) and does not run \
                 yet: {}; {to} holds it paused and runs it once {to} is up",
                now.why_not_running(&to)
            ))
            .into());
        }
    };
    let row = VmRow::new(&member.node, &entry);
    if json {
        println!("{}", serde_json::to_string_pretty(&row)?);
        return Ok(());
    }
    println!("VM:       {}", row.vm);
    println!("node:     {} ({})", row.node, member.addr);
    match &row.peer {
        Some(p) => println!("state:    {} (with {p})", row.state),
        None => println!("state:    {}", row.state),
    }
    println!("epoch:    {}", row.epoch);
    println!("pinned:   {}", row.pinned);
    println!("vcpus:    {}", row.spec.vcpus);
    println!("memory:   {}", format_mib(row.spec.memory_mib));
    if let Some(t) = row.spec.target {
        println!(
            "target:   cpu={} io={}/s mem={}",
            t.cpu,
            bytes(t.io),
            bytes(t.mem)
        );
    }
    println!(
        "factors:  cpu={:.3} io={}/s mem={}",
        row.factors.cpu,
        bytes(row.factors.io),
        bytes(row.factors.mem)
    );
    for d in &row.spec.disks {
        println!("disk:     {d}");
    }
    for (k, v) in &row.spec.driver_opts {
        println!("opt:      {k}={v}");
    }
    println!("rules:    {}", rules::describe(&row.spec.rules));
    if let Some(b) = member
        .status
        .as_ref()
        .and_then(|s| s.rules.breaks.iter().find(|b| b.vm == vm))
    {
        let why = if b.forced {
            "forced there by an operator"
        } else {
            "balancing moves it to a node where it breaks none when one has room"
        };
        println!("broken:   {} ({why})", b.rule);
    }
    Ok(())
}

async fn set(cluster: &mut Cluster, a: SetArgs) -> anyhow::Result<()> {
    let vm = VmId::from(a.name.as_str());
    let rules = a.rules.rules()?;
    anyhow::ensure!(
        a.clear || !rules.is_empty(),
        "give the VM's new rules (--anti-affinity, --affinity, --requires) or --clear"
    );
    cluster.reach_all().await;
    let schedules = cluster.schedules().await?;
    rules::groups_are_not_vms(&vm, &rules, schedules.answered.iter().flat_map(|(_, e)| e))?;
    let (member, _) = cluster.find_vm(&vm).await?;
    let client = cluster.client(member.addr, CHANGE_CALL_TIMEOUT)?;
    let breaks = client
        .set_rules(&vm, &rules)
        .await
        .map_err(|e| explain(e, member.addr, &cluster.bundle_path))?;
    println!(
        "VM {vm} rules set (on {}): {}",
        member.node,
        rules::describe(&rules)
    );
    if let Some(rule) = breaks {
        eprintln!(
            "warning: VM {vm} breaks {rule} on {}; balancing moves it to a node where it \
             breaks none when one has room",
            member.node
        );
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Change {
    Delete,
    Pin,
    Unpin,
    Release,
}

async fn change(cluster: &Cluster, name: &str, what: Change) -> anyhow::Result<()> {
    let vm = VmId::from(name);
    let (member, _) = cluster.find_vm(&vm).await?;
    let client = cluster.client(member.addr, CHANGE_CALL_TIMEOUT)?;
    let (result, done) = match what {
        Change::Delete => (client.delete_vm(&vm).await, "deleted"),
        Change::Pin => (client.pin(&vm).await, "pinned"),
        Change::Unpin => (client.unpin(&vm).await, "unpinned"),
        Change::Release => (
            client.release_vm(&vm).await,
            "released (it keeps running, unmanaged)",
        ),
    };
    result.map_err(|e| explain(e, member.addr, &cluster.bundle_path))?;
    println!("VM {vm} {done} (on {})", member.node);
    Ok(())
}
