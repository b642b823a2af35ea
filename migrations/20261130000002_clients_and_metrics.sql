-- OAuth clients and their bearer tokens (both stored hashed), and the lock wait of each import.

CREATE TABLE api_clients (
    id           text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._~-]{1,128}$'),
    name         text NOT NULL,
    secret_hash  text NOT NULL CHECK (secret_hash LIKE '$argon2id$%'),
    scopes       text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

CREATE TABLE access_tokens (
    token_hash  bytea PRIMARY KEY,
    client_id   text NOT NULL REFERENCES api_clients (id) ON DELETE CASCADE,
    scopes      text[] NOT NULL,
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX access_tokens_expiry ON access_tokens (expires_at);

ALTER TABLE jobs ADD COLUMN lock_wait_ms integer;
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

-- Import Tenant always answers 202 (a clash ends its job with 409), so only creates are limited
-- to one active job per tenant URL.
DROP INDEX jobs_one_active_per_tenant;
CREATE UNIQUE INDEX jobs_one_active_per_tenant ON jobs (tenant_url)
    WHERE status IN ('queued', 'running') AND kind = 'createTenant';
