//! Example-based tests of the transitions on real sled stores: a full handoff between two
//! stores, the abort path, duplicates and stale replays, and persistence across reopen.

mod common;

use ballast_store::{NodeId, Outcome, Store, StoreError, Transferred, VmId, VmState};
use common::{incoming, me, running, CLUSTER};
use tempfile::TempDir;

fn open(dir: &TempDir, node: &str) -> Store {
    Store::open(dir.path(), CLUSTER, &NodeId::from(node)).expect("store opens")
}

#[test]
fn full_handoff_moves_the_entry_and_survives_reopen_of_both_sides() {
    let (dir_a, dir_b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let (a, b) = (open(&dir_a, "node-a"), open(&dir_b, "node-b"));
    let vm = VmId::from("vm-1");
    a.create(&running("vm-1", 0)).unwrap();

    let epoch = a.next_epoch(&vm).unwrap();
    assert_eq!(epoch, 1);
    assert_eq!(
        a.begin_migrate_out(&vm, &"node-b".into(), epoch).unwrap(),
        Outcome::Applied
    );
    let prepared = a.get(&vm).unwrap().expect("entry still on A");
    let mut offered = prepared.clone();
    offered.state = VmState::Incoming {
        from: "node-a".into(),
        epoch,
    };
    offered.epoch = epoch;
    assert_eq!(b.accept_incoming(&offered).unwrap(), Outcome::Applied);

    let (outcome, record) = a.commit_migrate_out(&vm, epoch).unwrap();
    assert_eq!(outcome, Outcome::Applied);
    assert_eq!(
        record,
        Transferred {
            vm: vm.clone(),
            to: "node-b".into(),
            epoch
        }
    );
    assert_eq!(a.get(&vm).unwrap(), None);
    assert_eq!(
        b.promote_incoming(&vm, epoch, 1_700_000_000_000).unwrap(),
        Outcome::Applied
    );
    assert_eq!(a.forget_transfer(&vm, epoch).unwrap(), Outcome::Applied);

    drop((a, b));
    let (a, b) = (open(&dir_a, "node-a"), open(&dir_b, "node-b"));
    assert!(a.list().unwrap().is_empty());
    assert!(a.transfers().unwrap().is_empty());
    assert_eq!(
        a.highest_epoch(&vm).unwrap(),
        1,
        "A remembers the epoch after the VM left"
    );
    let on_b = b.get(&vm).unwrap().expect("entry on B");
    assert_eq!(on_b.state, VmState::Running);
    assert_eq!(on_b.epoch, 1);
    assert_eq!(on_b.spec, prepared.spec);
    assert_eq!(on_b.last_moved_unix_ms, Some(1_700_000_000_000));
}

#[test]
fn replayed_messages_are_duplicates_and_change_nothing() {
    let dir = TempDir::new().unwrap();
    let b = open(&dir, "node-b");
    let vm = VmId::from("vm-2");
    assert_eq!(
        b.accept_incoming(&incoming("vm-2", "node-a", 3)).unwrap(),
        Outcome::Applied
    );
    assert_eq!(
        b.accept_incoming(&incoming("vm-2", "node-a", 3)).unwrap(),
        Outcome::Duplicate
    );
    assert_eq!(b.promote_incoming(&vm, 3, 10).unwrap(), Outcome::Applied);
    assert_eq!(b.promote_incoming(&vm, 3, 99).unwrap(), Outcome::Duplicate);
    assert_eq!(
        b.get(&vm).unwrap().unwrap().last_moved_unix_ms,
        Some(10),
        "replay kept the first time"
    );
    // A late replay of the Prepare after the promotion is stale, not a second entry.
    assert!(matches!(
        b.accept_incoming(&incoming("vm-2", "node-a", 3)),
        Err(StoreError::StaleEpoch {
            epoch: 3,
            highest: 3,
            ..
        })
    ));
    assert_eq!(
        b.drop_incoming(&VmId::from("absent"), 1).unwrap(),
        Outcome::Duplicate
    );
    // Dropping a promoted VM would lose it: refused.
    assert!(matches!(
        b.drop_incoming(&vm, 3),
        Err(StoreError::WrongState { .. })
    ));
    assert_eq!(b.get(&vm).unwrap().unwrap().state, VmState::Running);
}

#[test]
fn abort_keeps_the_entry_and_the_next_attempt_needs_a_higher_epoch() {
    let dir = TempDir::new().unwrap();
    let a = open(&dir, "node-a");
    let vm = VmId::from("vm-3");
    a.create(&running("vm-3", 4)).unwrap();
    assert!(matches!(
        a.begin_migrate_out(&vm, &"node-b".into(), 4),
        Err(StoreError::StaleEpoch {
            epoch: 4,
            highest: 4,
            ..
        })
    ));
    assert_eq!(
        a.begin_migrate_out(&vm, &"node-b".into(), 5).unwrap(),
        Outcome::Applied
    );
    assert!(
        matches!(a.delete(&vm), Err(StoreError::WrongState { .. })),
        "no delete mid-handoff"
    );
    assert!(matches!(
        a.abort_migrate_out(&vm, 6),
        Err(StoreError::EpochMismatch {
            epoch: 6,
            found: 5,
            ..
        })
    ));
    assert_eq!(a.abort_migrate_out(&vm, 5).unwrap(), Outcome::Applied);
    assert_eq!(a.abort_migrate_out(&vm, 5).unwrap(), Outcome::Duplicate);
    let entry = a.get(&vm).unwrap().unwrap();
    assert_eq!(
        (entry.state, entry.epoch),
        (VmState::Running, 4),
        "epoch unchanged by abort"
    );
    assert!(matches!(
        a.begin_migrate_out(&vm, &"node-c".into(), 5),
        Err(StoreError::StaleEpoch {
            epoch: 5,
            highest: 5,
            ..
        })
    ));
    assert_eq!(a.next_epoch(&vm).unwrap(), 6);
    assert_eq!(
        a.begin_migrate_out(&vm, &"node-c".into(), 6).unwrap(),
        Outcome::Applied
    );
    assert!(matches!(
        a.commit_migrate_out(&vm, 5),
        Err(StoreError::EpochMismatch { .. })
    ));
    let (first, _) = a.commit_migrate_out(&vm, 6).unwrap();
    let (again, record) = a.commit_migrate_out(&vm, 6).unwrap();
    assert_eq!((first, again), (Outcome::Applied, Outcome::Duplicate));
    assert_eq!(record.to, NodeId::from("node-c"));
    assert!(matches!(
        a.create(&running("vm-3", 0)),
        Err(StoreError::AlreadyExists { .. })
    ));
}

#[test]
fn invalid_input_is_refused_before_any_change() {
    let dir = TempDir::new().unwrap();
    let a = open(&dir, "node-a");
    let mut bad = running("vm-4", 0);
    bad.factors.cpu = f64::NAN;
    assert!(matches!(
        a.create(&bad),
        Err(StoreError::InvalidInput { .. })
    ));
    assert!(matches!(
        a.create(&running("", 0)),
        Err(StoreError::InvalidInput { .. })
    ));
    assert!(matches!(
        a.create(&running(&"x".repeat(300), 0)),
        Err(StoreError::InvalidInput { .. })
    ));
    assert!(matches!(
        a.create(&incoming("vm-4", "node-b", 1)),
        Err(StoreError::InvalidInput { .. })
    ));
    let mut huge = running("vm-4", 0);
    huge.spec.extra_args = vec!["y".repeat(70 * 1024)];
    assert!(matches!(
        a.create(&huge),
        Err(StoreError::InvalidInput { .. })
    ));
    a.create(&running("vm-4", 0)).unwrap();
    assert!(matches!(
        a.begin_migrate_out(&"vm-4".into(), &me(), 1),
        Err(StoreError::InvalidInput { .. })
    ));
    assert!(matches!(
        a.accept_incoming(&incoming("vm-5", "node-a", 1)),
        Err(StoreError::InvalidInput { .. })
    ));
    let nan = ballast_store::LoadFactors {
        cpu: f64::INFINITY,
        io: 0.0,
        mem: 0.0,
    };
    assert!(matches!(
        a.update_factors(&[("vm-4".into(), nan)]),
        Err(StoreError::InvalidInput { .. })
    ));
    assert_eq!(a.list().unwrap(), vec![running("vm-4", 0)]);
}

#[test]
fn factors_pins_and_deletes_persist_after_a_clean_close() {
    let dir = TempDir::new().unwrap();
    let a = open(&dir, "node-a");
    a.create(&running("vm-a", 2)).unwrap();
    a.create(&running("vm-b", 0)).unwrap();
    let f = ballast_store::LoadFactors {
        cpu: 3.0,
        io: 5.0,
        mem: 7.0,
    };
    let changed = a
        .update_factors(&[("vm-a".into(), f), ("gone".into(), f), ("vm-b".into(), f)])
        .unwrap();
    assert_eq!(changed, 2, "the VM without an entry is skipped");
    assert_eq!(
        a.set_pinned(&"vm-b".into(), true).unwrap(),
        Outcome::Applied
    );
    assert_eq!(
        a.set_pinned(&"vm-b".into(), true).unwrap(),
        Outcome::Duplicate
    );
    assert_eq!(a.delete(&"vm-a".into()).unwrap().factors, f);
    assert!(matches!(
        a.delete(&"vm-a".into()),
        Err(StoreError::NotFound { .. })
    ));
    drop(a);
    let a = open(&dir, "node-a");
    let snapshot = a.snapshot().unwrap();
    assert_eq!(snapshot.meta.node_id, me());
    assert_eq!(snapshot.entries.len(), 1);
    assert_eq!(snapshot.entries[0].factors, f);
    assert!(snapshot.entries[0].pinned);
    assert_eq!(
        snapshot.highest_epochs,
        vec![("vm-a".into(), 2)],
        "a deleted VM keeps its highest epoch"
    );
}

#[test]
fn concurrent_callers_on_one_handle_each_get_whole_transactions() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Store>();
    let dir = TempDir::new().unwrap();
    let store = std::sync::Arc::new(open(&dir, "node-a"));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let vm = VmId::from(format!("vm-{t}-{i}"));
                    store.create(&running(vm.as_str(), 0)).unwrap();
                    let epoch = store.next_epoch(&vm).unwrap();
                    assert_eq!(
                        store
                            .begin_migrate_out(&vm, &"node-b".into(), epoch)
                            .unwrap(),
                        Outcome::Applied
                    );
                    if i % 2 == 0 {
                        assert_eq!(
                            store.commit_migrate_out(&vm, epoch).unwrap().0,
                            Outcome::Applied
                        );
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("writer thread");
    }
    drop(store);
    let snapshot = open(&dir, "node-a").snapshot().unwrap();
    assert_eq!(snapshot.entries.len(), 20);
    assert!(snapshot
        .entries
        .iter()
        .all(|e| matches!(e.state, VmState::MigratingOut { epoch: 1, .. })));
    assert_eq!(snapshot.transfers.len(), 20);
    assert_eq!(snapshot.highest_epochs.len(), 40);
}
