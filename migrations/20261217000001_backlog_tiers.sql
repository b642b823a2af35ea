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
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN rank <= interactive_jobs THEN 'interactive'
                ELSE (ARRAY['backlog', 'backlog-1', 'backlog-2', 'backlog-3', 'backlog-4',
                            'backlog-5'])[
                         width_bucket(greatest((rank - 1) / greatest(interactive_jobs, 1), 1),
                                      ARRAY[1, 2, 4, 8, 16, 32]::bigint[])]
           END
$$;

-- The lane of a job sent again (a retry, a lost message) that was last sent on `sent_on`: a
-- batch item's, or a single job's by the lower of two bounds of its rank among its client's
-- active single jobs now: their count (its own included), and the rank it was last sent with
-- (the jobs ahead of it then are all that can be ahead of it now). A job among a client's first
-- few stays there, however many the client queued after it. The bound is as good as the ranks
-- recorded: each API process ranks a client's creates exactly, but creates arriving at once at
-- R processes may each be ranked among the first few, so a client may keep up to R times its
-- interactive jobs on the interactive lane (and lanes a process of the previous release sent
-- on, all `backlog` past the first few, are kept or lowered).
-- `job_lane`, which ranked by the count alone, stays as it was for the processes of the
-- previous release, which know the three lanes only. A later release that names more lanes
-- adds functions of its own rather than replacing these in place, so that every process sends
-- on a lane it knows (`queue::Lane` reads a name it does not know as the last tier).
CREATE FUNCTION job_resend_lane(batch uuid, client text, interactive_jobs bigint, sent_on text)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN job_resend_lane.batch IS NOT NULL THEN 'batch'
                ELSE (SELECT l FROM (VALUES (job_resend_lane.sent_on),
                                            (job_rank_lane(
                                                 (SELECT coalesce(sum(n), 0)::bigint
                                                  FROM client_active_jobs c
                                                  WHERE c.client_id = job_resend_lane.client),
                                                 job_resend_lane.interactive_jobs))) AS v(l)
                      ORDER BY array_position(ARRAY['interactive', 'backlog', 'backlog-1',
                                                    'backlog-2', 'backlog-3', 'backlog-4',
                                                    'backlog-5'], l) NULLS LAST
                      LIMIT 1) END
$$;
