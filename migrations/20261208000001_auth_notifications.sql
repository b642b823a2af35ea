-- The API keeps the tokens it verified for a few seconds. Whatever ends a token early (a revoked
-- client, a dashboard session signed out, a client or token removed by hand) announces it on
-- `provisioner_auth`, and every API process forgets what it kept. Tokens that were already
-- expired (the retention purge) need no announcement: a kept token is checked against its
-- expiry at each use.
CREATE FUNCTION announce_auth_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('provisioner_auth', '');
    RETURN NULL;
END
$$;

CREATE FUNCTION announce_tokens_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM removed WHERE expires_at > now()) THEN
        PERFORM pg_notify('provisioner_auth', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER access_tokens_removed AFTER DELETE ON access_tokens
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION announce_tokens_removed();
CREATE TRIGGER access_tokens_changed AFTER UPDATE OR TRUNCATE ON access_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION announce_auth_change();
CREATE TRIGGER api_clients_changed AFTER UPDATE OR DELETE OR TRUNCATE ON api_clients
    FOR EACH STATEMENT EXECUTE FUNCTION announce_auth_change();
