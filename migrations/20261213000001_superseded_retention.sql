-- A batch item's job that a retry replaced is purged once it ended longer ago than the
-- retention, like a single job, not only with its batch: a batch retried again and again keeps
-- its superseded rows no longer than any ended job. This index holds only them, by end.
CREATE INDEX jobs_superseded_ended ON jobs (finished_at)
    WHERE superseded AND finished_at IS NOT NULL;
