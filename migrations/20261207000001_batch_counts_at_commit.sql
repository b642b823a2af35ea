-- A batch's items are inserted in chunks by one transaction that lasts as long as its client
-- takes to send them. Counting each chunk in `job_counts` held a lock on the shared counter row
-- of queued jobs (of one shard) for all that time, and every create or claim counted on that
-- shard waited for the batch. Such a transaction now sets `provisioner.job_counts_at_commit`
-- and counts its items once, just before it commits (`db::batches::count_items`).
CREATE OR REPLACE FUNCTION jobs_figures_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('provisioner.job_counts_at_commit', true), '') <> 'on' THEN
        INSERT INTO job_counts (status, shard, n)
        SELECT status, pg_backend_pid() % 16, count(*) FROM new_rows GROUP BY status
        ON CONFLICT (status, shard) DO UPDATE SET n = job_counts.n + EXCLUDED.n;
    END IF;
    INSERT INTO job_endings (minute, shard, ended, lock_timeouts)
    SELECT date_trunc('minute', finished_at), pg_backend_pid() % 16, count(*),
           count(*) FILTER (WHERE code = 503)
    FROM new_rows WHERE finished_at IS NOT NULL GROUP BY 1
    ON CONFLICT (minute, shard) DO UPDATE
    SET ended = job_endings.ended + EXCLUDED.ended,
        lock_timeouts = job_endings.lock_timeouts + EXCLUDED.lock_timeouts;
    RETURN NULL;
END
$$;
