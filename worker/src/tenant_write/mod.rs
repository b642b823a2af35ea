//! The write transaction that create and Import Tenant share: advisory lock, the tenant with
//! its objects, users, calling lists and history, access numbers and the job's success, all
//! committed together or not at all. It reports its own outcome; the job layer decides what
//! that means for the job.

mod plan;

use std::time::{Duration, Instant};

use chrono::Utc;
use provisioner_shared::{
    config::ImportLockMode,
    db::{
        self,
        access_numbers::Placement,
        jobs::{Ending, JobRow},
        locks::LockKey,
        tenants::{Contents, TenantRow},
    },
    domain::{JobStatus, SkipReason, SkippedRange, TenantStatus, TenantSummary},
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub(crate) use plan::Plan;
use plan::Precedence;

/// How the write transaction ended; a database fault is its `Err`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteOutcome {
    /// The tenant and the job's success committed together.
    Committed,
    /// The import lock was not free within the plan's lock timeout; nothing was written.
    LockNotFree { within: Duration },
    /// A tenant with this URL exists; nothing was written.
    TenantExists { url: String },
    /// A tenant with this id exists under another URL (an import keeps its tenant's id);
    /// nothing was written.
    TenantIdTaken { id: Uuid },
    /// Another tenant has the plan's SIP domain (an import naming a domain already in use, or
    /// a create whose URL another tenant took as its SIP domain); nothing was written.
    SipDomainTaken { sip_domain: String },
    /// The plan gives way to earlier jobs, and `job`, a create or an import for the same URL
    /// submitted before it, is still queued or running; nothing was written.
    EarlierWork { url: String, job: Uuid },
    /// Another worker took the job over (this lease ran out), or, for a job not yet claimed,
    /// the job changed since it was read (claimed elsewhere, cancelled); nothing was written.
    LostLease,
}

/// Unique constraints whose violation means the tenant itself exists.
const TENANT_KEYS: [&str; 2] = ["tenants_pkey", "tenants_url_key"];
/// The unique constraint whose violation means another tenant has the SIP domain.
const SIP_DOMAIN_KEY: &str = "tenants_sip_domain_key";

/// Writes `plan` for `job`, as its claim made it (under that claim's lease), or, for a job
/// still queued as read, claiming it with the job's success (`jobs::process`): then the job's
/// row is locked first and the import lock only tried, never waited for, so that a job waiting
/// for its lock is seen running.
pub(crate) async fn run(
    pool: &PgPool,
    mode: ImportLockMode,
    job: &JobRow,
    plan: &Plan,
) -> Result<WriteOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    match write(&mut tx, mode, job, plan).await {
        Ok(()) => {
            tx.commit().await?;
            Ok(WriteOutcome::Committed)
        }
        Err(Abort::Refused(WriteOutcome::TenantExists { url })) => {
            tx.rollback().await?;
            Ok(which_exists(pool, plan, url).await)
        }
        Err(Abort::Refused(outcome)) => {
            tx.rollback().await?;
            Ok(outcome)
        }
        Err(Abort::RefusedValue(e)) => {
            tx.rollback().await?;
            refused(pool, plan, e).await
        }
        // Ended here, not when the connection goes back to the pool: the job's failure is
        // recorded on another connection, and a client that hears it may try again at once.
        Err(Abort::Database(e)) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// The tenant's URL or id found taken: which one, read after the rollback (outside the lock:
/// it only words the refusal). The id of an import may be another URL's tenant's; should the
/// read fail or find nothing any more, the URL is named, as before.
async fn which_exists(pool: &PgPool, plan: &Plan, url: String) -> WriteOutcome {
    match db::tenants::taken(pool, plan.tenant_id, &plan.tenant_url, &plan.sip_domain).await {
        Ok(taken) => refusal(taken, plan).unwrap_or(WriteOutcome::TenantExists { url }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read which key of the tenant is taken");
            WriteOutcome::TenantExists { url }
        }
    }
}

/// After PostgreSQL refused a value of the tenant's statement (`e`): the tenant's existence or
/// its SIP domain, if another tenant has either, is the outcome, as when they are found first.
/// The contents are parameters of that statement, converted before any of it runs, so a value
/// the database refuses fails it even when the tenant exists. Read after the rollback, outside
/// the lock: it only chooses which refusal the job ends with. Should the read fail, the job
/// ends with the refused value, which no retry cures.
async fn refused(pool: &PgPool, plan: &Plan, e: sqlx::Error) -> Result<WriteOutcome, sqlx::Error> {
    match db::tenants::taken(pool, plan.tenant_id, &plan.tenant_url, &plan.sip_domain).await {
        Ok(taken) => refusal(taken, plan).ok_or(e),
        Err(read) => {
            tracing::warn!(error = %read, "cannot read which keys of the tenant are taken");
            Err(e)
        }
    }
}

/// The refusal the keys `taken` say: the plan's URL (the tenant exists), its id under another
/// URL, or its SIP domain; none if all are free.
fn refusal(taken: db::tenants::Taken, plan: &Plan) -> Option<WriteOutcome> {
    if taken.url {
        Some(WriteOutcome::TenantExists {
            url: plan.tenant_url.clone(),
        })
    } else if taken.tenant {
        Some(WriteOutcome::TenantIdTaken { id: plan.tenant_id })
    } else if taken.sip_domain {
        Some(WriteOutcome::SipDomainTaken {
            sip_domain: plan.sip_domain.clone(),
        })
    } else {
        None
    }
}

/// Why the transaction is rolled back.
enum Abort {
    /// An outcome other than `Committed`.
    Refused(WriteOutcome),
    /// PostgreSQL refused a value of the tenant's statement (see `refused`).
    RefusedValue(sqlx::Error),
    Database(sqlx::Error),
}

impl From<sqlx::Error> for Abort {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

/// The steps of the transaction, in order.
async fn write(
    conn: &mut PgConnection,
    mode: ImportLockMode,
    job: &JobRow,
    plan: &Plan,
) -> Result<(), Abort> {
    let unclaimed = job.status == JobStatus::Queued;
    let lock_wait = if unclaimed {
        try_locks(conn, mode, job, &plan.tenant_url).await?
    } else {
        take_locks(conn, mode, &plan.tenant_url, plan.lock_timeout).await?
    };
    // Under the lock, in a statement of its own: a snapshot taken before the lock could miss a
    // create committed while the lock was waited for.
    give_way(conn, plan).await?;
    let tenant = insert_tenant(conn, plan).await?;
    let skipped = place_numbers(conn, &tenant, plan).await?;
    let ending = Ending::Succeeded {
        lock_wait,
        tenant: TenantSummary {
            id: tenant.id,
            url: tenant.url,
            name: tenant.name,
            status: tenant.status,
        },
        skipped,
    };
    let finished = if unclaimed {
        db::jobs::claim_and_finish(conn, job, &ending).await?
    } else {
        db::jobs::finish(conn, job, &ending).await?
    };
    match finished {
        Some(_) => Ok(()),
        None => Err(Abort::Refused(WriteOutcome::LostLease)),
    }
}

/// The import lock(s) of `mode` for tenant `url`, in the order they are taken.
fn lock_keys(mode: ImportLockMode, url: &str) -> Vec<LockKey<'_>> {
    match mode {
        ImportLockMode::Global => vec![LockKey::Global, LockKey::Tenant(url)],
        ImportLockMode::Tenant => vec![LockKey::Tenant(url)],
    }
}

/// For `job`, queued as read and not yet claimed: locks its row (so that nothing takes the job
/// over while it is written) and tries the import lock(s), without waiting.
async fn try_locks(
    conn: &mut PgConnection,
    mode: ImportLockMode,
    job: &JobRow,
    url: &str,
) -> Result<Duration, Abort> {
    // Under the global lock mode jobs are not tried (`jobs::process`); were one, it finds the
    // lock busy and is claimed.
    let ImportLockMode::Tenant = mode else {
        return Err(Abort::Refused(WriteOutcome::LockNotFree {
            within: Duration::ZERO,
        }));
    };
    match db::locks::try_for_queued_job(conn, job.id, job.version, LockKey::Tenant(url)).await? {
        Some(true) => Ok(Duration::ZERO),
        Some(false) => Err(Abort::Refused(WriteOutcome::LockNotFree {
            within: Duration::ZERO,
        })),
        None => Err(Abort::Refused(WriteOutcome::LostLease)),
    }
}

/// Takes the import lock(s) of `mode` for tenant `url`, waiting at most `wait`; returns how
/// long it waited.
async fn take_locks(
    conn: &mut PgConnection,
    mode: ImportLockMode,
    url: &str,
    wait: Duration,
) -> Result<Duration, Abort> {
    let keys = lock_keys(mode, url);
    let started = Instant::now();
    if !db::locks::acquire(conn, &keys, wait).await? {
        return Err(Abort::Refused(WriteOutcome::LockNotFree { within: wait }));
    }
    let waited = started.elapsed();
    tracing::debug!(?waited, "import lock taken");
    Ok(waited)
}

/// Under the tenant's lock: refuses the write when the plan gives way to earlier jobs of its
/// tenant (creates, imports) and one of them is still queued or running.
async fn give_way(conn: &mut PgConnection, plan: &Plan) -> Result<(), Abort> {
    let Precedence::AfterEarlier { created_at, id } = plan.precedence else {
        return Ok(());
    };
    match db::batches::earlier_active_job(conn, &plan.tenant_url, created_at, id).await? {
        Some(job) => Err(Abort::Refused(WriteOutcome::EarlierWork {
            url: plan.tenant_url.clone(),
            job,
        })),
        None => Ok(()),
    }
}

/// Inserts the tenant, Inactive, with its objects, users, calling lists and history (one
/// statement), unless one with its URL, id or SIP domain exists (the URL and id are this
/// tenant's: it exists; the SIP domain is another's: it is taken).
async fn insert_tenant(conn: &mut PgConnection, plan: &Plan) -> Result<TenantRow, Abort> {
    let exists = || {
        Abort::Refused(WriteOutcome::TenantExists {
            url: plan.tenant_url.clone(),
        })
    };
    let tenant = TenantRow {
        id: plan.tenant_id,
        url: plan.tenant_url.clone(),
        name: plan.tenant_name.clone(),
        sip_domain: plan.sip_domain.clone(),
        status: TenantStatus::Inactive,
        created_at: Utc::now(),
    };
    let contents = Contents {
        settings: Some(&plan.settings),
        objects: &plan.objects,
        users: &plan.users,
        calling_lists: &plan.calling_lists,
        audit: &plan.audit,
    };
    match db::tenants::insert(conn, &tenant, contents).await {
        Ok(true) => Ok(tenant),
        Ok(false) => Err(exists()),
        Err(e) if TENANT_KEYS.iter().any(|c| db::violates(&e, c)) => Err(exists()),
        Err(e) if db::violates(&e, SIP_DOMAIN_KEY) => {
            Err(Abort::Refused(WriteOutcome::SipDomainTaken {
                sip_domain: plan.sip_domain.clone(),
            }))
        }
        Err(e) if db::refused_value(&e) => Err(Abort::RefusedValue(e)),
        Err(e) => Err(e.into()),
    }
}

/// Places the plan's access-number ranges by the range rules (one statement for all of them,
/// in the common case); returns those left out.
async fn place_numbers(
    conn: &mut PgConnection,
    tenant: &TenantRow,
    plan: &Plan,
) -> Result<Vec<SkippedRange>, sqlx::Error> {
    let placed = db::access_numbers::place_all(conn, tenant.id, &plan.access_numbers).await?;
    let skipped = plan
        .access_numbers
        .iter()
        .zip(placed)
        .filter_map(|(range, placed)| {
            let reason = match placed {
                Placement::Created | Placement::AssignedExisting => return None,
                Placement::AssignedToOtherTenant => SkipReason::AssignedToOtherTenant,
                Placement::OverlapsExistingRange => SkipReason::OverlapsExistingRange,
            };
            Some(SkippedRange {
                number: range.number.clone(),
                count: range.count,
                reason,
            })
        })
        .collect();
    Ok(skipped)
}
