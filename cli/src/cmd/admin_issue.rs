//! `ballast admin issue NAME --role ROLE`: another admin bundle for the cluster, signed by
//! its CA, with the role `operator` (everything) or `read-only` (status, VM list and
//! show, sessions). The agents check the role on every call (docs/design.md, "Admin roles").

use crate::admin_bundle::{AdminFile, ADMIN_FILE};
use crate::cluster_dir::{self, ClusterDir};
use anyhow::{bail, Context};
use ballast_gossip::AdminRole;
use serde::Serialize;
use std::path::PathBuf;

/// Arguments of `ballast admin`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Issue an admin bundle (certificate, key, admin.toml) with a role.
    Issue(IssueArgs),
}

/// The role on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RoleArg {
    /// Everything the admin API offers.
    Operator,
    /// Status, `vm list`, `vm show`, sessions; every change is refused.
    ReadOnly,
}

impl From<RoleArg> for AdminRole {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Operator => AdminRole::Operator,
            RoleArg::ReadOnly => AdminRole::ReadOnly,
        }
    }
}

/// Arguments of `ballast admin issue`.
#[derive(clap::Args, Debug)]
struct IssueArgs {
    /// The name in the certificate (a DNS label; shows in the agents' logs).
    #[arg(value_parser = cluster_dir::parse_name)]
    name: String,
    /// What the bundle may do.
    #[arg(long, value_enum)]
    role: RoleArg,
    /// The cluster directory `ballast cluster init` wrote (it holds the CA).
    #[arg(long)]
    dir: PathBuf,
    /// Where to write the bundle (must not hold one yet) [default: DIR/admins/NAME].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print what was written as JSON.
    #[arg(long)]
    json: bool,
}

/// What `admin issue` wrote.
#[derive(Serialize)]
struct IssueReport {
    name: String,
    role: AdminRole,
    bundle: PathBuf,
    nodes: usize,
}

/// Runs `ballast admin ...`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        Cmd::Issue(a) => issue(a),
    }
}

fn issue(a: IssueArgs) -> anyhow::Result<()> {
    let dir = ClusterDir {
        root: a.dir.clone(),
    };
    let ca = dir.load_ca()?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.dir.join("admins").join(&a.name));
    if out.join(ADMIN_FILE).exists() {
        bail!(
            "{} already holds an admin bundle; pass another --out or remove it first",
            out.display()
        );
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let role = AdminRole::from(a.role);
    let cert = ballast_gossip::issue_admin_cert(&ca, &a.name, role)
        .with_context(|| format!("issuing the admin certificate {:?}", a.name))?;
    cluster_dir::save_bundle(&cert, &out, "admin")?;
    let mut file = AdminFile::new(&ca.cluster_name);
    if let Some(main) = dir.load_admin_file()? {
        file.nodes = main.nodes;
    }
    let path = out.join(ADMIN_FILE);
    std::fs::write(&path, file.to_toml()?)
        .with_context(|| format!("writing {}", path.display()))?;
    let report = IssueReport {
        name: a.name.clone(),
        role,
        bundle: out.clone(),
        nodes: file.nodes.len(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "Issued admin {:?} (role {role}) in {}: {} node(s) to reach the cluster through.",
            a.name,
            out.display(),
            report.nodes
        );
        println!(
            "Use it with `--admin {}`; keep admin.key secret.",
            out.display()
        );
    }
    Ok(())
}
