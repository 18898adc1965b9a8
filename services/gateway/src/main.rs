//! `flowmesh-gateway`: serves a Flow whose executors already run (compose, Ansible).

#![forbid(unsafe_code)]

flowmesh_shared::service_main!(
    "gateway",
    flowmesh_gateway::Config,
    flowmesh_gateway::run,
    mimalloc::MiMalloc
);
