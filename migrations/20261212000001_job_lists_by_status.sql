-- Job lists read one index range per status, newest first, whatever the filters: a page costs
-- the same however many jobs the tables hold and however rarely the status asked for occurs.
-- A list without a status merges the five ranges (`db::jobs::list`). Partial indexes name the
-- status in their predicates, so a status change was never a heap-only update and already wrote
-- an entry in each of these indexes: the status in their keys adds none.

-- A client's jobs (`GET /configapi/v2/jobs`, the dashboard).
DROP INDEX jobs_listing;
CREATE INDEX jobs_listing ON jobs (client_id, status, created_at DESC, id DESC);

-- Every client's jobs (an operator's list).
DROP INDEX jobs_newest;
CREATE INDEX jobs_newest ON jobs (status, created_at DESC, id DESC);

-- A batch's jobs, superseded ones included (retention removes a batch's jobs through it too).
DROP INDEX jobs_by_batch;
CREATE INDEX jobs_by_batch ON jobs (batch_id, status, created_at DESC, id DESC)
    WHERE batch_id IS NOT NULL;

-- A tenant's jobs, of every kind, by status: the list filtered on `tenantUrl`, and the checks
-- for an active batch item or import of a URL (admission, a batch item's precedence), which read
-- only the queued and running ranges however many ended jobs the URL has, as the two partial
-- indexes this one replaces did.
CREATE INDEX jobs_by_tenant ON jobs (tenant_url, status, created_at DESC, id DESC);
DROP INDEX jobs_active_batch_url;
DROP INDEX jobs_active_import_url;

-- The oldest queued single create (`/metrics`): the first entry, however many batch items are
-- queued and held (a minimum over a wider index walked past them).
CREATE INDEX jobs_queued_singles ON jobs (created_at)
    WHERE status = 'queued' AND batch_id IS NULL AND kind = 'createTenant';
