-- Trace context: the W3C `traceparent` a job continues (the span of the request that made it,
-- parent of the job's spans), carried on its broker message and on every event it announces.
-- Rows from before this migration have none, and their messages and events carry none.
ALTER TABLE jobs ADD COLUMN traceparent text
    CHECK (traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');

-- The trace of the request that made the batch (or of its latest retry): its stop event
-- carries it.
ALTER TABLE batches ADD COLUMN traceparent text
    CHECK (traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');

-- The relay publishes it as the message's `traceparent` header.
ALTER TABLE outbox ADD COLUMN traceparent text
    CHECK (traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');
