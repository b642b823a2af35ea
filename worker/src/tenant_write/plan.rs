//! What the write transaction will write, prepared from a template before it starts: new ids
//! and rewritten references (create), or the tenant as it was (Import Tenant).

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use provisioner_shared::{
    domain::AuditAction,
    template::{
        AccessNumberEntry, AuditEntry, CallingListEntry, JsonDoc, ObjectEntry, Template, UserEntry,
    },
};
use uuid::Uuid;

/// Everything the transaction writes, prepared before it starts (no hashing under the lock).
#[derive(Debug)]
pub(crate) struct Plan {
    pub(super) tenant_id: Uuid,
    pub(super) tenant_url: String,
    pub(super) tenant_name: String,
    pub(super) sip_domain: String,
    /// As the template writes them (its text: numbers kept exactly).
    pub(super) settings: JsonDoc,
    pub(super) users: Vec<UserEntry>,
    pub(super) objects: Vec<ObjectEntry>,
    pub(super) access_numbers: Vec<AccessNumberEntry>,
    /// Imported only by Import Tenant.
    pub(super) calling_lists: Vec<CallingListEntry>,
    /// The history to keep (Import Tenant), then the entry recording this import, if any.
    pub(super) audit: Vec<AuditEntry>,
    pub(super) lock_timeout: Duration,
    pub(super) precedence: Precedence,
}

/// Whether the write gives way to other jobs of the same tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Precedence {
    /// Writes whatever else is queued for the tenant: the API refused a single create (or an
    /// import's) at once when another create for the tenant was queued or running.
    First,
    /// Gives way to a create or an import for the tenant submitted before `(created_at, id)` and
    /// still queued or running (`WriteOutcome::EarlierWork`): a batch item, which the API accepts
    /// whatever else is queued.
    AfterEarlier { created_at: DateTime<Utc>, id: Uuid },
}

impl Plan {
    /// Gives every user and object a new id and rewrites references to match. The template's
    /// calling lists and audit history are not part of a plan: create never imports them.
    pub(crate) fn from_template(
        template: &Template,
        tenant_url: &str,
        tenant_name: &str,
        admin: Option<UserEntry>,
        numbers: Vec<AccessNumberEntry>,
        lock_timeout: Duration,
    ) -> Self {
        let ids: HashMap<Uuid, Uuid> = template
            .objects
            .iter()
            .map(|o| (o.id, Uuid::now_v7()))
            .collect();
        let objects = template
            .objects
            .iter()
            .map(|o| {
                let mut o = o.clone();
                o.id = ids[&o.id];
                o.refs = o.refs.iter().map(|r| ids[r]).collect();
                o
            })
            .collect();
        let mut users: Vec<UserEntry> = template
            .users
            .iter()
            .map(|u| {
                let mut u = u.clone();
                u.id = Uuid::now_v7();
                u.teams = u.teams.iter().map(|t| ids[t]).collect();
                u
            })
            .collect();
        if let Some(admin) = admin {
            match users.iter_mut().find(|u| u.login_id == admin.login_id) {
                Some(same) => *same = admin,
                None => users.push(admin),
            }
        }
        Self {
            tenant_id: Uuid::now_v7(),
            tenant_url: tenant_url.to_owned(),
            tenant_name: tenant_name.to_owned(),
            sip_domain: tenant_url.to_owned(),
            settings: template.tenant.settings.clone(),
            users,
            objects,
            access_numbers: numbers,
            calling_lists: vec![],
            audit: vec![],
            lock_timeout,
            precedence: Precedence::First,
        }
    }

    /// The write gives way to earlier creates of the tenant (see `Precedence::AfterEarlier`).
    pub(crate) fn after_earlier(self, created_at: DateTime<Utc>, id: Uuid) -> Self {
        Self {
            precedence: Precedence::AfterEarlier { created_at, id },
            ..self
        }
    }

    /// Import Tenant: the tenant as it was, ids, users with their hashes, calling lists and
    /// history included, plus one history entry recording the import by `actor`.
    pub(crate) fn for_import(template: &Template, actor: &str, lock_timeout: Duration) -> Self {
        let t = &template.tenant;
        let mut audit = template.audit.clone();
        audit.push(AuditEntry {
            at: Utc::now(),
            actor: actor.to_owned(),
            action: AuditAction::Import.to_string(),
            object: format!("tenant:{}", t.url),
            details: serde_json::json!({"source": template.manifest.source, "dbVersion": template.manifest.db_version})
                .as_object()
                .cloned()
                .unwrap_or_default()
                .into(),
        });
        Self {
            tenant_id: t.id,
            tenant_url: t.url.to_ascii_lowercase(),
            tenant_name: t.name.clone(),
            // A host name, as the URL: in one case, so that `tenants.sip_domain`'s unique index
            // refuses `LARGE1.example` beside `large1.example`.
            sip_domain: t.sip_domain.to_ascii_lowercase(),
            settings: t.settings.clone(),
            users: template.users.clone(),
            objects: template.objects.clone(),
            access_numbers: template.access_numbers.clone(),
            calling_lists: template.calling_lists.clone(),
            audit,
            lock_timeout,
            precedence: Precedence::First,
        }
    }
}
