//! A job's template: downloaded, or read from the template store, then read (and upgraded, for
//! Import Tenant) in a blocking task, within the process's template memory budget. Every fault
//! in the template itself is code 400.

use provisioner_shared::{
    budget::Reserved,
    db::{self, jobs::JobRow},
    domain::TemplateSource,
    template::{Contents, Template},
};

use super::{Context, JobFailure};
use crate::fetch::FetchError;

/// Which database versions a template may have, and what of it the job imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Versions {
    /// Exactly the server's; only what create imports is built.
    Exact,
    /// The server's, or an older one that can be upgraded; everything (Import Tenant).
    Upgradable,
}

/// Loads and reads the job's template; the reservation holds its share of the budget while the
/// template (and what the job builds from it) is in memory.
pub(super) async fn load(
    ctx: &Context,
    job: &JobRow,
    source: &TemplateSource,
    versions: Versions,
) -> Result<(Template, Reserved), JobFailure> {
    let bytes = bytes(ctx, job, source).await?;
    let (limits, db_version) = (ctx.limits, ctx.db_version);
    let contents = match versions {
        Versions::Exact => Contents::ForCreate,
        Versions::Upgradable => Contents::All,
    };
    let cost = Template::reading_cost(&bytes, &limits, contents)
        .map_err(|e| JobFailure::BadTemplate(e.to_string()))?;
    let reserved = ctx.template_budget.reserve(cost).await;
    let read = tokio::task::spawn_blocking(move || match versions {
        Versions::Exact => Template::read_for_create(&bytes, &limits, db_version),
        Versions::Upgradable => Template::read_upgrading(&bytes, &limits, db_version),
    });
    match read.await {
        Ok(Ok(t)) => Ok((t, reserved)),
        Ok(Err(e)) => Err(JobFailure::BadTemplate(e.to_string())),
        Err(e) => Err(JobFailure::fault("the template reader crashed", e)),
    }
}

/// The template's bytes, from where the job's parameters say. Each source is one case here.
async fn bytes(
    ctx: &Context,
    job: &JobRow,
    source: &TemplateSource,
) -> Result<bytes::Bytes, JobFailure> {
    match (source, job.batch_id) {
        // A batch's items share one pinned download of their URL.
        (TemplateSource::Url(url), Some(batch)) => {
            let id = super::pin::resolve(ctx, batch, url).await?;
            stored(ctx, &id).await
        }
        (TemplateSource::Url(url), None) => download(ctx, url).await,
        (TemplateSource::Stored(id), _) => stored(ctx, id).await,
    }
}

async fn download(ctx: &Context, url: &str) -> Result<bytes::Bytes, JobFailure> {
    ctx.fetcher.get(url).await.map_err(|e| match e {
        FetchError::Permanent(detail) => JobFailure::BadTemplate(detail),
        FetchError::Transient(detail) => JobFailure::transient(detail),
    })
}

/// A template of the store. The job's reference (`jobs.template_id`) keeps it there until the
/// job ends, so one that is gone is a fault of this system, not of the template.
async fn stored(ctx: &Context, id: &str) -> Result<bytes::Bytes, JobFailure> {
    if let Some(bytes) = ctx.recent.template(id) {
        return Ok(bytes);
    }
    match db::templates::content(&ctx.pool, id).await? {
        Some(bytes) => {
            let bytes = bytes::Bytes::from(bytes);
            ctx.recent.keep_template(id, &bytes);
            Ok(bytes)
        }
        None => Err(JobFailure::Internal(format!(
            "the stored template {id} is no longer in the template store"
        ))),
    }
}
