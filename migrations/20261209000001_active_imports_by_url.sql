-- A create is refused (409 at once) while an Import Tenant job for its URL is queued or
-- running, as while a create or a batch item for it is: the admission looks imports up here.
CREATE INDEX jobs_active_import_url ON jobs (tenant_url)
    WHERE status IN ('queued', 'running') AND kind = 'importTenant';
