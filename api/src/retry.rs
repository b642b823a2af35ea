//! Retrying a batch's failed items: every item whose newest job failed (with one of the given
//! codes, if any) gets a new job with the same parameters, its password sealed again for the new
//! id, unless they would pass the owner's cap of unfinished batch items. Shared by the batch
//! retry route and the dashboard.

use provisioner_shared::{
    db::{self, batches::BatchRow, batches::NewItem},
    domain::{BatchStatus, TemplateSource},
    trace::TraceContext,
};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{AppState, error::ApiError, intake::over_cap, transaction};

/// Failed items read and replaced per statement.
const PAGE: i64 = 1_000;

/// What a retry did.
#[derive(Debug)]
pub(crate) enum Retried {
    /// Nothing had failed (with those codes): the batch as it was.
    Nothing(BatchRow),
    /// Items got new jobs: the batch, running again.
    Items(BatchRow),
}

/// Retries the failed items of batch `id` as seen by `sees` (`None`: an operator). `None` when
/// there is no such batch for the caller. The new jobs continue `caller_trace`, the trace the
/// retry request carried, which the batch then carries; a request that carried no valid one
/// leaves them in the batch's trace (its request's, or the last retry's that carried one), with
/// the batch's other work (a new trace would tie them to nothing).
pub(crate) async fn failed_items(
    state: &AppState,
    id: Uuid,
    sees: Option<&str>,
    codes: Option<&[i32]>,
    caller_trace: Option<TraceContext>,
) -> Result<Option<Retried>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let Some(batch) = db::batches::lock_for_retry(&mut tx, id, sees).await? else {
        return Ok(None);
    };
    if batch.cancel_requested && batch.status == BatchStatus::Running {
        // Its cancel is at work, or its running items finish after it: retried now, the new
        // items would be held back with the cancelled ones, and the batch would end
        // `cancelled` with them run or not as the race went. Once it stopped, it may be.
        return Err(ApiError::Conflict(
            "the batch is being cancelled: retry once it has stopped".to_owned(),
        ));
    }
    let trace = caller_trace
        .or_else(|| batch.traceparent.as_deref().and_then(TraceContext::parse))
        .unwrap_or_else(TraceContext::new_root);
    let retried = retry_in(state, &mut tx, &batch, codes, &trace).await;
    let retried = transaction::end(tx, retried).await?;
    let Some((retried, batch)) = retried else {
        return Ok(Some(Retried::Nothing(batch)));
    };
    tracing::info!(batch.id = %id, items = retried, "batch items retried");
    Ok(Some(Retried::Items(batch)))
}

/// Renews the failed items (with one of `codes`, if given) of `batch` in `tx`, under its
/// owner's admission lock; how many, and the batch as it is then (`None`: none failed).
async fn retry_in(
    state: &AppState,
    tx: &mut Transaction<'static, Postgres>,
    batch: &BatchRow,
    codes: Option<&[i32]>,
    trace: &TraceContext,
) -> Result<Option<(usize, BatchRow)>, ApiError> {
    let id = batch.id;
    // The owner's admission lock before any job is written (and counted), as a batch being
    // accepted takes it before it counts its items: one order, no deadlock between the two.
    db::batches::lock_admission(tx, &batch.client_id).await?;
    let mut after = -1;
    let mut retried = 0usize;
    loop {
        let failed = db::batches::failed_items(tx, id, codes, after, PAGE).await?;
        let Some(last) = failed.last() else { break };
        after = last.item;
        let mut old_jobs = Vec::with_capacity(failed.len());
        let mut items = Vec::with_capacity(failed.len());
        for old in failed {
            let item = renewed(state, &old)?;
            old_jobs.push(old.job_id);
            items.push(item);
        }
        if retried == 0 {
            db::batches::reopen(tx, id, trace).await?;
        }
        retried += items.len();
        db::batches::replace_items(tx, id, &batch.client_id, &old_jobs, &items, trace).await?;
    }
    if retried == 0 {
        return Ok(None);
    }
    // The retried items count against the owner's cap as a new batch's would.
    let cap = i64::from(state.settings.client_max_batch_items);
    let unfinished = db::batches::unfinished_items(&mut **tx, &batch.client_id).await?;
    if unfinished > cap {
        return Err(over_cap(unfinished, cap, "this retry would give"));
    }
    let batch = db::batches::find(&mut **tx, id, None)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("batch {id} vanished under its lock")))?;
    Ok(Some((retried, batch)))
}

/// A new job for a failed item: the same parameters, its password sealed again for the new id.
fn renewed(state: &AppState, old: &db::batches::FailedItem) -> Result<NewItem, ApiError> {
    let sealed = old.sealed_password.as_deref().ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!(
            "batch item {} has no sealed password to retry with",
            old.item
        ))
    })?;
    let password = state
        .sealer
        .open(sealed, old.job_id.as_bytes())
        .map_err(anyhow::Error::from)?;
    let job_id = Uuid::now_v7();
    let template_id = match serde_json::from_value::<provisioner_shared::domain::CreateTenantParams>(
        old.params.clone(),
    ) {
        Ok(params) => match params.template {
            TemplateSource::Stored(id) => Some(id),
            TemplateSource::Url(_) => None,
        },
        Err(e) => return Err(ApiError::Internal(e.into())),
    };
    Ok(NewItem {
        job_id,
        item: old.item,
        tenant_url: old.tenant_url.clone(),
        params: old.params.clone(),
        sealed_password: state.sealer.seal(&password, job_id.as_bytes()),
        template_id,
    })
}
