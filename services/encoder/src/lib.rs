//! flowmesh-encoder: filled in by its own issue.
