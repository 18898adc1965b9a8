//! flowmesh-ranker: filled in by its own issue.
fn main() {}
