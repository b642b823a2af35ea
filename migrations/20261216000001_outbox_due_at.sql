-- When an outbox row the relay could not publish was first due: set by the relay when it puts the
-- row off (its `available_at` then moves into the future), so that the relay's lag
-- (`provisioner_outbox_lag_seconds`) counts from then, not from the next try. Rows published at
-- their first try never get it, and the partial index holds only the rows put off.
ALTER TABLE outbox ADD COLUMN due_at timestamptz;
CREATE INDEX outbox_put_off ON outbox (due_at) WHERE due_at IS NOT NULL;
