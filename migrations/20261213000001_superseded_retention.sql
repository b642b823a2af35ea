-- A batch item's job that a retry replaced is purged once it was replaced longer ago than the
-- retention, like a single job after its end, not only with its batch: a batch retried again
-- and again keeps its replaced rows no longer than any ended job, and each stays readable for
-- the whole retention after its replacement.
ALTER TABLE jobs ADD COLUMN superseded_at timestamptz;
-- Jobs replaced before this migration count from now.
UPDATE jobs SET superseded_at = now() WHERE superseded;
CREATE INDEX jobs_superseded_at ON jobs (superseded_at) WHERE superseded_at IS NOT NULL;
