-- Tenants, their configuration, access numbers, and the job queue's state.

CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    url         text NOT NULL UNIQUE CHECK (url = lower(url) AND length(url) BETWEEN 1 AND 253),
    name        text NOT NULL,
    sip_domain  text NOT NULL UNIQUE,
    status      text NOT NULL DEFAULT 'Inactive' CHECK (status IN ('Inactive', 'Active')),
    settings    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    position       integer NOT NULL,
    login_id       text NOT NULL,
    first_name     text NOT NULL,
    last_name      text NOT NULL,
    email          text NOT NULL,
    roles          jsonb NOT NULL DEFAULT '[]'::jsonb,
    password_hash  text CHECK (password_hash IS NULL OR password_hash LIKE '$argon2id$%'),
    teams          uuid[] NOT NULL DEFAULT '{}',
    UNIQUE (tenant_id, login_id)
);

CREATE TABLE config_objects (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    position   integer NOT NULL,
    kind       text NOT NULL,
    name       text NOT NULL,
    data       jsonb NOT NULL DEFAULT '{}'::jsonb,
    refs       uuid[] NOT NULL DEFAULT '{}'
);
CREATE INDEX config_objects_tenant ON config_objects (tenant_id, position);

-- A range of access numbers: `count` consecutive numbers of the same digit length starting at
-- `number`. Two ranges of one length that share a number cannot both exist.
CREATE TABLE access_numbers (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number     text NOT NULL CHECK (number ~ '^[0-9]{1,20}$'),
    count      integer NOT NULL CHECK (count BETWEEN 1 AND 1000000),
    media      text NOT NULL,
    tenant_id  uuid REFERENCES tenants (id) ON DELETE SET NULL,
    digits     integer GENERATED ALWAYS AS (length(number)) STORED,
    span       numrange GENERATED ALWAYS AS (numrange(number::numeric, number::numeric + count)) STORED,
    CONSTRAINT access_numbers_no_overlap EXCLUDE USING gist (digits WITH =, span WITH &&)
);
CREATE INDEX access_numbers_tenant ON access_numbers (tenant_id);

CREATE TABLE calling_lists (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    position   integer NOT NULL,
    name       text NOT NULL,
    entries    jsonb NOT NULL DEFAULT '[]'::jsonb
);

CREATE TABLE audit_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    at         timestamptz NOT NULL,
    actor      text NOT NULL,
    action     text NOT NULL,
    object     text NOT NULL,
    details    jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);

-- Jobs: PostgreSQL is the source of truth for their state; the broker only carries ids.
CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL,
    tenant_url       text NOT NULL,
    status           text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    version          integer NOT NULL DEFAULT 1,
    code             integer,
    error            jsonb,
    attempts         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    tenant           jsonb,
    skipped_numbers  jsonb NOT NULL DEFAULT '[]'::jsonb,
    batch_id         uuid,
    client_id        text NOT NULL DEFAULT '',
    -- What the worker needs, without secrets: the password lives sealed in `sealed_password`
    -- and is erased when the job ends.
    params           jsonb NOT NULL,
    sealed_password  bytea,
    idempotency_key  text,
    request_digest   text,
    lease_token      uuid,
    lease_until      timestamptz,
    CHECK ((status IN ('succeeded', 'failed')) = (code IS NOT NULL))
);
CREATE UNIQUE INDEX jobs_one_active_per_tenant ON jobs (tenant_url) WHERE status IN ('queued', 'running');
CREATE UNIQUE INDEX jobs_idempotency ON jobs (client_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_listing ON jobs (client_id, created_at DESC, id DESC);
CREATE INDEX jobs_running_lease ON jobs (lease_until) WHERE status = 'running';

-- Transactional outbox: messages written in the same transaction as the state they announce,
-- published by a relay with publisher confirms, deleted once confirmed.
CREATE TABLE outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    exchange      text NOT NULL,
    routing_key   text NOT NULL,
    message_id    text NOT NULL,
    content_type  text NOT NULL,
    payload       bytea NOT NULL,
    available_at  timestamptz NOT NULL DEFAULT now(),
    attempts      integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_due ON outbox (available_at, id);

-- Process-wide secrets generated on first start when the operator does not supply them.
CREATE TABLE instance_secrets (
    name        text PRIMARY KEY,
    value       bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
