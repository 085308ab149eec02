//! Unlike hosts: three real agents with 8, 16 and 32 cores. The loads each side of a
//! session computes follow the load model for its own capacity, and the VM moved is the
//! one the pure policy picks from both sides' figures.

mod agent_util;

use agent_util::*;
use ballast_node::policy::{decide, Candidate, Context, Decision, PolicyConfig, View};
use ballast_node::units::Millis;
use ballast_store::VmId;
use std::collections::BTreeMap;
use std::time::Duration;

fn cands(v: &[ballast_node::agent::wire::CandidateView]) -> Vec<Candidate> {
    v.iter()
        .map(|c| Candidate {
            load_here: c.load_here,
            load_there: c.load_there,
            mem_bytes: c.mem_bytes,
            pinned: c.pinned,
            last_moved_ms: c.last_moved_unix_ms,
        })
        .collect()
}

#[test]
fn both_sides_weigh_vms_by_their_own_capacity() {
    let cores = [8.0, 16.0, 32.0];
    let opts: Vec<NodeOpts> = cores
        .iter()
        .map(|&k| NodeOpts {
            cpu_cores: k,
            ..NodeOpts::default()
        })
        .collect();
    let mut c = Cluster::new(&opts);
    c.start_all();
    run_bounded(Duration::from_secs(90), async {
        c.wait_membership(Duration::from_secs(20)).await;
        let n1 = nid(&c, 0);
        let mut cpu_of = BTreeMap::new();
        for i in 0..12 {
            let vm = VmId::from(format!("u-{i:02}"));
            let cpu = 0.25 + 0.125 * f64::from(i);
            c.admin(0)
                .create_vm(&vm, &spec(cpu), Some(&n1), false)
                .await
                .expect("create");
            cpu_of.insert(vm, cpu);
        }
        let core_of = |node: &str| cores[node[1..].parse::<usize>().expect("n<i>") - 1];
        // The load model with the default weights (cpu 0.6) and target factors.
        let model = |cpu: f64, node: &str| 0.6 * cpu / core_of(node);
        let checked = std::cell::Cell::new(0);
        wait_until(Duration::from_secs(40), "sessions with moves", || async {
            checked.set(0);
            for i in 0..3 {
                let records = match c.admin(i).recent_sessions().await {
                    Ok(records) => records,
                    Err(e) => {
                        eprintln!("n{} does not answer: {e}", i + 1);
                        return false;
                    }
                };
                for r in records.iter().filter(|r| !r.moves.is_empty()) {
                    let (a, b) = (r.initiator.as_str(), r.peer.as_str());
                    for cv in &r.initiator_candidates {
                        let cpu = cpu_of[&cv.vm];
                        assert!((cv.load_here - model(cpu, a)).abs() < 1e-9, "{cv:?} on {a}");
                        assert!(
                            (cv.load_there - model(cpu, b)).abs() < 1e-9,
                            "{cv:?} on {b}"
                        );
                    }
                    for cv in &r.peer_candidates {
                        let cpu = cpu_of[&cv.vm];
                        assert!((cv.load_here - model(cpu, b)).abs() < 1e-9, "{cv:?} on {b}");
                        assert!(
                            (cv.load_there - model(cpu, a)).abs() < 1e-9,
                            "{cv:?} on {a}"
                        );
                    }
                    let (lc, pc) = (cands(&r.initiator_candidates), cands(&r.peer_candidates));
                    let local = View {
                        load: r.load_initiator,
                        candidates: &lc,
                        free_mem_bytes: r.free_mem_bytes.0,
                    };
                    let peer = View {
                        load: r.load_peer,
                        candidates: &pc,
                        free_mem_bytes: r.free_mem_bytes.1,
                    };
                    let cfg = PolicyConfig {
                        cooldown: Millis::new(0),
                        ..PolicyConfig::default()
                    };
                    let ctx = Context {
                        now_ms: r.now_unix_ms,
                        rules: None,
                    };
                    let chosen: Vec<&VmId> = r.moves.iter().map(|m| &m.vm).collect();
                    let expected: Vec<&VmId> = match decide(&local, &peer, &ctx, &cfg) {
                        Decision::Send(m) => m
                            .iter()
                            .map(|p| &r.initiator_candidates[p.index].vm)
                            .collect(),
                        Decision::Receive(m) => {
                            m.iter().map(|p| &r.peer_candidates[p.index].vm).collect()
                        }
                        Decision::Swap { give, take } => vec![
                            &r.initiator_candidates[give.index].vm,
                            &r.peer_candidates[take.index].vm,
                        ],
                        Decision::Stay(_) => Vec::new(),
                    };
                    assert_eq!(chosen, expected, "session {}", r.session);
                    for m in &r.moves {
                        let cpu = cpu_of[&m.vm];
                        assert!((m.load_from - model(cpu, m.from.as_str())).abs() < 1e-9);
                        assert!((m.load_to - model(cpu, m.to.as_str())).abs() < 1e-9);
                    }
                    checked.set(checked.get() + 1);
                }
            }
            checked.get() >= 3
        })
        .await;
        println!("checked {} sessions with moves", checked.get());
        // A VM weighs differently on each host: on n1 (8 cores) four times what it
        // weighs on n3 (32 cores).
        assert!((model(1.0, "n1") / model(1.0, "n3") - 4.0).abs() < 1e-12);
    });
    c.assert_no_double_run();
}
