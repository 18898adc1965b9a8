//! The health monitor of a replica set: probes every replica's `/readyz`, takes a failing one
//! out of the balancer and puts it back once it answers again.

use std::sync::Arc;

use tokio::sync::{mpsc, Notify};
use tower::discover::Change;
use tower::load::PeakEwma;

use super::mirror::{probe_copy, MirrorState};
use super::replica::{Replica, ReplicaService, ShardId};
use super::{BalanceConfig, Discovered};
use crate::client::ExecutorClient;

pub(super) struct Monitor {
    pub(super) shard: Arc<ShardId>,
    pub(super) replicas: Arc<[Arc<Replica>]>,
    pub(super) client: ExecutorClient,
    pub(super) changes_tx: mpsc::UnboundedSender<Discovered>,
    /// Notified when a call marks a replica down.
    pub(super) down: Arc<Notify>,
    pub(super) config: BalanceConfig,
    /// For mirrored copies: a copy is healthy only once it holds every acknowledged write.
    pub(super) mirror: Option<Arc<MirrorState>>,
}

impl Monitor {
    /// Probes until the balancer is gone; `endpoint` makes a replica's balancer service.
    pub(super) async fn run(self, endpoint: impl Fn(&Arc<Replica>) -> PeakEwma<ReplicaService>) {
        let mut in_pool = vec![true; self.replicas.len()];
        // Replicas start in the pool; say so before the first probes answer.
        for replica in self.replicas.iter() {
            self.report(replica, true);
        }
        loop {
            let probes = self.replicas.iter().map(|r| self.probe(r));
            let healthy = futures::future::join_all(probes).await;
            for (i, (replica, ok)) in self.replicas.iter().zip(healthy).enumerate() {
                self.report(replica, ok);
                if !ok && in_pool[i] {
                    tracing::warn!(replica = %replica.base(), "replica failed its health check");
                    replica.set_up(false);
                }
                if ok && !in_pool[i] {
                    tracing::info!(replica = %replica.base(), "replica is healthy again");
                    replica.set_up(true);
                    in_pool[i] = true;
                    if self
                        .changes_tx
                        .send(Ok(Change::Insert(i, endpoint(replica))))
                        .is_err()
                    {
                        return;
                    }
                }
            }
            self.evict_down(&mut in_pool);
            if self.changes_tx.is_closed() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.health_interval) => {}
                () = self.down.notified() => self.evict_down(&mut in_pool),
            }
        }
    }

    /// Sets `flowmesh_replica_up` for `replica`.
    fn report(&self, replica: &Replica, up: bool) {
        metrics::gauge!(
            "flowmesh_replica_up",
            "executor" => self.shard.executor.to_string(),
            "shard" => self.shard.shard.to_string(),
            "replica" => replica.base().to_owned(),
        )
        .set(if up { 1.0 } else { 0.0 });
    }

    /// Removes replicas marked down from the balancer, so that they are re-inserted fresh.
    fn evict_down(&self, in_pool: &mut [bool]) {
        for (i, replica) in self.replicas.iter().enumerate() {
            if in_pool[i] && !replica.is_up() {
                in_pool[i] = false;
                let _ = self.changes_tx.send(Ok(Change::Remove(i)));
            }
        }
    }

    async fn probe(&self, replica: &Replica) -> bool {
        if let Some(mirror) = &self.mirror {
            return probe_copy(&self.client, replica, mirror, self.config.probe_timeout).await;
        }
        let Ok(uri) = replica.uri("/readyz") else {
            return false;
        };
        matches!(
            tokio::time::timeout(self.config.probe_timeout, self.client.get_ok(uri)).await,
            Ok(Ok(()))
        )
    }
}
