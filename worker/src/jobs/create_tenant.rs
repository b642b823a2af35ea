//! `createTenant`: fetch (or load the upload of) the template, check it, hash the request's
//! administrator password, import with new ids.

use std::time::Duration;

use provisioner_shared::{
    db::{self, jobs::JobRow},
    domain::{AdminSpec, CreateTenantParams},
    template::{AccessNumberEntry, Template, UserEntry, range_fits},
};
use uuid::Uuid;

use super::{Context, Step, template_bytes};
use crate::import::{self, Plan};

pub async fn run(ctx: &Context, job: &JobRow, token: Uuid) -> Step {
    let params: CreateTenantParams = match serde_json::from_value(job.params.clone()) {
        Ok(p) => p,
        Err(e) => {
            return Step::fail(
                500,
                "Internal Server Error",
                format!("the job's parameters are unreadable: {e}"),
            );
        }
    };
    let bytes = match template_bytes(ctx, job, &params.template).await {
        Ok(b) => b,
        Err(step) => return step,
    };
    let (limits, db_version) = (ctx.limits, ctx.db_version);
    let template = match tokio::task::spawn_blocking(move || {
        Template::read(&bytes, &limits, db_version)
    })
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Step::fail(400, "Bad template", e.to_string()),
        Err(e) => return Step::Transient(format!("template reader crashed: {e}")),
    };
    let numbers = match map_numbers(&template.access_numbers, &params) {
        Ok(n) => n,
        Err(detail) => return Step::fail(400, "Bad template", detail),
    };
    let admin = match &params.admin {
        Some(spec) => match admin_user(ctx, job.id, spec).await {
            Ok(user) => Some(user),
            Err(step) => return step,
        },
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
    import::run(&ctx.pool, ctx.settings.import_lock, job.id, token, &plan)
        .await
        .unwrap_or_else(Step::from)
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

/// The request's administrator, with its sealed password opened and hashed (Argon2id).
async fn admin_user(ctx: &Context, job_id: Uuid, spec: &AdminSpec) -> Result<UserEntry, Step> {
    let sealed = db::jobs::sealed_password(&ctx.pool, job_id)
        .await?
        .ok_or_else(|| {
            Step::fail(
                500,
                "Internal Server Error",
                "the job carries no administrator password",
            )
        })?;
    let password = ctx
        .sealer
        .open(&sealed, job_id.as_bytes())
        .map_err(|e| Step::fail(500, "Internal Server Error", e.to_string()))?;
    let hash = tokio::task::spawn_blocking(move || provisioner_shared::passwords::hash(&password))
        .await
        .map_err(|e| Step::Transient(format!("password hashing crashed: {e}")))?;
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
