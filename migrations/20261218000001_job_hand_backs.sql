-- Attempts that a worker's shutdown cut short and handed back to the queue (the job did not
-- fail: its worker was stopped past its shutdown deadline, as a scale-down does). `attempts`
-- still counts every attempt begun, as clients see it; the limit of
-- `PROVISIONER_JOB_MAX_ATTEMPTS` applies to `attempts - handed_back`, so that a job caught by
-- several scale-downs does not end with 500 for them. A constant default: no table rewrite.
ALTER TABLE jobs ADD COLUMN handed_back integer NOT NULL DEFAULT 0;
