//! Export Tenant: a template-format-1 ZIP of everything the tenant has, streamed. Under the
//! tenant's lock, the tenant is read a page at a time inside one snapshot while a blocking task
//! writes the archive into the response body; bounded channels between them hold a page or
//! two and a few chunks, whatever the tenant's size, and a client that stops reading stops the
//! reading.

use std::{
    io::{self, Write},
    time::{Duration, Instant},
};

use axum::{
    Extension,
    body::{Body, Bytes},
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use provisioner_shared::{
    db::{self, tenants::export::Pages},
    template::{self, Manifest, ManifestSource, Page, TemplateWriter, TenantEntry},
};
use sqlx::{Postgres, Transaction};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    AppState,
    auth::Caller,
    error::ApiError,
    extract::{RouteLockTimeout, TenantPath},
    openapi::shapes::{HostName, LockTimeoutSeconds},
    slots::Slot,
    tenant_lock::{self, Waits},
    transaction,
};

/// Rows read per page of a list.
const PER_PAGE: u16 = 200;
/// Pages read ahead of the writer.
const PAGES_AHEAD: usize = 1;
/// Size of a body chunk, and chunks written ahead of the client.
const CHUNK: usize = 64 << 10;
const CHUNKS_AHEAD: usize = 4;
/// While the export reads, the lock's session runs a statement at least this often, so the
/// idle-in-transaction timeout never ends it (and its lock) under a long export.
const KEEP_LOCK_ALIVE: Duration = Duration::from_secs(10);
/// A client that reads nothing for this long is cut off, and the export ends (as a request
/// body that stalls this long ends with 408).
const STALLED_CLIENT: Duration = Duration::from_secs(30);

/// Export Tenant: a template-format-1 ZIP of everything the tenant has, read under its lock so
/// it never observes an import half-way.
#[utoipa::path(get, path = "/configapi/v2/tenant/{tenant_url}/export", tag = "tenants", operation_id = "exportTenant",
    params(("tenant_url" = inline(HostName), Path), ("lockTimeout" = inline(Option<LockTimeoutSeconds>), Query, description = "Seconds to wait for the tenant lock (default 30)")),
    responses(
        (status = 200, description = "The tenant as a template ZIP", content_type = "application/zip"),
        (status = 400, description = "Invalid lockTimeout"),
        (status = 404, description = "No such tenant"),
        (status = 503, description = "Lock timeout; or, with Retry-After, as many exports reading or requests waiting for a lock as the server, or one client, may have")))]
pub(super) async fn export_tenant(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    TenantPath(url): TenantPath,
    wait: RouteLockTimeout,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    // A slot to read in first, holding no connection; held until the archive is written or
    // cut off, but not while the tenant's lock is waited for (that wait has slots of its own).
    let slot = state
        .exports
        .take(&caller.client_id, wait.duration())
        .await?;
    let db_version = db::schema_version(&state.pool).await?;
    let mut lock = state.pool.begin().await?;
    let found = async {
        let slot = if tenant_lock::try_lock(&mut lock, &url).await? {
            slot
        } else {
            drop(slot);
            let waits = Waits::new(&state.lock_waits, &caller);
            tenant_lock::wait_for(&mut lock, waits, &url, wait.duration(), started).await?;
            // Taken again without waiting, as the lock is held; gone meanwhile: `503`.
            state
                .exports
                .take(&caller.client_id, Duration::ZERO)
                .await?
        };
        // Taken once the lock is held: the snapshot sees whatever its last holder committed.
        let mut snapshot = db::tenants::export::snapshot(&state.pool).await?;
        let refused = match db::tenants::export::head(&mut snapshot, url.as_str()).await {
            Ok(Some(tenant)) => return Ok((snapshot, slot, tenant)),
            Ok(None) => ApiError::NotFound(format!("no tenant {url}")),
            Err(e) => e.into(),
        };
        let _ = snapshot.rollback().await;
        Err(refused)
    }
    .await;
    // The lock's transaction goes on with the archive; a refusal ends it before the answer.
    let (snapshot, slot, tenant) = match found {
        Ok(found) => found,
        Err(e) => return transaction::end(lock, Err(e)).await,
    };
    let manifest = manifest(db_version, &tenant);
    let body = stream_archive(
        manifest,
        tenant,
        Held {
            lock,
            snapshot,
            slot,
        },
    );
    let disposition = format!("attachment; filename=\"{url}.zip\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// What an export holds while it reads: the transaction holding the tenant's lock, the
/// snapshot it reads in, and its slot. All three end together.
struct Held {
    lock: Transaction<'static, Postgres>,
    snapshot: Transaction<'static, Postgres>,
    slot: Slot,
}

fn manifest(db_version: i64, tenant: &TenantEntry) -> Manifest {
    Manifest {
        format: template::FORMAT.to_owned(),
        format_version: template::FORMAT_VERSION,
        db_version,
        exported_at: chrono::Utc::now(),
        source: ManifestSource {
            tenant_id: tenant.id,
            tenant_url: tenant.url.clone(),
            tenant_name: tenant.name.clone(),
        },
    }
}

/// Starts reading the tenant under what `held` holds and writing its archive; returns the body
/// the archive streams into.
fn stream_archive(manifest: Manifest, tenant: TenantEntry, held: Held) -> Body {
    let (pages, pages_out) = mpsc::channel(PAGES_AHEAD);
    let (chunks, chunks_out) = mpsc::channel(CHUNKS_AHEAD);
    let (finished, finished_out) = oneshot::channel();
    let span = tracing::Span::current();
    tokio::spawn(read_pages(held, tenant.id, pages).instrument(span.clone()));
    let body = BodyWriter {
        chunks,
        buf: Vec::with_capacity(CHUNK),
        runtime: tokio::runtime::Handle::current(),
    };
    tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            if write_archive(&manifest, tenant, pages_out, body) {
                let _ = finished.send(());
            }
        });
    });
    Body::from_stream(stream(chunks_out, finished_out))
}

type PageResult = Result<Page, sqlx::Error>;

/// Reads the tenant's lists page by page into `pages` while `held` holds its lock; ends both
/// transactions, then frees the slot, when done or when the writer stopped (the client went
/// away).
async fn read_pages(held: Held, tenant: Uuid, pages: mpsc::Sender<PageResult>) {
    let Held {
        mut lock,
        mut snapshot,
        slot,
    } = held;
    let mut lists = Pages::new(tenant, PER_PAGE);
    let mut kept = Instant::now();
    loop {
        let mut next = lists.next(&mut snapshot).await;
        if next.is_ok() && kept.elapsed() >= KEEP_LOCK_ALIVE {
            next = db::locks::keep_alive(&mut lock).await.and(next);
            kept = Instant::now();
        }
        let page = match next {
            Ok(Some(page)) => page,
            Ok(None) => break,
            Err(e) => {
                tracing::error!(error = %e, "reading the tenant for its export failed");
                // Ended before the writer hears of it and cuts the body short, so the lock and
                // the slot are free when the client sees the cut.
                let _ = snapshot.rollback().await;
                let _ = lock.rollback().await;
                drop(slot);
                let _ = pages.send(Err(e)).await;
                return;
            }
        };
        if pages.send(Ok(page)).await.is_err() {
            // The writer stopped: the client went away.
            let _ = snapshot.rollback().await;
            let _ = lock.rollback().await;
            return;
        }
    }
    if let Err(e) = snapshot.commit().await {
        tracing::warn!(error = %e, "ending the export's snapshot failed");
    }
    if let Err(e) = lock.commit().await {
        tracing::warn!(error = %e, "releasing the export's tenant lock failed");
    }
    drop(slot);
}

/// Writes the archive of `pages` into the body; says whether it wrote it whole.
fn write_archive(
    manifest: &Manifest,
    tenant: TenantEntry,
    mut pages: mpsc::Receiver<PageResult>,
    body: BodyWriter,
) -> bool {
    let written = (|| {
        let mut archive = TemplateWriter::new(body, manifest, &tenant)?;
        drop(tenant);
        while let Some(page) = pages.blocking_recv() {
            archive.page(&page.map_err(io::Error::other)?)?;
        }
        archive.finish().map(drop)
    })();
    if let Err(e) = &written {
        tracing::warn!(error = %e, "the export was cut short");
    }
    written.is_ok()
}

/// The response body as a `Write` (for a blocking task): bytes go out in chunks of `CHUNK`,
/// waiting while the client is `CHUNKS_AHEAD` chunks behind, at most `STALLED_CLIENT`.
struct BodyWriter {
    chunks: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    runtime: tokio::runtime::Handle,
}

impl BodyWriter {
    fn send(&mut self) -> io::Result<()> {
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        let sent = self
            .runtime
            .block_on(self.chunks.send_timeout(chunk, STALLED_CLIENT));
        sent.map_err(|e| match e {
            mpsc::error::SendTimeoutError::Timeout(_) => {
                io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")
            }
            mpsc::error::SendTimeoutError::Closed(_) => {
                io::Error::new(io::ErrorKind::BrokenPipe, "the client went away")
            }
        })
    }
}

impl Write for BodyWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

/// The body: the chunks, then an error unless the archive was written whole, so a client sees
/// a cut response, never a short archive that looks whole.
fn stream(
    chunks: mpsc::Receiver<Bytes>,
    finished: oneshot::Receiver<()>,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> {
    futures_util::stream::unfold(
        (chunks, Some(finished)),
        |(mut chunks, finished)| async move {
            if let Some(chunk) = chunks.recv().await {
                return Some((Ok(chunk), (chunks, finished)));
            }
            match finished?.await {
                Ok(()) => None,
                Err(_) => Some((
                    Err(io::Error::other("the export was cut short")),
                    (chunks, None),
                )),
            }
        },
    )
}
