-- Panics a worker caught while handling a delivery (shown in /metrics), and when each queued
-- job's message was last sent, so that a reconciler can send again a message the broker lost.

CREATE TABLE worker_panics (
    stage    text PRIMARY KEY,
    count    bigint NOT NULL DEFAULT 0,
    last_at  timestamptz NOT NULL DEFAULT now()
);

-- When the job's current message was (or, for a delayed retry, will be) sent.
ALTER TABLE jobs ADD COLUMN sent_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX jobs_queued_sent ON jobs (sent_at) WHERE status = 'queued';
-- Whether a job message is still waiting in the outbox.
CREATE INDEX outbox_message ON outbox (message_id);
