//! The replicated log against a real nats-server: positions, duplicate appends, reads in
//! order, trimming, the token, and a server restart.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use flowmesh_shared::mirror::{stream_name, Log, LogArgs, LogError};
use flowmesh_shared::secret::Secret;
use flowmesh_shared::testing::NatsServer;
use flowmesh_shared::Endpoint;

async fn connect(server: &NatsServer, token: Option<&str>, max_bytes: i64) -> Log {
    let args = LogArgs {
        log_url: Some(server.url()),
        log_max_bytes: max_bytes,
    };
    Log::connect(&args, "test", token.map(Secret::new))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn appends_get_positions_and_read_back_in_order() {
    let token = format!("t{}", std::process::id());
    let server = NatsServer::start("log-order", Some(&token));
    let log = connect(&server, Some(&token), 1 << 30).await;
    let shard = log.shard(&stream_name("indexer", 0));
    let empty = shard.bounds().await.unwrap();
    assert_eq!((empty.first, empty.last), (1, 0));
    for i in 1..=20u64 {
        let endpoint = if i % 5 == 0 {
            Endpoint::Delete
        } else {
            Endpoint::Index
        };
        let seq = shard
            .append(endpoint, Bytes::from(vec![i as u8; 10]), &format!("w{i}"))
            .await
            .unwrap();
        assert_eq!(seq, i);
    }
    // A retried append of the same write is not a second record.
    let again = shard
        .append(Endpoint::Index, Bytes::from(vec![3u8; 10]), "w3")
        .await
        .unwrap();
    assert_eq!(again, 3);
    let records = shard.read(4, 12).await.unwrap();
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (4..=12).collect::<Vec<_>>());
    assert_eq!(records[1].endpoint, Endpoint::Delete);
    assert_eq!(records[0].body.as_ref(), &[4u8; 10]);
    // `to` past the end is capped.
    assert_eq!(shard.read(19, 1000).await.unwrap().len(), 2);
    // Another shard has positions of its own.
    let other = log.shard(&stream_name("indexer", 1));
    assert_eq!(
        other
            .append(Endpoint::Index, Bytes::from_static(b"x"), "o1")
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn a_trimmed_log_says_where_it_starts() {
    let server = NatsServer::start("log-trim", None);
    let log = connect(&server, None, 64 * 1024).await;
    let shard = log.shard(&stream_name("ranker", 0));
    for i in 0..200 {
        shard
            .append(
                Endpoint::Index,
                Bytes::from(vec![0u8; 1024]),
                &format!("w{i}"),
            )
            .await
            .unwrap();
    }
    let bounds = shard.bounds().await.unwrap();
    assert_eq!(bounds.last, 200);
    assert!(bounds.first > 1, "{bounds:?}");
    match shard.read(1, 10).await {
        Err(LogError::Trimmed { wanted: 1, first }) => assert_eq!(first, bounds.first),
        other => panic!("expected Trimmed, got {other:?}"),
    }
    assert_eq!(
        shard.read(bounds.first, 200).await.unwrap().len() as u64,
        201 - bounds.first
    );
}

#[tokio::test]
async fn the_token_is_required_and_a_restart_keeps_the_log() {
    let token = format!("s{}", std::process::id());
    let mut server = NatsServer::start("log-restart", Some(&token));
    let wrong = connect(&server, Some("not-the-token"), 1 << 30).await;
    let denied = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        wrong.shard(&stream_name("indexer", 0)).append(
            Endpoint::Index,
            Bytes::from_static(b"x"),
            "x",
        ),
    )
    .await;
    assert!(
        !matches!(denied, Ok(Ok(_))),
        "a wrong token must not append"
    );

    let log = connect(&server, Some(&token), 1 << 30).await;
    let shard = log.shard(&stream_name("indexer", 0));
    for i in 1..=5 {
        shard
            .append(Endpoint::Index, Bytes::from_static(b"d"), &format!("a{i}"))
            .await
            .unwrap();
    }
    let id = shard.bounds().await.unwrap().id;
    server.kill();
    assert!(shard.bounds().await.is_err());
    server.restart();
    // The client reconnects by itself.
    let mut seq = None;
    for _ in 0..100 {
        if let Ok(s) = shard
            .append(Endpoint::Index, Bytes::from_static(b"d"), "a6")
            .await
        {
            seq = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seq, Some(6));
    assert_eq!(shard.bounds().await.unwrap().id, id);
}

/// One read of more records than the server lets a client hold unread (64 MiB), by a reader
/// whose thread is busy for a while (as a copy's is, applying what it reads): 160 records of
/// 1 MiB come back whole and in order. A read that asked for all of them at once had the server
/// drop the reader as a slow consumer ("MaxPending of 67108864 Exceeded"), and it stalled.
#[tokio::test(flavor = "current_thread")]
async fn a_read_of_large_records_does_not_stall() {
    const RECORDS: u64 = 160;
    let server = NatsServer::start("log-large", None);
    let log = connect(&server, None, 1 << 30).await;
    let shard = log.shard(&stream_name("indexer", 0));
    for i in 1..=RECORDS {
        let body = Bytes::from(vec![i as u8; 1 << 20]);
        assert_eq!(
            shard
                .append(Endpoint::Index, body, &format!("big{i}"))
                .await
                .unwrap(),
            i
        );
    }
    // Busy: soon after the read starts, the one thread that reads the socket is blocked.
    let busy = tokio::spawn(async {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        std::thread::sleep(std::time::Duration::from_secs(2));
    });
    let started = std::time::Instant::now();
    let records = shard.read(1, RECORDS).await.unwrap();
    busy.await.unwrap();
    assert_eq!(records.len() as u64, RECORDS);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.body.len(), 1 << 20);
        assert_eq!(r.body[0], (i + 1) as u8);
    }
    eprintln!("read {RECORDS} MiB in {:?}", started.elapsed());
}
