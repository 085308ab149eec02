//! `ballast simulate`: many hosts in one process, the agent's own policy, and the
//! central-greedy baseline on the same initial state.

use crate::plot;
use anyhow::Context;
use ballast_node::policy::{PeerChoice, PolicyConfig, Sender};
use ballast_node::simulate::rules::SimRuleOptions;
use ballast_node::simulate::{
    self, default_sim_policy, RoundStat, Scenario, SimOptions, SimReport,
};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `ballast simulate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of hosts.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(2..=10_000_000))]
    hosts: u64,
    /// Initial state: uniform, hotspot, new-hosts or heterogeneous.
    #[arg(long, default_value = "uniform")]
    scenario: Scenario,
    /// Seed of the initial state and of every round.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Rounds to run.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rounds: u32,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Draw max/mean per round (ballast and baseline) into this PNG file.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<PathBuf>,
    /// Moves one session may plan [default: the agent's default].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1000))]
    max_moves: Option<u64>,
    /// Which side sends: busier or initiator [default: the agent's default].
    #[arg(long, value_parser = parse_sender)]
    sender: Option<Sender>,
    /// How a round picks its peer: uniform, two-choice or most-different (of
    /// --peer-samples) [default: the agent's default].
    #[arg(long, value_parser = parse_peer_choice)]
    peer_choice: Option<PeerChoice>,
    /// Peers sampled per round by --peer-choice most-different [default: the agent's].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
    peer_samples: Option<u64>,
    /// Whether a session may swap two VMs when no single move gains enough: true or
    /// false [default: the agent's default].
    #[arg(long)]
    swaps: Option<bool>,
    /// A swap must lower the pair's larger load by at least this much.
    #[arg(long, value_parser = non_negative)]
    swap_min_gain: Option<f64>,
    /// No session unless loads differ by more than this (VM mean load = 1).
    #[arg(long, default_value_t = 0.25, value_parser = non_negative)]
    threshold: f64,
    /// A move must lower the pair's larger load by at least this much.
    #[arg(long, default_value_t = 0.1, value_parser = non_negative)]
    min_gain: f64,
    /// Skip the central-greedy baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Run the policy variants side by side (one move vs several, busier vs initiator
    /// sends, uniform vs two-choice vs most-different-of-d peers, swaps or not) on the
    /// same seed and print one row each.
    #[arg(long, conflicts_with = "plot")]
    variants: bool,
    /// Placement rules: this many anti-affinity groups (of --group-size VMs each, drawn at
    /// random); the run is then made with and without the rules, to show their cost.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    anti_affinity_groups: u32,
    /// Members of each anti-affinity group.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=1000))]
    group_size: u32,
    /// Placement rules: the share of the hosts that carry a tag (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    tagged_hosts: f64,
    /// Placement rules: the share of the VMs that require the tag (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    tagged_vms: f64,
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("expected a share between 0 and 1, got {s:?}")),
    }
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("expected a number >= 0, got {s:?}")),
    }
}

fn parse_sender(s: &str) -> Result<Sender, String> {
    match s {
        "busier" => Ok(Sender::Busier),
        "initiator" => Ok(Sender::Initiator),
        _ => Err(format!("expected busier or initiator, got {s:?}")),
    }
}

fn parse_peer_choice(s: &str) -> Result<PeerChoice, String> {
    match s {
        "uniform" => Ok(PeerChoice::Uniform),
        "two-choice" => Ok(PeerChoice::TwoChoice),
        "most-different" => Ok(PeerChoice::MostDifferent),
        _ => Err(format!(
            "expected uniform, two-choice or most-different, got {s:?}"
        )),
    }
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut policy = PolicyConfig {
        threshold: args.threshold,
        min_gain: args.min_gain,
        ..default_sim_policy()
    };
    if let Some(m) = args.max_moves {
        policy.max_moves_per_session = m as usize;
    }
    if let Some(s) = args.sender {
        policy.sender = s;
    }
    if let Some(p) = args.peer_choice {
        policy.peer_choice = p;
    }
    if let Some(d) = args.peer_samples {
        policy.peer_samples = d as usize;
    }
    if let Some(s) = args.swaps {
        policy.swaps = s;
    }
    if let Some(g) = args.swap_min_gain {
        policy.swap_min_gain = g;
    }
    policy.validate().context("invalid policy flags")?;
    anyhow::ensure!(
        args.tagged_vms == 0.0 || args.tagged_hosts > 0.0,
        "--tagged-vms needs --tagged-hosts above 0 (no host could take those VMs)"
    );
    let rules =
        (args.anti_affinity_groups > 0 || args.tagged_vms > 0.0).then_some(SimRuleOptions {
            groups: args.anti_affinity_groups,
            group_size: args.group_size,
            tagged_hosts: args.tagged_hosts,
            tagged_vms: args.tagged_vms,
        });
    let opts = SimOptions {
        hosts: args.hosts as usize,
        scenario: args.scenario,
        seed: args.seed,
        rounds: args.rounds,
        policy,
        baseline: !args.no_baseline,
        rules,
    };
    if args.variants {
        return run_variants(&opts, args.json);
    }
    let mut report = run_one(&opts, !args.json)?;
    if opts.rules.is_some() {
        let plain = SimOptions {
            rules: None,
            baseline: false,
            ..opts.clone()
        };
        report.without_rules = Some(run_one(&plain, !args.json)?.summary);
    }
    if let Some(path) = &args.plot {
        plot::max_over_mean(path, &report)
            .with_context(|| format!("cannot draw {}", path.display()))?;
        if !args.json {
            eprintln!("plot written to {}", path.display());
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_tables(&report);
    }
    Ok(())
}

fn run_one(opts: &SimOptions, progress: bool) -> anyhow::Result<SimReport> {
    let bar = if progress {
        ProgressBar::new(u64::from(opts.rounds))
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} round {pos}/{len} {bar:30} max/mean {msg}")
            .context("progress template")?,
    );
    let start = Instant::now();
    let mut report = simulate::run(opts, &mut |r: &RoundStat| {
        bar.set_position(u64::from(r.round));
        bar.set_message(format!("{:.3}", r.max_over_mean));
    });
    bar.finish_and_clear();
    report.elapsed_s = start.elapsed().as_secs_f64();
    Ok(report)
}

fn fmt_rounds(r: Option<u32>) -> String {
    r.map_or_else(|| "never".to_owned(), |r| r.to_string())
}

fn print_tables(r: &SimReport) {
    println!(
        "{} hosts, {} VMs, scenario {}, seed {}",
        r.hosts, r.vms, r.scenario, r.seed
    );
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_header(["round", "max/mean", "cv", "migrations so far"]);
    let mut total = 0;
    let last = r.rounds.last().map_or(0, |s| s.round);
    for s in &r.rounds {
        total += s.migrations;
        let milestone = matches!(s.round, 0 | 1 | 2 | 5)
            || s.round % 10 == 0 && (s.round <= 50 || s.round % 100 == 0);
        if milestone || s.round == last {
            t.add_row([
                s.round.to_string(),
                format!("{:.3}", s.max_over_mean),
                format!("{:.3}", s.cv),
                total.to_string(),
            ]);
        }
    }
    println!("{t}");
    let s = &r.summary;
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_header(["", "ballast", "central-greedy", "ratio"]);
    t.add_row([
        "rounds to max/mean <= 1.10",
        &fmt_rounds(s.rounds_to_1_10),
        "-",
        "",
    ]);
    t.add_row([
        "rounds to max/mean <= 1.05",
        &fmt_rounds(s.rounds_to_1_05),
        "-",
        "",
    ]);
    match &r.baseline {
        Some(b) => {
            let ratio = |a: f64, b: f64| {
                if b > 0.0 {
                    format!("{:.2}x", a / b)
                } else {
                    "-".into()
                }
            };
            t.add_row([
                "final max/mean".into(),
                format!("{:.3}", s.final_max_over_mean),
                format!("{:.3}", b.final_max_over_mean),
                String::new(),
            ]);
            t.add_row([
                "migrations".into(),
                s.migrations.to_string(),
                b.migrations.to_string(),
                ratio(s.migrations as f64, b.migrations as f64),
            ]);
            t.add_row([
                "load moved".into(),
                format!("{:.0}", s.load_moved),
                format!("{:.0}", b.load_moved),
                ratio(s.load_moved, b.load_moved),
            ]);
        }
        None => {
            t.add_row([
                "final max/mean".into(),
                format!("{:.3}", s.final_max_over_mean),
                "-".into(),
                String::new(),
            ]);
            t.add_row([
                "migrations".into(),
                s.migrations.to_string(),
                "-".into(),
                String::new(),
            ]);
        }
    }
    t.add_row([
        "migrations in the last 50 rounds",
        &s.migrations_last_50_rounds.to_string(),
        "-",
        "",
    ]);
    println!("{t}");
    if let (Some(rules), Some(plain)) = (&r.rules, &r.without_rules) {
        let mut t = Table::new();
        t.load_style(UTF8_FULL_CONDENSED)
            .set_header(["placement rules", "with", "without"]);
        t.add_row([
            "rounds to max/mean <= 1.10".into(),
            fmt_rounds(s.rounds_to_1_10),
            fmt_rounds(plain.rounds_to_1_10),
        ]);
        t.add_row([
            "final max/mean".into(),
            format!("{:.3}", s.final_max_over_mean),
            format!("{:.3}", plain.final_max_over_mean),
        ]);
        t.add_row([
            "migrations".into(),
            s.migrations.to_string(),
            plain.migrations.to_string(),
        ]);
        t.add_row([
            "VMs breaking a hard rule (initial -> final)".into(),
            format!("{} -> {}", rules.broken_initial, rules.broken_final),
            "-".into(),
        ]);
        println!("{t}");
    }
    println!("elapsed {:.2} s", r.elapsed_s);
}

/// One row of `--variants`.
#[derive(Serialize)]
struct VariantRow {
    variant: String,
    max_moves_per_session: usize,
    sender: Sender,
    peer_choice: PeerChoice,
    peer_samples: usize,
    swaps: bool,
    rounds_to_1_10: Option<u32>,
    rounds_to_1_05: Option<u32>,
    final_max_over_mean: f64,
    migrations: u64,
    load_moved: f64,
    migrations_vs_greedy: Option<f64>,
    load_moved_vs_greedy: Option<f64>,
    migrations_last_50_rounds: u64,
    sessions: u64,
    swaps_done: u64,
}

/// The variants `--variants` runs, each a change of `p` (the flags' policy).
fn variants(p: PolicyConfig) -> Vec<(String, PolicyConfig)> {
    let moves = p.max_moves_per_session.max(2);
    let with = |max_moves_per_session, sender, peer_choice, swaps| PolicyConfig {
        max_moves_per_session,
        sender,
        peer_choice,
        swaps,
        ..p
    };
    use PeerChoice::{MostDifferent, TwoChoice, Uniform};
    use Sender::{Busier, Initiator};
    let mut v = vec![
        (
            "reference: 1 move, initiator, uniform".to_owned(),
            with(1, Initiator, Uniform, false),
        ),
        (
            "several moves".into(),
            with(moves, Initiator, Uniform, false),
        ),
        ("busier sends".into(), with(1, Busier, Uniform, false)),
        (
            "two-choice peer".into(),
            with(1, Initiator, TwoChoice, false),
        ),
        (
            "several + busier".into(),
            with(moves, Busier, Uniform, false),
        ),
        (
            "several + busier + two-choice".into(),
            with(moves, Busier, TwoChoice, false),
        ),
        (
            "several + busier + two-choice + swaps".into(),
            with(moves, Busier, TwoChoice, true),
        ),
    ];
    for d in [4, 8, 16] {
        let c = PolicyConfig {
            peer_samples: d,
            ..with(moves, Busier, MostDifferent, true)
        };
        v.push((
            format!("several + busier + most-different of {d} + swaps"),
            c,
        ));
    }
    v.push((
        format!(
            "several + busier + most-different of {}, no swaps",
            p.peer_samples
        ),
        with(moves, Busier, MostDifferent, false),
    ));
    v.push(("the flags' policy (default)".into(), p));
    v
}

fn run_variants(base: &SimOptions, json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for (name, policy) in variants(base.policy) {
        let opts = SimOptions {
            policy,
            ..base.clone()
        };
        let r = run_one(&opts, !json)?;
        let vs = |a: f64, f: fn(&simulate::BaselineReport) -> f64| {
            r.baseline
                .as_ref()
                .map(f)
                .filter(|&b| b > 0.0)
                .map(|b| a / b)
        };
        rows.push(VariantRow {
            variant: name,
            max_moves_per_session: policy.max_moves_per_session,
            sender: policy.sender,
            peer_choice: policy.peer_choice,
            peer_samples: policy.samples_per_round(),
            swaps: policy.swaps,
            rounds_to_1_10: r.summary.rounds_to_1_10,
            rounds_to_1_05: r.summary.rounds_to_1_05,
            final_max_over_mean: r.summary.final_max_over_mean,
            migrations: r.summary.migrations,
            load_moved: r.summary.load_moved,
            migrations_vs_greedy: vs(r.summary.migrations as f64, |b| b.migrations as f64),
            load_moved_vs_greedy: vs(r.summary.load_moved, |b| b.load_moved),
            migrations_last_50_rounds: r.summary.migrations_last_50_rounds,
            sessions: r.summary.sessions,
            swaps_done: r.summary.swaps,
        });
    }
    if json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    println!(
        "{} hosts, scenario {}, seed {}, {} rounds",
        base.hosts,
        base.scenario.name(),
        base.seed,
        base.rounds
    );
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED).set_header([
        "variant",
        "to 1.10",
        "to 1.05",
        "final",
        "migrations",
        "× greedy",
        "load moved × greedy",
        "last 50",
        "sessions",
        "swaps",
    ]);
    let x = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    for r in rows {
        t.add_row([
            r.variant,
            fmt_rounds(r.rounds_to_1_10),
            fmt_rounds(r.rounds_to_1_05),
            format!("{:.3}", r.final_max_over_mean),
            r.migrations.to_string(),
            x(r.migrations_vs_greedy),
            x(r.load_moved_vs_greedy),
            r.migrations_last_50_rounds.to_string(),
            r.sessions.to_string(),
            r.swaps_done.to_string(),
        ]);
    }
    println!("{t}");
    Ok(())
}
