//! [`SubIndex`]: the open offline subscriptions in memory, per app and channel, so that a
//! publish knows without I/O whether it must store anything and for whom.
//!
//! Owns: the index and the per-user turn that orders changes. Must not touch: the store
//! (the publisher changes the index after the store committed).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{Mutex, MutexGuard};

/// Stripes of the per-user turn: changes of different users rarely wait for each other.
const STRIPES: usize = 64;

type Users = Arc<HashSet<Arc<str>>>;

/// Open offline subscriptions: app → channel → users.
#[derive(Debug)]
pub struct SubIndex {
    apps: DashMap<String, DashMap<String, Users>>,
    /// Open subscriptions in all; zero makes every lookup free.
    total: AtomicUsize,
    turns: Vec<Mutex<()>>,
}

impl Default for SubIndex {
    fn default() -> Self {
        SubIndex {
            apps: DashMap::new(),
            total: AtomicUsize::new(0),
            turns: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl SubIndex {
    /// The users offline-subscribed to `channel`, if any. The set is shared: a change makes
    /// a new one (subscriptions change far less often than publishes read them).
    pub fn subscribers(&self, app: &str, channel: &str) -> Option<Users> {
        if self.total.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.apps.get(app)?.get(channel).map(|u| u.clone())
    }

    /// Records an open subscription (no-op when present).
    pub fn add(&self, app: &str, channel: &str, user: &str) {
        let channels = self.apps.entry(app.to_string()).or_default();
        let mut users = channels.entry(channel.to_string()).or_default();
        if users.contains(user) {
            return;
        }
        let mut next = HashSet::clone(&users);
        next.insert(Arc::from(user));
        *users = Arc::new(next);
        self.total.fetch_add(1, Ordering::AcqRel);
    }

    /// Adds many subscriptions at once (startup): each channel's set is built once, not
    /// copied per user as [`SubIndex::add`] does.
    pub fn extend(&self, subscriptions: impl IntoIterator<Item = (String, String, String)>) {
        let mut grouped: HashMap<(String, String), HashSet<Arc<str>>> = HashMap::new();
        for (app, channel, user) in subscriptions {
            grouped
                .entry((app, channel))
                .or_default()
                .insert(Arc::from(user));
        }
        for ((app, channel), users) in grouped {
            let channels = self.apps.entry(app).or_default();
            let mut current = channels.entry(channel).or_default();
            let before = current.len();
            let mut next = HashSet::clone(&current);
            next.extend(users);
            let added = next.len() - before;
            *current = Arc::new(next);
            self.total.fetch_add(added, Ordering::AcqRel);
        }
    }

    /// Makes the index hold exactly `subscriptions` (a cluster node that may have missed
    /// changes while cut off reads them all again). Each channel's set is swapped whole, so a
    /// reader never sees a channel half-filled.
    pub fn replace_all(&self, subscriptions: impl IntoIterator<Item = (String, String, String)>) {
        let mut grouped: HashMap<(String, String), HashSet<Arc<str>>> = HashMap::new();
        for (app, channel, user) in subscriptions {
            grouped
                .entry((app, channel))
                .or_default()
                .insert(Arc::from(user));
        }
        let total = grouped.values().map(HashSet::len).sum();
        for app in self.apps.iter() {
            app.retain(|channel, _| grouped.contains_key(&(app.key().clone(), channel.clone())));
        }
        for ((app, channel), users) in grouped {
            let channels = self.apps.entry(app).or_default();
            channels.insert(channel, Arc::new(users));
        }
        self.total.store(total, Ordering::Release);
    }

    /// Forgets a subscription (no-op when absent).
    pub fn remove(&self, app: &str, channel: &str, user: &str) {
        let Some(channels) = self.apps.get(app) else {
            return;
        };
        let Some(mut users) = channels.get_mut(channel) else {
            return;
        };
        if !users.contains(user) {
            return;
        }
        let mut next = HashSet::clone(&users);
        next.remove(user);
        *users = Arc::new(next);
        self.total.fetch_sub(1, Ordering::AcqRel);
        drop(users);
        channels.remove_if(channel, |_, u| u.is_empty());
    }

    /// Waits for `user`'s turn to change subscriptions.
    pub async fn lock_user(&self, app: &str, user: &str) -> MutexGuard<'_, ()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (app, user).hash(&mut h);
        self.turns[(h.finish() as usize) % STRIPES].lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_remove() {
        let index = SubIndex::default();
        assert!(index.subscribers("1", "c").is_none());
        index.add("1", "c", "u");
        index.add("1", "c", "u");
        index.add("1", "c", "v");
        let users = index.subscribers("1", "c").unwrap();
        assert_eq!(users.len(), 2);
        assert!(index.subscribers("2", "c").is_none(), "apps are apart");
        index.remove("1", "c", "u");
        index.remove("1", "c", "u");
        assert_eq!(index.subscribers("1", "c").unwrap().len(), 1);
        assert_eq!(users.len(), 2, "a reader's set does not change under it");
        index.remove("1", "c", "v");
        assert!(index.subscribers("1", "c").is_none());
        assert_eq!(index.total.load(Ordering::Acquire), 0);
    }

    #[test]
    fn extend_builds_each_set_once_and_counts_new_users() {
        let index = SubIndex::default();
        index.add("1", "c", "u0");
        let many = (0..1000).map(|i| ("1".to_string(), "c".to_string(), format!("u{i}")));
        index.extend(many.chain([("2".into(), "d".into(), "x".into())]));
        assert_eq!(index.subscribers("1", "c").unwrap().len(), 1000);
        assert_eq!(index.subscribers("2", "d").unwrap().len(), 1);
        assert_eq!(
            index.total.load(Ordering::Acquire),
            1001,
            "u0 was there already"
        );
    }
}
