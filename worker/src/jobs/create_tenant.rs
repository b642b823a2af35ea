//! `createTenant`: fetch the template, check it, hash the administrator's password, import.

use std::time::Duration;

use provisioner_shared::{
    db::{self, jobs::JobRow},
    domain::{CreateTenantParams, TemplateSource},
    template::{AccessNumberEntry, Template, UserEntry, range_fits},
};
use uuid::Uuid;

use super::{Context, Step};
use crate::{
    fetch::FetchError,
    import::{self, Plan},
};

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
    let bytes = match &params.template {
        TemplateSource::Url(url) => match ctx.fetcher.get(url).await {
            Ok(b) => b,
            Err(FetchError::Permanent(detail)) => return Step::fail(400, "Bad template", detail),
            Err(FetchError::Transient(detail)) => return Step::Transient(detail),
        },
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
    let password_hash = match admin_password_hash(ctx, job.id).await {
        Ok(h) => h,
        Err(step) => return step,
    };
    let admin = UserEntry {
        id: Uuid::now_v7(),
        login_id: params.admin.login_id.clone(),
        first_name: params.admin.first_name.clone(),
        last_name: params.admin.last_name.clone(),
        email: params.admin.email.clone(),
        roles: vec!["admin".to_owned()],
        password_hash: Some(password_hash),
        teams: vec![],
    };
    let lock_timeout = Duration::from_secs(params.lock_timeout.into());
    let plan = Plan::from_template(
        &template,
        &job.tenant_url,
        &params.tenant_name,
        Some(admin),
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

async fn admin_password_hash(ctx: &Context, job_id: Uuid) -> Result<String, Step> {
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
    tokio::task::spawn_blocking(move || provisioner_shared::passwords::hash(&password))
        .await
        .map_err(|e| Step::Transient(format!("password hashing crashed: {e}")))
}
