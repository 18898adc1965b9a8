//! `flowmesh-indexer`: the indexer service (one shard) of a flowmesh Flow (see the library's docs).

#![forbid(unsafe_code)]

flowmesh_shared::service_main!(
    flowmesh_indexer::SERVICE,
    flowmesh_indexer::Config,
    |config: flowmesh_indexer::Config, shutdown| async move {
        let app = flowmesh_indexer::serve_app(&config).await;
        flowmesh_shared::service::serve(flowmesh_indexer::SERVICE, &config.serve, app, shutdown)
            .await
    },
    mimalloc::MiMalloc
);
