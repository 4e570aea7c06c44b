-- 0007: callbacks published when due (issue #8 §4). The context API's dispatcher claims due
-- pending rows with FOR UPDATE SKIP LOCKED, publishes each to the `callbacks.due` Kafka topic,
-- waits for the broker's ack, and in the same transaction sets status 'dispatched' (already
-- allowed by 0002's CHECK) with when and where the record landed, so the dialer's record can be
-- traced back to its row and a republished copy (a crash between the ack and the commit) told apart.

ALTER TABLE scheduled_callbacks
    ADD COLUMN published_at     timestamptz,
    ADD COLUMN kafka_partition  integer CHECK (kafka_partition IS NULL OR kafka_partition >= 0),
    ADD COLUMN kafka_offset     bigint CHECK (kafka_offset IS NULL OR kafka_offset >= 0),
    ADD CONSTRAINT scheduled_callbacks_published_where
        CHECK ((published_at IS NULL) = (kafka_partition IS NULL) AND (published_at IS NULL) = (kafka_offset IS NULL)),
    ADD CONSTRAINT scheduled_callbacks_dispatched_published
        CHECK (status <> 'dispatched' OR published_at IS NOT NULL);
