//! The log and snapshots through real files: round trips, torn records, damage, the lock.

use std::fs::{self, OpenOptions};
use std::path::PathBuf;

use super::*;

fn upsert(id: &str, v: f32) -> Op {
    Op::Upsert {
        replaced: vec![id.to_owned()],
        entries: vec![OwnedEntry {
            id: id.to_owned(),
            parent_id: Some(format!("{id}-parent")),
            vector: vec![v, -v, 0.5],
        }],
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "flowmesh-wal-{name}-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    ));
    let _ = fs::remove_dir_all(&dir);
    dir
}

#[test]
fn records_round_trip_through_a_reopen() {
    let dir = temp_dir("roundtrip");
    let ops = vec![
        upsert("a", 1.0),
        Op::Delete {
            ids: vec!["x".into(), "ü🙂".into()],
        },
        upsert("b", 2.0),
    ];
    {
        let (mut log, recovered) = Log::open(&dir).unwrap();
        assert!(recovered.ops.is_empty() && recovered.snapshot.is_none());
        for op in &ops {
            log.append(op).unwrap();
        }
    }
    let (_log, recovered) = Log::open(&dir).unwrap();
    assert_eq!(recovered.ops, ops);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_torn_last_record_is_dropped_and_writing_goes_on() {
    let dir = temp_dir("torn");
    let log_path;
    {
        let (mut log, _) = Log::open(&dir).unwrap();
        log.append(&upsert("a", 1.0)).unwrap();
        log.append(&upsert("b", 2.0)).unwrap();
        log_path = log.path.clone();
    }
    // Cut the last record in the middle, as a crash during its write would.
    let len = fs::metadata(&log_path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&log_path)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    {
        let (mut log, recovered) = Log::open(&dir).unwrap();
        assert_eq!(recovered.ops, vec![upsert("a", 1.0)]);
        log.append(&upsert("c", 3.0)).unwrap();
    }
    let (_log, recovered) = Log::open(&dir).unwrap();
    assert_eq!(recovered.ops, vec![upsert("a", 1.0), upsert("c", 3.0)]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_snapshot_replaces_the_logs_it_covers() {
    let dir = temp_dir("snapshot");
    let rows = Rows {
        dim: Some(3),
        ids: vec!["a".into(), "b".into()],
        parent_ids: vec![None, Some("p".into())],
        vectors: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    };
    {
        let (mut log, _) = Log::open(&dir).unwrap();
        log.append(&upsert("a", 1.0)).unwrap();
        log.append(&upsert("b", 2.0)).unwrap();
        let seq = log.rotate().unwrap();
        assert_eq!(seq, 2);
        log.append(&upsert("c", 3.0)).unwrap();
        log.snapshotter().write(seq, &rows).unwrap();
    }
    let logs = fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".wal")
        })
        .count();
    assert_eq!(logs, 1, "the covered log file is gone");
    let (_log, recovered) = Log::open(&dir).unwrap();
    assert_eq!(recovered.snapshot, Some(rows));
    assert_eq!(recovered.ops, vec![upsert("c", 3.0)]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_process_cannot_open_the_same_directory() {
    let dir = temp_dir("lock");
    let (_log, _) = Log::open(&dir).unwrap();
    let err = Log::open(&dir).err().unwrap();
    assert!(err.to_string().contains("in use"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damage_before_the_end_refuses_to_start() {
    let dir = temp_dir("damage");
    {
        let (mut log, _) = Log::open(&dir).unwrap();
        log.append(&upsert("a", 1.0)).unwrap();
        log.rotate().unwrap();
        log.append(&upsert("b", 2.0)).unwrap();
    }
    let first = dir.join(log_name(1));
    let mut bytes = fs::read(&first).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&first, bytes).unwrap();
    let err = Log::open(&dir).err().unwrap();
    assert!(err.to_string().contains("damaged"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}
