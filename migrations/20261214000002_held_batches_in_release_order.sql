-- The dispatcher's round finds the clients with held batch items one lookup each here, and
-- releases a client's items from its oldest held batch on in (created_at, id) order, both
-- without reading every batch of the client or every held batch.
--
-- A migration of its own: in the same transaction as the index of `jobs` before it, the lock
-- on `jobs` that index's build holds until the commit and the lock on `batches` this needs
-- would deadlock with a dispatcher round, which reads `batches` and then writes `jobs`.
DROP INDEX batches_held;
CREATE INDEX batches_held ON batches (client_id, created_at, id) WHERE held > 0;
