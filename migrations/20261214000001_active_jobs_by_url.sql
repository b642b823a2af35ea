-- A tenant URL's queued and running jobs, whatever its ended ones: the checks for an active
-- batch item or import of a URL (a create's admission) and for an earlier active job (a batch
-- item's precedence). `jobs_by_tenant` serves them only while a plan takes its status list as
-- an index condition; plans that leave it to a filter read every job the URL has within the
-- retention (5,000 failed creates of one URL: 5,000 rows per check). The entries here are those
-- of active jobs alone, so no plan that takes this index reads an ended one, and a plan takes
-- it over the wider index for any statistics, since it is the smaller of two with the same
-- condition.
--
-- With the columns of a batch item's precedence check (`created_at`, `id`), which reads them
-- from the index alone: otherwise, on a table whose pages are all visible (after a vacuum), a
-- scan of `jobs_by_tenant` that needs no heap access looked cheaper to the planner and read
-- every ended job of the URL again.
CREATE INDEX jobs_active_by_url ON jobs (tenant_url, created_at, id)
    WHERE status IN ('queued', 'running');
