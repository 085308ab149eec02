//! Safety of moves between real agents: independence of the destination (I4), and
//! duplicated and replayed handoff messages changing nothing.

mod agent_util;

use agent_util::*;
use ballast_gossip::{issue_node_cert, RpcClient, RpcClientConfig, TlsBundle};
use ballast_node::agent::wire::{AgentRequest, AgentResponse, Request};
use ballast_node::driver::sim::RunEvent;
use ballast_node::handoff::{HandoffMsg, Outcome, Payload};
use ballast_store::{VmId, VmState};
use std::time::Duration;

fn quiet() -> NodeOpts {
    NodeOpts {
        balancing: false,
        ..NodeOpts::default()
    }
}

/// `vm` runs on `host` and nowhere else: the last run record of each host for it says
/// `Run` on `host` only.
fn runs_on(c: &Cluster, vm: &VmId, host: &str) -> bool {
    let mut last = std::collections::BTreeMap::new();
    let mut records = c.run_records();
    records.sort_by_key(|r| r.t_ns);
    for r in records.iter().filter(|r| r.vm.as_ref() == Some(vm)) {
        last.insert(r.host.as_str().to_owned(), r.event);
    }
    last.iter()
        .all(|(h, e)| (h == host) == (*e == RunEvent::Run))
        && last.get(host) == Some(&RunEvent::Run)
}

#[test]
fn the_destination_is_independent_of_the_source() {
    let mut c = Cluster::new(&[quiet(), quiet()]);
    c.start_all();
    run_bounded(Duration::from_secs(90), async {
        c.wait_membership(Duration::from_secs(20)).await;
        let vm = VmId::from("vm-i4");
        let (n1, n2) = (nid(&c, 0), nid(&c, 1));
        c.admin(0)
            .create_vm(&vm, &spec(1.0), Some(&n1), false)
            .await
            .expect("create");
        let (committed, epoch) = c.admin(0).move_vm(&vm, &n2).await.expect("move");
        assert!(committed, "the move committed");
        wait_until(Duration::from_secs(20), "move settled", || async {
            all_resolved(&c.snapshots().await, std::slice::from_ref(&vm))
        })
        .await;
        // Stop the source and wipe its store (and its sim state).
        c.kill(0);
        std::fs::remove_dir_all(c.nodes[0].dir.join("data")).expect("wipe source");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(runs_on(&c, &vm, "n2"), "the VM keeps running on n2");
        // Restart the destination: the entry and the VM survive.
        c.kill(1);
        c.start(1, "");
        wait_until(Duration::from_secs(20), "destination back", || async {
            c.admin(1).status().await.is_ok()
        })
        .await;
        let entries = c.admin(1).list_vms().await.expect("list");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].vm, vm);
        assert_eq!(entries[0].state, VmState::Running);
        assert_eq!(entries[0].epoch, epoch);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            runs_on(&c, &vm, "n2"),
            "the VM still runs on n2 after its restart"
        );
        let s = c.admin(1).status().await.expect("status");
        assert!(s.unclaimed_vms.is_empty(), "{:?}", s.unclaimed_vms);
    });
    c.assert_no_double_run();
}

#[test]
fn duplicated_and_replayed_messages_change_nothing() {
    let dup = NodeOpts {
        balancing: false,
        extra: "\n[failpoints]\nduplicate_sends = true\n".into(),
        ..NodeOpts::default()
    };
    let mut c = Cluster::new(&[dup.clone(), dup]);
    c.start_all();
    run_bounded(Duration::from_secs(90), async {
        c.wait_membership(Duration::from_secs(20)).await;
        let vm = VmId::from("vm-dup");
        let (n1, n2) = (nid(&c, 0), nid(&c, 1));
        c.admin(0)
            .create_vm(&vm, &spec(1.0), Some(&n1), false)
            .await
            .expect("create");
        // Every message of these moves is sent twice.
        let mut epochs = Vec::new();
        for (from, to) in [(0, &n2), (1, &n1), (0, &n2)] {
            wait_until(Duration::from_secs(20), "previous move settled", || async {
                all_resolved(&c.snapshots().await, std::slice::from_ref(&vm))
            })
            .await;
            let (committed, epoch) = c.admin(from).move_vm(&vm, to).await.expect("move");
            assert!(committed);
            epochs.push(epoch);
        }
        assert_eq!(epochs, vec![1, 2, 3]);
        wait_until(Duration::from_secs(20), "last move settled", || async {
            all_resolved(&c.snapshots().await, std::slice::from_ref(&vm))
        })
        .await;
        let before = c.snapshots().await;

        // Replay old-epoch messages to n2 as n1 (a certificate named n1), each twice.
        let n1_cert = issue_node_cert(&c.ca, "n1", &[]).expect("cert");
        let rpc = RpcClient::new(
            TlsBundle::from_cert_bundle(&n1_cert).expect("tls"),
            RpcClientConfig {
                bind_addr: "127.0.0.1:0".parse().expect("addr"),
                ..RpcClientConfig::default()
            },
        )
        .expect("client");
        let payload = Payload {
            spec: spec(1.0),
            factors: Default::default(),
        };
        let replays = [
            HandoffMsg::Prepare {
                vm: vm.clone(),
                epoch: 1,
                payload: payload.clone(),
            },
            HandoffMsg::Prepare {
                vm: vm.clone(),
                epoch: 3,
                payload,
            },
            HandoffMsg::Commit {
                vm: vm.clone(),
                epoch: 1,
            },
            HandoffMsg::Commit {
                vm: vm.clone(),
                epoch: 3,
            },
            HandoffMsg::Abort {
                vm: vm.clone(),
                epoch: 1,
            },
            HandoffMsg::Abort {
                vm: vm.clone(),
                epoch: 3,
            },
            HandoffMsg::Outcome {
                vm: vm.clone(),
                epoch: 3,
                outcome: Outcome::Aborted,
            },
        ];
        for msg in replays {
            for _ in 0..2 {
                let req = AgentRequest::V2(Request::Handoff(msg.clone()));
                let r: AgentResponse = rpc
                    .call(c.nodes[1].addr, Some("n2"), &req)
                    .await
                    .expect("delivered");
                assert!(
                    matches!(
                        r,
                        AgentResponse::V2(ballast_node::agent::wire::Response::HandoffQueued)
                    ),
                    "{r:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = c.snapshots().await;
        assert_eq!(
            holders(&before),
            holders(&after),
            "replays changed a schedule"
        );
        assert!(all_resolved(&after, std::slice::from_ref(&vm)));
        let recs: Vec<_> = c
            .run_records()
            .into_iter()
            .filter(|r| r.vm.as_ref() == Some(&vm))
            .collect();
        assert!(runs_on(&c, &vm, "n2"), "the VM still runs on n2: {recs:?}");
        let s = c.admin(1).status().await.expect("status");
        assert!(s.handoffs.is_empty(), "{:?}", s.handoffs);
    });
    c.assert_no_double_run();
}
