//! The import transaction: advisory lock, tenant, users, objects, access numbers and the job's
//! success, all committed together or not at all.

use std::{collections::HashMap, time::Duration};

use chrono::Utc;
use provisioner_shared::{
    config::ImportLockMode,
    db::{self, access_numbers::Placement, jobs::Ending, locks::LockKey, tenants::TenantRow},
    domain::{SkipReason, SkippedRange, TenantSummary},
    template::{AccessNumberEntry, AuditEntry, CallingListEntry, Template, UserEntry},
};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::jobs::Step;

/// Everything the transaction writes, prepared before it starts (no hashing under the lock).
#[derive(Debug)]
pub struct Plan {
    pub tenant_id: Uuid,
    pub tenant_url: String,
    pub tenant_name: String,
    pub sip_domain: String,
    pub settings: Value,
    pub users: Vec<UserEntry>,
    pub objects: Vec<provisioner_shared::template::ObjectEntry>,
    pub access_numbers: Vec<AccessNumberEntry>,
    /// Imported only by Import Tenant.
    pub calling_lists: Vec<CallingListEntry>,
    /// The history to keep (Import Tenant), then the entry recording this import, if any.
    pub audit: Vec<AuditEntry>,
    pub lock_timeout: Duration,
}

impl Plan {
    /// Gives every user and object a new id and rewrites references to match. The template's
    /// calling lists and audit history are not part of a plan: create never imports them.
    pub fn from_template(
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
            settings: Value::Object(template.tenant.settings.clone()),
            users,
            objects,
            access_numbers: numbers,
            calling_lists: vec![],
            audit: vec![],
            lock_timeout,
        }
    }

    /// Import Tenant: the tenant as it was, ids, users with their hashes, calling lists and
    /// history included, plus one history entry recording the import by `actor`.
    pub fn for_import(template: &Template, actor: &str, lock_timeout: Duration) -> Self {
        let t = &template.tenant;
        let mut audit = template.audit.clone();
        audit.push(AuditEntry {
            at: Utc::now(),
            actor: actor.to_owned(),
            action: "import".to_owned(),
            object: format!("tenant:{}", t.url),
            details: serde_json::json!({"source": template.manifest.source, "dbVersion": template.manifest.db_version})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        });
        Self {
            tenant_id: t.id,
            tenant_url: t.url.to_ascii_lowercase(),
            tenant_name: t.name.clone(),
            sip_domain: t.sip_domain.clone(),
            settings: Value::Object(t.settings.clone()),
            users: template.users.clone(),
            objects: template.objects.clone(),
            access_numbers: template.access_numbers.clone(),
            calling_lists: template.calling_lists.clone(),
            audit,
            lock_timeout,
        }
    }
}

/// Runs the import for job `job_id` under lease `token`.
pub async fn run(
    pool: &PgPool,
    mode: ImportLockMode,
    job_id: Uuid,
    token: Uuid,
    plan: &Plan,
) -> Result<Step, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let keys: &[LockKey] = match mode {
        ImportLockMode::Global => &[LockKey::Global, LockKey::Tenant(&plan.tenant_url)],
        ImportLockMode::Tenant => &[LockKey::Tenant(&plan.tenant_url)],
    };
    let started = std::time::Instant::now();
    if !db::locks::acquire(&mut tx, keys, plan.lock_timeout).await? {
        tx.rollback().await?;
        return Ok(Step::fail(
            503,
            "Lock timeout",
            format!(
                "the import lock was not free within {} s",
                plan.lock_timeout.as_secs()
            ),
        ));
    }
    let waited = started.elapsed();
    tracing::debug!(?waited, "import lock taken");
    if db::tenants::exists(&mut *tx, &plan.tenant_url).await?
        || db::tenants::id_exists(&mut *tx, plan.tenant_id).await?
    {
        tx.rollback().await?;
        return Ok(tenant_exists(&plan.tenant_url));
    }
    let tenant = TenantRow {
        id: plan.tenant_id,
        url: plan.tenant_url.clone(),
        name: plan.tenant_name.clone(),
        sip_domain: plan.sip_domain.clone(),
        status: "Inactive".to_owned(),
        settings: plan.settings.clone(),
        created_at: Utc::now(),
    };
    match db::tenants::insert(&mut tx, &tenant).await {
        Ok(()) => {}
        Err(e)
            if ["tenants_pkey", "tenants_url_key", "tenants_sip_domain_key"]
                .iter()
                .any(|c| db::violates(&e, c)) =>
        {
            return Ok(tenant_exists(&plan.tenant_url));
        }
        Err(e) => return Err(e),
    }
    let contents = async {
        db::tenants::insert_objects(&mut tx, tenant.id, &plan.objects).await?;
        db::tenants::insert_users(&mut tx, tenant.id, &plan.users).await?;
        db::tenants::insert_calling_lists(&mut tx, tenant.id, &plan.calling_lists).await?;
        db::tenants::insert_audit(&mut tx, tenant.id, &plan.audit).await
    };
    match contents.await {
        Ok(()) => {}
        // Kept ids (Import Tenant) that another tenant already uses.
        Err(e)
            if ["users_pkey", "config_objects_pkey", "calling_lists_pkey"]
                .iter()
                .any(|c| db::violates(&e, c)) =>
        {
            return Ok(Step::fail(
                409,
                "Conflict",
                "the tenant's objects, users or calling lists already exist in this cluster",
            ));
        }
        Err(e) => return Err(e),
    }
    let mut skipped = Vec::new();
    for range in &plan.access_numbers {
        let reason = match db::access_numbers::place(
            &mut tx,
            tenant.id,
            &range.number,
            range.count,
            &range.media,
        )
        .await?
        {
            Placement::Created | Placement::AssignedExisting => continue,
            Placement::AssignedToOtherTenant => SkipReason::AssignedToOtherTenant,
            Placement::OverlapsExistingRange => SkipReason::OverlapsExistingRange,
        };
        skipped.push(SkippedRange {
            number: range.number.clone(),
            count: range.count,
            reason,
        });
    }
    let summary = TenantSummary {
        id: tenant.id,
        url: tenant.url,
        name: tenant.name,
        status: tenant.status,
    };
    let ending = Ending::Succeeded {
        lock_wait: waited,
        tenant: summary,
        skipped,
    };
    if db::jobs::finish(&mut tx, job_id, token, &ending)
        .await?
        .is_none()
    {
        tx.rollback().await?;
        return Ok(Step::LostLease);
    }
    tx.commit().await?;
    Ok(Step::Committed)
}

fn tenant_exists(url: &str) -> Step {
    Step::fail(
        409,
        "Conflict",
        format!("a tenant with URL {url} already exists"),
    )
}
