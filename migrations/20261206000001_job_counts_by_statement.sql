-- `job_counts` and `job_endings` were kept by row triggers: a statement touching many jobs in one
-- transaction (a batch of 100,000 items accepted, a batch cancelled) updated the same counter
-- row once per job, each update walking a longer chain of versions the transaction could not
-- clean. Statement triggers with transition tables update each counter row once per statement.

DROP TRIGGER jobs_count_insert_delete ON jobs;
DROP TRIGGER jobs_count_status ON jobs;
DROP FUNCTION jobs_count_transition();

CREATE FUNCTION jobs_figures_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (status, shard, n)
    SELECT status, pg_backend_pid() % 16, count(*) FROM new_rows GROUP BY status
    ON CONFLICT (status, shard) DO UPDATE SET n = job_counts.n + EXCLUDED.n;
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

CREATE FUNCTION jobs_figures_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (status, shard, n)
    SELECT status, pg_backend_pid() % 16, -count(*) FROM old_rows GROUP BY status
    ON CONFLICT (status, shard) DO UPDATE SET n = job_counts.n + EXCLUDED.n;
    RETURN NULL;
END
$$;

-- Only rows whose status changed count; an ending counts when the change set `finished_at`.
CREATE FUNCTION jobs_figures_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH changed AS (
        SELECT o.status AS was, n.status AS now, o.finished_at AS was_finished,
               n.finished_at AS finished_at, n.code
        FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE o.status IS DISTINCT FROM n.status
    ), deltas AS (
        SELECT status, sum(d)::bigint AS n FROM (
            SELECT was AS status, -1 AS d FROM changed
            UNION ALL
            SELECT now, 1 FROM changed) s
        GROUP BY status HAVING sum(d) <> 0
    ), counted AS (
        INSERT INTO job_counts (status, shard, n)
        SELECT status, pg_backend_pid() % 16, n FROM deltas
        ON CONFLICT (status, shard) DO UPDATE SET n = job_counts.n + EXCLUDED.n
    )
    INSERT INTO job_endings (minute, shard, ended, lock_timeouts)
    SELECT date_trunc('minute', finished_at), pg_backend_pid() % 16, count(*),
           count(*) FILTER (WHERE code = 503)
    FROM changed WHERE finished_at IS NOT NULL AND was_finished IS NULL GROUP BY 1
    ON CONFLICT (minute, shard) DO UPDATE
    SET ended = job_endings.ended + EXCLUDED.ended,
        lock_timeouts = job_endings.lock_timeouts + EXCLUDED.lock_timeouts;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_figures_inserted AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_figures_inserted();
CREATE TRIGGER jobs_figures_deleted AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_figures_deleted();
CREATE TRIGGER jobs_figures_updated AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_figures_updated();
