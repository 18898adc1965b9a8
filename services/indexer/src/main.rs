//! flowmesh-indexer: filled in by its own issue.
fn main() {}
