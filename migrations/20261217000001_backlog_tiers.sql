-- A client's single jobs past its first few go to the backlog queue of their rank's tier, so
-- that one client's thousands of queued creates hold back another client's sixth create by a
-- few jobs, not by all of them. Tier `t` takes the ranks (among the client's queued and running
-- single jobs) past `interactive * 2^t` up to `interactive * 2^(t+1)`; the last tier every rank
-- past `interactive * 32`. The lane's name is its routing key: `backlog` (tier 0, the queue
-- `provisioner.jobs.backlog` as before), then `backlog-1` to `backlog-5`
-- (`provisioner.jobs.backlog-N`; `queue::Lane`).

ALTER TABLE jobs DROP CONSTRAINT jobs_lane_check;
-- Every existing row holds one of the lanes before: no need to read the table to validate it.
ALTER TABLE jobs ADD CONSTRAINT jobs_lane_check
    CHECK (lane IN ('interactive', 'backlog', 'backlog-1', 'backlog-2', 'backlog-3', 'backlog-4',
                    'backlog-5', 'batch')) NOT VALID;

-- The lane of a single job ranked `rank` among its client's active single jobs (its own
-- included), the client having `interactive_jobs` interactive ones.
CREATE FUNCTION job_rank_lane(rank bigint, interactive_jobs bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN rank <= interactive_jobs THEN 'interactive'
                ELSE (ARRAY['backlog', 'backlog-1', 'backlog-2', 'backlog-3', 'backlog-4',
                            'backlog-5'])[
                         width_bucket(greatest((rank - 1) / greatest(interactive_jobs, 1), 1),
                                      ARRAY[1, 2, 4, 8, 16, 32]::bigint[])]
           END
$$;

-- A job sent now: a batch item's lane, or a single job's by the rank its client's queued and
-- running single jobs give it (its own among them).
CREATE OR REPLACE FUNCTION job_lane(batch uuid, client text, interactive_jobs bigint)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN job_lane.batch IS NOT NULL THEN 'batch'
                ELSE job_rank_lane((SELECT coalesce(sum(n), 0)::bigint FROM client_active_jobs c
                                    WHERE c.client_id = job_lane.client),
                                   job_lane.interactive_jobs) END
$$;
