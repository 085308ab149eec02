//! Opening a directory that is not (or not only) this node's healthy store: damaged
//! files, damaged records, another cluster or node, a newer format, a second opener.
//! Each must give its typed error with a clear message, never a panic.

mod common;

use ballast_store::{NodeId, Store, StoreError, FORMAT_VERSION};
use common::{me, running, CLUSTER};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::fs;
use std::path::Path;
use tempfile::TempDir;

fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random()).collect()
}

/// A store with one VM in it, closed again.
fn healthy_store() -> TempDir {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path(), CLUSTER, &me()).unwrap();
    store.create(&running("vm-1", 1)).unwrap();
    drop(store);
    dir
}

fn expect_corrupt(dir: &Path) -> String {
    match Store::open(dir, CLUSTER, &me()) {
        Err(e @ StoreError::Corrupt { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains(&dir.display().to_string()),
                "message names the path: {message}"
            );
            message
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("a damaged store opened"),
    }
}

#[test]
fn garbage_files_where_sled_expects_its_database_are_corrupt() {
    let dir = TempDir::new().unwrap();
    fs::create_dir_all(dir.path().join("sled")).unwrap();
    fs::write(dir.path().join("sled/conf"), garbage(200, 1)).unwrap();
    fs::write(dir.path().join("sled/db"), garbage(1 << 20, 2)).unwrap();
    let message = expect_corrupt(dir.path());
    println!("{message}");
}

#[test]
fn garbage_over_a_healthy_database_file_is_corrupt() {
    let dir = healthy_store();
    let db = dir.path().join("sled/db");
    let len = fs::metadata(&db).unwrap().len() as usize;
    fs::write(&db, garbage(len.max(4096), 3)).unwrap();
    let message = expect_corrupt(dir.path());
    println!("{message}");
}

#[test]
fn many_kinds_of_damage_to_the_database_file_are_corrupt_never_a_panic_or_an_open() {
    for seed in 10..30u64 {
        let dir = healthy_store();
        let db = dir.path().join("sled/db");
        let mut bytes = fs::read(&db).unwrap();
        match seed % 4 {
            0 => bytes.iter_mut().for_each(|b| *b = 0),
            1 => bytes = garbage(bytes.len(), seed),
            2 => {
                // Scribble over the first half, where the records are.
                let half = bytes.len() / 2;
                bytes[..half].copy_from_slice(&garbage(half, seed));
            }
            _ => {
                let keep = bytes.len() / 3;
                bytes[keep..].iter_mut().for_each(|b| *b = 0xAA);
                bytes.truncate(keep.max(1));
                bytes[0] ^= 0xFF;
            }
        }
        fs::write(&db, &bytes).unwrap();
        let message = expect_corrupt(dir.path());
        println!("seed {seed}: {message}");
    }
}

#[test]
fn garbage_in_the_sled_config_file_is_corrupt() {
    let dir = healthy_store();
    fs::write(dir.path().join("sled/conf"), garbage(64, 5)).unwrap();
    let message = expect_corrupt(dir.path());
    println!("{message}");
}

#[test]
fn a_file_where_the_database_directory_belongs_is_corrupt() {
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("sled"), b"not a directory").unwrap();
    let message = expect_corrupt(dir.path());
    println!("{message}");
}

#[test]
fn an_undecodable_record_is_corrupt_and_names_it() {
    let dir = healthy_store();
    {
        let db = sled::open(dir.path().join("sled")).unwrap();
        db.open_tree("schedule")
            .unwrap()
            .insert("vm-1", &b"\xff\xfe not bincode"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let message = expect_corrupt(dir.path());
    assert!(
        message.contains("schedule") && message.contains("vm-1"),
        "{message}"
    );
}

#[test]
fn a_database_without_metadata_is_corrupt() {
    let dir = healthy_store();
    {
        let db = sled::open(dir.path().join("sled")).unwrap();
        db.open_tree("meta").unwrap().clear().unwrap();
        db.flush().unwrap();
    }
    let message = expect_corrupt(dir.path());
    assert!(message.contains("no format version"), "{message}");
}

#[test]
fn wrong_cluster_and_wrong_node_are_refused_by_name() {
    let dir = healthy_store();
    match Store::open(dir.path(), "other-cluster", &me()) {
        Err(e @ StoreError::WrongCluster { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("\"test-cluster\"") && message.contains("\"other-cluster\""),
                "{message}"
            );
        }
        other => panic!("expected WrongCluster, got {:?}", other.err()),
    }
    match Store::open(dir.path(), CLUSTER, &NodeId::from("node-z")) {
        Err(e @ StoreError::WrongNode { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("node-a") && message.contains("node-z"),
                "{message}"
            );
        }
        other => panic!("expected WrongNode, got {:?}", other.err()),
    }
    // Nothing was changed by the refused opens.
    let store = Store::open(dir.path(), CLUSTER, &me()).unwrap();
    assert_eq!(store.list().unwrap(), vec![running("vm-1", 1)]);
}

#[test]
fn a_newer_format_is_refused_as_such() {
    let dir = healthy_store();
    let newer = FORMAT_VERSION + 1;
    {
        let db = sled::open(dir.path().join("sled")).unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert("format_version", &newer.to_be_bytes()[..])
            .unwrap();
        // A newer format may change the node record too; it must not matter.
        meta.insert("node", &b"future layout"[..]).unwrap();
        db.flush().unwrap();
    }
    match Store::open(dir.path(), CLUSTER, &me()) {
        Err(
            e @ StoreError::NewerFormat {
                found, supported, ..
            },
        ) => {
            assert_eq!((found, supported), (newer, FORMAT_VERSION));
            let message = e.to_string();
            assert!(
                message.contains(&format!("format version {newer}")),
                "{message}"
            );
        }
        other => panic!("expected NewerFormat, got {:?}", other.err()),
    }
}

#[test]
fn a_second_open_of_the_same_directory_is_locked() {
    let dir = healthy_store();
    let first = Store::open(dir.path(), CLUSTER, &me()).unwrap();
    match Store::open(dir.path(), CLUSTER, &me()) {
        Err(e @ StoreError::Locked { .. }) => assert!(e.to_string().contains("locked")),
        other => panic!("expected Locked, got {:?}", other.err()),
    }
    assert_eq!(
        first.list().unwrap().len(),
        1,
        "the first handle still works"
    );
    drop(first);
    Store::open(dir.path(), CLUSTER, &me()).expect("opens again once released");
}

#[test]
fn a_half_made_first_start_is_discarded() {
    let dir = TempDir::new().unwrap();
    fs::create_dir_all(dir.path().join("sled.init")).unwrap();
    fs::write(dir.path().join("sled.init/db"), garbage(4096, 4)).unwrap();
    let store = Store::open(dir.path(), CLUSTER, &me()).expect("fresh store");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(store.meta().format_version, FORMAT_VERSION);
    assert!(!dir.path().join("sled.init").exists());
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_database_rolled_back_to_an_older_copy_is_corrupt() {
    let dir = healthy_store();
    let old = TempDir::new().unwrap();
    copy_dir(&dir.path().join("sled"), old.path());
    let store = Store::open(dir.path(), CLUSTER, &me()).unwrap();
    store.create(&running("vm-2", 1)).unwrap();
    drop(store);
    fs::remove_dir_all(dir.path().join("sled")).unwrap();
    copy_dir(old.path(), &dir.path().join("sled"));
    let message = expect_corrupt(dir.path());
    assert!(message.contains("lost flushed writes"), "{message}");
}

/// A VM spec as format 1 (ballast 0.1) wrote it: no placement rules.
#[derive(serde::Serialize)]
struct SpecV1 {
    vcpus: u32,
    memory_mib: u64,
    target: Option<ballast_store::LoadFactors>,
    disks: Vec<String>,
    extra_args: Vec<String>,
    driver_opts: std::collections::BTreeMap<String, String>,
}

/// A schedule entry as format 1 wrote it.
#[derive(serde::Serialize)]
struct EntryV1 {
    vm: ballast_store::VmId,
    spec: SpecV1,
    factors: ballast_store::LoadFactors,
    state: ballast_store::VmState,
    epoch: u64,
    pinned: bool,
    last_moved_unix_ms: Option<u64>,
}

#[test]
fn a_format_1_store_is_upgraded_keeping_every_entry() {
    let dir = healthy_store();
    let want = running("vm-1", 1);
    {
        // Turn the store into what 0.1 wrote: version 1, its node record, a 0.1 entry.
        let db = sled::open(dir.path().join("sled")).unwrap();
        let cfg = bincode::config::standard();
        let meta = db.open_tree("meta").unwrap();
        let node = ballast_store::NodeMeta {
            cluster_id: CLUSTER.into(),
            node_id: me(),
            format_version: 1,
        };
        meta.insert("format_version", &1u32.to_be_bytes()[..])
            .unwrap();
        meta.insert("node", bincode::serde::encode_to_vec(&node, cfg).unwrap())
            .unwrap();
        let s = &want.spec;
        let old = EntryV1 {
            vm: want.vm.clone(),
            spec: SpecV1 {
                vcpus: s.vcpus,
                memory_mib: s.memory_mib,
                target: s.target,
                disks: s.disks.clone(),
                extra_args: s.extra_args.clone(),
                driver_opts: s.driver_opts.clone(),
            },
            factors: want.factors,
            state: want.state.clone(),
            epoch: want.epoch,
            pinned: want.pinned,
            last_moved_unix_ms: want.last_moved_unix_ms,
        };
        let schedule = db.open_tree("schedule").unwrap();
        schedule
            .insert("vm-1", bincode::serde::encode_to_vec(&old, cfg).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let store = Store::open(dir.path(), CLUSTER, &me()).expect("a format 1 store opens");
    assert_eq!(store.meta().format_version, FORMAT_VERSION);
    assert_eq!(
        store.list().unwrap(),
        vec![want.clone()],
        "entry kept, no rules"
    );
    drop(store);
    // Upgraded on disk: the next open reads format 2 directly.
    let store = Store::open(dir.path(), CLUSTER, &me()).unwrap();
    assert_eq!(store.list().unwrap(), vec![want]);
}
