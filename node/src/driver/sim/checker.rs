//! The I2 checker ("no VM ever ran on two hosts at once"): a pure function over the run
//! logs of all hosts plus the harness's knowledge of host crashes.
//!
//! Recorded intervals cover the real ones (see [`super::runlog`]), so any overlap of two
//! recorded intervals of one VM on two hosts is reported, and no real overlap can hide.
//! A host that died cannot write `stop`: an interval still open on a host is closed at
//! the first later [`HostCrash`] of that host (given by whoever killed it) or `boot`
//! record of that host (an in-process host restarted: its VMs died with the old
//! process, at the latest when the new one started). Intervals still open at the end run
//! to `u64::MAX` (the VM is still running).

use super::runlog::{RunEvent, RunRecord};
use ballast_store::{NodeId, VmId};
use std::collections::BTreeMap;

/// A fact from the harness: every VM of `host` stopped running at or before `t_ns`
/// (its agent process was killed in in-process mode, or the whole host was killed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCrash {
    /// The host.
    pub host: NodeId,
    /// Unix nanoseconds, taken after the kill completed.
    pub t_ns: u64,
}

/// A recorded running interval `[start_ns, end_ns]` of one VM on one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunInterval {
    /// The host.
    pub host: NodeId,
    /// When the `run` record was stamped.
    pub start_ns: u64,
    /// When it stopped (pause, stop, crash, boot), or `u64::MAX` if still running.
    pub end_ns: u64,
}

/// One VM recorded running on two hosts at overlapping times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The VM.
    pub vm: VmId,
    /// The earlier-starting interval.
    pub first: RunInterval,
    /// The other one, on another host.
    pub second: RunInterval,
    /// Start of the overlap, Unix ns.
    pub overlap_start_ns: u64,
    /// End of the overlap, Unix ns.
    pub overlap_end_ns: u64,
}

/// What happens at one instant on one host, in processing order.
enum Step<'a> {
    Open(&'a VmId),
    Close(&'a VmId),
    CloseAll,
}

/// Every recorded running interval, per VM, sorted by start.
pub fn running_intervals(
    records: &[RunRecord],
    crashes: &[HostCrash],
) -> BTreeMap<VmId, Vec<RunInterval>> {
    let mut per_host: BTreeMap<&NodeId, Vec<(u64, usize, Step<'_>)>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        let step = match (r.event, &r.vm) {
            (RunEvent::Run, Some(vm)) => Step::Open(vm),
            (RunEvent::Pause | RunEvent::Stop, Some(vm)) => Step::Close(vm),
            (RunEvent::Boot, _) => Step::CloseAll,
            (_, None) => continue,
        };
        per_host.entry(&r.host).or_default().push((r.t_ns, i, step));
    }
    for (i, c) in crashes.iter().enumerate() {
        let steps = per_host.entry(&c.host).or_default();
        steps.push((c.t_ns, records.len() + i, Step::CloseAll));
    }
    let mut out: BTreeMap<VmId, Vec<RunInterval>> = BTreeMap::new();
    for (host, mut steps) in per_host {
        steps.sort_by_key(|(t, i, _)| (*t, *i));
        let mut open: BTreeMap<&VmId, u64> = BTreeMap::new();
        let mut close = |vm: &VmId, start_ns: u64, end_ns: u64| {
            let iv = RunInterval {
                host: host.clone(),
                start_ns,
                end_ns,
            };
            out.entry(vm.clone()).or_default().push(iv);
        };
        for (t, _, step) in steps {
            match step {
                Step::Open(vm) => {
                    open.entry(vm).or_insert(t);
                }
                Step::Close(vm) => {
                    if let Some(start) = open.remove(vm) {
                        close(vm, start, t);
                    }
                }
                Step::CloseAll => {
                    for (vm, start) in std::mem::take(&mut open) {
                        close(vm, start, t);
                    }
                }
            }
        }
        for (vm, start) in open {
            close(vm, start, u64::MAX);
        }
    }
    for ivs in out.values_mut() {
        ivs.sort_by(|a, b| (a.start_ns, &a.host).cmp(&(b.start_ns, &b.host)));
    }
    out
}

/// Merges all hosts' run records and reports every VM recorded running on two hosts at
/// overlapping times. Empty means I2 held (for what the logs cover).
pub fn check_no_double_run(records: &[RunRecord], crashes: &[HostCrash]) -> Vec<Violation> {
    let mut found = Vec::new();
    for (vm, ivs) in running_intervals(records, crashes) {
        for (i, a) in ivs.iter().enumerate() {
            // Sorted by start: only later intervals starting before `a` ends can overlap.
            for b in ivs[i + 1..].iter().take_while(|b| b.start_ns < a.end_ns) {
                if b.host != a.host {
                    found.push(Violation {
                        vm: vm.clone(),
                        first: a.clone(),
                        second: b.clone(),
                        overlap_start_ns: b.start_ns,
                        overlap_end_ns: a.end_ns.min(b.end_ns),
                    });
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(vm: &str, host: &str, event: RunEvent, t_ns: u64) -> RunRecord {
        let vm = (event != RunEvent::Boot).then(|| VmId::from(vm));
        RunRecord {
            vm,
            host: NodeId::from(host),
            event,
            t_ns,
        }
    }
    use RunEvent::{Boot, Pause, Run, Stop};

    #[test]
    fn clean_handoff_passes() {
        let logs = [
            rec("v", "a", Run, 10),
            rec("v", "a", Pause, 20),
            rec("v", "b", Run, 21),
            rec("v", "a", Stop, 30),
            rec("w", "a", Run, 5),
        ];
        assert!(check_no_double_run(&logs, &[]).is_empty());
    }

    #[test]
    fn overlap_is_reported() {
        let logs = [
            rec("v", "a", Run, 10),
            rec("v", "b", Run, 15),
            rec("v", "a", Pause, 20),
        ];
        let v = check_no_double_run(&logs, &[]);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].vm, VmId::from("v"));
        assert_eq!((v[0].overlap_start_ns, v[0].overlap_end_ns), (15, 20));
        assert_eq!(v[0].first.host, NodeId::from("a"));
        assert_eq!(v[0].second.host, NodeId::from("b"));
    }

    #[test]
    fn touching_intervals_do_not_overlap() {
        let logs = [
            rec("v", "a", Run, 10),
            rec("v", "a", Pause, 20),
            rec("v", "b", Run, 20),
        ];
        assert!(check_no_double_run(&logs, &[]).is_empty());
    }

    #[test]
    fn open_interval_without_crash_fact_is_a_violation() {
        // Host a died while running v (no stop record); b later runs v.
        let logs = [rec("v", "a", Run, 10), rec("v", "b", Run, 50)];
        assert_eq!(check_no_double_run(&logs, &[]).len(), 1);
        let crash = HostCrash {
            host: NodeId::from("a"),
            t_ns: 40,
        };
        assert!(check_no_double_run(&logs, &[crash]).is_empty());
        // A crash fact after b started does not excuse the overlap.
        let late = HostCrash {
            host: NodeId::from("a"),
            t_ns: 60,
        };
        assert_eq!(check_no_double_run(&logs, &[late]).len(), 1);
    }

    #[test]
    fn boot_record_closes_earlier_runs_of_that_host_only() {
        let logs = [
            rec("v", "a", Run, 10),
            rec("", "a", Boot, 40),
            rec("v", "b", Run, 50),
            rec("v", "a", Run, 60),
        ];
        let v = check_no_double_run(&logs, &[]);
        assert_eq!(v.len(), 1, "a runs v again at 60 while b runs it: {v:?}");
        assert_eq!(v[0].overlap_start_ns, 60);
        assert_eq!(v[0].overlap_end_ns, u64::MAX);
    }

    #[test]
    fn same_host_reruns_and_record_order_do_not_matter() {
        // Two processes on one host may append slightly out of time order.
        let logs = [
            rec("v", "a", Pause, 20),
            rec("v", "a", Run, 10),
            rec("v", "a", Run, 30),
            rec("v", "a", Run, 35),
            rec("v", "a", Stop, 40),
            rec("v", "b", Run, 41),
        ];
        assert!(check_no_double_run(&logs, &[]).is_empty());
        let ivs = running_intervals(&logs, &[]);
        let a: Vec<_> = ivs[&VmId::from("v")]
            .iter()
            .map(|i| (i.start_ns, i.end_ns))
            .collect();
        assert_eq!(a, vec![(10, 20), (30, 40), (41, u64::MAX)]);
    }

    #[test]
    fn three_hosts_report_each_pair() {
        let logs = [
            rec("v", "a", Run, 1),
            rec("v", "b", Run, 2),
            rec("v", "c", Run, 3),
        ];
        assert_eq!(check_no_double_run(&logs, &[]).len(), 3);
    }
}
