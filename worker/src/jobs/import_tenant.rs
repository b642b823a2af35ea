//! `importTenant`: move a tenant between clusters. Ids, URL, name, SIP domain, settings, users
//! with their password hashes, calling lists and history are kept; an older template is
//! upgraded when every step is known.

use std::time::Duration;

use provisioner_shared::{
    db::jobs::JobRow,
    domain::{ImportTenantParams, TemplateSource},
    template::Template,
};
use uuid::Uuid;

use super::{Context, Step, template_bytes};
use crate::import::{self, Plan};

pub async fn run(ctx: &Context, job: &JobRow, token: Uuid) -> Step {
    let params: ImportTenantParams = match serde_json::from_value(job.params.clone()) {
        Ok(p) => p,
        Err(e) => {
            return Step::fail(
                500,
                "Internal Server Error",
                format!("the job's parameters are unreadable: {e}"),
            );
        }
    };
    let bytes = match template_bytes(ctx, job, &TemplateSource::Upload).await {
        Ok(b) => b,
        Err(step) => return step,
    };
    let (limits, db_version) = (ctx.limits, ctx.db_version);
    let template = match tokio::task::spawn_blocking(move || {
        Template::read_upgrading(&bytes, &limits, db_version)
    })
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Step::fail(400, "Bad template", e.to_string()),
        Err(e) => return Step::Transient(format!("template reader crashed: {e}")),
    };
    if provisioner_shared::domain::TenantUrl::parse(&template.tenant.url).is_err() {
        return Step::fail(
            400,
            "Bad template",
            format!(
                "tenant.json url `{}` is not a host name",
                template.tenant.url
            ),
        );
    }
    let plan = Plan::for_import(
        &template,
        &format!("client:{}", job.client_id),
        Duration::from_secs(params.lock_timeout.into()),
    );
    import::run(&ctx.pool, ctx.settings.import_lock, job.id, token, &plan)
        .await
        .unwrap_or_else(Step::from)
}
