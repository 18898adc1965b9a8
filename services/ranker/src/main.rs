//! `flowmesh-ranker`: the ranker service of a flowmesh Flow (see the library's docs).

#![forbid(unsafe_code)]

flowmesh_shared::service_main!(
    flowmesh_ranker::SERVICE,
    flowmesh_ranker::Config,
    |config: flowmesh_ranker::Config, shutdown| async move {
        let app = flowmesh_ranker::serve_app(&config).await;
        flowmesh_shared::service::serve(flowmesh_ranker::SERVICE, &config.serve, app, shutdown)
            .await
    },
    mimalloc::MiMalloc
);
