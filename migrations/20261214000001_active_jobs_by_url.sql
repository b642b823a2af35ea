-- A tenant URL's queued and running jobs, whatever its ended ones: the checks for an active
-- batch item or import of a URL (a create's admission) and for an earlier active job (a batch
-- item's precedence). `jobs_by_tenant` serves them only while a plan takes its status list as
-- an index condition; plans that leave it to a filter read every job the URL has within the
-- retention (5,000 failed creates of one URL: 5,000 rows per check). The entries here are those
-- of active jobs alone, so no plan that takes this index reads an ended one, and a plan takes
-- it over the wider index for any statistics, since it is the smaller of two with the same
-- condition.
CREATE INDEX jobs_active_by_url ON jobs (tenant_url) WHERE status IN ('queued', 'running');
