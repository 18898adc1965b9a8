//! `flowmesh-ranker`: the ranker service of a flowmesh Flow (see the library's docs).

#![forbid(unsafe_code)]

flowmesh_shared::executor_main!(flowmesh_ranker, mimalloc::MiMalloc);
