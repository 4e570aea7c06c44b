-- 0011: callbacks.due exactly once (issue #8 §4; context_api/callbacks_due.py). One dispatcher at a
-- time (a Postgres advisory lock) publishes due callbacks inside Kafka transactions under one
-- transactional id shared by every replica. A round has two Postgres commits around the Kafka one:
--
--   1. due 'pending' rows become 'dispatching' (committed before anything is sent: from here on a
--      cancel answers "not pending", so a callback whose record may be in Kafka is never shown as
--      cancelled, also when the dispatcher dies before marking it);
--   2. the Kafka transaction with their records commits;
--   3. the rows become 'dispatched' (where the record landed, as 0007) and this table advances past
--      the records.
--
-- A dispatcher that dies between 2 and 3 leaves 'dispatching' rows: the next lock holder fences it
-- (init_transactions), reads callbacks.due read_committed from callbacks_due_offsets to the end and
-- marks what it finds; the rest were never committed to Kafka and are sent again.

ALTER TABLE scheduled_callbacks
    DROP CONSTRAINT scheduled_callbacks_status_check,
    ADD CONSTRAINT scheduled_callbacks_status_check
        CHECK (status IN ('pending', 'dispatching', 'dispatched', 'completed', 'cancelled', 'failed'));

-- the rows in doubt, looked up at each round (normally none)
CREATE INDEX scheduled_callbacks_dispatching_idx ON scheduled_callbacks (scheduled_for, id)
    WHERE status = 'dispatching';

-- per partition of the (prefixed) callbacks.due topic: every committed record before next_offset
-- has its row marked; a reconcile reads from here
CREATE TABLE callbacks_due_offsets (
    topic           text        NOT NULL CHECK (length(topic) BETWEEN 1 AND 249),
    kafka_partition integer     NOT NULL CHECK (kafka_partition >= 0),
    next_offset     bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition)
);

-- 0009's roles: the owner owns it; only the context API (the dispatcher) reads and writes it
ALTER TABLE callbacks_due_offsets OWNER TO lupita_owner;
GRANT SELECT, INSERT, UPDATE ON callbacks_due_offsets TO lupita_context_api;
