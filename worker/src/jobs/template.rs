//! A job's template: downloaded, or read from the template store, then read (and upgraded, for
//! Import Tenant) in a blocking task, within the process's template memory budget. Every fault
//! in the template itself is code 400.

use std::sync::Arc;

use provisioner_shared::{
    budget::Reserved,
    db::{self, jobs::JobRow},
    domain::TemplateSource,
    template::{Contents, Costs, Template},
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
/// template and what the job builds from it to write it are in memory (both reserved at once,
/// before reading: a job never waits for more while it holds a share). A stored template read
/// for a create recently is not read again.
pub(super) async fn load(
    ctx: &Context,
    job: &JobRow,
    source: &TemplateSource,
    versions: Versions,
) -> Result<(Arc<Template>, Reserved), JobFailure> {
    let stored_id = stored_id(ctx, job, source).await?;
    let cacheable = stored_id.as_deref().filter(|_| versions == Versions::Exact);
    if let Some((template, costs)) = cacheable.and_then(|id| ctx.recent.read(id)) {
        return Ok((template, reserve(ctx, costs).await));
    }
    let bytes = match (&stored_id, source) {
        (Some(id), _) => stored(ctx, id).await?,
        (None, TemplateSource::Url(url)) => download(ctx, url).await?,
        (None, TemplateSource::Stored(id)) => stored(ctx, id).await?,
    };
    let (limits, db_version) = (ctx.limits, ctx.db_version);
    let contents = match versions {
        Versions::Exact => Contents::ForCreate,
        Versions::Upgradable => Contents::All,
    };
    let costs = Template::costs(&bytes, &limits, contents)
        .map_err(|e| JobFailure::BadTemplate(e.to_string()))?;
    let reserved = reserve(ctx, costs).await;
    let read = tokio::task::spawn_blocking(move || match versions {
        Versions::Exact => Template::read_for_create(&bytes, &limits, db_version),
        Versions::Upgradable => Template::read_upgrading(&bytes, &limits, db_version),
    });
    match read.await {
        Ok(Ok(t)) => {
            let template = Arc::new(t);
            if let Some(id) = cacheable {
                ctx.recent.keep_read(id, &template, costs);
            }
            Ok((template, reserved))
        }
        Ok(Err(e)) => Err(JobFailure::BadTemplate(e.to_string())),
        Err(e) => Err(JobFailure::fault("the template reader crashed", e)),
    }
}

/// Reserves the job's share of the budget: the template read, and what its write builds from
/// it.
async fn reserve(ctx: &Context, costs: Costs) -> Reserved {
    let share = costs.reading + costs.writing;
    let reserved = ctx.template_budget.reserve(share).await;
    tracing::debug!(bytes = share, "template memory reserved");
    reserved
}

/// The store's id of the job's template: named, or the one its batch pinned for its URL
/// (`None`: a single create downloads its URL).
async fn stored_id(
    ctx: &Context,
    job: &JobRow,
    source: &TemplateSource,
) -> Result<Option<String>, JobFailure> {
    match (source, job.batch_id) {
        // A batch's items share one pinned download of their URL.
        (TemplateSource::Url(url), Some(batch)) => {
            Ok(Some(super::pin::resolve(ctx, batch, url).await?))
        }
        (TemplateSource::Url(_), None) => Ok(None),
        (TemplateSource::Stored(id), _) => Ok(Some(id.clone())),
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
