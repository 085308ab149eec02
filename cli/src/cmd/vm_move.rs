//! `ballast vm move VM --to NODE`: an operator's manual migration, through the same
//! crash-safe handoff as balancing. It ignores threshold, gain, pinning and cooldown,
//! and waits (with a spinner) until the handoff resolved: the VM runs on NODE, or the
//! move aborted and it still runs where it was. `--pin` then keeps it there. A move that
//! committed but whose destination has not resumed the VM (it died in between) is not
//! "moved": the command says which node must come back and exits 4 (`--no-wait`: it
//! says so and exits 0 once the move committed).

use crate::cmd::admin::{explain, Cluster, Member};
use crate::cmd::landing::{self, Landing};
use crate::cmd::rules;
use anyhow::{anyhow, bail};
use ballast_node::agent::wire::AdminError;
use ballast_node::agent::AdminClientError;
use ballast_store::{NodeId, ScheduleEntry, VmId, VmState};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Bound on the move call; the agent answers within most of its RPC timeout.
const MOVE_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Time between two looks at the VM's entry while the handoff goes on.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Time between two move requests while the node hands off another VM.
const LIMIT_RETRY: Duration = Duration::from_millis(500);
/// Looks that may fail in a row before the wait gives up.
const POLL_FAILURES_MAX: u32 = 20;

/// Arguments of `ballast vm move`.
#[derive(clap::Args, Debug)]
pub struct MoveArgs {
    /// The VM.
    name: String,
    /// The node to move it to.
    #[arg(long)]
    to: String,
    /// Pin it on NODE afterwards, so that balancing leaves it there.
    #[arg(long)]
    pin: bool,
    /// Give up waiting after this many seconds (the handoff itself goes on).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
    /// Print a JSON object at the end instead of progress.
    #[arg(long)]
    json: bool,
    /// Return once the move committed (or aborted), without waiting until NODE runs
    /// the VM.
    #[arg(long)]
    no_wait: bool,
    /// Move it even if it breaks a hard placement rule on NODE (recorded, and shown by
    /// `status` and `vm show`).
    #[arg(long)]
    force: bool,
}

/// What `vm move --json` prints.
#[derive(Debug, Serialize)]
pub struct MoveReport {
    /// The VM.
    pub vm: String,
    /// Where it was.
    pub from: String,
    /// Where it was to go.
    pub to: String,
    /// True when it now runs on `to`.
    pub moved: bool,
    /// Where it is now (its schedule entry).
    pub node: String,
    /// True when it runs there; false after a committed move whose destination has
    /// not resumed it yet.
    pub running: bool,
    /// Why it does not run yet (`running` false).
    pub waiting_for: Option<String>,
    /// Whether it is pinned there now.
    pub pinned: bool,
    /// Seconds from the request to the resolution.
    pub seconds: f64,
}

/// Where `vm` stands: `Some(node)` once it is `Running` on one node or handed over to
/// a node that does not answer, `None` while a handoff is under way.
async fn settled_on(cluster: &Cluster, vm: &VmId) -> anyhow::Result<Option<NodeId>> {
    let mut running = None;
    for (node, entries) in cluster.schedules().await?.answered {
        for e in entries.iter().filter(|e| &e.vm == vm) {
            if e.state != VmState::Running {
                return Ok(None);
            }
            running = Some(node.clone());
        }
    }
    if let Some(node) = running {
        return Ok(Some(node));
    }
    match landing::handed_over(cluster, vm).await {
        Some((_, to, _)) => Ok(Some(to)),
        None => Err(anyhow!(
            "VM {vm} is no longer in any reachable node's schedule"
        )),
    }
}

/// After a committed move: looks at the VM on `to` until it runs there (once with
/// `--no-wait`), or the deadline.
async fn wait_running(
    cluster: &Cluster,
    vm: &VmId,
    to: &NodeId,
    deadline: Instant,
    no_wait: bool,
    spinner: &ProgressBar,
) -> Landing {
    loop {
        let now = landing::look(cluster, vm, to).await;
        if now == Landing::Running || no_wait || Instant::now() >= deadline {
            return now;
        }
        spinner.set_message(format!(
            "committed: {vm} is {to}'s now; waiting until it runs: {}",
            now.why_not_running(to)
        ));
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The VM's holder and entry, once the move makes sense: `to` is a reachable active
/// node other than the holder, and the VM is not in a handoff.
async fn check_move(
    cluster: &Cluster,
    vm: &VmId,
    to: &NodeId,
    force: bool,
) -> anyhow::Result<(Member, ScheduleEntry)> {
    let dest = cluster.member(to.as_str())?;
    match &dest.status {
        None => bail!(
            "node {to} is not reachable: {}",
            dest.error.as_deref().unwrap_or("no answer")
        ),
        Some(s) if s.draining => bail!("node {to} is draining; undrain it first"),
        Some(_) => {}
    }
    let (holder, entry) = cluster.find_vm(vm).await?;
    if &holder.node == to {
        bail!("VM {vm} is already on {to}");
    }
    if let Some(rule) = rules::refusal_at(vm, &entry.spec.rules, dest) {
        if !force {
            bail!(
                "VM {vm} may not move to {to}: {rule} (`--force` moves it anyway and records \
                 the break)"
            );
        }
        eprintln!("warning: VM {vm} breaks {rule} on {to}; moving it anyway (--force)");
    }
    let busy = match &entry.state {
        VmState::Running => return Ok((holder, entry)),
        VmState::MigratingOut { to, .. } => format!("migrating out to {to}"),
        VmState::Incoming { from, .. } => format!("incoming from {from}"),
    };
    bail!("VM {vm} is in a handoff already ({busy}); try again once it ends")
}

/// Asks the holder to move the VM, waiting for its turn while the holder hands off
/// another VM. `None`: the handoff is under way.
async fn request(
    cluster: &Cluster,
    holder: &Member,
    vm: &VmId,
    to: &NodeId,
    force: bool,
    deadline: Instant,
    spinner: &ProgressBar,
) -> anyhow::Result<Option<(bool, u64)>> {
    let client = cluster.client(holder.addr, MOVE_CALL_TIMEOUT)?;
    loop {
        match client.start_move(vm, to, force).await {
            Err(AdminClientError::Admin(AdminError::Busy { detail, .. }))
                if detail.is_limit() && Instant::now() < deadline =>
            {
                spinner.set_message(format!(
                    "waiting: {} is handing off another VM; then {vm} goes to {to}",
                    holder.node
                ));
                tokio::time::sleep(LIMIT_RETRY).await;
            }
            other => {
                return other.map_err(|e| explain(e, holder.addr, &cluster.bundle_path));
            }
        }
    }
}

/// The source's last report of `vm`'s migration, if `holder` answers and has one.
async fn migration_progress(cluster: &Cluster, holder: &Member, vm: &VmId) -> Option<String> {
    let status = cluster
        .client(holder.addr, MOVE_CALL_TIMEOUT)
        .ok()?
        .status()
        .await
        .ok()?;
    let h = status.handoffs.iter().find(|h| &h.vm == vm)?;
    h.progress.as_ref().map(crate::size::format_progress)
}

/// Follows the VM's entry until it is `Running` on one node; returns that node. The
/// spinner shows the migration's progress as the source (`holder`) reports it.
async fn follow(
    cluster: &Cluster,
    holder: &Member,
    vm: &VmId,
    deadline: Instant,
    timeout_s: u64,
    spinner: &ProgressBar,
    moving: &str,
) -> anyhow::Result<NodeId> {
    let mut failures = 0;
    loop {
        if Instant::now() > deadline {
            bail!("gave up waiting after {timeout_s} s; the handoff of {vm} goes on (see `ballast vm show {vm}`)");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        match migration_progress(cluster, holder, vm).await {
            Some(p) => spinner.set_message(format!("{moving}: {p}")),
            None => spinner.set_message(moving.to_owned()),
        }
        match settled_on(cluster, vm).await {
            Ok(Some(node)) => return Ok(node),
            Ok(None) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures >= POLL_FAILURES_MAX {
                    return Err(e.context(format!("following the move of {vm}")));
                }
            }
        }
    }
}

/// Runs `ballast vm move`.
pub async fn run_move(cluster: &Cluster, a: MoveArgs) -> anyhow::Result<()> {
    let vm = VmId::from(a.name.as_str());
    let to = NodeId::from(a.to.as_str());
    let (holder, entry) = check_move(cluster, &vm, &to, a.force).await?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.timeout);
    let spinner = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    spinner.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}")?);
    spinner.enable_steady_tick(Duration::from_millis(120));
    let moving = format!("moving {vm} from {} to {to}", holder.node);
    spinner.set_message(moving.clone());
    let outcome = match request(cluster, &holder, &vm, &to, a.force, deadline, &spinner).await {
        Ok(Some((true, _))) => Ok(to.clone()),
        Ok(Some((false, _))) => Ok(holder.node.clone()),
        Ok(None) => {
            spinner.set_message(moving.clone());
            follow(
                cluster, &holder, &vm, deadline, a.timeout, &spinner, &moving,
            )
            .await
        }
        Err(e) => Err(e),
    };
    let node = outcome?;
    let moved = node == to;
    let landed = if moved {
        wait_running(cluster, &vm, &to, deadline, a.no_wait, &spinner).await
    } else {
        Landing::Running
    };
    spinner.finish_and_clear();
    let running = landed == Landing::Running;
    let mut pinned = entry.pinned;
    if moved && running && a.pin && !pinned {
        let on = cluster.member(node.as_str())?;
        cluster
            .client(on.addr, MOVE_CALL_TIMEOUT)?
            .pin(&vm)
            .await
            .map_err(|e| explain(e, on.addr, &cluster.bundle_path))?;
        pinned = true;
    }
    let report = MoveReport {
        vm: vm.to_string(),
        from: holder.node.to_string(),
        to: to.to_string(),
        moved,
        node: node.to_string(),
        running,
        waiting_for: (!running).then(|| landed.why_not_running(&to)),
        pinned,
        seconds: started.elapsed().as_secs_f64(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if moved && !running {
        if a.no_wait {
            if !a.json {
                println!(
                    "Committed: {vm} is {to}'s now, but it does not run yet: {}; it runs \
                     once {to} resumes it.",
                    landed.why_not_running(&to)
                );
            }
            return Ok(());
        }
        return Err(landing::not_resumed(&vm, &holder.node, &to, &landed).into());
    }
    if !a.json && moved {
        println!(
            "Moved {vm} from {} to {to} in {:.1} s{}.",
            report.from,
            report.seconds,
            if pinned { " (pinned there)" } else { "" }
        );
    }
    if !moved {
        bail!(
            "the move of {vm} to {to} aborted; it still runs on {node} (the logs of {} and {to} say why)",
            report.from
        );
    }
    Ok(())
}
