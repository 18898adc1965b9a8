//! Jina's data requests and docarray v2's documents to and from flowmesh's [`Envelope`] and
//! [`Document`].
//!
//! A `DocProto` is a map of named fields. The fields flowmesh knows are read by name: `id`,
//! `text`, `tags` (a dict), `embedding` (an ndarray or a list of numbers), `blob` / `bytes_`
//! (bytes, kept base64 as over HTTP), `uri` (and `url` when it is a `data:` URI), `parent_id`,
//! `chunks` and `matches` (a `DocList` or a list of documents) and `score`. Any other field of
//! the client's schema is not kept. Answers write the same names; `chunks` and `matches` as a
//! list of documents, which docarray reads into a `DocList[...]` and a `List[...]` field alike.

use base64::Engine as _;
use prost::Message as _;
use serde_json::{Map, Number, Value};

use flowmesh_shared::{ApiError, Document, Endpoint, Envelope, Header, Parameters, Route};

use super::proto::node_proto::{Content, DocarrayType};
use super::proto::{
    data_content_proto, DataContentProto, DataRequestProto, DenseNdArrayProto, DictOfAnyProto,
    DocListProto, DocProto, ExceptionProto, HeaderProto, ListOfAnyProto, NdArrayProto, NodeProto,
    RouteProto, StatusCode, StatusProto,
};

/// A data request, read: its endpoint and envelope, or why it cannot run (with the header to
/// answer with).
pub fn request_from_proto(
    request: DataRequestProto,
) -> Result<(Endpoint, Envelope), Box<(Header, ApiError)>> {
    let envelope = envelope_from_proto(request)?;
    let named = &envelope.header.exec_endpoint;
    let Ok(endpoint) = named.trim_start_matches('/').parse::<Endpoint>() else {
        let error = ApiError::UnknownEndpoint(named.clone());
        return Err(Box::new((envelope.header, error)));
    };
    Ok((endpoint, envelope))
}

/// The endpoint a data request names, as the client wrote it.
pub fn endpoint_named(request: &DataRequestProto) -> &str {
    request
        .header
        .as_ref()
        .and_then(|h| h.exec_endpoint.as_deref())
        .unwrap_or_default()
}

/// A data request's envelope, whatever its endpoint, or why it cannot be read.
pub fn envelope_from_proto(request: DataRequestProto) -> Result<Envelope, Box<(Header, ApiError)>> {
    let header = header_from_proto(request.header.unwrap_or_default());
    let parameters = match request.parameters.map(struct_to_json).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => return Err(Box::new((header, e))),
    };
    let docs = match request.data.and_then(|d| d.documents) {
        None => Vec::new(),
        Some(data_content_proto::Documents::Docs(list)) => list.docs,
        Some(data_content_proto::Documents::DocsBytes(bytes)) => {
            match DocListProto::decode(bytes.as_slice()) {
                Ok(list) => list.docs,
                Err(e) => {
                    let e = ApiError::InvalidBody(format!("data.docs_bytes is not a DocList: {e}"));
                    return Err(Box::new((header, e)));
                }
            }
        }
    };
    let mut data = Vec::with_capacity(docs.len());
    for (i, doc) in docs.into_iter().enumerate() {
        match document_from_proto(doc, &format!("data[{i}]")) {
            Ok(d) => data.push(d),
            Err(e) => return Err(Box::new((header, e))),
        }
    }
    Ok(Envelope {
        header,
        parameters,
        data,
        routes: Vec::new(),
    })
}

fn header_from_proto(header: HeaderProto) -> Header {
    Header {
        request_id: header.request_id,
        exec_endpoint: header.exec_endpoint.unwrap_or_default(),
        target_executor: header.target_executor,
    }
}

fn header_to_proto(header: Header, status: StatusProto) -> HeaderProto {
    HeaderProto {
        request_id: header.request_id,
        status: Some(status),
        exec_endpoint: Some(header.exec_endpoint).filter(|e| !e.is_empty()),
        target_executor: header.target_executor,
        timeout: None,
    }
}

/// The answer to a data request that ran: the Flow's envelope, with status `SUCCESS`.
pub fn response_to_proto(envelope: Envelope) -> DataRequestProto {
    let Envelope {
        header,
        parameters,
        data,
        routes,
    } = envelope;
    let status = StatusProto {
        code: StatusCode::Success as i32,
        ..StatusProto::default()
    };
    DataRequestProto {
        header: Some(header_to_proto(header, status)),
        parameters: Some(json_to_struct(&parameters)),
        routes: routes.iter().map(route_to_proto).collect(),
        data: Some(DataContentProto {
            documents: Some(data_content_proto::Documents::Docs(DocListProto {
                docs: data.into_iter().map(document_to_proto).collect(),
            })),
        }),
    }
}

/// The answer to a data request that failed: no documents, and Jina's error convention in the
/// header (`status.code` `ERROR`; the error's kind as the exception's name, its message as
/// the argument, and the executor that failed where one did), which Jina's client raises as
/// `BadServer` with the header in its message.
pub fn error_to_proto(header: Header, error: &ApiError) -> DataRequestProto {
    let body = error.body();
    let executor = match error {
        ApiError::Rejected { executor, .. }
        | ApiError::Unavailable { executor, .. }
        | ApiError::Timeout { executor, .. } => executor.clone(),
        _ => String::new(),
    };
    let mut args = vec![body.error.clone()];
    if let Some(ids) = &body.not_written {
        args.push(format!("not_written: {}", ids.join(",")));
    }
    let status = StatusProto {
        code: StatusCode::Error as i32,
        description: format!("{}: {}", body.kind, body.error),
        exception: Some(ExceptionProto {
            name: body.kind,
            args,
            stacks: Vec::new(),
            executor,
        }),
    };
    DataRequestProto {
        header: Some(header_to_proto(header, status)),
        parameters: None,
        routes: Vec::new(),
        data: Some(DataContentProto {
            documents: Some(data_content_proto::Documents::Docs(DocListProto::default())),
        }),
    }
}

fn route_to_proto(route: &Route) -> RouteProto {
    let time = |t: &str| {
        humantime::parse_rfc3339_weak(t)
            .ok()
            .map(prost_types::Timestamp::from)
    };
    RouteProto {
        executor: route.executor.clone(),
        start_time: time(&route.start_time),
        end_time: time(&route.end_time),
        status: None,
    }
}

// ----- documents ----------------------------------------------------------------------------

/// Reads a document; `at` names it in errors (`data[3]`, `data[3].matches[0]`).
pub fn document_from_proto(doc: DocProto, at: &str) -> Result<Document, ApiError> {
    let mut out = Document::default();
    for (name, node) in doc.data {
        let field = || format!("{at}.{name}");
        match name.as_str() {
            "id" => out.id = text(node, &field())?.unwrap_or_default(),
            "text" => out.text = text(node, &field())?,
            "parent_id" => out.parent_id = text(node, &field())?,
            "uri" => out.uri = text(node, &field())?,
            // docarray's own documents name their URL `url`; only a `data:` URI is content.
            "url" => {
                if let Some(url) = text(node, &field())?.filter(|u| u.starts_with("data:")) {
                    out.uri.get_or_insert(url);
                }
            }
            "blob" | "bytes_" => {
                let blob = match node.content {
                    None => None,
                    Some(Content::Blob(bytes)) => {
                        Some(base64::engine::general_purpose::STANDARD.encode(bytes))
                    }
                    Some(Content::Text(b64)) => Some(b64),
                    Some(_) => return Err(wrong_type(&field(), "bytes")),
                };
                if blob.is_some() {
                    out.blob = blob;
                }
            }
            "tags" => {
                out.tags = match node.content {
                    None => None,
                    Some(Content::Dict(dict)) => Some(dict_to_json(dict, &field())?),
                    Some(_) => return Err(wrong_type(&field(), "a dict")),
                }
            }
            "embedding" => out.embedding = vector(node, &field())?,
            "chunks" => out.chunks = documents(node, &field())?,
            "matches" => out.matches = documents(node, &field())?,
            "score" => {
                out.score = match node.content {
                    None => None,
                    Some(Content::Float(f)) => Some(finite_f32(f, &field())?),
                    Some(Content::Integer(i)) => Some(finite_f32(f64::from(i), &field())?),
                    Some(_) => return Err(wrong_type(&field(), "a number")),
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Writes a document: see the module's documentation for the field names.
pub fn document_to_proto(doc: Document) -> DocProto {
    let Document {
        id,
        text,
        blob,
        uri,
        tags,
        embedding,
        parent_id,
        chunks,
        matches,
        score,
    } = doc;
    let mut data = std::collections::BTreeMap::new();
    data.insert(
        "id".to_owned(),
        NodeProto {
            content: Some(Content::Text(id)),
            docarray_type: Some(DocarrayType::Type("id".to_owned())),
        },
    );
    let mut put = |name: &str, content: Content| {
        data.insert(name.to_owned(), node(content));
    };
    if let Some(text) = text {
        put("text", Content::Text(text));
    }
    if let Some(blob) = blob {
        // Sent as the bytes it encodes; kept as text if it is not base64 after all.
        match base64::engine::general_purpose::STANDARD.decode(&blob) {
            Ok(bytes) => put("blob", Content::Blob(bytes)),
            Err(_) => put("blob", Content::Text(blob)),
        }
    }
    if let Some(uri) = uri {
        put("uri", Content::Text(uri));
    }
    if let Some(tags) = tags {
        put("tags", Content::Dict(json_to_dict(&tags)));
    }
    if let Some(parent_id) = parent_id {
        put("parent_id", Content::Text(parent_id));
    }
    if let Some(score) = score {
        put("score", Content::Float(f64::from(score)));
    }
    for (name, docs) in [("chunks", chunks), ("matches", matches)] {
        if !docs.is_empty() {
            let items = docs
                .into_iter()
                .map(|d| node(Content::Doc(document_to_proto(d))))
                .collect();
            put(name, Content::List(ListOfAnyProto { data: items }));
        }
    }
    if let Some(embedding) = embedding {
        let mut buffer = Vec::with_capacity(embedding.len() * 4);
        for x in &embedding {
            buffer.extend_from_slice(&x.to_le_bytes());
        }
        let array = NdArrayProto {
            dense: Some(DenseNdArrayProto {
                buffer,
                shape: vec![u32::try_from(embedding.len()).unwrap_or(u32::MAX)],
                dtype: "<f4".to_owned(),
            }),
            parameters: None,
        };
        data.insert(
            "embedding".to_owned(),
            NodeProto {
                content: Some(Content::Ndarray(array)),
                docarray_type: Some(DocarrayType::Type("ndarray".to_owned())),
            },
        );
    }
    DocProto { data }
}

fn node(content: Content) -> NodeProto {
    NodeProto {
        content: Some(content),
        docarray_type: None,
    }
}

fn wrong_type(field: &str, want: &str) -> ApiError {
    ApiError::InvalidBody(format!("{field} must be {want} (or None)"))
}

fn text(node: NodeProto, field: &str) -> Result<Option<String>, ApiError> {
    match node.content {
        None => Ok(None),
        Some(Content::Text(s)) => Ok(Some(s)),
        Some(_) => Err(wrong_type(field, "a string")),
    }
}

fn finite_f32(x: f64, field: &str) -> Result<f32, ApiError> {
    #[allow(clippy::cast_possible_truncation)] // checked: finite and within f32's range
    let y = x as f32;
    if x.is_finite() && y.is_finite() {
        Ok(y)
    } else {
        Err(ApiError::InvalidBody(format!(
            "{field} holds {x}: only finite numbers within f32's range are accepted"
        )))
    }
}

/// The documents of a `DocList` field or of a list of documents.
fn documents(node: NodeProto, field: &str) -> Result<Vec<Document>, ApiError> {
    let docs: Vec<DocProto> = match node.content {
        None => return Ok(Vec::new()),
        Some(Content::DocArray(list)) => list.docs,
        Some(Content::List(list) | Content::Tuple(list)) => {
            let mut docs = Vec::with_capacity(list.data.len());
            for item in list.data {
                match item.content {
                    Some(Content::Doc(d)) => docs.push(d),
                    _ => return Err(wrong_type(field, "a list of documents")),
                }
            }
            docs
        }
        Some(_) => return Err(wrong_type(field, "a list of documents")),
    };
    docs.into_iter()
        .enumerate()
        .map(|(i, d)| document_from_proto(d, &format!("{field}[{i}]")))
        .collect()
}

/// An embedding: a dense ndarray of floats or integers (flattened), or a list of numbers.
fn vector(node: NodeProto, field: &str) -> Result<Option<Vec<f32>>, ApiError> {
    let values = match node.content {
        None => return Ok(None),
        Some(Content::Ndarray(array)) => {
            let dense = array.dense.unwrap_or_default();
            ndarray_values(&dense, field)?
        }
        Some(Content::List(list) | Content::Tuple(list)) => {
            let mut values = Vec::with_capacity(list.data.len());
            for item in list.data {
                match item.content {
                    Some(Content::Float(f)) => values.push(f),
                    Some(Content::Integer(i)) => values.push(f64::from(i)),
                    _ => return Err(wrong_type(field, "an ndarray or a list of numbers")),
                }
            }
            values
        }
        Some(_) => return Err(wrong_type(field, "an ndarray or a list of numbers")),
    };
    let vector = values
        .into_iter()
        .map(|x| finite_f32(x, field))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(vector))
}

/// The elements of a dense array as f64: little-endian (or byte-order-free) floats of 4 or 8
/// bytes and integers of 1 to 8 bytes, whose count matches the shape.
fn ndarray_values(dense: &DenseNdArrayProto, field: &str) -> Result<Vec<f64>, ApiError> {
    let dtype = dense.dtype.trim_start_matches("torch.");
    // numpy's `dtype.str` (`<f4`), or a name (`float32`).
    let (kind, size) = match dtype {
        "<f4" | "=f4" | "float32" => ('f', 4),
        "<f8" | "=f8" | "float64" => ('f', 8),
        "|i1" | "int8" => ('i', 1),
        "|u1" | "uint8" => ('u', 1),
        "<i2" | "=i2" | "int16" => ('i', 2),
        "<i4" | "=i4" | "int32" => ('i', 4),
        "<i8" | "=i8" | "int64" => ('i', 8),
        other => {
            return Err(ApiError::InvalidBody(format!(
                "{field}: ndarray dtype {other:?} is not supported (send float32, float64 or a \
                 little-endian integer type)"
            )))
        }
    };
    let buffer = &dense.buffer;
    let count = dense
        .shape
        .iter()
        .try_fold(1usize, |n, d| n.checked_mul(*d as usize));
    if !buffer.len().is_multiple_of(size) || count != Some(buffer.len() / size) {
        return Err(ApiError::InvalidBody(format!(
            "{field}: ndarray of shape {:?} and dtype {dtype} does not match its {} bytes",
            dense.shape,
            buffer.len()
        )));
    }
    let mut out = Vec::with_capacity(buffer.len() / size);
    for chunk in buffer.chunks_exact(size) {
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(chunk);
        #[allow(clippy::cast_precision_loss)] // an embedding's integers are small
        let x = match (kind, size) {
            ('f', 4) => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ('f', _) => f64::from_le_bytes(b),
            ('u', _) => f64::from(b[0]),
            // Sign-extend the little-endian integer of `size` bytes.
            _ => {
                let shift = 64 - 8 * size as u32;
                ((i64::from_le_bytes(b) << shift) >> shift) as f64
            }
        };
        out.push(x);
    }
    Ok(out)
}

// ----- values -------------------------------------------------------------------------------

fn dict_to_json(dict: DictOfAnyProto, field: &str) -> Result<Map<String, Value>, ApiError> {
    dict.data
        .into_iter()
        .map(|(k, v)| {
            let at = format!("{field}.{k}");
            node_to_json(v, &at).map(|v| (k, v))
        })
        .collect()
}

/// A value of `tags` as JSON: scalars, containers and nested documents (as objects); bytes as
/// base64 and arrays as lists of numbers.
fn node_to_json(node: NodeProto, field: &str) -> Result<Value, ApiError> {
    Ok(match node.content {
        None => Value::Null,
        Some(Content::Text(s)) => Value::String(s),
        Some(Content::Integer(i)) => Value::from(i),
        Some(Content::Float(f)) => Number::from_f64(f).map(Value::Number).ok_or_else(|| {
            ApiError::InvalidBody(format!("{field} holds {f}: only finite numbers"))
        })?,
        Some(Content::Boolean(b)) => Value::Bool(b),
        Some(Content::Blob(bytes)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        Some(Content::Ndarray(array)) => {
            let values = ndarray_values(&array.dense.unwrap_or_default(), field)?;
            let mut items = Vec::with_capacity(values.len());
            for x in values {
                items.push(Number::from_f64(x).map(Value::Number).ok_or_else(|| {
                    ApiError::InvalidBody(format!("{field} holds {x}: only finite numbers"))
                })?);
            }
            Value::Array(items)
        }
        Some(Content::Doc(doc)) => {
            Value::Object(dict_to_json(DictOfAnyProto { data: doc.data }, field)?)
        }
        Some(Content::DocArray(list)) => Value::Array(
            list.docs
                .into_iter()
                .enumerate()
                .map(|(i, d)| {
                    let at = format!("{field}[{i}]");
                    dict_to_json(DictOfAnyProto { data: d.data }, &at).map(Value::Object)
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(Content::List(list) | Content::Set(list) | Content::Tuple(list)) => Value::Array(
            list.data
                .into_iter()
                .enumerate()
                .map(|(i, v)| node_to_json(v, &format!("{field}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Some(Content::Dict(dict)) => Value::Object(dict_to_json(dict, field)?),
    })
}

fn json_to_dict(map: &Map<String, Value>) -> DictOfAnyProto {
    DictOfAnyProto {
        data: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_node(v)))
            .collect(),
    }
}

/// A JSON value as docarray writes a Python value: integers that fit 32 bits as `integer`,
/// other numbers as `float`, arrays as lists and objects as dicts.
fn json_to_node(value: &Value) -> NodeProto {
    let content = match value {
        Value::Null => return NodeProto::default(),
        Value::Bool(b) => Content::Boolean(*b),
        Value::Number(n) => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
            Some(i) => Content::Integer(i),
            None => Content::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Content::Text(s.clone()),
        Value::Array(items) => Content::List(ListOfAnyProto {
            data: items.iter().map(json_to_node).collect(),
        }),
        Value::Object(map) => Content::Dict(json_to_dict(map)),
    };
    node(content)
}

/// `parameters` as JSON. A number that is not finite is refused, as JSON cannot hold it.
fn struct_to_json(s: prost_types::Struct) -> Result<Parameters, ApiError> {
    s.fields
        .into_iter()
        .map(|(k, v)| {
            let at = format!("parameters.{k}");
            proto_value_to_json(v, &at).map(|v| (k, v))
        })
        .collect()
}

fn proto_value_to_json(value: prost_types::Value, at: &str) -> Result<Value, ApiError> {
    use prost_types::value::Kind;
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(f)) => Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| ApiError::InvalidBody(format!("{at} holds {f}: only finite numbers")))?,
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s)?),
        Some(Kind::ListValue(list)) => Value::Array(
            list.values
                .into_iter()
                .enumerate()
                .map(|(i, v)| proto_value_to_json(v, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn json_to_struct(map: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_proto_value(v)))
            .collect(),
    }
}

fn json_to_proto_value(value: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_proto_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(json_to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests;
