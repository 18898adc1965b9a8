//! The shell's side of the public API: `flowmesh index` sends a JSONL file, a CSV file or a
//! folder of images to a running gateway in batches, resuming after an interruption;
//! `flowmesh search` prints the matches of one query as a table.

pub mod client;
pub mod index;
pub mod input;
pub mod search;
pub mod state;

pub use client::GatewayArgs;
pub use index::{index, IndexArgs};
pub use search::{search, SearchArgs};
