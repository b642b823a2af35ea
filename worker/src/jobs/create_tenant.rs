//! `createTenant`: fetch (or read from the store) the template, check it, hash the request's
//! administrator password, import with new ids.

use std::time::Duration;

use provisioner_shared::{
    db::{self, jobs::JobRow},
    domain::{AdminSpec, CreateTenantParams},
    template::{AccessNumberEntry, UserEntry, range_fits},
};
use uuid::Uuid;

use super::{
    Context, Finished, JobFailure, params,
    template::{self, Versions},
    write_tenant,
};
use crate::tenant_write::Plan;

/// `sealed_password`: the job's, when read with it (`jobs::find_to_try`); else read here.
pub(super) async fn run(
    ctx: &Context,
    job: &JobRow,
    sealed_password: Option<Vec<u8>>,
) -> Result<Finished, JobFailure> {
    let params: CreateTenantParams = params(job)?;
    // `_reserved` holds the template's share of the memory budget until the job is done with it.
    let (template, _reserved) = template::load(ctx, job, &params.template, Versions::Exact).await?;
    let numbers =
        map_numbers(&template.access_numbers, &params).map_err(JobFailure::BadTemplate)?;
    let admin = match &params.admin {
        Some(spec) => Some(admin_user(ctx, job.id, spec, sealed_password).await?),
        None => None,
    };
    let lock_timeout = Duration::from_secs(params.lock_timeout.into());
    let plan = Plan::from_template(
        &template,
        &job.tenant_url,
        &params.tenant_name,
        admin,
        numbers,
        lock_timeout,
    );
    // The API accepts a batch item whatever else is queued for its tenant: it gives way to
    // creates and imports submitted before it.
    let plan = match job.batch_id {
        Some(_) => plan.after_earlier(job.created_at, job.id),
        None => plan,
    };
    write_tenant(ctx, job, &plan).await
}

/// Applies `numberMap`: every key must start a template range, which moves to the mapped
/// number with the same count.
fn map_numbers(
    ranges: &[AccessNumberEntry],
    params: &CreateTenantParams,
) -> Result<Vec<AccessNumberEntry>, String> {
    if let Some(key) = params
        .number_map
        .keys()
        .find(|k| !ranges.iter().any(|r| &r.number == *k))
    {
        return Err(format!(
            "numberMap key {key} is not the first number of any access number range in the template"
        ));
    }
    ranges
        .iter()
        .map(|r| {
            let number = params
                .number_map
                .get(&r.number)
                .unwrap_or(&r.number)
                .clone();
            if !range_fits(&number, r.count) {
                return Err(format!(
                    "numberMap value {number} cannot hold a range of {} numbers",
                    r.count
                ));
            }
            Ok(AccessNumberEntry {
                number,
                count: r.count,
                media: r.media.clone(),
            })
        })
        .collect()
}

/// The request's administrator, with its sealed password (`read` with the job, or read now)
/// opened and hashed (Argon2id).
async fn admin_user(
    ctx: &Context,
    job_id: Uuid,
    spec: &AdminSpec,
    read: Option<Vec<u8>>,
) -> Result<UserEntry, JobFailure> {
    let sealed = match read {
        Some(sealed) => sealed,
        None => db::jobs::sealed_password(&ctx.pool, job_id)
            .await?
            .ok_or_else(|| {
                JobFailure::Internal("the job carries no administrator password".to_owned())
            })?,
    };
    let password = ctx
        .sealer
        .open(&sealed, job_id.as_bytes())
        .map_err(|e| JobFailure::Internal(e.to_string()))?;
    // On the process's hashing pool: as many hashes at once as cores (or job slots, if fewer).
    let hash = provisioner_shared::passwords::pool(usize::from(ctx.settings.worker_concurrency))
        .hash(password)
        .await
        .map_err(|e| JobFailure::fault("password hashing crashed", e))?;
    Ok(UserEntry {
        id: Uuid::now_v7(),
        login_id: spec.login_id.clone(),
        first_name: spec.first_name.clone(),
        last_name: spec.last_name.clone(),
        email: spec.email.clone(),
        roles: vec!["admin".to_owned()],
        password_hash: Some(hash),
        teams: vec![],
    })
}
