//! What this process read recently and may read again without asking PostgreSQL: stored
//! templates (content-addressed, so a template's bytes never change), the same templates as read
//! for a create (reading is the same for every create: ids are renewed when the plan is made),
//! and the templates batches pinned for their URLs (fixed once downloaded). The items of a batch
//! thus neither fetch nor read their template again; the memory is bounded.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use provisioner_shared::template::{Costs, Template};
use uuid::Uuid;

/// Most template bytes kept; a template larger than half of it is not kept.
const MAX_TEMPLATE_BYTES: usize = 16 << 20;
/// Most reading cost (`Costs::reading`, an upper bound of the memory a read template holds) of
/// the read templates kept; one costing more than half of it is not kept.
const MAX_READ_COST: u64 = 32 << 20;
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
    /// Read for a create, with their costs; most recently used last.
    read: VecDeque<(String, Arc<Template>, Costs)>,
    read_cost: u64,
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

    /// Stored template `id` as read for a create, and its costs, if read recently.
    pub(crate) fn read(&self, id: &str) -> Option<(Arc<Template>, Costs)> {
        let mut inner = self.0.lock().expect("recent templates");
        let at = inner.read.iter().position(|(t, _, _)| t == id)?;
        let entry = inner.read.remove(at).expect("found");
        let found = (entry.1.clone(), entry.2);
        inner.read.push_back(entry);
        Some(found)
    }

    /// Keeps stored template `id` as read for a create, forgetting the least recently used
    /// past the bound.
    pub(crate) fn keep_read(&self, id: &str, template: &Arc<Template>, costs: Costs) {
        if costs.reading > MAX_READ_COST / 2 {
            return;
        }
        let mut inner = self.0.lock().expect("recent templates");
        if inner.read.iter().any(|(t, _, _)| t == id) {
            return;
        }
        inner.read_cost += costs.reading;
        inner
            .read
            .push_back((id.to_owned(), template.clone(), costs));
        while inner.read_cost > MAX_READ_COST {
            let (_, _, old) = inner.read.pop_front().expect("over the bound: not empty");
            inner.read_cost -= old.reading;
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

    fn template() -> Arc<Template> {
        use provisioner_shared::template::{Manifest, ManifestSource, TenantEntry};
        let id = Uuid::new_v4();
        Arc::new(Template {
            manifest: Manifest {
                format: provisioner_shared::template::FORMAT.to_owned(),
                format_version: provisioner_shared::template::FORMAT_VERSION,
                db_version: 1,
                exported_at: chrono::Utc::now(),
                source: ManifestSource {
                    tenant_id: id,
                    tenant_url: "s.example.com".into(),
                    tenant_name: "S".into(),
                },
            },
            tenant: TenantEntry {
                id,
                url: "s.example.com".into(),
                name: "S".into(),
                sip_domain: "s.example.com".into(),
                settings: Default::default(),
            },
            users: vec![],
            objects: vec![],
            access_numbers: vec![],
            calling_lists: vec![],
            audit: vec![],
        })
    }

    #[test]
    fn read_templates_are_kept_within_their_cost_bound_least_recently_used_first_out() {
        let recent = Recent::default();
        // What writing costs is kept with the template, and is no part of the bound.
        let costs = |reading| Costs {
            reading,
            writing: MAX_READ_COST,
        };
        let quarter = costs(MAX_READ_COST / 4);
        for id in ["a", "b", "c", "d"] {
            recent.keep_read(id, &template(), quarter);
        }
        let (kept, kept_costs) = recent.read("a").expect("kept");
        assert_eq!(kept_costs, quarter);
        // The same template is handed out, not a copy.
        assert!(Arc::ptr_eq(&kept, &recent.read("a").unwrap().0));
        recent.keep_read("e", &template(), quarter);
        assert!(recent.read("b").is_none(), "b was the least recently used");
        for id in ["a", "c", "d", "e"] {
            assert!(recent.read(id).is_some(), "{id}");
        }
        recent.keep_read("huge", &template(), costs(MAX_READ_COST / 2 + 1));
        assert!(recent.read("huge").is_none());
    }
}
