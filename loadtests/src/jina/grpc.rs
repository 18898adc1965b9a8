//! The gRPC side of the comparison: single-document searches sent as Jina's client sends them,
//! one `jina.JinaSingleDataRequestRPC/process_single_data` call each (what
//! `Client.post(..., stream=False)` uses), to flowmesh's gateway (`--grpc-listen`) or to Jina's
//! own gRPC gateway. The messages are flowmesh's wire types of Jina's protocol
//! ([`flowmesh_gateway::grpc::proto`]); each answer is checked like an HTTP one: status
//! `SUCCESS` and exactly `top_k` matches per query.

use std::sync::Arc;

use anyhow::Context as _;
use flowmesh_gateway::grpc::proto::{
    data_content_proto::Documents, node_proto::Content, DataContentProto, DataRequestProto,
    DocListProto, DocProto, HeaderProto, NodeProto, StatusCode,
};
use prost::Message as _;
use tonic::transport::{Channel, Endpoint};
use tonic_prost::ProstCodec;

use crate::load::{self, Done, Failure, LoadConfig, Measured};

/// The method every request calls.
const SINGLE: &str = "/jina.JinaSingleDataRequestRPC/process_single_data";

/// Channels to a gRPC gateway, one per concurrent client: request `i` goes over channel
/// `i % n` (HTTP/2 multiplexes the rare overlap).
#[derive(Clone)]
pub(crate) struct Clients {
    channels: Arc<Vec<Channel>>,
}

impl Clients {
    /// `n` channels to `url` (`grpc://HOST:PORT`), connected now.
    pub(crate) async fn connect(url: &str, n: usize) -> anyhow::Result<Self> {
        let http = match url.strip_prefix("grpc://") {
            Some(rest) => format!("http://{rest}"),
            None => anyhow::bail!("not a plain gRPC address: {url}"),
        };
        let mut channels = Vec::with_capacity(n.max(1));
        for _ in 0..n.max(1) {
            let channel = Endpoint::from_shared(http.clone())?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("cannot connect to {url}"))?;
            channels.push(channel);
        }
        Ok(Self {
            channels: Arc::new(channels),
        })
    }

    fn channel(&self, i: usize) -> Channel {
        self.channels[i % self.channels.len()].clone()
    }
}

/// A text field of a document.
fn text_node(text: &str) -> NodeProto {
    NodeProto {
        content: Some(Content::Text(text.to_owned())),
        docarray_type: None,
    }
}

/// The data request of search `i`: one document `q-I` of `text`, `top_k` asked (as a number,
/// as Jina's client sends it).
pub(crate) fn search_request(i: usize, text: &str, top_k: usize) -> DataRequestProto {
    let mut doc = DocProto::default();
    doc.data.insert("id".into(), text_node(&format!("q-{i}")));
    doc.data.insert("text".into(), text_node(text));
    let mut parameters = prost_types::Struct::default();
    parameters.fields.insert(
        "top_k".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(top_k as f64)),
        },
    );
    DataRequestProto {
        header: Some(HeaderProto {
            request_id: format!("bench-{i}"),
            exec_endpoint: Some("/search".into()),
            ..HeaderProto::default()
        }),
        parameters: Some(parameters),
        routes: Vec::new(),
        data: Some(DataContentProto {
            documents: Some(Documents::Docs(DocListProto { docs: vec![doc] })),
        }),
    }
}

/// How many documents a `matches` field holds (a `DocList` or a list of documents).
fn count_matches(doc: &DocProto) -> usize {
    match doc.data.get("matches").and_then(|n| n.content.as_ref()) {
        Some(Content::DocArray(list)) => list.docs.len(),
        Some(Content::List(list)) => list.data.len(),
        _ => 0,
    }
}

/// An answer must have status `SUCCESS`, documents, and exactly `top_k` matches each.
pub(crate) fn check_answer(answer: DataRequestProto, top_k: usize) -> Result<(), Failure> {
    let status = answer.header.as_ref().and_then(|h| h.status.as_ref());
    if let Some(s) = status.filter(|s| s.code != StatusCode::Success as i32) {
        let name = s.exception.as_ref().map_or("", |e| e.name.as_str());
        return Err(Failure::new(
            "grpc_error",
            format!("status {} {name}: {}", s.code, s.description),
        ));
    }
    let docs = match answer.data.and_then(|d| d.documents) {
        Some(Documents::Docs(list)) => list.docs,
        Some(Documents::DocsBytes(bytes)) => {
            DocListProto::decode(bytes.as_slice())
                .map_err(|e| Failure::new("bad_proto", e.to_string()))?
                .docs
        }
        None => Vec::new(),
    };
    if docs.is_empty() {
        return Err(Failure::new("bad_proto", "no documents in the answer"));
    }
    for d in &docs {
        let n = count_matches(d);
        if n != top_k {
            return Err(Failure::new(
                "wrong_matches",
                format!("{n} matches instead of {top_k}"),
            ));
        }
    }
    Ok(())
}

/// One `process_single_data` call over `channel`; its answer.
async fn call(channel: Channel, request: DataRequestProto) -> Result<DataRequestProto, Failure> {
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| Failure::new("connect", e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(SINGLE);
    let codec = ProstCodec::<DataRequestProto, DataRequestProto>::default();
    client
        .unary(tonic::Request::new(request), path, codec)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| Failure::new(&format!("grpc_{:?}", s.code()), s.message().to_owned()))
}

/// Single-document searches over gRPC under `config`, query `i` of text `query(i)`, each answer
/// checked to hold `top_k` matches (the gRPC twin of [`crate::short::search`]).
pub(crate) async fn search(
    clients: &Clients,
    config: &LoadConfig,
    top_k: usize,
    query: fn(usize) -> String,
) -> Measured {
    let clients = clients.clone();
    load::run(config, move |i| {
        let channel = clients.channel(i);
        async move {
            let answer = call(channel, search_request(i, &query(i), top_k)).await?;
            check_answer(answer, top_k)?;
            Ok(Done::documents(1))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(matches: usize, status: StatusCode) -> DataRequestProto {
        let mut request = search_request(3, "a query", 2);
        let list = DocListProto {
            docs: (0..matches).map(|_| DocProto::default()).collect(),
        };
        if let Some(Documents::Docs(docs)) =
            request.data.as_mut().and_then(|d| d.documents.as_mut())
        {
            docs.docs[0].data.insert(
                "matches".into(),
                NodeProto {
                    content: Some(Content::DocArray(list)),
                    docarray_type: None,
                },
            );
        }
        if let Some(h) = request.header.as_mut() {
            h.status = Some(flowmesh_gateway::grpc::proto::StatusProto {
                code: status as i32,
                description: String::new(),
                exception: None,
            });
        }
        request
    }

    #[test]
    fn requests_name_the_endpoint_and_hold_the_query() {
        let r = search_request(7, "rust search", 5);
        let header = r.header.clone().unwrap_or_default();
        assert_eq!(header.exec_endpoint.as_deref(), Some("/search"));
        let Some(Documents::Docs(list)) = r.data.and_then(|d| d.documents) else {
            panic!("no documents");
        };
        assert_eq!(list.docs.len(), 1);
        let text = list.docs[0]
            .data
            .get("text")
            .and_then(|n| n.content.clone());
        assert_eq!(text, Some(Content::Text("rust search".into())));
        let top_k = r.parameters.and_then(|p| p.fields.get("top_k").cloned());
        assert_eq!(
            top_k.and_then(|v| v.kind),
            Some(prost_types::value::Kind::NumberValue(5.0))
        );
    }

    #[test]
    fn answers_are_checked_for_status_and_matches() {
        assert!(check_answer(answer(2, StatusCode::Success), 2).is_ok());
        assert_eq!(
            check_answer(answer(1, StatusCode::Success), 2).map_err(|f| f.kind),
            Err("wrong_matches".into())
        );
        assert_eq!(
            check_answer(answer(2, StatusCode::Error), 2).map_err(|f| f.kind),
            Err("grpc_error".into())
        );
        let mut bytes = answer(2, StatusCode::Success);
        if let Some(d) = bytes.data.as_mut() {
            if let Some(Documents::Docs(list)) = d.documents.take() {
                d.documents = Some(Documents::DocsBytes(list.encode_to_vec()));
            }
        }
        assert!(
            check_answer(bytes, 2).is_ok(),
            "documents may come serialized"
        );
    }
}
