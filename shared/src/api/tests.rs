//! The document model's serde rules and merges.

use super::*;

#[test]
fn absent_fields_are_left_out_of_json() {
    let d = Document::text("a", "hello");
    assert_eq!(
        serde_json::to_string(&d).unwrap(),
        r#"{"id":"a","text":"hello"}"#
    );
}

#[test]
fn nulls_sent_by_jina_clients_are_accepted() {
    let d: Document = serde_json::from_str(
        r#"{"id":"a","embedding":null,"matches":null,"chunks":null,"tags":null,"text":null}"#,
    )
    .unwrap();
    assert_eq!(
        d,
        Document {
            id: "a".into(),
            ..Document::default()
        }
    );
}

#[test]
fn merge_unites_fields_chunks_and_matches() {
    let mut a = Document {
        id: "x".into(),
        text: Some("t".into()),
        matches: vec![Document {
            id: "m1".into(),
            score: Some(0.5),
            ..Document::default()
        }],
        ..Document::default()
    };
    let b = Document {
        id: "x".into(),
        embedding: Some(vec![1.0]),
        chunks: vec![Document::text("c", "chunk")],
        matches: vec![
            Document {
                id: "m1".into(),
                score: Some(0.9),
                ..Document::default()
            },
            Document {
                id: "m2".into(),
                score: Some(0.1),
                ..Document::default()
            },
        ],
        ..Document::default()
    };
    a.merge_from(b);
    assert_eq!(a.text.as_deref(), Some("t"));
    assert_eq!(a.embedding, Some(vec![1.0]));
    assert_eq!(a.chunks.len(), 1);
    assert_eq!(a.matches.len(), 2);
    assert_eq!(a.matches[0].score, Some(0.9));
}

#[test]
fn non_finite_embeddings_and_scores_are_refused() {
    for body in [
        r#"{"embedding": [1.0, 1e300]}"#,
        r#"{"embedding": [-1e39]}"#,
        r#"{"score": 1e300}"#,
    ] {
        let err = serde_json::from_str::<Document>(body).unwrap_err();
        assert!(err.to_string().contains("finite"), "{body}: {err}");
    }
    let nan = Document {
        embedding: Some(vec![0.5, f32::NAN]),
        ..Document::default()
    };
    let packed = crate::codec::Format::MsgPack.encode(&nan).unwrap();
    let err = crate::codec::Format::MsgPack
        .decode::<Document>(&packed)
        .unwrap_err();
    assert_eq!(err.status(), 400);
    let nan_score = Document {
        score: Some(f32::NAN),
        ..Document::default()
    };
    let packed = crate::codec::Format::MsgPack.encode(&nan_score).unwrap();
    assert!(crate::codec::Format::MsgPack
        .decode::<Document>(&packed)
        .is_err());
    let fine: Document =
        serde_json::from_str(r#"{"embedding": [1.5, -2.0], "score": 0.25}"#).unwrap();
    assert_eq!(fine.embedding, Some(vec![1.5, -2.0]));
    assert_eq!(fine.score, Some(0.25));
}

#[test]
fn a_lying_msgpack_array_header_reserves_nothing_large() {
    // {"embedding": <array of 2^32-1 floats>} with no floats after the header.
    let mut body = vec![0x81, 0xa9];
    body.extend_from_slice(b"embedding");
    body.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
    let err = crate::codec::Format::MsgPack
        .decode::<Document>(&body)
        .unwrap_err();
    assert_eq!(err.status(), 400);
}

fn tagged(id: &str, tag: &str) -> Document {
    let mut tags = Map::new();
    tags.insert(tag.to_owned(), Value::Bool(true));
    Document {
        id: id.into(),
        tags: Some(tags),
        ..Document::default()
    }
}

fn tag_names(d: &Document) -> Vec<&str> {
    d.tags
        .iter()
        .flat_map(|t| t.keys().map(String::as_str))
        .collect()
}

#[test]
fn merge_by_id_keeps_the_order_and_merges_duplicates_into_the_first() {
    // `mine` holds "a" twice: only its first copy takes what `theirs` has of "a".
    let mut mine = vec![tagged("a", "m1"), tagged("b", "m2"), tagged("a", "m3")];
    let theirs = vec![
        tagged("c", "t1"),
        tagged("a", "t2"),
        tagged("d", "t3"),
        tagged("c", "t4"),
        tagged("b", "t5"),
    ];
    merge_by_id(&mut mine, theirs);
    let ids: Vec<&str> = mine.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "a", "c", "d"]);
    let tags: Vec<Vec<&str>> = mine.iter().map(tag_names).collect();
    assert_eq!(
        tags,
        [
            vec!["m1", "t2"],
            vec!["m2", "t5"],
            vec!["m3"],
            vec!["t1", "t4"],
            vec!["t3"]
        ]
    );
}

#[test]
fn merge_by_id_with_says_where_each_document_goes() {
    let mut mine = vec![Document::text("a", "x")];
    let mut slots = Vec::new();
    merge_by_id_with(
        &mut mine,
        vec![
            Document::text("b", "y"),
            Document::text("a", "z"),
            Document::text("b", "w"),
        ],
        |slot, doc| slots.push((slot, doc.id.clone())),
    );
    assert_eq!(
        slots,
        [
            (None, "b".to_owned()),
            (Some(0), "a".to_owned()),
            (Some(1), "b".to_owned())
        ]
    );
    assert_eq!(mine.len(), 2);
    // The first text stays: merging only fills what is missing.
    assert_eq!(mine[0].text.as_deref(), Some("x"));
    let mut empty = Vec::new();
    merge_by_id(&mut empty, Vec::new());
    assert!(empty.is_empty());
}

#[test]
fn merging_thousands_of_documents_keeps_every_id_once() {
    // Speed is the benches' business (shared/benches); here, that a large merge is right.
    let n = 20_000;
    let mut mine: Vec<Document> = (0..n)
        .map(|i| Document::text(format!("{i}"), "x"))
        .collect();
    let theirs: Vec<Document> = (0..2 * n)
        .rev()
        .map(|i| Document::text(format!("{i}"), "y"))
        .collect();
    merge_by_id(&mut mine, theirs);
    assert_eq!(mine.len(), 2 * n);
    assert_eq!(mine[n].id, format!("{}", 2 * n - 1));
    assert!(mine[..n].iter().all(|d| d.text.as_deref() == Some("x")));
    let ids: std::collections::HashSet<&str> = mine.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), 2 * n);
}

#[test]
fn structs_are_read_from_objects_only() {
    // serde's derive would read a struct from an array of its fields; no schema allows it.
    let json = crate::codec::Format::Json;
    for body in [
        r#"{"data": [[]]}"#,
        r#"{"data": [{"id": "a", "chunks": [["b"]]}]}"#,
        r#"{"data": [{"id": "a", "matches": [[]]}]}"#,
        r#"{"header": [], "data": [{"id": "a"}]}"#,
        r#"{"data": [{"id": "a"}], "routes": [["x", "t0", "t1"]]}"#,
        r#"[{}, {}, [{"id": "a"}]]"#,
    ] {
        let e = json.decode::<Envelope>(body.as_bytes()).unwrap_err();
        assert!(
            e.to_string().contains("expected an object")
                || e.to_string().contains("expected an array of objects"),
            "{body}: {e}"
        );
    }
    // What the schema allows still reads, `null` lists and header included.
    let ok = json
        .decode::<Envelope>(br#"{"header": null, "data": [{"id": "a", "chunks": null, "matches": [{"id": "m"}]}], "routes": [{"executor": "x", "start_time": "t0", "end_time": "t1"}]}"#)
        .unwrap();
    assert_eq!(ok.data[0].matches[0].id, "m");
    assert_eq!(ok.routes.len(), 1);
    // MessagePack too: a document packed as an array is refused, as a map it is read.
    let msgpack = crate::codec::Format::MsgPack;
    let as_array = rmp_serde::to_vec(&serde_json::json!({"data": [["a"]]})).unwrap();
    assert!(msgpack.decode::<Envelope>(&as_array).is_err());
    let as_map = rmp_serde::to_vec_named(&Envelope::new(vec![Document::text("a", "t")])).unwrap();
    assert_eq!(msgpack.decode::<Envelope>(&as_map).unwrap().data[0].id, "a");
}
