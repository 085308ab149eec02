//! The handoff messages: every variant survives an encode/decode round trip, and
//! validation refuses what the machine must not act on (the machine then ignores it).

use ballast_node::driver::MigrationTarget;
use ballast_node::handoff::world::{vm_id, World};
use ballast_node::handoff::{
    HandoffConfig, HandoffMsg, IgnoreReason, InvalidMsg, Notice, Outcome, Payload, RefuseReason,
    VM_ID_LEN_MAX,
};
use ballast_store::VmId;

fn all_variants() -> Vec<HandoffMsg> {
    let vm = vm_id(0);
    let mut payload = Payload::default();
    payload.spec.memory_mib = 64;
    payload.spec.disks.push("disk.img".into());
    payload.factors.cpu = 0.25;
    vec![
        HandoffMsg::Prepare {
            vm: vm.clone(),
            epoch: 1,
            payload,
        },
        HandoffMsg::Prepared {
            vm: vm.clone(),
            epoch: 1,
            target: MigrationTarget("tcp:127.0.0.1:4444".into()),
        },
        HandoffMsg::PrepareRefused {
            vm: vm.clone(),
            epoch: 1,
            reason: RefuseReason::NoRoom,
        },
        HandoffMsg::Commit {
            vm: vm.clone(),
            epoch: 1,
        },
        HandoffMsg::CommitAck {
            vm: vm.clone(),
            epoch: 1,
        },
        HandoffMsg::Abort {
            vm: vm.clone(),
            epoch: 1,
        },
        HandoffMsg::QueryOutcome {
            vm: vm.clone(),
            epoch: 1,
        },
        HandoffMsg::Outcome {
            vm,
            epoch: 1,
            outcome: Outcome::Pending,
        },
    ]
}

#[test]
fn every_variant_round_trips() {
    for msg in all_variants() {
        let json = serde_json::to_string(&msg).unwrap();
        let back: HandoffMsg = serde_json::from_str(&json).unwrap();
        assert_eq!(back, msg);
        assert_eq!(msg.validate(), Ok(()));
    }
}

#[test]
fn validation_refuses_bad_messages() {
    let long = VmId("x".repeat(VM_ID_LEN_MAX + 1));
    assert!(matches!(
        HandoffMsg::Commit { vm: long, epoch: 1 }.validate(),
        Err(InvalidMsg::VmId(_))
    ));
    assert!(matches!(
        HandoffMsg::Commit {
            vm: VmId(String::new()),
            epoch: 1
        }
        .validate(),
        Err(InvalidMsg::VmId(0))
    ));
    assert_eq!(
        HandoffMsg::Commit {
            vm: vm_id(0),
            epoch: 0
        }
        .validate(),
        Err(InvalidMsg::EpochZero)
    );
    let empty = HandoffMsg::Prepared {
        vm: vm_id(0),
        epoch: 1,
        target: MigrationTarget(String::new()),
    };
    assert_eq!(empty.validate(), Err(InvalidMsg::Target(0)));
    let mut payload = Payload::default();
    payload.factors.cpu = f64::NAN;
    let nan = HandoffMsg::Prepare {
        vm: vm_id(0),
        epoch: 1,
        payload,
    };
    assert!(matches!(nan.validate(), Err(InvalidMsg::Payload(_))));
}

#[test]
fn invalid_messages_are_ignored_by_the_machine() {
    let mut w = World::new(2, &[0], HandoffConfig::default());
    w.record = true;
    let before = w.clone();
    let n0 = w.nodes[0].id.clone();
    w.nodes[1].machine.handle_message(
        0,
        &n0,
        HandoffMsg::Commit {
            vm: vm_id(0),
            epoch: 0,
        },
    );
    let effect = w.nodes[1].machine.poll_effect();
    assert!(matches!(
        effect,
        Some(ballast_node::handoff::Effect::Notify(Notice::Ignored {
            reason: IgnoreReason::Invalid,
            ..
        }))
    ));
    assert_eq!(w.nodes[1].machine.poll_effect(), None);
    assert_eq!(w.nodes[1].machine, before.nodes[1].machine);
}
