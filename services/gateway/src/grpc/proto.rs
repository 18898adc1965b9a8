//! The protobuf messages of Jina's gRPC protocol (package `jina`) and of docarray v2's documents
//! (package `docarray`), written with prost's derive macros rather than generated from `.proto`
//! files: no protoc (or protox) at build time. Field numbers and types are the wire contract and
//! follow Jina 3.34 and docarray 0.40 exactly; only the messages and fields the gateway reads or
//! writes are declared (an unknown field is skipped by the decoder, as protobuf wants).
//!
//! `google.protobuf.Empty` is prost's `()`; `Struct` and `Timestamp` are prost-types'.

use std::collections::BTreeMap;

use prost_types::{Struct, Timestamp};

// ----- docarray -----------------------------------------------------------------------------

/// A dense n-dimensional array: raw bytes, the shape, and numpy's dtype string (`<f4`, ...).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DenseNdArrayProto {
    /// The elements, in the byte order the dtype says, row-major.
    #[prost(bytes = "vec", tag = "1")]
    pub buffer: Vec<u8>,
    /// The dimensions.
    #[prost(uint32, repeated, tag = "2")]
    pub shape: Vec<u32>,
    /// numpy's `dtype.str`, such as `<f4`.
    #[prost(string, tag = "3")]
    pub dtype: String,
}

/// An n-dimensional array (only the dense form is used).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NdArrayProto {
    /// The dense array.
    #[prost(message, optional, tag = "1")]
    pub dense: Option<DenseNdArrayProto>,
    /// Extra parameters of the array type.
    #[prost(message, optional, tag = "2")]
    pub parameters: Option<Struct>,
}

/// One value of a document's field: a scalar, an array, a nested document or a container.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    /// The value; none for a field whose value is `None`.
    #[prost(
        oneof = "node_proto::Content",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12"
    )]
    pub content: Option<node_proto::Content>,
    /// docarray's name of the value's type where a plain one is not enough (`id`, `ndarray`).
    #[prost(oneof = "node_proto::DocarrayType", tags = "13")]
    pub docarray_type: Option<node_proto::DocarrayType>,
}

/// The oneofs of [`NodeProto`].
pub mod node_proto {
    /// What a node holds.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Content {
        /// A string.
        #[prost(string, tag = "1")]
        Text(String),
        /// A 32-bit integer.
        #[prost(int32, tag = "2")]
        Integer(i32),
        /// A double.
        #[prost(double, tag = "3")]
        Float(f64),
        /// A boolean.
        #[prost(bool, tag = "4")]
        Boolean(bool),
        /// Raw bytes.
        #[prost(bytes = "vec", tag = "5")]
        Blob(Vec<u8>),
        /// An array (embeddings, tensors).
        #[prost(message, tag = "6")]
        Ndarray(super::NdArrayProto),
        /// A nested document.
        #[prost(message, tag = "7")]
        Doc(super::DocProto),
        /// A list of documents (`DocList[...]`).
        #[prost(message, tag = "8")]
        DocArray(super::DocListProto),
        /// A Python list.
        #[prost(message, tag = "9")]
        List(super::ListOfAnyProto),
        /// A Python set.
        #[prost(message, tag = "10")]
        Set(super::ListOfAnyProto),
        /// A Python tuple.
        #[prost(message, tag = "11")]
        Tuple(super::ListOfAnyProto),
        /// A Python dict with string keys.
        #[prost(message, tag = "12")]
        Dict(super::DictOfAnyProto),
    }

    /// The docarray type name of a node.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum DocarrayType {
        /// Such as `id` or `ndarray`.
        #[prost(string, tag = "13")]
        Type(String),
    }
}

/// A document: its fields by name.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DocProto {
    /// The fields.
    #[prost(btree_map = "string, message", tag = "1")]
    pub data: BTreeMap<String, NodeProto>,
}

/// A dict of values.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DictOfAnyProto {
    /// The entries.
    #[prost(btree_map = "string, message", tag = "1")]
    pub data: BTreeMap<String, NodeProto>,
}

/// A list (or set, or tuple) of values.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListOfAnyProto {
    /// The items.
    #[prost(message, repeated, tag = "1")]
    pub data: Vec<NodeProto>,
}

/// A list of documents.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DocListProto {
    /// The documents.
    #[prost(message, repeated, tag = "1")]
    pub docs: Vec<DocProto>,
}

// ----- jina ---------------------------------------------------------------------------------

/// Whether a request succeeded, and why not.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusProto {
    /// [`StatusCode`].
    #[prost(enumeration = "StatusCode", tag = "1")]
    pub code: i32,
    /// A human-readable description.
    #[prost(string, tag = "2")]
    pub description: String,
    /// What failed.
    #[prost(message, optional, tag = "3")]
    pub exception: Option<ExceptionProto>,
}

/// The code of a [`StatusProto`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum StatusCode {
    /// It worked.
    Success = 0,
    /// It did not: see `description` and `exception`.
    Error = 1,
}

/// An error, in the shape of a Python exception.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExceptionProto {
    /// The exception's name (here: the error's kind, such as `unknown_endpoint`).
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its arguments (here: the message).
    #[prost(string, repeated, tag = "2")]
    pub args: Vec<String>,
    /// A stack trace (never sent by the gateway).
    #[prost(string, repeated, tag = "3")]
    pub stacks: Vec<String>,
    /// The executor that failed, when one did.
    #[prost(string, tag = "4")]
    pub executor: String,
}

/// The header of a data request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderProto {
    /// The request's id.
    #[prost(string, tag = "1")]
    pub request_id: String,
    /// Set on responses.
    #[prost(message, optional, tag = "2")]
    pub status: Option<StatusProto>,
    /// The endpoint to run (`/index`, `/search`, ...).
    #[prost(string, optional, tag = "3")]
    pub exec_endpoint: Option<String>,
    /// Accepted and ignored, as over HTTP.
    #[prost(string, optional, tag = "4")]
    pub target_executor: Option<String>,
    /// The client's timeout in milliseconds (the `grpc-timeout` of the call is what counts).
    #[prost(uint32, optional, tag = "5")]
    pub timeout: Option<u32>,
}

/// When an executor worked on a request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RouteProto {
    /// The executor's name.
    #[prost(string, tag = "1")]
    pub executor: String,
    /// When its first call started.
    #[prost(message, optional, tag = "2")]
    pub start_time: Option<Timestamp>,
    /// When its last call ended.
    #[prost(message, optional, tag = "3")]
    pub end_time: Option<Timestamp>,
    /// Never set by the gateway.
    #[prost(message, optional, tag = "4")]
    pub status: Option<StatusProto>,
}

/// One data request (and its response): header, parameters, routes and documents.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DataRequestProto {
    /// The header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<HeaderProto>,
    /// The parameters (`top_k`, ...).
    #[prost(message, optional, tag = "2")]
    pub parameters: Option<Struct>,
    /// On responses: which executors worked on it.
    #[prost(message, repeated, tag = "3")]
    pub routes: Vec<RouteProto>,
    /// The documents.
    #[prost(message, optional, tag = "4")]
    pub data: Option<DataContentProto>,
}

/// The documents of a data request: a message, or the same message already serialized.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DataContentProto {
    /// Which form.
    #[prost(oneof = "data_content_proto::Documents", tags = "1, 2")]
    pub documents: Option<data_content_proto::Documents>,
}

/// The oneof of [`DataContentProto`].
pub mod data_content_proto {
    /// The documents of a data request.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Documents {
        /// As a message.
        #[prost(message, tag = "1")]
        Docs(super::DocListProto),
        /// A serialized `DocListProto`.
        #[prost(bytes = "vec", tag = "2")]
        DocsBytes(Vec<u8>),
    }
}

/// The answer of endpoint discovery.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EndpointsProto {
    /// Every endpoint.
    #[prost(string, repeated, tag = "1")]
    pub endpoints: Vec<String>,
    /// The endpoints that write.
    #[prost(string, repeated, tag = "2")]
    pub write_endpoints: Vec<String>,
    /// The document schemas of each endpoint (not sent).
    #[prost(message, optional, tag = "3")]
    pub schemas: Option<Struct>,
}

/// The answer of `_status`: versions and environment.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JinaInfoProto {
    /// Names and versions.
    #[prost(btree_map = "string, string", tag = "1")]
    pub jina: BTreeMap<String, String>,
    /// Environment (empty: the gateway does not show its environment).
    #[prost(btree_map = "string, string", tag = "2")]
    pub envs: BTreeMap<String, String>,
}
