//! Where the executor's work runs, and how index errors become HTTP errors.

use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::backend::Metric;

fn one_document() -> Envelope {
    Envelope::new(vec![Document {
        id: "a".to_owned(),
        embedding: Some(vec![1.0, 0.0]),
        ..Document::default()
    }])
}

/// A write that waits for the shard's writer lock (held here, as a long write or a snapshot's
/// copy would) leaves the runtime's only thread free: other tasks keep running, and the write
/// completes once the lock is released. Run inline, it would block that thread and no tick
/// would come.
#[test]
fn a_write_waiting_for_the_writer_lock_leaves_the_runtime_free() {
    let indexer = Arc::new(Indexer::new(Shard::flat_in_memory(Metric::Cosine)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let held = indexer.shard().hold_writer();
    let (tick_tx, tick_rx) = mpsc::channel();
    let writer = Arc::clone(&indexer);
    let runner = std::thread::spawn(move || {
        runtime.block_on(async move {
            let write = tokio::spawn(async move {
                writer
                    .call(Endpoint::Index, one_document(), Deadline::NONE)
                    .await
            });
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                tick_tx.send(()).unwrap();
            }
            write.await.unwrap()
        })
    });
    for _ in 0..3 {
        tick_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the runtime runs other tasks while the write waits");
    }
    assert_eq!(
        indexer.shard().stats().count,
        0,
        "the write is still waiting"
    );
    drop(held);
    runner.join().unwrap().unwrap();
    assert_eq!(indexer.shard().stats().count, 1);
}

#[test]
fn index_errors_get_the_status_of_whose_fault_they_are() {
    let id = || "d".to_owned();
    let cases = [
        (IndexError::MissingId { position: 0 }, 400),
        (IndexError::MissingEmbedding { id: id() }, 400),
        (IndexError::EmptyEmbedding { id: id() }, 400),
        (IndexError::NotFinite { id: id() }, 400),
        (
            IndexError::WrongDimension {
                id: id(),
                expected: 2,
                got: 3,
            },
            400,
        ),
        (IndexError::UnknownId { id: id() }, 404),
        (IndexError::Storage("disk full".to_owned()), 500),
        (IndexError::search("annoy", "cannot map the file"), 500),
    ];
    for (error, status) in cases {
        let message = error.to_string();
        assert_eq!(ApiError::from(error).status(), status, "{message}");
    }
}
