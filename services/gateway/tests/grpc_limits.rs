//! The gateway's gRPC listener under the HTTP API's limits: its data requests take their permits
//! from the same `--max-concurrent-requests` budget as HTTP's work routes, and `--max-connections`
//! bounds its connections (the next one waits until one closes). Driven with flowmesh's own wire
//! types over a tonic channel, against the real executors.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::sync::Arc;
use std::time::Duration;

use flowmesh_gateway::grpc::proto::{
    data_content_proto::Documents, node_proto::Content, DataContentProto, DataRequestProto,
    DocListProto, DocProto, HeaderProto, NodeProto, StatusCode,
};
use flowmesh_gateway::{router, AppState, Flow, FlowSpec};
use flowmesh_shared::client::ExecutorClient;
use flowmesh_shared::testing::post;
use flowmesh_shared::Limits;
use support::HashExecutors;
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::{Channel, Endpoint};

/// A search of one document of `text`, as Jina's client sends it.
fn search(text: &str) -> DataRequestProto {
    let mut doc = DocProto::default();
    doc.data.insert(
        "text".into(),
        NodeProto {
            content: Some(Content::Text(text.into())),
            docarray_type: None,
        },
    );
    DataRequestProto {
        header: Some(HeaderProto {
            exec_endpoint: Some("/search".into()),
            ..HeaderProto::default()
        }),
        data: Some(DataContentProto {
            documents: Some(Documents::Docs(DocListProto { docs: vec![doc] })),
        }),
        ..DataRequestProto::default()
    }
}

/// One `process_single_data` call; its answer, or the call's status.
async fn call(channel: Channel, request: DataRequestProto) -> Result<DataRequestProto, String> {
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.map_err(|e| e.to_string())?;
    let path =
        http::uri::PathAndQuery::from_static("/jina.JinaSingleDataRequestRPC/process_single_data");
    let codec = tonic_prost::ProstCodec::<DataRequestProto, DataRequestProto>::default();
    client
        .unary(tonic::Request::new(request), path, codec)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// The answer's status code and the exception's name (its error kind).
fn status(answer: &DataRequestProto) -> (i32, String) {
    let status = answer.header.as_ref().and_then(|h| h.status.clone());
    let code = status.as_ref().map_or(0, |s| s.code);
    let kind = status
        .and_then(|s| s.exception)
        .map(|e| e.name)
        .unwrap_or_default();
    (code, kind)
}

/// The real executors, a gateway state over them with `limits`, and its gRPC listener; the
/// state and the listener's address.
async fn start(limits: Limits) -> (HashExecutors, AppState, std::net::SocketAddr) {
    let executors = HashExecutors::start().await;
    let spec = FlowSpec::from_yaml(&executors.flow_yaml()).unwrap();
    let flow = Arc::new(Flow::build(spec, &ExecutorClient::new()).unwrap());
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        while !flow.is_ready() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "the Flow did not become ready");
    let state = AppState::new(flow, limits);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(flowmesh_gateway::grpc::serve(
        listener,
        state.clone(),
        None,
        std::future::pending(),
    ));
    (executors, state, addr)
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

/// With every permit of `--max-concurrent-requests` taken, gRPC answers `overloaded` and HTTP 429:
/// one budget. Once they are given back, both answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_http_share_the_requests_in_flight() {
    let mut limits = Limits::with_max_body_bytes(1 << 20);
    limits.max_concurrent_requests = 2;
    let (_executors, state, addr) = start(limits).await;
    let http = router(state.clone());
    let grpc = channel(addr).await;

    let answer = call(grpc.clone(), search("a free gateway")).await.unwrap();
    assert_eq!(status(&answer), (StatusCode::Success as i32, String::new()));

    let held = Arc::clone(&state.in_flight)
        .try_acquire_many_owned(2)
        .unwrap();
    let answer = call(grpc.clone(), search("a busy gateway")).await.unwrap();
    assert_eq!(
        status(&answer),
        (StatusCode::Error as i32, "overloaded".to_owned()),
        "gRPC takes its permits from the HTTP API's budget"
    );
    let body = serde_json::json!({"data": [{"text": "a busy gateway"}]});
    let (code, out) = post(&http, "search", &body).await;
    assert_eq!(code, 429, "{out}");

    drop(held);
    let answer = call(grpc, search("a free gateway again")).await.unwrap();
    assert_eq!(status(&answer), (StatusCode::Success as i32, String::new()));
    let (code, out) = post(&http, "search", &body).await;
    assert_eq!(code, 200, "{out}");
}

/// With `--max-connections 1`, a second connection is not served while the first is open, and
/// is once it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connections_are_bounded() {
    let mut limits = Limits::with_max_body_bytes(1 << 20);
    limits.max_connections = 1;
    let (_executors, _state, addr) = start(limits).await;

    let first = TcpStream::connect(addr).await.unwrap();
    // The listener accepts the first connection (its permit is taken) before the second comes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = call(channel(addr).await, search("waiting"));
    let waited = tokio::time::timeout(Duration::from_secs(1), second).await;
    assert!(
        waited.is_err(),
        "a second connection was served while the first held the only permit: {waited:?}"
    );

    drop(first);
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        call(channel(addr).await, search("served")),
    )
    .await
    .expect("served once the first connection closed")
    .unwrap();
    assert_eq!(status(&answer), (StatusCode::Success as i32, String::new()));
}
