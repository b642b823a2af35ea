//! A job's template: downloaded or read from its upload, then read (and upgraded, for Import
//! Tenant) in a blocking task. Every fault in the template itself is code 400.

use provisioner_shared::{db::jobs::JobRow, domain::TemplateSource, template::Template, uploads};

use super::{Context, JobFailure};
use crate::fetch::FetchError;

/// Which database versions a template may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Versions {
    /// Exactly the server's (create-from-template).
    Exact,
    /// The server's, or an older one that can be upgraded (Import Tenant).
    Upgradable,
}

/// Loads and reads the job's template.
pub(super) async fn load(
    ctx: &Context,
    job: &JobRow,
    source: &TemplateSource,
    versions: Versions,
) -> Result<Template, JobFailure> {
    let bytes = bytes(ctx, job, source).await?;
    let (limits, db_version) = (ctx.limits, ctx.db_version);
    let read = tokio::task::spawn_blocking(move || match versions {
        Versions::Exact => Template::read(&bytes, &limits, db_version),
        Versions::Upgradable => Template::read_upgrading(&bytes, &limits, db_version),
    });
    match read.await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(JobFailure::BadTemplate(e.to_string())),
        Err(e) => Err(JobFailure::fault("the template reader crashed", e)),
    }
}

/// The template's bytes: downloaded, or read from the job's upload.
async fn bytes(
    ctx: &Context,
    job: &JobRow,
    source: &TemplateSource,
) -> Result<bytes::Bytes, JobFailure> {
    let path = match source {
        TemplateSource::Url(url) => {
            return ctx.fetcher.get(url).await.map_err(|e| match e {
                FetchError::Permanent(detail) => JobFailure::BadTemplate(detail),
                FetchError::Transient(detail) => JobFailure::transient(detail),
            });
        }
        TemplateSource::Upload => uploads::path(&ctx.settings.upload_dir, job.id),
    };
    let max = ctx.settings.template_max_bytes;
    match tokio::fs::read(&path).await {
        Ok(b) if b.len() as u64 <= max => Ok(b.into()),
        Ok(_) => Err(JobFailure::BadTemplate(format!(
            "the template is larger than {max} bytes"
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(JobFailure::Internal(
            "the uploaded template is no longer available".to_owned(),
        )),
        Err(e) => Err(JobFailure::fault(
            "the uploaded template could not be read",
            e,
        )),
    }
}
