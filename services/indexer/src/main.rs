//! `flowmesh-indexer`: the indexer service (one shard) of a flowmesh Flow (see the library's docs).

#![forbid(unsafe_code)]

flowmesh_shared::executor_main!(flowmesh_indexer, mimalloc::MiMalloc);
