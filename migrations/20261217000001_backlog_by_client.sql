-- Single jobs waiting on the backlog queue, by client, oldest first: when one of a client's
-- interactive jobs ends while another client has jobs there, the client's oldest goes to the
-- interactive queue (`db::jobs::make_way_in_backlog`), found here, as whether another client has
-- any, in an index entry or two rather than among queued batch items or the whole backlog.
CREATE INDEX jobs_backlog_by_client ON jobs (client_id, sent_at)
    WHERE lane = 'backlog' AND status = 'queued' AND batch_id IS NULL;
