-- Job figures that /metrics reads in constant time, whatever the size of `jobs`: counts by status
-- and endings per minute, kept by a trigger in the transaction of each change. Rows are spread
-- over 16 shards (by backend) so concurrent transitions do not queue on one counter row.

CREATE TABLE job_counts (
    status  text     NOT NULL,
    shard   smallint NOT NULL,
    n       bigint   NOT NULL,
    PRIMARY KEY (status, shard)
);

CREATE TABLE job_endings (
    minute   timestamptz NOT NULL,
    shard    smallint    NOT NULL,
    ended    bigint      NOT NULL,
    lock_timeouts bigint NOT NULL,
    PRIMARY KEY (minute, shard)
);

CREATE FUNCTION jobs_count_transition() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    my_shard smallint := pg_backend_pid() % 16;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO job_counts (status, shard, n) VALUES (OLD.status, my_shard, -1)
        ON CONFLICT (status, shard) DO UPDATE SET n = job_counts.n - 1;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO job_counts (status, shard, n) VALUES (NEW.status, my_shard, 1)
        ON CONFLICT (status, shard) DO UPDATE SET n = job_counts.n + 1;
        IF NEW.finished_at IS NOT NULL AND (TG_OP = 'INSERT' OR OLD.finished_at IS NULL) THEN
            INSERT INTO job_endings (minute, shard, ended, lock_timeouts)
            VALUES (date_trunc('minute', NEW.finished_at), my_shard, 1,
                    CASE WHEN NEW.code = 503 THEN 1 ELSE 0 END)
            ON CONFLICT (minute, shard) DO UPDATE
            SET ended = job_endings.ended + 1,
                lock_timeouts = job_endings.lock_timeouts + EXCLUDED.lock_timeouts;
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_count_insert_delete AFTER INSERT OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_count_transition();
CREATE TRIGGER jobs_count_status AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION jobs_count_transition();

INSERT INTO job_counts (status, shard, n) SELECT status, 0, count(*) FROM jobs GROUP BY status;
INSERT INTO job_endings (minute, shard, ended, lock_timeouts)
    SELECT date_trunc('minute', finished_at), 0, count(*), count(*) FILTER (WHERE code = 503)
    FROM jobs WHERE finished_at > now() - interval '2 hours' GROUP BY 1;
