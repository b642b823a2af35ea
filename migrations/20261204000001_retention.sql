-- Retention: ended jobs, ended batches (with their jobs) and expired tokens are purged in small
-- batches some time after they ended. Each purge reads an index that holds only what it may
-- remove, oldest first, so its cost does not grow with what stays.

-- Ended jobs outside batches, by end (a batch's jobs go with their batch).
CREATE INDEX jobs_ended_single ON jobs (finished_at)
    WHERE batch_id IS NULL AND finished_at IS NOT NULL;

CREATE INDEX batches_ended ON batches (finished_at) WHERE status <> 'running';

-- Batches already removed whose jobs are still being removed, a chunk per transaction; a
-- purge interrupted half-way goes on from here.
CREATE TABLE purged_batches (
    id         uuid PRIMARY KEY,
    purged_at  timestamptz NOT NULL DEFAULT now()
);

-- Every job of a batch, superseded ones included: a removed batch's jobs are found through it.
CREATE INDEX jobs_by_batch ON jobs (batch_id) WHERE batch_id IS NOT NULL;

-- Every client's jobs, newest first: the operators' job list (`client_id` unset) reads it.
CREATE INDEX jobs_newest ON jobs (created_at DESC, id DESC);
