//! `ballast drain NODE` (hand every VM off, with a progress bar, waiting unless
//! `--no-wait`) and `ballast undrain NODE`. A drain whose last moves committed to nodes
//! that died before resuming them says which and exits 4.

use crate::admin_bundle::AdminArgs;
use crate::cmd::admin::{block_on, explain, Cluster};
use crate::cmd::landing::{self, Landing};
use crate::exit_status::Unfinished;
use anyhow::bail;
use ballast_node::agent::wire::HandoffInfo;
use ballast_node::handoff::HandoffStep;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::{Duration, Instant};

/// Bound on one status poll while waiting.
const POLL_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Time between two polls.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Polls that may fail in a row before the wait gives up.
const POLL_FAILURES_MAX: u32 = 20;

/// Arguments of `ballast drain`.
#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    /// The node to drain.
    node: String,
    /// Return once draining started instead of waiting until the node is empty.
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting after this many seconds (draining continues on the node).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
    /// Print a JSON object at the end instead of progress.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Arguments of `ballast undrain`.
#[derive(clap::Args, Debug)]
pub struct UndrainArgs {
    /// The node to take VMs again.
    node: String,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Runs `ballast drain`.
pub fn run_drain(a: DrainArgs) -> anyhow::Result<()> {
    block_on(async move {
        let mut cluster = Cluster::connect(&a.admin).await?;
        // Every node, also those the drained node's view lacks: the drain ends by
        // asking the destinations whether they run what it sent.
        cluster.reach_all().await;
        let member = cluster.member(&a.node)?.clone();
        let Some(status) = &member.status else {
            bail!(
                "node {} is not reachable: {}",
                a.node,
                member.error.as_deref().unwrap_or("no answer")
            );
        };
        let total = u64::from(status.summary.vm_count);
        let client = cluster.client(member.addr, POLL_CALL_TIMEOUT)?;
        client
            .drain()
            .await
            .map_err(|e| explain(e, member.addr, &cluster.bundle_path))?;
        if a.no_wait {
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({ "node": a.node, "draining": true, "vms_left": total })
                );
            } else {
                println!("Node {} is draining ({total} VMs to move).", a.node);
            }
            return Ok(());
        }
        let started = Instant::now();
        let bar = if a.json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(total)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "draining {prefix} [{bar:30}] {pos}/{len} VMs moved ({elapsed}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(a.node.clone());
        let mut failures = 0;
        let deadline = started + Duration::from_secs(a.timeout);
        loop {
            match client.status().await {
                Ok(s) => {
                    failures = 0;
                    let left = u64::from(s.summary.vm_count);
                    if left > bar.length().unwrap_or(0) {
                        bar.set_length(left);
                    }
                    bar.set_position(bar.length().unwrap_or(0).saturating_sub(left));
                    let sent: Vec<String> = s
                        .handoffs
                        .iter()
                        .filter_map(|h| {
                            let p = h.progress.as_ref()?;
                            Some(format!("{}: {}", h.vm, crate::size::format_progress(p)))
                        })
                        .collect();
                    bar.set_message(if sent.is_empty() {
                        format!("{} in flight", s.handoffs.len())
                    } else {
                        format!("{} in flight; {}", s.handoffs.len(), sent.join(", "))
                    });
                    if left == 0 && s.handoffs.is_empty() {
                        break;
                    }
                    let blocked = &s.rules.drain_blocked;
                    if left > 0 && left == blocked.len() as u64 && s.handoffs.is_empty() {
                        bar.abandon();
                        let kept: Vec<String> = blocked
                            .iter()
                            .map(|b| format!("{} ({})", b.vm, b.rule))
                            .collect();
                        bail!(
                            "node {} keeps {left} VM(s) that no other node may take under \
                             their placement rules: {}; it stays draining: change their \
                             rules (`ballast vm set`), add a node that may take them, or \
                             move them with `ballast vm move --force`",
                            a.node,
                            kept.join("; ")
                        );
                    }
                    if left == 0 {
                        let waiting = unresumed(&cluster, &s.handoffs).await;
                        if !waiting.is_empty() {
                            bar.abandon();
                            return Err(Unfinished::NotResumed(format!(
                                "node {} holds no VM now, but {} of its moves committed to \
                                 nodes that do not run them yet: {}; each runs once its \
                                 node is back",
                                a.node,
                                waiting.len(),
                                waiting.join("; ")
                            ))
                            .into());
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures >= POLL_FAILURES_MAX {
                        bar.abandon();
                        return Err(explain(e, member.addr, &cluster.bundle_path)
                            .context("lost the node while waiting for the drain"));
                    }
                }
            }
            if Instant::now() >= deadline {
                bar.abandon();
                bail!(
                    "node {} still holds VMs after {}s; draining continues on the node \
                     (check with `ballast status`)",
                    a.node,
                    a.timeout
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        bar.finish();
        let seconds = started.elapsed().as_secs_f64();
        if a.json {
            println!(
                "{}",
                serde_json::json!({ "node": a.node, "drained": true, "moved": total, "seconds": seconds })
            );
        } else {
            println!(
                "Node {} drained: {total} VM(s) moved in {seconds:.1}s. It takes no VMs until `ballast undrain {}`.",
                a.node, a.node
            );
        }
        Ok(())
    })
}

/// The committed handoffs among `handoffs` (the source waits for the destination's
/// ack) whose destination does not answer, as "vm-3 to n3 (n3 does not answer (why))";
/// empty as long as any handoff is still deciding or its destination answers.
async fn unresumed(cluster: &Cluster, handoffs: &[HandoffInfo]) -> Vec<String> {
    let mut out = Vec::new();
    for h in handoffs {
        if h.step != HandoffStep::Settling {
            return Vec::new();
        }
        match landing::look(cluster, &h.vm, &h.peer).await {
            l @ Landing::Unreachable(_) => {
                out.push(format!(
                    "{} to {} ({})",
                    h.vm,
                    h.peer,
                    l.why_not_running(&h.peer)
                ));
            }
            _ => return Vec::new(),
        }
    }
    out
}

/// Runs `ballast undrain`.
pub fn run_undrain(a: UndrainArgs) -> anyhow::Result<()> {
    block_on(async move {
        let cluster = Cluster::connect(&a.admin).await?;
        let member = cluster.member(&a.node)?;
        let client = cluster.client(member.addr, POLL_CALL_TIMEOUT)?;
        client
            .undrain()
            .await
            .map_err(|e| explain(e, member.addr, &cluster.bundle_path))?;
        println!("Node {} takes VMs again.", a.node);
        Ok(())
    })
}
