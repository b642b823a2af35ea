//! `importTenant`: move a tenant between clusters. Ids, URL, name, SIP domain, settings, users
//! with their password hashes, calling lists and history are kept; an older template is
//! upgraded when every step is known.

use std::time::Duration;

use provisioner_shared::{
    db::jobs::JobRow,
    domain::{ImportTenantParams, TemplateSource, TenantUrl},
};
use uuid::Uuid;

use super::{Context, Step, Versions, load_template, params};
use crate::import::{self, Plan};

pub async fn run(ctx: &Context, job: &JobRow, token: Uuid) -> Step {
    attempt(ctx, job, token).await.unwrap_or_else(|step| step)
}

async fn attempt(ctx: &Context, job: &JobRow, token: Uuid) -> Result<Step, Step> {
    let params: ImportTenantParams = params(job)?;
    let template = load_template(ctx, job, &TemplateSource::Upload, Versions::Upgradable).await?;
    if TenantUrl::parse(&template.tenant.url).is_err() {
        return Err(Step::fail(
            400,
            "Bad template",
            format!(
                "tenant.json url `{}` is not a host name",
                template.tenant.url
            ),
        ));
    }
    let actor = format!("client:{}", job.client_id);
    let plan = Plan::for_import(
        &template,
        &actor,
        Duration::from_secs(params.lock_timeout.into()),
    );
    Ok(import::run(&ctx.pool, ctx.settings.import_lock, job.id, token, &plan).await?)
}
