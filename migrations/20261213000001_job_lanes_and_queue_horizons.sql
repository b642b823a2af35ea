-- The reconciler sends a queued job again only when its message can no longer be on the broker,
-- and finds such jobs without reading the others.
--
-- A job's lane: the job queue its message was last sent to ('interactive': the client's first
-- few single jobs, on `provisioner.jobs.create-tenant`; 'backlog': its single jobs past those;
-- 'batch': batch items, from their insert and again at their release, which an API of the previous
-- release does not mark). Meaningful while the job is queued.
ALTER TABLE jobs ADD COLUMN lane text NOT NULL DEFAULT 'interactive';
-- Every existing row has the default: no need to read the table to validate it.
ALTER TABLE jobs ADD CONSTRAINT jobs_lane_check
    CHECK (lane IN ('interactive', 'backlog', 'batch')) NOT VALID;
-- The batch items on the broker now (at most the dispatch window, through
-- `jobs_batch_in_flight`); the dispatcher marks the others as it releases them, and a retry or a
-- re-send sets the lane again.
UPDATE jobs SET lane = 'batch'
WHERE batch_id IS NOT NULL AND released_at IS NOT NULL AND status IN ('queued', 'running');

-- The lane of a job sent now: a batch item's, or a single job's by the rank its client's queued
-- and running single jobs give it (its own among them) against the client's interactive jobs
-- (`PROVISIONER_CLIENT_INTERACTIVE_JOBS`). A create's own statement ranks the jobs it records
-- itself (`db::jobs::submit_many`).
CREATE FUNCTION job_lane(batch uuid, client text, interactive_jobs bigint) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN job_lane.batch IS NOT NULL THEN 'batch'
                WHEN (SELECT coalesce(sum(n), 0) FROM client_active_jobs c
                      WHERE c.client_id = job_lane.client) > job_lane.interactive_jobs
                THEN 'backlog'
                ELSE 'interactive' END
$$;

-- The queued jobs on the broker, by lane and since when: the reconciler reads each lane's
-- oldest first, and held batch items (never sent) are not in it, so that a pass reads the jobs
-- it sends again and not every item a batch holds back (it read all of them before). Replaces
-- `jobs_queued_sent`, which also held every held batch item; a job has no more entries than
-- before.
DROP INDEX jobs_queued_sent;
CREATE INDEX jobs_sent_by_lane ON jobs (lane, sent_at)
    WHERE status = 'queued' AND (batch_id IS NULL OR released_at IS NOT NULL);

-- How far each job queue has delivered: the latest send time (`jobs.sent_at`, carried by a job
-- message as its `x-sent-at` header) of a message a worker received from it, kept by the
-- workers' sweepers. A quorum queue delivers in order, so a queued job sent well before that
-- and not running is no longer behind other messages: its message was lost, or is held by a
-- worker. Jobs sent after it still wait behind the queue's backlog, and are not sent again
-- while they wait (up to twenty times `PROVISIONER_RECONCILE_AFTER`).
-- `updated_at` says when it last moved, for an operator looking at a queue that stopped.
CREATE TABLE job_queue_horizons (
    queue text PRIMARY KEY,
    delivered_through timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- `/metrics`' oldest queued job of each job queue is now the first entry of its lane in
-- `jobs_sent_by_lane`, imports and the backlog queue included; the index of queued single
-- creates by creation time served only that figure.
DROP INDEX jobs_queued_singles;
