//! The Flow: its YAML spec, the built-in executors, and the engine that runs requests through it.

pub mod engine;
pub mod guard;
mod outcome;
pub mod sentencizer;
pub mod spec;

pub use engine::Flow;
pub use guard::GatewayLimits;
pub use spec::{FlowError, FlowSpec};
