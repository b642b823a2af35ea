//! A job's template: downloaded or read from its upload, then read (and upgraded, for Import
//! Tenant) in a blocking task, within the process's template memory budget. Every fault in the
//! template itself is code 400.

use std::sync::Arc;

use provisioner_shared::{
    db::jobs::JobRow,
    domain::TemplateSource,
    template::{Contents, Template},
    uploads,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// The memory this process may spend reading templates at once, in KiB permits: a template
/// takes its reading cost before it is read and gives it back when its job is done with it.
#[derive(Debug, Clone)]
pub(crate) struct TemplateBudget {
    permits: Arc<Semaphore>,
    total_kib: u32,
}

/// A share of the budget; dropping it gives it back.
#[derive(Debug)]
pub(super) struct Reserved(#[expect(dead_code, reason = "held, never read")] OwnedSemaphorePermit);

impl TemplateBudget {
    pub(crate) fn new(bytes: u64) -> Self {
        let total_kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, Semaphore::MAX_PERMITS as u32);
        Self {
            permits: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// Permits for `cost` bytes: at most the whole budget, so a template costing more is read
    /// alone rather than never.
    fn permits_for(&self, cost: u64) -> u32 {
        u32::try_from(cost.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib)
    }

    /// Waits until `cost` bytes fit in the budget.
    pub(super) async fn reserve(&self, cost: u64) -> Reserved {
        let permits = self
            .permits
            .clone()
            .acquire_many_owned(self.permits_for(cost));
        Reserved(
            permits
                .await
                .expect("the budget's semaphore is never closed"),
        )
    }

    /// `reserve` without waiting: `None` when `cost` does not fit now.
    #[cfg(test)]
    fn try_reserve(&self, cost: u64) -> Option<Reserved> {
        let n = self.permits_for(cost);
        self.permits
            .clone()
            .try_acquire_many_owned(n)
            .ok()
            .map(Reserved)
    }
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

/// The template's bytes: downloaded, or read from the job's upload.
async fn bytes(
    ctx: &Context,
    job: &JobRow,
    source: &TemplateSource,
) -> Result<bytes::Bytes, JobFailure> {
    let path = match source {
        TemplateSource::Url(url) if job.batch_id.is_some() => {
            let batch = job.batch_id.expect("matched");
            return super::pin::bytes(ctx, batch, url).await;
        }
        TemplateSource::Url(url) => {
            return ctx.fetcher.get(url).await.map_err(|e| match e {
                FetchError::Permanent(detail) => JobFailure::BadTemplate(detail),
                FetchError::Transient(detail) => JobFailure::transient(detail),
            });
        }
        TemplateSource::Stored(_) => uploads::path(&ctx.settings.upload_dir, job.id),
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

#[cfg(test)]
mod tests {
    use super::TemplateBudget;

    #[test]
    fn templates_wait_for_their_share_of_the_budget_and_a_huge_one_is_read_alone() {
        let budget = TemplateBudget::new(10 << 20);
        let first = budget.try_reserve(6 << 20).expect("fits an empty budget");
        assert!(
            budget.try_reserve(6 << 20).is_none(),
            "6 + 6 MiB exceed 10 MiB"
        );
        let small = budget.try_reserve(4 << 20).expect("6 + 4 MiB fit");
        drop(first);
        let second = budget
            .try_reserve(6 << 20)
            .expect("given back by the first");
        drop((small, second));
        let huge = budget
            .try_reserve(1 << 40)
            .expect("a template costing more than the budget takes all of it");
        assert!(budget.try_reserve(1).is_none(), "and is read alone");
        drop(huge);
        assert!(budget.try_reserve(10 << 20).is_some());
    }
}
