-- The template store, batches with exact progress, and the counters that keep admission O(1).

-- Templates, content-addressed by the SHA-256 of their bytes, kept in PostgreSQL so that every
-- process reaches them over the network (no shared file system). A template is kept while a
-- client keeps it, a queued or running job needs it, or a batch pins it; the sweeper removes
-- the rest.
CREATE TABLE templates (
    id              text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{64}$'),
    content         bytea NOT NULL,
    bytes           bigint NOT NULL CHECK (bytes = length(content)),
    -- Known once the template was checked as a create template (stored by a client).
    db_version      bigint,
    users           integer,
    objects         integer,
    access_numbers  integer,
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- ZIP entries are compressed already: store the bytes as they are, out of line.
ALTER TABLE templates ALTER COLUMN content SET STORAGE EXTERNAL;

-- The templates each client stored (`POST /configapi/v2/templates`), with its own label.
CREATE TABLE client_templates (
    client_id    text NOT NULL,
    template_id  text NOT NULL REFERENCES templates (id),
    name         text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, template_id)
);
CREATE INDEX client_templates_listing ON client_templates (client_id, created_at DESC, template_id DESC);
CREATE INDEX client_templates_template ON client_templates (template_id);

-- Batches: one row each, with counts kept exact by a trigger in the transaction of every change
-- of their jobs (the parts always add up to `total`).
CREATE TABLE batches (
    id                uuid PRIMARY KEY,
    client_id         text NOT NULL,
    status            text NOT NULL DEFAULT 'running'
                      CHECK (status IN ('running', 'completed', 'cancelled')),
    cancel_requested  boolean NOT NULL DEFAULT false,
    total             integer NOT NULL DEFAULT 0,
    queued            integer NOT NULL DEFAULT 0,
    running           integer NOT NULL DEFAULT 0,
    succeeded         integer NOT NULL DEFAULT 0,
    failed            integer NOT NULL DEFAULT 0,
    cancelled         integer NOT NULL DEFAULT 0,
    -- Queued items not yet released to the broker (see the dispatcher).
    held              integer NOT NULL DEFAULT 0,
    version           integer NOT NULL DEFAULT 1,
    idempotency_key   text,
    request_digest    text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    CHECK (queued + running + succeeded + failed + cancelled = total),
    CHECK (held BETWEEN 0 AND queued),
    CHECK ((status = 'running') = (finished_at IS NULL))
);
CREATE UNIQUE INDEX batches_idempotency ON batches (client_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX batches_listing ON batches (client_id, created_at DESC, id DESC);
CREATE INDEX batches_unfinished ON batches (client_id) WHERE status = 'running';
CREATE INDEX batches_held ON batches (client_id, created_at) WHERE held > 0;

-- The templates a batch uses (named by id, or downloaded once for the whole batch): kept as
-- long as the batch, so that a retry reads the same bytes.
CREATE TABLE batch_templates (
    batch_id     uuid NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    template_id  text NOT NULL REFERENCES templates (id),
    PRIMARY KEY (batch_id, template_id)
);
CREATE INDEX batch_templates_template ON batch_templates (template_id);

-- One download per batch and template URL: the first item that needs the URL takes the fetch
-- lease; the others wait for its result. Transient faults count `attempts` for the whole batch.
CREATE TABLE batch_downloads (
    batch_id        uuid NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    url             text NOT NULL,
    template_id     text REFERENCES templates (id),
    attempts        integer NOT NULL DEFAULT 0,
    failure_code    integer,
    failure_detail  text,
    fetcher         uuid,
    fetch_until     timestamptz,
    next_try_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, url)
);
CREATE INDEX batch_downloads_template ON batch_downloads (template_id) WHERE template_id IS NOT NULL;

-- Clients whose batch items the dispatcher released least recently go first.
CREATE TABLE dispatch_turns (
    client_id         text PRIMARY KEY,
    last_released_at  timestamptz NOT NULL DEFAULT now()
);

-- Queued and running jobs outside batches, per client, for the per-client cap: spread over 16
-- shards (by backend) so concurrent creates of one client do not queue on one counter row.
CREATE TABLE client_active_jobs (
    client_id  text     NOT NULL,
    shard      smallint NOT NULL,
    n          bigint   NOT NULL,
    PRIMARY KEY (client_id, shard)
);
INSERT INTO client_active_jobs (client_id, shard, n)
    SELECT client_id, 0, count(*) FROM jobs
    WHERE status IN ('queued', 'running') AND batch_id IS NULL GROUP BY client_id;

ALTER TABLE jobs
    -- The stored template a queued or running job reads; cleared when the job ends.
    ADD COLUMN template_id  text REFERENCES templates (id),
    -- The item's 0-based position in its batch.
    ADD COLUMN batch_item   integer,
    -- A batch item's job that a retry replaced (it stays readable, no longer counted).
    ADD COLUMN superseded   boolean NOT NULL DEFAULT false,
    -- Batch items: when the dispatcher released the job to the broker (null: held here).
    ADD COLUMN released_at  timestamptz,
    ADD CONSTRAINT jobs_batch_item CHECK ((batch_id IS NULL) = (batch_item IS NULL));

CREATE INDEX jobs_template ON jobs (template_id) WHERE template_id IS NOT NULL;
-- The newest job of each item of a batch, in item order.
CREATE UNIQUE INDEX jobs_batch_items ON jobs (batch_id, batch_item)
    WHERE batch_id IS NOT NULL AND NOT superseded;
-- Items the dispatcher may release, in item order.
CREATE INDEX jobs_batch_held ON jobs (batch_id, batch_item)
    WHERE batch_id IS NOT NULL AND status = 'queued' AND released_at IS NULL;
-- Batch items released and not ended: the dispatcher keeps their number under its window.
CREATE INDEX jobs_batch_in_flight ON jobs (status)
    WHERE batch_id IS NOT NULL AND released_at IS NOT NULL AND status IN ('queued', 'running');
-- One active single create per tenant URL; batch items are checked by their import instead (an
-- item whose tenant exists, or is being made, ends with code 409), and so are imports.
DROP INDEX jobs_one_active_per_tenant;
CREATE UNIQUE INDEX jobs_one_active_per_tenant ON jobs (tenant_url)
    WHERE status IN ('queued', 'running') AND batch_id IS NULL AND kind = 'createTenant';
CREATE INDEX jobs_active_batch_url ON jobs (tenant_url)
    WHERE status IN ('queued', 'running') AND batch_id IS NOT NULL;
-- Replaced by `client_active_jobs`.
DROP INDEX jobs_active_by_client;

-- Keeps `batches` counts and `client_active_jobs` in step with every statement that inserts or
-- updates jobs: the change is what the new rows count minus what the old rows counted.
CREATE FUNCTION jobs_count_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH rows AS (
        SELECT batch_id, client_id, status, released_at, superseded, 1 AS sign FROM new_rows
        UNION ALL
        SELECT batch_id, client_id, status, released_at, superseded, -1 FROM old_rows
    ), deltas AS (
        SELECT batch_id,
               sum(sign)::int AS total,
               coalesce(sum(sign) FILTER (WHERE status = 'queued'), 0)::int AS queued,
               coalesce(sum(sign) FILTER (WHERE status = 'running'), 0)::int AS running,
               coalesce(sum(sign) FILTER (WHERE status = 'succeeded'), 0)::int AS succeeded,
               coalesce(sum(sign) FILTER (WHERE status = 'failed'), 0)::int AS failed,
               coalesce(sum(sign) FILTER (WHERE status = 'cancelled'), 0)::int AS cancelled,
               coalesce(sum(sign) FILTER (WHERE status = 'queued' AND released_at IS NULL), 0)::int
                   AS held
        FROM rows WHERE batch_id IS NOT NULL AND NOT superseded
        GROUP BY batch_id
    )
    UPDATE batches b SET
        total = b.total + d.total,
        queued = b.queued + d.queued,
        running = b.running + d.running,
        succeeded = b.succeeded + d.succeeded,
        failed = b.failed + d.failed,
        cancelled = b.cancelled + d.cancelled,
        held = b.held + d.held
    FROM deltas d
    WHERE b.id = d.batch_id
      AND (d.total, d.queued, d.running, d.succeeded, d.failed, d.cancelled, d.held)
          <> (0, 0, 0, 0, 0, 0, 0);

    WITH rows AS (
        SELECT client_id, 1 AS sign FROM new_rows
        WHERE batch_id IS NULL AND status IN ('queued', 'running')
        UNION ALL
        SELECT client_id, -1 FROM old_rows
        WHERE batch_id IS NULL AND status IN ('queued', 'running')
    ), deltas AS (
        SELECT client_id, sum(sign) AS n FROM rows GROUP BY client_id HAVING sum(sign) <> 0
    )
    INSERT INTO client_active_jobs (client_id, shard, n)
    SELECT client_id, pg_backend_pid() % 16, n FROM deltas
    ON CONFLICT (client_id, shard) DO UPDATE SET n = client_active_jobs.n + EXCLUDED.n;
    RETURN NULL;
END
$$;

-- An INSERT has no old rows: the same counting, new rows only.
CREATE FUNCTION jobs_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE batches b SET
        total = b.total + d.n,
        queued = b.queued + d.queued,
        held = b.held + d.held
    FROM (SELECT batch_id, count(*) AS n,
                 count(*) FILTER (WHERE status = 'queued') AS queued,
                 count(*) FILTER (WHERE status = 'queued' AND released_at IS NULL) AS held
          FROM new_rows WHERE batch_id IS NOT NULL AND NOT superseded
          GROUP BY batch_id) d
    WHERE b.id = d.batch_id;

    INSERT INTO client_active_jobs (client_id, shard, n)
    SELECT client_id, pg_backend_pid() % 16, count(*) FROM new_rows
    WHERE batch_id IS NULL AND status IN ('queued', 'running')
    GROUP BY client_id
    ON CONFLICT (client_id, shard) DO UPDATE SET n = client_active_jobs.n + EXCLUDED.n;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_count_inserted AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_inserted();
CREATE TRIGGER jobs_count_updated AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_statement();
