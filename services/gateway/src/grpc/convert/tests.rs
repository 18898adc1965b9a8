#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use base64::Engine as _;
use prost::Message as _;
use serde_json::json;

use super::*;

/// A data request as Jina 3.34's client serializes it (`DataRequest.proto`, docarray 0.40):
/// `/search`, request id `r-1`, `parameters={'top_k': 3}`, one `Doc(TextDoc)` with id `q1`,
/// text `hello`, tags `{n: '1', k: 7, ok: True}`, a float64 embedding `[0.5, -1, 2]` and
/// `matches` a `DocList[TextDoc]` of one document `m1` / `world`.
const JINA_SEARCH: &str = "0a0e0a03722d311a072f73656172636812140a120a05746f705f6b1209110000000000\
    0008402283020a80020afd010a460a09656d62656464696e67123932240a220a18000000000000e03f000000000000\
    f0bf00000000000000401201031a033c66386a116e6461727261795f656d62656464696e670a070a0375726c12000a\
    0a0a0662797465735f12000a0e0a02696412080a0271316a0269640a270a0474616773121f621d0a080a026f6b1202\
    20010a070a016b120210070a080a016e12030a01310a540a076d617463686573124942470a450a070a0375726c1200\
    0a0e0a02696412080a026d316a0269640a0d0a09656d62656464696e6712000a0a0a0662797465735f12000a0f0a04\
    7465787412070a05776f726c640a0f0a047465787412070a0568656c6c6f";

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn reads_a_request_serialized_by_jinas_client() {
    let request = DataRequestProto::decode(unhex(JINA_SEARCH).as_slice()).unwrap();
    let (endpoint, envelope) = request_from_proto(request).unwrap();
    assert_eq!(endpoint, Endpoint::Search);
    assert_eq!(envelope.header.request_id, "r-1");
    assert_eq!(envelope.header.exec_endpoint, "/search");
    assert_eq!(envelope.parameters["top_k"], json!(3.0));
    assert_eq!(envelope.data.len(), 1);
    let doc = &envelope.data[0];
    assert_eq!(doc.id, "q1");
    assert_eq!(doc.text.as_deref(), Some("hello"));
    assert_eq!(
        doc.tags.as_ref().unwrap(),
        json!({"n": "1", "k": 7, "ok": true}).as_object().unwrap()
    );
    assert_eq!(doc.embedding.as_deref(), Some(&[0.5f32, -1.0, 2.0][..]));
    // docarray's `url` and `bytes_` are None: nothing is made of them.
    assert_eq!((doc.uri.as_ref(), doc.blob.as_ref()), (None, None));
    assert_eq!(doc.matches.len(), 1);
    assert_eq!(doc.matches[0].id, "m1");
    assert_eq!(doc.matches[0].text.as_deref(), Some("world"));
    assert!(doc.matches[0].embedding.is_none());
}

fn full_document() -> Document {
    let mut tags = Map::new();
    tags.insert("lang".into(), json!("en"));
    tags.insert("n".into(), json!(3));
    tags.insert("ratio".into(), json!(0.25));
    tags.insert("ok".into(), json!(false));
    tags.insert("none".into(), Value::Null);
    tags.insert("list".into(), json!([1, "two", [3.5]]));
    tags.insert("nested".into(), json!({"a": {"b": "c"}}));
    Document {
        id: "q".into(),
        text: Some("query".into()),
        blob: Some(base64::engine::general_purpose::STANDARD.encode(b"\x89PNG")),
        uri: Some("data:text/plain,hi".into()),
        tags: Some(tags),
        embedding: Some(vec![0.25, -1.5, 3.0]),
        parent_id: Some("p".into()),
        chunks: vec![Document::text("q-0", "chunk")],
        matches: vec![
            Document {
                score: Some(0.875),
                tags: Some(json!({"n": "1"}).as_object().unwrap().clone()),
                ..Document::text("m1", "first")
            },
            Document {
                score: Some(-2.5),
                ..Document::text("m2", "second")
            },
        ],
        score: None,
    }
}

#[test]
fn documents_round_trip_through_the_wire() {
    let doc = full_document();
    let bytes = document_to_proto(doc.clone()).encode_to_vec();
    let back = document_from_proto(DocProto::decode(bytes.as_slice()).unwrap(), "d").unwrap();
    assert_eq!(back, doc);
}

#[test]
fn answers_are_written_as_docarray_reads_them() {
    let mut doc = full_document();
    // Beyond 32 bits: a float, as docarray cannot write such an integer.
    doc.tags
        .as_mut()
        .unwrap()
        .insert("big".into(), json!(1u64 << 40));
    let proto = document_to_proto(doc);
    let id = &proto.data["id"];
    assert_eq!(id.content, Some(Content::Text("q".into())));
    assert_eq!(id.docarray_type, Some(DocarrayType::Type("id".into())));
    // Matches: a list of documents, which docarray reads into `List[...]` and `DocList[...]`.
    let Some(Content::List(matches)) = &proto.data["matches"].content else {
        panic!("matches are not a list: {:?}", proto.data["matches"]);
    };
    let Some(Content::Doc(first)) = &matches.data[0].content else {
        panic!("a match is not a document");
    };
    assert_eq!(first.data["score"].content, Some(Content::Float(0.875)));
    // The embedding: float32 little-endian, its shape, and docarray's type name.
    let embedding = &proto.data["embedding"];
    assert_eq!(
        embedding.docarray_type,
        Some(DocarrayType::Type("ndarray".into()))
    );
    let Some(Content::Ndarray(array)) = &embedding.content else {
        panic!("the embedding is not an ndarray");
    };
    let dense = array.dense.as_ref().unwrap();
    assert_eq!(
        (dense.dtype.as_str(), dense.shape.as_slice()),
        ("<f4", &[3u32][..])
    );
    assert_eq!(&dense.buffer[..4], &0.25f32.to_le_bytes());
    // Tags: integers that fit 32 bits are integers, the rest floats, as docarray writes them.
    let Some(Content::Dict(tags)) = &proto.data["tags"].content else {
        panic!("tags are not a dict");
    };
    assert_eq!(tags.data["n"].content, Some(Content::Integer(3)));
    assert_eq!(
        tags.data["big"].content,
        Some(Content::Float((1u64 << 40) as f64))
    );
    assert_eq!(tags.data["none"].content, None);
    assert_eq!(
        proto.data["blob"].content,
        Some(Content::Blob(b"\x89PNG".to_vec()))
    );
}

#[test]
fn responses_carry_status_routes_and_parameters() {
    let mut envelope = Envelope::new(vec![full_document()]);
    envelope.header.request_id = "r".into();
    envelope.header.exec_endpoint = "/search".into();
    envelope.parameters = json!({"top_k": 2}).as_object().unwrap().clone();
    envelope.routes = vec![Route {
        executor: "encoder".into(),
        start_time: "2026-01-02T03:04:05.123456Z".into(),
        end_time: "2026-01-02T03:04:06Z".into(),
    }];
    let answer =
        DataRequestProto::decode(response_to_proto(envelope).encode_to_vec().as_slice()).unwrap();
    let header = answer.header.unwrap();
    assert_eq!(header.request_id, "r");
    assert_eq!(header.exec_endpoint.as_deref(), Some("/search"));
    assert_eq!(header.status.unwrap().code, StatusCode::Success as i32);
    let route = &answer.routes[0];
    assert_eq!(route.executor, "encoder");
    let start = route.start_time.unwrap();
    assert_eq!((start.seconds, start.nanos), (1_767_323_045, 123_456_000));
    let top_k = &answer.parameters.unwrap().fields["top_k"];
    assert_eq!(top_k.kind, Some(prost_types::value::Kind::NumberValue(2.0)));
    let Some(data_content_proto::Documents::Docs(docs)) = answer.data.unwrap().documents else {
        panic!("no documents");
    };
    assert_eq!(docs.docs.len(), 1);
}

#[test]
fn errors_follow_jinas_header_convention() {
    let header = Header {
        request_id: "r".into(),
        exec_endpoint: "/nope".into(),
        target_executor: None,
    };
    let answer = error_to_proto(header, &ApiError::UnknownEndpoint("/nope".into()));
    let status = answer.header.unwrap().status.unwrap();
    assert_eq!(status.code, StatusCode::Error as i32);
    assert!(
        status.description.contains("unknown_endpoint"),
        "{status:?}"
    );
    let exception = status.exception.unwrap();
    assert_eq!(exception.name, "unknown_endpoint");
    assert!(exception.args[0].contains("/nope"));
    let partial = error_to_proto(
        Header::default(),
        &ApiError::PartialWrite {
            message: "shard 1 down".into(),
            not_written: vec!["a".into(), "b".into()],
        },
    );
    let args = partial
        .header
        .unwrap()
        .status
        .unwrap()
        .exception
        .unwrap()
        .args;
    assert_eq!(args[1], "not_written: a,b");
}

fn request(endpoint: &str, docs: Vec<DocProto>) -> DataRequestProto {
    DataRequestProto {
        header: Some(HeaderProto {
            request_id: "r".into(),
            exec_endpoint: Some(endpoint.into()),
            ..HeaderProto::default()
        }),
        parameters: None,
        routes: Vec::new(),
        data: Some(DataContentProto {
            documents: Some(data_content_proto::Documents::Docs(DocListProto { docs })),
        }),
    }
}

fn with_field(name: &str, content: Content) -> DocProto {
    let mut doc = document_to_proto(Document::text("d", "x"));
    doc.data.insert(name.into(), node(content));
    doc
}

#[test]
fn serialized_documents_and_unknown_endpoints() {
    let list = DocListProto {
        docs: vec![document_to_proto(Document::text("a", "alpha"))],
    };
    let mut req = request("index", Vec::new());
    req.data = Some(DataContentProto {
        documents: Some(data_content_proto::Documents::DocsBytes(
            list.encode_to_vec(),
        )),
    });
    let (endpoint, envelope) = request_from_proto(req).unwrap();
    assert_eq!(endpoint, Endpoint::Index);
    assert_eq!(envelope.data[0].text.as_deref(), Some("alpha"));

    let (header, error) = *request_from_proto(request("/nope", Vec::new())).unwrap_err();
    assert_eq!(header.request_id, "r");
    assert_eq!(error.kind(), "unknown_endpoint");
    let (_, error) = *request_from_proto(DataRequestProto::default()).unwrap_err();
    assert_eq!(error.kind(), "unknown_endpoint");
}

#[test]
fn bad_documents_are_refused_with_the_field_named() {
    let nan = NdArrayProto {
        dense: Some(DenseNdArrayProto {
            buffer: f32::NAN.to_le_bytes().to_vec(),
            shape: vec![1],
            dtype: "<f4".into(),
        }),
        parameters: None,
    };
    let short = NdArrayProto {
        dense: Some(DenseNdArrayProto {
            buffer: vec![0; 6],
            shape: vec![2],
            dtype: "<f4".into(),
        }),
        parameters: None,
    };
    let big_endian = NdArrayProto {
        dense: Some(DenseNdArrayProto {
            buffer: vec![0; 4],
            shape: vec![1],
            dtype: ">f4".into(),
        }),
        parameters: None,
    };
    let cases = [
        (
            with_field("embedding", Content::Ndarray(nan)),
            "data[0].embedding",
        ),
        (
            with_field("embedding", Content::Ndarray(short)),
            "does not match",
        ),
        (
            with_field("embedding", Content::Ndarray(big_endian)),
            "not supported",
        ),
        (
            with_field("tags", Content::Text("x".into())),
            "data[0].tags must be a dict",
        ),
        (
            with_field("text", Content::Integer(1)),
            "data[0].text must be a string",
        ),
        (
            with_field("score", Content::Float(f64::INFINITY)),
            "data[0].score",
        ),
        (
            with_field(
                "matches",
                Content::List(ListOfAnyProto {
                    data: vec![node(Content::Integer(1))],
                }),
            ),
            "data[0].matches must be a list of documents",
        ),
    ];
    for (doc, want) in cases {
        let (_, error) = *request_from_proto(request("/index", vec![doc])).unwrap_err();
        assert_eq!(error.kind(), "invalid_body", "{error}");
        assert!(error.to_string().contains(want), "{error} lacks {want:?}");
    }
}

#[test]
fn integer_arrays_and_lists_are_embeddings_too() {
    let ints = NdArrayProto {
        dense: Some(DenseNdArrayProto {
            buffer: [-2i16, 7].iter().flat_map(|x| x.to_le_bytes()).collect(),
            shape: vec![1, 2],
            dtype: "<i2".into(),
        }),
        parameters: None,
    };
    let doc = with_field("embedding", Content::Ndarray(ints));
    let read = document_from_proto(doc, "d").unwrap();
    assert_eq!(read.embedding.as_deref(), Some(&[-2.0f32, 7.0][..]));
    let list = ListOfAnyProto {
        data: vec![node(Content::Float(0.5)), node(Content::Integer(2))],
    };
    let read = document_from_proto(with_field("embedding", Content::List(list)), "d").unwrap();
    assert_eq!(read.embedding.as_deref(), Some(&[0.5f32, 2.0][..]));
}
