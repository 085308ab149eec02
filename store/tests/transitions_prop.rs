//! Property test of the state transitions: random sequences of calls (valid, refused,
//! replayed, with reopens in between) run against a real sled store and against the
//! plain-map model in `common`; every call must get the model's verdict, and the store
//! must hold exactly the model's state after each reopen.

mod common;

use ballast_store::{Store, VmState};
use common::{apply_store, check_invariants, me, Model, Op, CLUSTER};
use proptest::prelude::*;
use tempfile::TempDir;

/// Which call a step makes; its epoch is picked relative to the model's state when the
/// step runs, so that the boundaries (the current epoch, one above, one below) are hit.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Create,
    Delete,
    Begin,
    Abort,
    Commit,
    Forget,
    Accept,
    Promote,
    Drop,
    Pin,
    Factors,
}

/// One step of a test run: a call, or closing and reopening the store.
#[derive(Clone, Debug)]
enum Step {
    Call {
        kind: Kind,
        vm: String,
        peer: String,
        epoch_delta: i64,
        flag: bool,
        small: u32,
    },
    Reopen,
}

impl Step {
    /// The call this step makes on a store in the model's state.
    fn resolve(&self, model: &Model) -> Option<Op> {
        let Step::Call {
            kind,
            vm,
            peer,
            epoch_delta,
            flag,
            small,
        } = self
        else {
            return None;
        };
        let (vm, peer) = (vm.clone(), peer.clone());
        let highest = model.highest(&vm);
        let state_epoch = model.entries.get(&vm).map_or(highest, |e| match e.state {
            VmState::Running => highest,
            VmState::MigratingOut { epoch, .. } | VmState::Incoming { epoch, .. } => epoch,
        });
        let first_transfer = model.transfers_of(&vm).first().copied().unwrap_or(highest);
        let at = |base: u64| base.saturating_add_signed(*epoch_delta);
        Some(match kind {
            Kind::Create => Op::Create {
                vm,
                epoch: at(highest),
            },
            Kind::Delete => Op::Delete { vm },
            Kind::Begin => Op::Begin {
                vm,
                to: peer,
                epoch: at(highest),
            },
            Kind::Abort => Op::Abort {
                vm,
                epoch: at(state_epoch),
            },
            Kind::Commit => Op::Commit {
                vm,
                epoch: at(state_epoch),
            },
            Kind::Forget => Op::Forget {
                vm,
                epoch: at(first_transfer),
            },
            Kind::Accept => Op::Accept {
                vm,
                from: peer,
                epoch: at(highest),
            },
            Kind::Promote => Op::Promote {
                vm,
                epoch: at(state_epoch),
                now: u64::from(*small),
            },
            Kind::Drop => Op::Drop {
                vm,
                epoch: at(state_epoch),
            },
            Kind::Pin => Op::Pin { vm, pinned: *flag },
            Kind::Factors => Op::Factors { vm, cpu: *small },
        })
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    use Kind::*;
    // The handoff calls more often than the bookkeeping ones.
    prop_oneof![
        2 => Just(Create), 1 => Just(Delete), 3 => Just(Begin), 3 => Just(Abort),
        3 => Just(Commit), 2 => Just(Forget), 3 => Just(Accept), 3 => Just(Promote),
        2 => Just(Drop), 1 => Just(Pin), 1 => Just(Factors),
    ]
}

fn vm() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["vm-0", "vm-1"]).prop_map(str::to_owned)
}

/// Peers, including this node itself (which every handoff call must refuse).
fn peer() -> impl Strategy<Value = String> {
    prop_oneof![6 => Just("node-b"), 3 => Just("node-c"), 1 => Just("node-a")]
        .prop_map(str::to_owned)
}

/// Mostly the epoch a correct caller would use (0 or +1), sometimes one off.
fn epoch_delta() -> impl Strategy<Value = i64> {
    prop_oneof![4 => Just(0i64), 4 => Just(1), 1 => Just(-1), 1 => Just(2)]
}

fn step() -> impl Strategy<Value = Step> {
    let call = (kind(), vm(), peer(), epoch_delta(), any::<bool>(), 0u32..3).prop_map(
        |(kind, vm, peer, epoch_delta, flag, small)| Step::Call {
            kind,
            vm,
            peer,
            epoch_delta,
            flag,
            small,
        },
    );
    prop_oneof![15 => call, 1 => Just(Step::Reopen)]
}

fn open(dir: &TempDir) -> Store {
    Store::open(dir.path(), CLUSTER, &me()).expect("store reopens")
}

fn assert_same(store: &Store, model: &Model, when: &str) -> Result<(), TestCaseError> {
    let snapshot = store.snapshot().expect("snapshot");
    prop_assert!(
        model.matches(&snapshot),
        "{when}: store {snapshot:#?}\nmodel {model:#?}"
    );
    check_invariants(&snapshot).map_err(|e| TestCaseError::fail(format!("{when}: {e}")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_agrees_with_the_model_across_reopens(steps in prop::collection::vec(step(), 1..60)) {
        let dir = TempDir::new().unwrap();
        let mut store = open(&dir);
        let mut model = Model::default();
        let mut applied = 0;
        for (i, step) in steps.iter().enumerate() {
            match step.resolve(&model) {
                Some(op) => {
                    let expected = model.apply(&op);
                    let got = apply_store(&store, &op);
                    prop_assert_eq!(got, expected, "step {}: {:?}", i, op);
                    applied += usize::from(got == common::Verdict::Applied);
                }
                None => {
                    drop(store);
                    store = open(&dir);
                    assert_same(&store, &model, &format!("after reopen at step {i}"))?;
                }
            }
        }
        drop(store);
        let store = open(&dir);
        assert_same(&store, &model, "at the end")?;
        // The generator must produce real changes, not only refusals.
        prop_assume!(applied > 0);
    }
}

/// The generator above mostly produces refusals; this walks the happy paths of both
/// roles many times so the property is checked on long, valid histories too.
#[test]
fn long_valid_histories_agree_with_the_model() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let seed = 7;
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = TempDir::new().unwrap();
    let mut store = open(&dir);
    let mut model = Model::default();
    for i in 0..300 {
        let op = common::next_valid_op(&model, &mut rng);
        let expected = model.apply(&op);
        assert_eq!(
            apply_store(&store, &op),
            expected,
            "seed {seed} step {i}: {op:?}"
        );
        if rng.random_ratio(1, 25) {
            drop(store);
            store = open(&dir);
            let snapshot = store.snapshot().unwrap();
            assert!(
                model.matches(&snapshot),
                "seed {seed} step {i}: {snapshot:#?} vs {model:#?}"
            );
        }
    }
    let snapshot = store.snapshot().unwrap();
    assert!(model.matches(&snapshot));
    check_invariants(&snapshot).unwrap();
    assert!(!snapshot.transfers.is_empty() && !snapshot.entries.is_empty());
}
