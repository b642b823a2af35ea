//! A small cache with coalescing, so that the live figures of open dashboard pages, and the
//! database figures of `/metrics`, cost the database one read per key and `ttl`, whatever the
//! number of pages or scrapes: concurrent callers of a key share one load, and its value serves
//! every caller until it is `ttl` old. The number of keys is bounded; past it, expired keys go
//! first, and if every key is fresh the caller loads without caching (the pool still bounds the
//! database's work).

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::OnceCell;

#[derive(Debug)]
pub(crate) struct Cache<K, V> {
    ttl: Duration,
    max_keys: usize,
    slots: Mutex<HashMap<K, Arc<Slot<V>>>>,
}

#[derive(Debug)]
struct Slot<V> {
    born: Instant,
    value: OnceCell<V>,
}

impl<K: Eq + Hash + Clone, V: Clone> Cache<K, V> {
    pub(crate) fn new(ttl: Duration, max_keys: usize) -> Self {
        Self {
            ttl,
            max_keys,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The value of `key`: a fresh cached one, the result of a load in flight, or `load()`'s.
    /// A failed load is not cached: the next caller loads again.
    pub(crate) async fn get<E, F, Fut>(&self, key: K, load: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let Some(slot) = self.slot(key) else {
            return load().await;
        };
        slot.value.get_or_try_init(load).await.cloned()
    }

    /// Drops the value of `key`, so the next caller reads it anew (after a change made here).
    pub(crate) fn forget(&self, key: &K) {
        self.slots.lock().expect("cache lock").remove(key);
    }

    /// The key's slot, new if it had none or an expired one; `None` when the cache is full of
    /// fresh keys.
    fn slot(&self, key: K) -> Option<Arc<Slot<V>>> {
        let mut slots = self.slots.lock().expect("cache lock");
        if let Some(slot) = slots.get(&key).filter(|s| s.born.elapsed() < self.ttl) {
            return Some(slot.clone());
        }
        if slots.len() >= self.max_keys {
            slots.retain(|_, s| s.born.elapsed() < self.ttl);
            if slots.len() >= self.max_keys {
                return None;
            }
        }
        let slot = Arc::new(Slot {
            born: Instant::now(),
            value: OnceCell::new(),
        });
        slots.insert(key, slot.clone());
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_readers_of_a_key_share_one_load() {
        let cache = Arc::new(Cache::<u32, u64>::new(Duration::from_secs(60), 8));
        let loads = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..100)
            .map(|_| {
                let (cache, loads) = (cache.clone(), loads.clone());
                tokio::spawn(async move {
                    cache
                        .get(7, || async {
                            loads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<_, ()>(42)
                        })
                        .await
                })
            })
            .collect();
        for reader in readers {
            assert_eq!(reader.await.unwrap(), Ok(42));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_value_is_loaded_again_once_expired_and_failures_are_not_kept() {
        let cache = Cache::<u32, u64>::new(Duration::from_millis(30), 8);
        assert_eq!(
            cache.get(1, || async { Err::<u64, _>("down") }).await,
            Err("down")
        );
        assert_eq!(cache.get(1, || async { Ok::<_, &str>(1) }).await, Ok(1));
        assert_eq!(cache.get(1, || async { Ok::<_, &str>(2) }).await, Ok(1));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(cache.get(1, || async { Ok::<_, &str>(3) }).await, Ok(3));
    }

    #[tokio::test]
    async fn the_number_of_keys_stays_bounded() {
        let cache = Cache::<u32, u32>::new(Duration::from_secs(60), 4);
        for k in 0..100 {
            assert_eq!(cache.get(k, || async move { Ok::<_, ()>(k) }).await, Ok(k));
        }
        assert!(cache.slots.lock().unwrap().len() <= 4);
    }
}
