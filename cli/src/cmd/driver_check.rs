//! `ballast driver check`: the driver conformance suite
//! (`ballast_node::driver::conformance`) on an exec plugin, without building the repo's
//! tests. Two instances of the plugin stand for two hosts, `a` (the source) and `b` (the
//! destination); `{host}` in the plugin's arguments and environment tells them apart.

use anyhow::Context;
use ballast_node::driver::conformance::{self, Case, Outcome};
use ballast_node::driver::exec::{ExecConfig, ExecDriver};
use ballast_node::driver::qemu::guest;
use ballast_node::driver::{Driver, SourceCopy};
use ballast_node::units::Millis;
use ballast_store::VmSpec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The two instances: the source host, then the destination host.
const HOSTS: [&str; 2] = ["a", "b"];

const AFTER_HELP: &str = "\
Placeholders in --exec-arg and --exec-env: {host} becomes `a` for the first instance \
(the source of the moves) and `b` for the second (the destination); {tmp} becomes a \
scratch directory the check creates and removes at the end ({tmp} also in --vm-disk). \
Give each instance its own state with them.

Without --vm-disk, each VM boots a tiny generated disk image (a boot sector that keeps \
its vCPU half busy, no OS) as `file=IMAGE,format=raw,if=ide`, which \
examples/qemu_plugin.py runs.

Example (the plugin of the repository):
  ballast driver check --exec-command python3 --exec-arg examples/qemu_plugin.py \\
      --exec-arg=--state-dir --exec-arg '{tmp}/{host}'

Cases, in order: unknown_vm, lifecycle, prepare_incoming, migrate_commit, \
cancel_before_migrate, cancel_after_switchover, migrate_to_dead_target, \
migrate_back_and_forth, adopt_after_restart (docs/driver-protocol.md says what each \
checks). The plugin's stderr is logged with BALLAST_LOG=info.";

/// Arguments of `ballast driver check`.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The plugin's program, as `driver.exec.command[0]` (looked up in PATH when
    /// relative), e.g. `python3`.
    #[arg(long, value_name = "PROGRAM")]
    exec_command: String,
    /// One argument of the plugin, after the program; repeat it for each argument, in
    /// order (write `--exec-arg=--flag` or `--exec-arg --flag`). Placeholders below.
    #[arg(long = "exec-arg", value_name = "ARG", allow_hyphen_values = true)]
    exec_args: Vec<String>,
    /// An extra environment variable of the plugin (`driver.exec.env`); repeatable.
    #[arg(long = "exec-env", value_name = "KEY=VALUE", value_parser = key_value)]
    exec_env: Vec<(String, String)>,
    /// The plugin's working directory (`driver.exec.working_dir`); the check's when unset.
    #[arg(long, value_name = "DIR")]
    exec_working_dir: Option<PathBuf>,
    /// How long the plugin may take to answer one request (`driver.exec.timeout`).
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    exec_timeout: Millis,
    /// The same for `migrate_out` (`driver.exec.migrate_timeout`).
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    exec_migrate_timeout: Millis,
    /// What the plugin's completed migration leaves of the source copy
    /// (`driver.exec.source_copy`): `kept` (paused until finish_outgoing) or `ended`.
    #[arg(long, value_name = "KEPT|ENDED", default_value = "kept")]
    exec_source_copy: SourceCopy,
    /// Run only this case (repeatable); all cases when not given.
    #[arg(long = "case", value_name = "NAME", value_parser = case_named)]
    cases: Vec<Case>,
    /// vCPUs of each test VM.
    #[arg(long, value_name = "N", default_value_t = 1)]
    vm_vcpus: u32,
    /// Memory of each test VM, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    vm_memory_mib: u64,
    /// A disk of each test VM, as the plugin reads `spec.disks` (repeatable; replaces the
    /// generated boot image; `{tmp}` is filled in).
    #[arg(long = "vm-disk", value_name = "DISK")]
    vm_disks: Vec<String>,
    /// A `spec.driver_opts` entry of each test VM (repeatable).
    #[arg(long = "vm-opt", value_name = "KEY=VALUE", value_parser = key_value)]
    vm_opts: Vec<(String, String)>,
    /// An entry of `spec.extra_args` of each test VM (repeatable).
    #[arg(long = "vm-extra-arg", value_name = "ARG", allow_hyphen_values = true)]
    vm_extra_args: Vec<String>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn case_named(s: &str) -> Result<Case, String> {
    let all = Case::PAIR.into_iter().chain([Case::AdoptAfterRestart]);
    all.clone().find(|c| c.name() == s).ok_or_else(|| {
        let names: Vec<&str> = all.map(Case::name).collect();
        format!("no case {s:?}; the cases: {}", names.join(", "))
    })
}

/// `{host}` and `{tmp}` of `text` filled in.
fn fill(text: &str, host: &str, tmp: &Path) -> String {
    text.replace("{host}", host)
        .replace("{tmp}", &tmp.to_string_lossy())
}

impl Args {
    /// The `[driver.exec]` of instance `host`.
    fn exec_config(&self, host: &str, tmp: &Path) -> ExecConfig {
        let args = self.exec_args.iter().map(|a| fill(a, host, tmp));
        ExecConfig {
            command: std::iter::once(self.exec_command.clone())
                .chain(args)
                .collect(),
            env: self
                .exec_env
                .iter()
                .map(|(k, v)| (k.clone(), fill(v, host, tmp)))
                .collect(),
            working_dir: self.exec_working_dir.clone(),
            timeout: self.exec_timeout,
            migrate_timeout: self.exec_migrate_timeout,
            source_copy: self.exec_source_copy,
            ..ExecConfig::default()
        }
    }

    /// The cases to run, in the suite's order.
    fn selected(&self) -> Vec<Case> {
        let all = Case::PAIR.into_iter().chain([Case::AdoptAfterRestart]);
        all.filter(|c| self.cases.is_empty() || self.cases.contains(c))
            .collect()
    }
}

/// Makes the spec of each test VM; without `--vm-disk`, writes a fresh boot image per
/// VM into the scratch directory.
struct Specs<'a> {
    args: &'a Args,
    tmp: &'a Path,
    made: AtomicUsize,
}

impl Specs<'_> {
    fn make(&self) -> VmSpec {
        let spec = VmSpec {
            vcpus: self.args.vm_vcpus,
            memory_mib: self.args.vm_memory_mib,
            disks: self
                .args
                .vm_disks
                .iter()
                .map(|d| d.replace("{tmp}", &self.tmp.to_string_lossy()))
                .collect(),
            extra_args: self.args.vm_extra_args.clone(),
            driver_opts: self
                .args
                .vm_opts
                .iter()
                .cloned()
                .collect::<BTreeMap<_, _>>(),
            ..VmSpec::default()
        };
        if !spec.disks.is_empty() {
            return spec;
        }
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let image = self.tmp.join(format!("boot{n}.img"));
        if let Err(e) = guest::write_boot_image(&image) {
            // The case then fails on its start, naming the image.
            eprintln!("cannot write the boot image {}: {e}", image.display());
        }
        VmSpec {
            disks: guest::demo_spec(&image, spec.memory_mib).disks,
            ..spec
        }
    }
}

/// Runs `ballast driver check`.
pub fn run(args: Args) -> anyhow::Result<()> {
    crate::logging::init(Some("warn"));
    let tmp = tempfile::Builder::new()
        .prefix("ballast-check")
        .tempdir()
        .context("cannot create the scratch directory")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcomes = runtime.block_on(check(&args, tmp.path()))?;
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.case.name())
        .collect();
    println!(
        "{} of {} cases passed",
        outcomes.len() - failed.len(),
        outcomes.len()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("the plugin failed {}", failed.join(", "))
    }
}

/// Runs the selected cases, printing each as it ends; cleans up on Ctrl-C.
async fn check(args: &Args, tmp: &Path) -> anyhow::Result<Vec<Outcome>> {
    let [a, b] = HOSTS.map(|h| ExecDriver::new(args.exec_config(h, tmp)));
    let (a, b) = (a?, b?);
    println!(
        "checking exec plugin {} ({} and {} stand for two hosts; scratch {})",
        a.plugin_name(),
        HOSTS[0],
        HOSTS[1],
        tmp.display()
    );
    for (host, d) in HOSTS.iter().zip([&a, &b]) {
        // A plugin that does not start or handshake fails every case: say so once.
        d.list().await.with_context(|| {
            format!(
                "instance {host} of exec plugin {} failed its first call",
                d.plugin_name()
            )
        })?;
    }
    let specs = Specs {
        args,
        tmp,
        made: AtomicUsize::new(0),
    };
    let spec = || specs.make();
    let run = async {
        let mut outcomes = Vec::new();
        for case in args.selected() {
            let o = run_case(case, &a, &b, args, tmp, &spec).await;
            print_outcome(&o);
            outcomes.push(o);
        }
        outcomes
    };
    tokio::pin!(run);
    let outcomes = tokio::select! {
        all = &mut run => Some(all),
        r = tokio::signal::ctrl_c() => match r {
            Ok(()) => None,
            // No signal handler: run to the end without one.
            Err(_) => Some(run.await),
        },
    };
    conformance::clean_up(&[&a, &b]).await;
    outcomes.ok_or_else(|| anyhow::anyhow!("interrupted; the test VMs were stopped"))
}

/// One case on `a` (source) and `b` (destination).
async fn run_case(
    case: Case,
    a: &ExecDriver,
    b: &ExecDriver,
    args: &Args,
    tmp: &Path,
    spec: conformance::SpecFactory<'_>,
) -> Outcome {
    if case != Case::AdoptAfterRestart {
        return conformance::run_case(case, a, b, spec).await;
    }
    // Fresh instances on `a`'s state, dropped and made again (the agent's restart);
    // `a` itself stays idle meanwhile and is used for the clean-up.
    let make = || async { ExecDriver::new(args.exec_config(HOSTS[0], tmp)) };
    conformance::adopt_after_restart(make, spec).await
}

fn print_outcome(o: &Outcome) {
    let secs = o.took.as_secs_f64();
    match &o.result {
        Ok(()) => println!("ok    {:<24} {secs:.1} s", o.case.name()),
        Err(f) => println!("FAIL  {:<24} {secs:.1} s: {}", o.case.name(), f.violation),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_per_host() {
        assert_eq!(
            fill("{tmp}/{host}/x", "b", Path::new("/s")),
            "/s/b/x".to_owned()
        );
        assert_eq!(key_value("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(key_value("=v").is_err());
        assert_eq!(case_named("lifecycle"), Ok(Case::Lifecycle));
        assert!(case_named("nope")
            .unwrap_err()
            .contains("adopt_after_restart"));
    }
}
