//! JSON and MessagePack encodings of the envelope, negotiated by `Content-Type` and `Accept`.
//!
//! People and Swagger UI speak JSON. Between services the gateway sends MessagePack with
//! embeddings as raw f32 bytes (see [`crate::api`]), because decoding floats from text costs
//! more than the hop itself.

use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde::{Deserialize, Deserializer};

use crate::api::MapOnly;
use crate::error::ApiError;
use crate::limits::BodyTimeout;

/// The MIME type of the binary encoding.
pub const MSGPACK: &str = "application/msgpack";
/// The MIME type of JSON.
pub const JSON: &str = "application/json";

/// A wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON text.
    Json,
    /// MessagePack with named fields.
    MsgPack,
}

impl Format {
    /// The format of a body with this `Content-Type`. Anything that does not name MessagePack is
    /// read as JSON, so `curl -d` without a content type works too.
    pub fn of_content_type(headers: &HeaderMap) -> Self {
        match headers.get(header::CONTENT_TYPE) {
            Some(v) if names_msgpack(v) => Self::MsgPack,
            _ => Self::Json,
        }
    }

    /// The format a caller asked for with `Accept`; JSON unless MessagePack is named.
    pub fn of_accept(headers: &HeaderMap) -> Self {
        match headers.get(header::ACCEPT) {
            Some(v) if names_msgpack(v) => Self::MsgPack,
            _ => Self::Json,
        }
    }

    /// The `Content-Type` value of this format.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Json => JSON,
            Self::MsgPack => MSGPACK,
        }
    }

    /// Encodes a value.
    pub fn encode<T: Serialize>(self, value: &T) -> Result<Bytes, ApiError> {
        let out = match self {
            Self::Json => {
                serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))?
            }
            Self::MsgPack => {
                rmp_serde::to_vec_named(value).map_err(|e| ApiError::Internal(e.to_string()))?
            }
        };
        Ok(Bytes::from(out))
    }

    /// Decodes a value; malformed input and wrong types are [`ApiError::InvalidBody`], whose
    /// message says where in the body the problem is (`data[1].chunks[0].embedding: ...`).
    pub fn decode<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, ApiError> {
        // The fast decoder first; only a body that fails is decoded again, tracking the path.
        // Every body is an object (`MapOnly`): serde would also read a struct from an array of
        // its fields, which no body's schema allows.
        let (what, error) = match self {
            Self::Json => match serde_json::from_slice::<MapOnly<T>>(body) {
                Ok(v) => return Ok(v.0),
                Err(e) => ("JSON", e.to_string()),
            },
            Self::MsgPack => match rmp_serde::from_slice::<MapOnly<T>>(body) {
                Ok(v) => return Ok(v.0),
                Err(e) => ("MessagePack", e.to_string()),
            },
        };
        let located = match self {
            Self::Json => locate::<MapOnly<T>, _>(&mut serde_json::Deserializer::from_slice(body)),
            Self::MsgPack => {
                locate::<MapOnly<T>, _>(&mut rmp_serde::Deserializer::from_read_ref(body))
            }
        };
        let message = match located {
            Some((path, inner)) if path != "." => format!("{path}: {inner}"),
            _ => error,
        };
        Err(ApiError::InvalidBody(format!(
            "invalid {what} body: {message}"
        )))
    }
}

/// Decodes a `T` from `de` again, tracking the path: where the error is (`data[1].embedding`)
/// and what it is, or `None` when it decodes.
fn locate<'de, T: Deserialize<'de>, D: Deserializer<'de>>(de: D) -> Option<(String, String)> {
    serde_path_to_error::deserialize::<_, T>(de)
        .err()
        .map(|e| (e.path().to_string(), e.into_inner().to_string()))
}

fn names_msgpack(v: &HeaderValue) -> bool {
    v.to_str().is_ok_and(|s| s.contains("msgpack"))
}

/// An extractor that decodes the body in the format its `Content-Type` names and remembers the
/// format the caller wants back. Rejections use the mesh's JSON error body.
#[derive(Debug)]
pub struct Negotiated<T> {
    /// The decoded body.
    pub body: T,
    /// The format to answer in.
    pub reply: Format,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Negotiated<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let input = Format::of_content_type(req.headers());
        let reply = Format::of_accept(req.headers());
        let timeout = req
            .extensions()
            .get::<BodyTimeout>()
            .copied()
            .unwrap_or_default();
        let read = tokio::time::timeout(timeout.0, Bytes::from_request(req, state))
            .await
            .map_err(|_| {
                ApiError::RequestTimeout(format!(
                    "the request body did not arrive within {} s (--body-timeout-secs, FLOWMESH_BODY_TIMEOUT_SECS)",
                    timeout.0.as_secs()
                ))
            })?;
        let bytes = read.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(r.body_text())
            } else {
                ApiError::InvalidBody(r.body_text())
            }
        })?;
        Ok(Self {
            body: input.decode(&bytes)?,
            reply,
        })
    }
}

/// A response encoded in the negotiated format.
#[derive(Debug)]
pub struct Reply<T>(pub Format, pub T);

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        match self.0.encode(&self.1) {
            Ok(bytes) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(self.0.mime()),
                )],
                bytes,
            )
                .into_response(),
            Err(e) => e.into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Document, Envelope};

    fn sample() -> Envelope {
        let mut d = Document::text("a", "hi");
        d.embedding = Some(vec![0.25, -1.5, 3.0]);
        d.tags = Some(
            serde_json::json!({"k": [1, "x", null]})
                .as_object()
                .unwrap()
                .clone(),
        );
        d.matches.push(Document {
            id: "m".into(),
            score: Some(0.5),
            ..Document::default()
        });
        let mut e = Envelope::new(vec![d]);
        e.parameters.insert("top_k".into(), 3.into());
        e
    }

    #[test]
    fn both_formats_round_trip() {
        for f in [Format::Json, Format::MsgPack] {
            let e = sample();
            let back: Envelope = f.decode(&f.encode(&e).unwrap()).unwrap();
            assert_eq!(back, e, "{f:?}");
        }
    }

    #[test]
    fn msgpack_embeddings_are_raw_bytes() {
        let mut d = Document::text("a", "");
        d.embedding = Some(vec![1.0; 256]);
        let json = Format::Json.encode(&d).unwrap();
        let mp = Format::MsgPack.encode(&d).unwrap();
        // 256 floats as raw bytes: 1024 bytes plus a few of framing.
        assert!(mp.len() < 1100, "{}", mp.len());
        assert!(json.len() > mp.len());
    }

    #[test]
    fn decoding_errors_say_where_they_are() {
        let err = Format::Json
            .decode::<Envelope>(br#"{"data": [{"id": "a"}, {"id": "b", "chunks": [{"id": "c", "embedding": [1, 1e300]}]}]}"#)
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("data[1].chunks[0].embedding"), "{msg}");
        assert!(msg.contains("finite"), "{msg}");
        let mut doc = Document::text("a", "");
        doc.embedding = Some(vec![f32::NAN]);
        let packed = Format::MsgPack.encode(&Envelope::new(vec![doc])).unwrap();
        let msg = Format::MsgPack
            .decode::<Envelope>(&packed)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("data[0].embedding"), "{msg}");
    }

    #[test]
    fn wrong_types_are_invalid_body() {
        let err = Format::Json
            .decode::<Envelope>(br#"{"data": "nope"}"#)
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(err.to_string().contains("invalid type"), "{err}");
    }
}
