//! What this process read recently and may read again without asking PostgreSQL: stored
//! templates (content-addressed, so a template's bytes never change) and the templates batches
//! pinned for their URLs (fixed once downloaded). The items of a batch thus read their template
//! from memory; the memory is bounded.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use bytes::Bytes;
use uuid::Uuid;

/// Most template bytes kept; a template larger than half of it is not kept.
const MAX_TEMPLATE_BYTES: usize = 16 << 20;
/// Most batch pins kept; past it they are forgotten all at once.
const MAX_PINS: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct Recent(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// Most recently used last.
    templates: VecDeque<(String, Bytes)>,
    bytes: usize,
    pins: HashMap<(Uuid, String), String>,
}

impl Recent {
    /// The bytes of stored template `id`, if read recently.
    pub(crate) fn template(&self, id: &str) -> Option<Bytes> {
        let mut inner = self.0.lock().expect("recent templates");
        let at = inner.templates.iter().position(|(t, _)| t == id)?;
        let entry = inner.templates.remove(at).expect("found");
        let bytes = entry.1.clone();
        inner.templates.push_back(entry);
        Some(bytes)
    }

    /// Keeps stored template `id`, forgetting the least recently used past the bound.
    pub(crate) fn keep_template(&self, id: &str, bytes: &Bytes) {
        if bytes.len() > MAX_TEMPLATE_BYTES / 2 {
            return;
        }
        let mut inner = self.0.lock().expect("recent templates");
        if inner.templates.iter().any(|(t, _)| t == id) {
            return;
        }
        inner.bytes += bytes.len();
        inner.templates.push_back((id.to_owned(), bytes.clone()));
        while inner.bytes > MAX_TEMPLATE_BYTES {
            let (_, old) = inner
                .templates
                .pop_front()
                .expect("over the bound: not empty");
            inner.bytes -= old.len();
        }
    }

    /// The template batch `batch` pinned for `url`, if known here.
    pub(crate) fn pin(&self, batch: Uuid, url: &str) -> Option<String> {
        let inner = self.0.lock().expect("recent templates");
        inner.pins.get(&(batch, url.to_owned())).cloned()
    }

    pub(crate) fn keep_pin(&self, batch: Uuid, url: &str, id: &str) {
        let mut inner = self.0.lock().expect("recent templates");
        if inner.pins.len() >= MAX_PINS {
            inner.pins.clear();
        }
        inner.pins.insert((batch, url.to_owned()), id.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_kept_within_the_bound_least_recently_used_first_out() {
        let recent = Recent::default();
        let big = Bytes::from(vec![0u8; MAX_TEMPLATE_BYTES / 4]);
        for id in ["a", "b", "c", "d"] {
            recent.keep_template(id, &big);
        }
        assert!(recent.template("a").is_some(), "a is now the most recent");
        recent.keep_template("e", &big);
        assert!(
            recent.template("b").is_none(),
            "b was the least recently used"
        );
        for id in ["a", "c", "d", "e"] {
            assert!(recent.template(id).is_some(), "{id}");
        }
        recent.keep_template("huge", &Bytes::from(vec![0u8; MAX_TEMPLATE_BYTES / 2 + 1]));
        assert!(recent.template("huge").is_none());
    }
}
