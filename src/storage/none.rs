//! The store of a cluster without `[mongodb]`: it holds nothing and refuses every write and
//! read with the reason, so the routes that need stored events answer 503 saying so, and no
//! node keeps events of its own that the others would not see (a silent split).
//!
//! Owns: that refusal. Must not touch: anything else.

use std::sync::Arc;

use async_trait::async_trait;

use super::{
    ActiveSubscription, ChannelRange, EventStore, NewEvent, OnCommit, Order, Retention, Storage,
    StoreError, StoreStatus, StoredEvent, SubscriptionStore, UserChannel,
};

/// Why a cluster without MongoDB stores nothing.
pub const CLUSTER_NEEDS_MONGODB: &str = "a cluster stores events and offline subscriptions in \
     MongoDB, and this one has no [mongodb] section";

/// A store that stores nothing.
#[derive(Debug)]
struct NoStore;

impl NoStore {
    fn refuse<T>() -> Result<T, StoreError> {
        Err(StoreError::Unavailable(CLUSTER_NEEDS_MONGODB.into()))
    }
}

#[async_trait]
impl EventStore for NoStore {
    async fn append(
        &self,
        _app: &str,
        _events: Vec<NewEvent>,
        _on_commit: OnCommit,
    ) -> Result<Vec<u64>, StoreError> {
        NoStore::refuse()
    }

    async fn events(
        &self,
        _app: &str,
        _ranges: Vec<ChannelRange>,
        _limit: usize,
        _order: Order,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        NoStore::refuse()
    }

    async fn prune(&self, _retention: Retention, _now_ms: u64) -> Result<u64, StoreError> {
        Ok(0)
    }
}

#[async_trait]
impl SubscriptionStore for NoStore {
    async fn subscribe(&self, _: &str, _: &str, _: &str) -> Result<bool, StoreError> {
        NoStore::refuse()
    }

    async fn unsubscribe(&self, _: &str, _: &str, _: &str) -> Result<bool, StoreError> {
        NoStore::refuse()
    }

    async fn user(&self, _: &str, _: &str) -> Result<Vec<UserChannel>, StoreError> {
        NoStore::refuse()
    }

    /// Nobody is offline-subscribed, so publishing (which must know that) works.
    async fn active(&self) -> Result<Vec<ActiveSubscription>, StoreError> {
        Ok(Vec::new())
    }
}

/// The store of a cluster without MongoDB (backend `none`).
pub fn none() -> Storage {
    Storage::new(Arc::new(NoStore), "none", Arc::new(StoreStatus::default()))
}
