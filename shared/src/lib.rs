//! flowmesh's shared crate: what every service of the mesh speaks and reuses.
//!
//! - [`api`]: the document model and the request envelope;
//! - [`endpoint`], [`flow`]: the endpoints, typed, and the Flow file's vocabulary (`uses`,
//!   `polling`, `uses_after`);
//! - [`codec`]: JSON and MessagePack, negotiated by `Content-Type` / `Accept`;
//! - [`client`]: the executor client;
//! - [`balance`]: replica balancing (tower p2c over PeakEwma) with health checks;
//! - [`fanout`]: shard routing and the top-k / concat mergers;
//! - [`error`]: the error type and its JSON body;
//! - [`limits`], [`deadline`]: what one request may ask of a service, and when it must be done;
//! - [`health`], [`logging`], [`telemetry`], [`trace`], [`server`]: readiness, logs (text or
//!   JSON), the access log and metrics, distributed traces (OpenTelemetry), and serving;
//! - [`secret`], [`tls`]: API keys, the mesh token and passwords (never printed, compared in
//!   constant time, reloaded on SIGHUP), and TLS with rustls (servers, clients, mutual TLS);
//! - [`service`]: a service binary's start-up (`main`) and its `run`;
//! - [`vector`]: vector math (L2 normalisation);
//! - [`rng`]: a deterministic generator (SplitMix64) for test data and benchmarks;
//! - [`hash`]: stable hashing (FNV-1a) for shard routing and the `hash` model.

#![forbid(unsafe_code)]

pub mod api;
pub mod balance;
pub mod client;
pub mod codec;
pub mod deadline;
pub mod endpoint;
pub mod error;
pub mod fanout;
pub mod flow;
pub mod hash;
pub mod health;
pub mod limits;
pub mod logging;
pub mod mirror;
pub mod openapi;
mod process_metrics;
pub mod rng;
pub mod secret;
pub mod server;
pub mod service;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod trace;
pub mod vector;

pub use api::{Document, Envelope, Header, Parameters, Route};
pub use deadline::Deadline;
pub use endpoint::Endpoint;
pub use error::{ApiError, ErrorBody};
pub use limits::Limits;
