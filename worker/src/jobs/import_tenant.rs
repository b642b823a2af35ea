//! `importTenant`: move a tenant between clusters. Ids, URL, name, SIP domain, settings, users
//! with their password hashes, calling lists and history are kept; an older template is
//! upgraded when every step is known.

use std::time::Duration;

use provisioner_shared::{
    db::jobs::JobRow,
    domain::{ImportTenantParams, TemplateSource},
};

use super::{
    Context, Finished, JobFailure, params,
    template::{self, Versions},
    write_tenant,
};
use crate::tenant_write::Plan;

pub(super) async fn run(ctx: &Context, job: &JobRow) -> Result<Finished, JobFailure> {
    let params: ImportTenantParams = params(job)?;
    // The reader checked the tenant's URL, name and SIP domain like request fields.
    let source = TemplateSource::Stored(params.template_id.clone());
    let (template, _reserved) = template::load(ctx, job, &source, Versions::Upgradable).await?;
    let actor = format!("client:{}", job.client_id);
    let plan = Plan::for_import(
        &template,
        &actor,
        Duration::from_secs(params.lock_timeout.into()),
    );
    write_tenant(ctx, job, &plan).await
}
