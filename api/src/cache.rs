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
pub(crate) struct Cache<K, V, E = sqlx::Error> {
    ttl: Duration,
    max_keys: usize,
    slots: Mutex<HashMap<K, Arc<Slot<V, E>>>>,
}

#[derive(Debug)]
struct Slot<V, E> {
    born: Instant,
    value: OnceCell<Result<V, E>>,
}

/// A load's error, as every caller that waited for the load gets it.
pub(crate) trait Shared {
    fn shared(&self) -> Self;
}

impl Shared for sqlx::Error {
    /// The same message, and a fault a retry may cure stays one (`503`, not `500`).
    fn shared(&self) -> Self {
        if provisioner_shared::db::is_transient(self) && !matches!(self, Self::Protocol(_)) {
            Self::Io(std::io::Error::other(self.to_string()))
        } else {
            Self::Protocol(self.to_string())
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone, E: Shared> Cache<K, V, E> {
    pub(crate) fn new(ttl: Duration, max_keys: usize) -> Self {
        Self {
            ttl,
            max_keys,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The value of `key`: a fresh cached one, the result of a load in flight, or `load()`'s.
    /// A failed load is not kept: the callers that waited for it get its error (one after
    /// another loading again would each wait as long), and the next caller loads again.
    pub(crate) async fn get<F, Fut>(&self, key: K, load: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let Some(slot) = self.slot(key.clone()) else {
            return load().await;
        };
        match slot.value.get_or_init(load).await {
            Ok(value) => Ok(value.clone()),
            Err(e) => {
                let mut slots = self.slots.lock().expect("cache lock");
                if slots.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                    slots.remove(&key);
                }
                Err(e.shared())
            }
        }
    }

    /// The values of `keys`, in their order: fresh cached ones as they are, and every other in
    /// one call of `load` (given the keys it is to read, in order; it answers a value for each),
    /// whose values are then kept. One load per call, however many keys miss: a caller asking
    /// for a hundred unknown keys costs one read, not a hundred. A single key missing is shared
    /// with the callers missing it at once, as `get` shares it; several are loaded by each
    /// caller: for values that rarely change, kept long enough that such misses are rare.
    /// `None` for a key the load gave no value.
    pub(crate) async fn get_many<F, Fut>(&self, keys: &[K], load: F) -> Result<Vec<Option<V>>, E>
    where
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<Vec<V>, E>>,
    {
        let mut found: Vec<Option<V>> = keys.iter().map(|k| self.peek(k)).collect();
        let missing: Vec<K> = keys
            .iter()
            .zip(&found)
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        if let [one] = missing.as_slice() {
            // One key alone is loaded as `get` loads it: callers asking for it at once (many
            // pages watching one thing, opened together) share one load.
            let value = self
                .get(one.clone(), || async {
                    Ok(load(vec![one.clone()])
                        .await?
                        .pop()
                        .expect("a load answers a value for each key"))
                })
                .await?;
            if let Some(slot) = found.iter_mut().find(|v| v.is_none()) {
                *slot = Some(value);
            }
        } else if !missing.is_empty() {
            let mut loaded = load(missing).await?.into_iter();
            for (key, value) in keys.iter().zip(found.iter_mut()) {
                if value.is_none() {
                    let Some(v) = loaded.next() else { break };
                    self.put(key.clone(), v.clone());
                    *value = Some(v);
                }
            }
        }
        Ok(found)
    }

    /// The fresh value of `key`, if one is kept (not a load in flight).
    fn peek(&self, key: &K) -> Option<V> {
        let slots = self.slots.lock().expect("cache lock");
        let slot = slots.get(key).filter(|s| s.born.elapsed() < self.ttl)?;
        match slot.value.get() {
            Some(Ok(value)) => Some(value.clone()),
            _ => None,
        }
    }

    /// Keeps `value` for `key` from now, if there is room (as `slot` makes it).
    fn put(&self, key: K, value: V) {
        let mut slots = self.slots.lock().expect("cache lock");
        if slots.len() >= self.max_keys {
            slots.retain(|_, s| s.born.elapsed() < self.ttl);
            if slots.len() >= self.max_keys {
                return;
            }
        }
        slots.insert(
            key,
            Arc::new(Slot {
                born: Instant::now(),
                value: OnceCell::new_with(Some(Ok(value))),
            }),
        );
    }

    /// Drops the value of `key`, so the next caller reads it anew (after a change made here).
    pub(crate) fn forget(&self, key: &K) {
        self.slots.lock().expect("cache lock").remove(key);
    }

    /// The key's slot, new if it had none or an expired one; `None` when the cache is full of
    /// fresh keys.
    fn slot(&self, key: K) -> Option<Arc<Slot<V, E>>> {
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

    impl Shared for () {
        fn shared(&self) -> Self {}
    }

    impl Shared for &'static str {
        fn shared(&self) -> Self {
            self
        }
    }

    #[tokio::test]
    async fn the_callers_that_waited_for_a_failed_load_get_its_error_without_loading_again() {
        let cache = Arc::new(Cache::<u32, u64, &str>::new(Duration::from_secs(60), 8));
        let loads = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let readers: Vec<_> = (0..20)
            .map(|_| {
                let (cache, loads, gate) = (cache.clone(), loads.clone(), gate.clone());
                tokio::spawn(async move {
                    cache
                        .get(7, || async move {
                            loads.fetch_add(1, Ordering::SeqCst);
                            gate.notified().await;
                            Err("down")
                        })
                        .await
                })
            })
            .collect();
        while loads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Let every reader reach the load in flight before it fails.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for reader in readers {
            assert_eq!(reader.await.unwrap(), Err("down"));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1, "one load for all of them");
        // The failure is not kept: the next caller loads again.
        assert_eq!(cache.get(7, || async { Ok(5) }).await, Ok(5));
    }

    #[tokio::test]
    async fn concurrent_readers_of_a_key_share_one_load() {
        let cache = Arc::new(Cache::<u32, u64, ()>::new(Duration::from_secs(60), 8));
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
        let cache = Cache::<u32, u64, &str>::new(Duration::from_millis(30), 8);
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
    async fn many_keys_missing_are_loaded_in_one_call_and_then_kept() {
        let cache = Cache::<u32, Option<u32>, ()>::new(Duration::from_secs(60), 64);
        assert_eq!(cache.get(1, || async { Ok(Some(10)) }).await, Ok(Some(10)));
        let calls = AtomicUsize::new(0);
        let load = |keys: Vec<u32>| {
            calls.fetch_add(1, Ordering::SeqCst);
            // Odd keys exist; even ones do not (kept as `None` too).
            async move {
                Ok(keys
                    .iter()
                    .map(|k| (k % 2 == 1).then_some(k * 10))
                    .collect())
            }
        };
        let keys: Vec<u32> = (0..50).collect();
        let values = cache.get_many(&keys, load).await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one load for 49 keys missing"
        );
        assert_eq!(values.len(), 50);
        assert_eq!(values[1], Some(Some(10)), "the kept value, not the load's");
        assert_eq!(values[3], Some(Some(30)));
        assert_eq!(values[4], Some(None));
        // Every one is kept now, found and not found alike.
        let again = cache.get_many(&keys, load).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "nothing loaded again");
        assert_eq!(again, values);
    }

    #[tokio::test]
    async fn the_number_of_keys_stays_bounded() {
        let cache = Cache::<u32, u32, ()>::new(Duration::from_secs(60), 4);
        for k in 0..100 {
            assert_eq!(cache.get(k, || async move { Ok::<_, ()>(k) }).await, Ok(k));
        }
        assert!(cache.slots.lock().unwrap().len() <= 4);
    }
}
