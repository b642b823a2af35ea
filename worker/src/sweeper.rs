//! Rescues jobs whose worker died or hung: a running job whose lease ran out goes back to the
//! queue (or fails with code 500 when out of attempts).

use std::{sync::Arc, time::Duration};

use provisioner_shared::db;
use tokio_util::sync::CancellationToken;

use crate::jobs::Context;

pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let every = (ctx.settings.job_lease / 3).max(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(e) = sweep(&ctx).await {
            tracing::warn!(error = %e, "lease sweep failed");
        }
    }
}

async fn sweep(ctx: &Context) -> Result<(), sqlx::Error> {
    for id in db::jobs::expired_leases(&ctx.pool, 100).await? {
        let mut tx = ctx.pool.begin().await?;
        if let Some(job) = db::jobs::rescue(&mut tx, id, ctx.settings.job_max_attempts).await? {
            tracing::warn!(job.id = %id, status = %job.status, "rescued a job whose lease ran out");
        }
        tx.commit().await?;
    }
    Ok(())
}
