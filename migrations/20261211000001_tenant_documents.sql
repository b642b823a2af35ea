-- A tenant's users and configuration objects as documents: each kind's entries in parts of up
-- to 200 (the export's page), each part one row holding a JSON array of the entries as the
-- template writes them. Nothing reads a single user or object of a tenant: a tenant's
-- configuration is written whole by an import and read whole by an export, so a standard tenant
-- (50 users, 200 objects) is two rows, not 250 rows with 500 index entries and 250 foreign-key
-- checks (most of PostgreSQL's work per tenant, docs/performance.md).
--
-- Ids of users, objects and calling lists are the tenant's own: two tenants may hold the same
-- ids (an Import Tenant of a copy under another URL and id), as their configurations never
-- refer to each other. `users` and `config_objects` stay as read-only views, one row per entry.
CREATE TABLE tenant_documents (
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('users', 'objects')),
    part       integer NOT NULL CHECK (part >= 0),
    -- At most 200 entries a part (`PART_ENTRIES`; the views below count positions by it).
    entries    jsonb NOT NULL CHECK (jsonb_typeof(entries) = 'array'
                                     AND jsonb_array_length(entries) BETWEEN 1 AND 200),
    PRIMARY KEY (tenant_id, kind, part)
);
-- Documents are compressed as they are stored: LZ4 costs about half the default's CPU. A server
-- built without LZ4 keeps its default.
DO $$
BEGIN
    ALTER TABLE tenant_documents ALTER COLUMN entries SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'LZ4 is not available: documents keep the default compression';
END $$;

INSERT INTO tenant_documents (tenant_id, kind, part, entries)
SELECT tenant_id, 'users', n / 200,
       jsonb_agg(jsonb_build_object(
           'id', id, 'loginId', login_id, 'firstName', first_name, 'lastName', last_name,
           'email', email, 'roles', roles, 'passwordHash', password_hash,
           'teams', to_jsonb(teams)) ORDER BY n)
FROM (SELECT *, row_number() OVER (PARTITION BY tenant_id ORDER BY position, login_id) - 1 AS n
      FROM users) u
GROUP BY tenant_id, n / 200;

INSERT INTO tenant_documents (tenant_id, kind, part, entries)
SELECT tenant_id, 'objects', n / 200,
       jsonb_agg(jsonb_build_object('id', id, 'kind', kind, 'name', name, 'data', data,
                                    'refs', to_jsonb(refs)) ORDER BY n)
FROM (SELECT *, row_number() OVER (PARTITION BY tenant_id ORDER BY position, id) - 1 AS n
      FROM config_objects) o
GROUP BY tenant_id, n / 200;

DROP TABLE users;
DROP TABLE config_objects;

-- A calling list's id is its tenant's own too; Export Tenant reads a tenant's lists by this key.
ALTER TABLE calling_lists DROP CONSTRAINT calling_lists_pkey, ADD PRIMARY KEY (tenant_id, id);

CREATE VIEW users AS
SELECT d.tenant_id,
       (d.part * 200 + e.n - 1)::integer AS position,
       (e.entry ->> 'id')::uuid AS id,
       e.entry ->> 'loginId' AS login_id,
       e.entry ->> 'firstName' AS first_name,
       e.entry ->> 'lastName' AS last_name,
       e.entry ->> 'email' AS email,
       coalesce(e.entry -> 'roles', '[]') AS roles,
       e.entry ->> 'passwordHash' AS password_hash,
       ARRAY(SELECT jsonb_array_elements_text(coalesce(e.entry -> 'teams', '[]')))::uuid[] AS teams
FROM tenant_documents d, jsonb_array_elements(d.entries) WITH ORDINALITY AS e(entry, n)
WHERE d.kind = 'users';

CREATE VIEW config_objects AS
SELECT d.tenant_id,
       (d.part * 200 + e.n - 1)::integer AS position,
       (e.entry ->> 'id')::uuid AS id,
       e.entry ->> 'kind' AS kind,
       e.entry ->> 'name' AS name,
       coalesce(e.entry -> 'data', '{}') AS data,
       ARRAY(SELECT jsonb_array_elements_text(coalesce(e.entry -> 'refs', '[]')))::uuid[] AS refs
FROM tenant_documents d, jsonb_array_elements(d.entries) WITH ORDINALITY AS e(entry, n)
WHERE d.kind = 'objects';

-- During a rolling upgrade, workers of the previous version still insert a new tenant's users
-- and objects as rows into what are now these views: each row is appended to its part of the
-- tenant's document, in the order the rows come (that version sends them in position order). Costlier than a worker of this version's one write per
-- part, and only while such workers run.
CREATE FUNCTION users_insert_row() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    -- What the table's constraints refused, refused still.
    IF NEW.tenant_id IS NULL OR NEW.id IS NULL OR NEW.position IS NULL OR NEW.login_id IS NULL
       OR NEW.first_name IS NULL OR NEW.last_name IS NULL OR NEW.email IS NULL
       OR NEW.password_hash NOT LIKE '$argon2id$%' THEN
        RAISE EXCEPTION 'a user needs an id, a position, a login id, names, an e-mail and no '
                        'password hash but an Argon2id one' USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO tenant_documents AS d (tenant_id, kind, part, entries)
    VALUES (NEW.tenant_id, 'users', NEW.position / 200, jsonb_build_array(jsonb_build_object(
        'id', NEW.id, 'loginId', NEW.login_id, 'firstName', NEW.first_name,
        'lastName', NEW.last_name, 'email', NEW.email, 'roles', coalesce(NEW.roles, '[]'),
        'passwordHash', NEW.password_hash, 'teams', to_jsonb(coalesce(NEW.teams, '{}')))))
    ON CONFLICT (tenant_id, kind, part) DO UPDATE SET entries = d.entries || EXCLUDED.entries;
    RETURN NEW;
END $fn$;
CREATE TRIGGER users_insert_row INSTEAD OF INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION users_insert_row();

CREATE FUNCTION config_objects_insert_row() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.tenant_id IS NULL OR NEW.id IS NULL OR NEW.position IS NULL OR NEW.kind IS NULL
       OR NEW.name IS NULL THEN
        RAISE EXCEPTION 'an object needs an id, a position, a kind and a name'
            USING ERRCODE = 'not_null_violation';
    END IF;
    INSERT INTO tenant_documents AS d (tenant_id, kind, part, entries)
    VALUES (NEW.tenant_id, 'objects', NEW.position / 200, jsonb_build_array(jsonb_build_object(
        'id', NEW.id, 'kind', NEW.kind, 'name', NEW.name, 'data', coalesce(NEW.data, '{}'),
        'refs', to_jsonb(coalesce(NEW.refs, '{}')))))
    ON CONFLICT (tenant_id, kind, part) DO UPDATE SET entries = d.entries || EXCLUDED.entries;
    RETURN NEW;
END $fn$;
CREATE TRIGGER config_objects_insert_row INSTEAD OF INSERT ON config_objects
    FOR EACH ROW EXECUTE FUNCTION config_objects_insert_row();
