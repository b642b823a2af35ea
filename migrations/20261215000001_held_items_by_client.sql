-- Held batch items by client, read by `/metrics`, KEDA's trigger, the dashboard and a batch's
-- admission: each change of a batch's `held` is appended here by a trigger, in the transaction
-- that makes it, so that a reader sums the changes since the last compaction (a few rows per
-- client, `db::figures::compact_held_changes`) instead of one row per batch with held items.
--
-- Appended, never updated in place: a counter row updated by the dispatcher's round (several
-- batches, one statement per client, in one transaction) and by a cancel or a batch's intake
-- would make them wait for each other's batch rows in turn, and deadlock.
-- A key of its own, so that a publication of every table (logical replication, which needs
-- one to publish deletes) does not refuse the folds.
CREATE TABLE batch_held_changes (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id  text   NOT NULL,
    n          bigint NOT NULL
);

CREATE FUNCTION batches_held_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.client_id = NEW.client_id THEN
        INSERT INTO batch_held_changes (client_id, n) VALUES (NEW.client_id, NEW.held - OLD.held);
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.held <> 0 THEN
        INSERT INTO batch_held_changes (client_id, n) VALUES (OLD.client_id, -OLD.held);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.held <> 0 THEN
        INSERT INTO batch_held_changes (client_id, n) VALUES (NEW.client_id, NEW.held);
    END IF;
    RETURN NULL;
END
$$;

-- Row triggers whose condition is checked without calling the function: a batch item's claim or
-- end, which leaves `held` as it was, costs nothing more. Created before the rows are counted
-- below: creating them locks `batches` against writes until this migration commits, so no
-- change falls between the count and the triggers.
CREATE TRIGGER batches_held_updated AFTER UPDATE OF held, client_id ON batches
    FOR EACH ROW WHEN (OLD.held IS DISTINCT FROM NEW.held OR OLD.client_id IS DISTINCT FROM NEW.client_id)
    EXECUTE FUNCTION batches_held_changed();
CREATE TRIGGER batches_held_inserted AFTER INSERT ON batches
    FOR EACH ROW WHEN (NEW.held <> 0)
    EXECUTE FUNCTION batches_held_changed();
CREATE TRIGGER batches_held_deleted AFTER DELETE ON batches
    FOR EACH ROW WHEN (OLD.held <> 0)
    EXECUTE FUNCTION batches_held_changed();

INSERT INTO batch_held_changes (client_id, n)
    SELECT client_id, sum(held) FROM batches WHERE held > 0 GROUP BY client_id;

-- The oldest batch with held items, for the figures: the first entry here (`batches_held` leads
-- with the client, so its minimum read every entry).
CREATE INDEX batches_held_oldest ON batches (created_at) WHERE held > 0;
