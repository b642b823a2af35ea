-- Counting a client's active jobs (for its cap) reads only active rows.
CREATE INDEX jobs_active_by_client ON jobs (client_id) WHERE status IN ('queued', 'running');
