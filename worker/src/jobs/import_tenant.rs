//! `importTenant`: move a tenant between clusters. Ids, URL, name, SIP domain, settings, users
//! with their password hashes, calling lists and history are kept; an older template is
//! upgraded when every step is known.

use std::time::Duration;

use provisioner_shared::{
    db::jobs::JobRow,
    domain::{ImportTenantParams, TemplateSource, TenantUrl},
};
use uuid::Uuid;

use super::{
    Context, Finished, JobFailure, params,
    template::{self, Versions},
    write_tenant,
};
use crate::tenant_write::Plan;

pub(super) async fn run(ctx: &Context, job: &JobRow, token: Uuid) -> Result<Finished, JobFailure> {
    let params: ImportTenantParams = params(job)?;
    let template = template::load(ctx, job, &TemplateSource::Upload, Versions::Upgradable).await?;
    if TenantUrl::parse(&template.tenant.url).is_err() {
        return Err(JobFailure::BadTemplate(format!(
            "tenant.json url `{}` is not a host name",
            template.tenant.url
        )));
    }
    let actor = format!("client:{}", job.client_id);
    let plan = Plan::for_import(
        &template,
        &actor,
        Duration::from_secs(params.lock_timeout.into()),
    );
    write_tenant(ctx, job, token, &plan).await
}
