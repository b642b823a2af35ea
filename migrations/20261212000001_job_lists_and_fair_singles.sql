-- Three changes of one release: job lists by status, replaced batch items' jobs purged on
-- their own, and a client's queued single jobs found by client (fairness between lanes).
--
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

-- A batch item's job that a retry replaced is purged once it was replaced longer ago than the
-- retention, like a single job after its end, not only with its batch: a batch retried again
-- and again keeps its replaced rows no longer than any ended job, and each stays readable for
-- the whole retention after its replacement.
ALTER TABLE jobs ADD COLUMN superseded_at timestamptz;
-- Jobs replaced before this migration count from now.
UPDATE jobs SET superseded_at = now() WHERE superseded;
CREATE INDEX jobs_superseded_at ON jobs (superseded_at) WHERE superseded_at IS NOT NULL;

-- A client's queued single jobs: the dispatcher holds a client's batch items back while one of
-- its single jobs past its interactive ones waits, and looks that up here (one entry, however
-- many batch items the client has queued).
CREATE INDEX jobs_queued_singles_by_client ON jobs (client_id)
    WHERE status = 'queued' AND batch_id IS NULL;
