//! The durable engine against the conformance suite and the model, and across restarts: what
//! it acknowledged is there when it opens again, and a directory it cannot read is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::*;
use crate::conformance;

/// Keeps every directory the suite opened engines in until the test ends.
#[derive(Default)]
struct Dirs(Mutex<Vec<tempfile::TempDir>>);

impl Dirs {
    fn engine(&self, limits: Limits) -> DiskStorage {
        let dir = tempfile::tempdir().unwrap();
        let engine = DiskStorage::open(dir.path(), DiskOptions { limits, ..DiskOptions::default() }).unwrap();
        self.0.lock().unwrap().push(dir);
        engine
    }
}

fn open(dir: &Path, durability: Durability) -> DiskStorage {
    let slot_of = |key: &str| (key.len() % 7) as u16;
    DiskStorage::open(dir, DiskOptions { durability, slot_of, ..DiskOptions::default() }).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conforms() {
    let dirs = Dirs::default();
    conformance::run_all(|limits| dirs.engine(limits)).await;
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
    #[test]
    fn matches_the_model(ops in conformance::ops_strategy()) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dirs = Dirs::default();
        rt.block_on(conformance::check_against_model(&dirs.engine(conformance::MODEL_LIMITS), ops));
    }
}

/// What the writes below leave, in key order.
fn expected() -> Vec<(String, String)> {
    let mut expected: Vec<(String, String)> =
        (0..200).filter(|i| i % 10 != 3).map(|i| (format!("k{i}"), format!("v{i}!"))).collect();
    expected.push(("ключ".to_owned(), "зна".to_owned()));
    expected.sort();
    expected
}

async fn write_everything(engine: &DiskStorage) {
    for i in 0..200 {
        engine.put(format!("k{i}"), format!("v{i}")).await.unwrap();
        engine.append(format!("k{i}"), "!?".to_owned()).await.unwrap();
        assert_eq!(engine.rpop(format!("k{i}")).await.unwrap().as_deref(), Some("?"));
    }
    for i in (3..200).step_by(10) {
        assert!(engine.delete(format!("k{i}")).await.unwrap());
    }
    engine.put("ключ".to_owned(), "значение".to_owned()).await.unwrap();
    for _ in 0..5 {
        engine.rpop("ключ".to_owned()).await.unwrap();
    }
}

#[tokio::test]
async fn what_it_acknowledged_is_there_after_a_restart_at_every_durability() {
    for durability in [Durability::Always, Durability::Interval(Duration::from_millis(50)), Durability::Never]
    {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path(), durability);
        write_everything(&engine).await;
        drop(engine);

        let engine = open(dir.path(), durability);
        assert_eq!(engine.export(&|_| true).await.unwrap(), expected(), "{durability:?}");
        assert_eq!(engine.key_count().await.unwrap(), expected().len());
        assert_eq!(engine.get("k3").await.unwrap(), None, "a deleted key stays deleted");
        // It goes on from there.
        engine.append("k0".to_owned(), "+".to_owned()).await.unwrap();
        assert_eq!(engine.get("k0").await.unwrap().as_deref(), Some("v0!+"));
    }
}

#[tokio::test]
async fn the_servers_records_survive_a_restart_at_every_durability() {
    for durability in [Durability::Always, Durability::Interval(Duration::from_secs(60)), Durability::Never] {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path(), durability);
        engine.set_state("member", Some(b"127.0.0.1:1 #3".to_vec())).await.unwrap();
        let syncs = engine.stats().syncs;
        assert!(syncs >= 1, "{durability:?}: a record is synced whatever the policy");
        drop(engine);
        let engine = open(dir.path(), durability);
        assert_eq!(engine.state("member").await.unwrap().as_deref(), Some(&b"127.0.0.1:1 #3"[..]));
        assert_eq!(engine.key_count().await.unwrap(), 0);
    }
}

#[tokio::test]
async fn imports_and_removals_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), Durability::Always);
    engine.import((0..100).map(|i| (format!("k{i}"), format!("v{i}"))).collect()).await.unwrap();
    assert_eq!(engine.remove_where(&|key| key.ends_with('5')).await.unwrap(), 10);
    drop(engine);
    let engine = open(dir.path(), Durability::Always);
    assert_eq!(engine.key_count().await.unwrap(), 90);
    assert_eq!(engine.get("k15").await.unwrap(), None);
    assert_eq!(engine.get("k16").await.unwrap().as_deref(), Some("v16"));
}

/// 64 writes queued while the committer is held: one batch, one sync, for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_their_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(open(dir.path(), Durability::Always));
    let before = engine.stats();
    let queued = engine.shared.queued.load(Ordering::Relaxed);
    let held = engine.shared.hold.lock().unwrap();
    let writes: Vec<_> = (0..64)
        .map(|i| {
            let engine = Arc::clone(&engine);
            tokio::spawn(async move { engine.put(format!("k{i}"), "v".to_owned()).await })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while engine.shared.queued.load(Ordering::Relaxed) < queued + 64 {
        assert!(std::time::Instant::now() < deadline, "the 64 writes were not all queued");
        // The writes run on the runtime's workers; this thread only waits.
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(held);
    for write in writes {
        write.await.unwrap().unwrap();
    }
    let stats = engine.stats();
    assert_eq!(stats.writes - before.writes, 64);
    assert_eq!((stats.batches - before.batches, stats.syncs - before.syncs), (1, 1), "{stats:?}");
}

/// With an interval, what was acknowledged is synced within it, though no write follows.
#[tokio::test]
async fn an_interval_syncs_what_was_acknowledged_once_writes_stop() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), Durability::Interval(Duration::from_millis(20)));
    engine.put("k".to_owned(), "v".to_owned()).await.unwrap();
    assert_eq!(engine.stats().batches, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while engine.stats().syncs == 0 {
        assert!(std::time::Instant::now() < deadline, "no sync after the interval");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Nothing more to sync: it stays idle.
    let synced = engine.stats().syncs;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(engine.stats().syncs, synced);
}

/// Another `slot_of` would look for every key under another slot: refused.
#[tokio::test]
async fn another_key_to_slot_function_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), Durability::Always);
    engine.put("k".to_owned(), "v".to_owned()).await.unwrap();
    drop(engine);
    let other = DiskOptions { slot_of: |key| key.len() as u16 + 1, ..DiskOptions::default() };
    let err = DiskStorage::open(dir.path(), other).unwrap_err();
    assert!(matches!(err, OpenError::Slots { .. }), "{err}");
    assert_eq!(open(dir.path(), Durability::Always).get("k").await.unwrap().as_deref(), Some("v"));
}

/// Keys longer than fjall stores are refused when the engine opens, not when a write panics.
#[test]
fn a_key_limit_beyond_the_engine_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { max_key_len: 70_000, ..Limits::default() };
    let err = DiskStorage::open(dir.path(), DiskOptions { limits, ..DiskOptions::default() }).unwrap_err();
    assert!(matches!(err, OpenError::KeyLimit { asked: 70_000 }), "{err}");
}

/// A stray folder among fjall's keyspaces (on which fjall itself panics) is an error at open.
#[tokio::test]
async fn a_stray_folder_is_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), Durability::Always);
    engine.put("k".to_owned(), "v".to_owned()).await.unwrap();
    drop(engine);
    std::fs::create_dir(dir.path().join("keyspaces").join("not-a-keyspace")).unwrap();
    let err = DiskStorage::open(dir.path(), DiskOptions::default()).unwrap_err();
    assert!(matches!(err, OpenError::Engine { .. }), "{err}");
}

#[tokio::test]
async fn another_format_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::builder(dir.path()).open().unwrap();
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default).unwrap();
        meta.insert("format", "kv-disk 99").unwrap();
        db.persist(PersistMode::SyncAll).unwrap();
    }
    let err = DiskStorage::open(dir.path(), DiskOptions::default()).unwrap_err();
    assert!(matches!(&err, OpenError::Format { found, .. } if found == "kv-disk 99"), "{err}");
    assert!(err.to_string().contains("kv-disk 99") && err.to_string().contains(FORMAT), "{err}");
    let again = DiskStorage::open(dir.path(), DiskOptions::default()).unwrap_err();
    assert!(matches!(again, OpenError::Format { .. }), "refused again: {again}");
    let db = Database::builder(dir.path()).open().unwrap();
    assert!(!db.keyspace_exists("values"), "a refused directory was written to");
}

#[tokio::test]
async fn a_directory_of_garbage_is_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), Durability::Always);
    write_everything(&engine).await;
    drop(engine);
    let mut damaged = 0;
    let mut pending = vec![dir.path().to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|name| name != "lock") {
                std::fs::write(&path, b"this is not what fjall wrote here, in any version").unwrap();
                damaged += 1;
            }
        }
    }
    assert!(damaged > 0);
    let opened = std::panic::catch_unwind(|| DiskStorage::open(dir.path(), DiskOptions::default()));
    match opened {
        Ok(Ok(_)) => panic!("a damaged directory was opened as if whole"),
        Ok(Err(err)) => assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}"),
        Err(_) => panic!("opening a damaged directory panicked"),
    }
}

#[tokio::test]
async fn stored_records_this_layout_does_not_write_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), Durability::Always);
    engine.put("k".to_owned(), "v".to_owned()).await.unwrap();
    // A value that is not UTF-8, and a key too short to hold a slot, written behind its back.
    let stored = engine.stored_key("k");
    engine.values.insert(stored, [0xff_u8, 0xfe].as_slice()).unwrap();
    assert!(matches!(engine.get("k").await, Err(Error::Storage(_))));
    engine.values.insert([7_u8].as_slice(), "x").unwrap();
    assert!(matches!(engine.export(&|_| true).await, Err(Error::Storage(_))));
}

fn recording(client: u64, seq: u64, first_unanswered: u64) -> Recording {
    let id = crate::RequestId { client, seq, first_unanswered };
    Recording { id, fingerprint: seq * 100, tag: 4, forget: Vec::new() }
}

#[tokio::test]
async fn exactly_once_records_survive_a_restart_with_their_writes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), Durability::Always);
    engine.apply_recorded(Mutation::append("k", "ab"), Some(recording(9, 1, 1))).await.unwrap();
    let popped = engine.apply_recorded(Mutation::rpop("k"), Some(recording(9, 2, 1))).await.unwrap();
    assert_eq!(popped, Output::Popped(Some("b".to_owned())));
    // A write that changes no value still leaves its record.
    let deleted = engine.apply_recorded(Mutation::delete("none"), Some(recording(9, 3, 1))).await.unwrap();
    assert_eq!(deleted, Output::Deleted(false));
    engine.apply_recorded(Mutation::put("x", "1"), Some(recording(5, 1, 0))).await.unwrap();
    drop(engine);

    let engine = open(dir.path(), Durability::Always);
    assert_eq!(engine.get("k").await.unwrap().as_deref(), Some("a"));
    let records = engine.sessions().await.unwrap();
    let clients: Vec<(u64, u64, Vec<u64>)> = records
        .iter()
        .map(|record| (record.client, record.floor, record.answers.iter().map(|a| a.seq).collect()))
        .collect();
    assert_eq!(clients, vec![(5, 0, vec![1]), (9, 1, vec![1, 2, 3])]);
    // A retry after the restart is answered from them, not applied again.
    let sessions = crate::Sessions::default();
    sessions.import(records, std::time::Instant::now());
    let retry = sessions.begin(recording(9, 2, 1).id, 200, 4, std::time::Instant::now()).unwrap();
    assert!(
        matches!(retry, crate::session::Begin::Answered(Output::Popped(Some(ref c))) if c == "b"),
        "{retry:?}"
    );

    // A write that raises the floor forgets the answers below it, on disk too.
    let raising = Recording { forget: vec![1, 2], ..recording(9, 4, 3) };
    engine.apply_recorded(Mutation::put("k", "z"), Some(raising)).await.unwrap();
    drop(engine);
    let engine = open(dir.path(), Durability::Always);
    let records = engine.sessions().await.unwrap();
    assert_eq!(records[1].floor, 3);
    assert_eq!(records[1].answers.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![3, 4]);
    // Stored: client 9's answers 3 and 4, client 5's answer 1: nothing below a floor.
    assert_eq!(engine.sessions.len().unwrap(), 3);

    // An expired client's records are forgotten, up to the highest number its session had: a
    // record it wrote since it came back is kept.
    engine.apply_recorded(Mutation::put("k", "y"), Some(recording(9, 5, 5))).await.unwrap();
    engine.forget_sessions(vec![(9, 4)]).await.unwrap();
    drop(engine);
    let engine = open(dir.path(), Durability::Always);
    let kept: Vec<(u64, Vec<u64>)> = engine
        .sessions()
        .await
        .unwrap()
        .iter()
        .map(|r| (r.client, r.answers.iter().map(|a| a.seq).collect()))
        .collect();
    assert_eq!(kept, vec![(5, vec![1]), (9, vec![5])]);
}

/// Records of writes applied elsewhere (a slot handed over) are kept as given, and read back.
#[tokio::test]
async fn records_kept_as_given_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), Durability::Never);
    let answer = |seq: u64, output: Output| crate::Answer { seq, fingerprint: 70 + seq, output, tag: 3 };
    let given = vec![
        SessionRecord { client: 4, floor: 2, answers: vec![answer(2, Output::Popped(Some("é".into())))] },
        SessionRecord {
            client: 6,
            floor: 0,
            answers: vec![answer(1, Output::Unit), answer(5, Output::Deleted(true))],
        },
    ];
    engine.keep_sessions(given.clone()).await.unwrap();
    drop(engine);
    let engine = open(dir.path(), Durability::Never);
    assert_eq!(engine.sessions().await.unwrap(), given);
}

#[tokio::test]
async fn a_damaged_record_is_an_error_at_start_up_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), Durability::Always);
    engine.apply_recorded(Mutation::put("k", "v"), Some(recording(9, 1, 1))).await.unwrap();
    engine.sessions.insert(super::records::answer_key(9, 2), [1, 2, 3]).unwrap();
    drop(engine);
    let engine = open(dir.path(), Durability::Always);
    let err = engine.sessions().await.unwrap_err();
    assert!(err.to_string().contains("exactly-once record"), "{err}");
}

#[tokio::test]
async fn a_write_that_cannot_be_made_durable_fails_and_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), Durability::Always);
    engine.put("kept".to_owned(), "1".to_owned()).await.unwrap();
    engine.shared.fail_next.store(true, Ordering::Relaxed);
    let failed = engine.append("lost".to_owned(), "2".to_owned()).await.unwrap_err();
    assert!(failed.to_string().contains("injected I/O error"), "{failed}");
    // Reads go on, but for the key whose write failed: its value is unknown.
    assert_eq!(engine.get("kept").await.unwrap().as_deref(), Some("1"));
    let unknown = engine.get("lost").await.unwrap_err();
    assert!(unknown.to_string().contains("unknown"), "{unknown}");
    // No write is acknowledged on a disk that failed.
    let refused = engine.put("kept".to_owned(), "3".to_owned()).await.unwrap_err();
    assert!(refused.to_string().contains("stopped taking writes"), "{refused}");
    assert_eq!(engine.get("kept").await.unwrap().as_deref(), Some("1"));
    drop(engine);
    // A restart reads the journal back: what was acknowledged, and nothing that was refused.
    let engine = open(dir.path(), Durability::Always);
    assert_eq!(engine.get("kept").await.unwrap().as_deref(), Some("1"));
    assert_eq!(engine.get("lost").await.unwrap(), None);
    engine.put("kept".to_owned(), "4".to_owned()).await.unwrap();
}

#[tokio::test]
async fn exports_slots_in_batches_from_disk() {
    let spread =
        |key: &str| key.bytes().fold(0u16, |a, b| a.wrapping_mul(31).wrapping_add(u16::from(b))) % 13;
    let dir = tempfile::tempdir().unwrap();
    let engine =
        DiskStorage::open(dir.path(), DiskOptions { slot_of: spread, ..DiskOptions::default() }).unwrap();
    conformance::export_slots_in_batches(&engine, spread).await;
    // Slots asked for by another key-to-slot function than the engine's are refused.
    let other = |key: &str| (key.len() % 3) as u16;
    assert!(engine.export_slots(other, &[0], None, 100).await.is_err());
    assert!(engine.remove_slots(other, &[0]).await.is_err());
}
