//! The model cache shared by the inference threads: model id → loaded [`ServedModel`], least
//! recently used first out, bounded by a budget of estimated resident bytes.
//!
//! Loads happen outside the map lock, on the inference thread that needs the model; a second
//! thread needing the same model waits on that model's load lock and then finds it cached.
//! Deleted ids are tombstoned (ids are never reused; 36 bytes per deleted model for the life of
//! the process) so a load racing with the delete does not re-insert the model.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::model::{LoadError, ServedModel};
use super::{lock, ModelSource};

/// What a lookup did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CacheEvent {
    Hit,
    /// Loaded now; `evicted` models made room for it.
    Load {
        evicted: usize,
    },
}

impl CacheEvent {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            CacheEvent::Hit => "hit",
            CacheEvent::Load { .. } => "load",
        }
    }
}

#[derive(Debug)]
pub(super) enum CacheError {
    Load(LoadError),
    /// The model was deleted.
    Deleted,
    /// The model alone exceeds the budget.
    TooLarge {
        needs: u64,
        budget: u64,
    },
}

struct Entry {
    model: Arc<ServedModel>,
    last_used: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    used: u64,
    tick: u64,
    /// One lock per model being loaded.
    loading: HashMap<String, Arc<Mutex<()>>>,
    tombstones: HashSet<String>,
}

pub(super) struct Cache {
    budget: u64,
    inner: Mutex<Inner>,
}

impl Cache {
    pub(super) fn new(budget: u64) -> Cache {
        Cache { budget, inner: Mutex::new(Inner::default()) }
    }

    fn hit(inner: &mut Inner, source: &ModelSource) -> Option<Arc<ServedModel>> {
        inner.tick += 1;
        let tick = inner.tick;
        let e = inner.entries.get_mut(&source.id)?;
        if *e.model.spec_json != *source.spec_json {
            return None;
        }
        e.last_used = tick;
        Some(e.model.clone())
    }

    /// The cached model for `source` (same id and spec), or the result of `load`.
    pub(super) fn get_or_load(
        &self,
        source: &ModelSource,
        load: impl FnOnce() -> Result<ServedModel, LoadError>,
    ) -> Result<(Arc<ServedModel>, CacheEvent), CacheError> {
        let load_lock = {
            let mut inner = lock(&self.inner);
            if inner.tombstones.contains(&source.id) {
                return Err(CacheError::Deleted);
            }
            if let Some(m) = Self::hit(&mut inner, source) {
                return Ok((m, CacheEvent::Hit));
            }
            inner.loading.entry(source.id.clone()).or_default().clone()
        };
        let _loading = lock(&load_lock);
        // Another thread may have loaded it while we waited for its lock.
        {
            let mut inner = lock(&self.inner);
            if inner.tombstones.contains(&source.id) {
                return Err(CacheError::Deleted);
            }
            if let Some(m) = Self::hit(&mut inner, source) {
                return Ok((m, CacheEvent::Hit));
            }
        }
        let loaded = load();
        let mut inner = lock(&self.inner);
        inner.loading.remove(&source.id);
        let model = Arc::new(loaded.map_err(CacheError::Load)?);
        if inner.tombstones.contains(&source.id) {
            return Err(CacheError::Deleted);
        }
        if model.bytes > self.budget {
            return Err(CacheError::TooLarge { needs: model.bytes, budget: self.budget });
        }
        // A model whose spec changed replaces its old entry.
        if let Some(old) = inner.entries.remove(&source.id) {
            inner.used -= old.model.bytes;
        }
        let mut evicted = 0;
        while inner.used + model.bytes > self.budget {
            let Some(lru) = inner.entries.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| k.clone()) else {
                break;
            };
            if let Some(e) = inner.entries.remove(&lru) {
                inner.used -= e.model.bytes;
                evicted += 1;
                tracing::info!(model_id = %lru, bytes = e.model.bytes, "model evicted from the inference cache");
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.used += model.bytes;
        inner.entries.insert(source.id.clone(), Entry { model: model.clone(), last_used: tick });
        Ok((model, CacheEvent::Load { evicted }))
    }

    /// Removes a model; with `tombstone`, it can never be cached again. Returns whether it was
    /// cached.
    pub(super) fn remove(&self, id: &str, tombstone: bool) -> bool {
        let mut inner = lock(&self.inner);
        if tombstone {
            inner.tombstones.insert(id.to_string());
        }
        match inner.entries.remove(id) {
            Some(e) => {
                inner.used -= e.model.bytes;
                true
            }
            None => false,
        }
    }

    /// The cached model, without touching its recency.
    pub(super) fn peek(&self, id: &str) -> Option<Arc<ServedModel>> {
        lock(&self.inner).entries.get(id).map(|e| e.model.clone())
    }

    /// Bytes held.
    pub(super) fn used(&self) -> u64 {
        lock(&self.inner).used
    }
}
