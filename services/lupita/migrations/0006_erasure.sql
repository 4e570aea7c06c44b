-- 0006: erasure of a person (issue #8 §5, ARCO cancellation under the LFPDPPP), done by the context
-- API (POST /v1/erasure). What could be removed is removed at once; what the law makes us keep
-- (recordings and their metadata/consent under S3 Object Lock COMPLIANCE in the legal archive)
-- is listed here, with until when, for a sweeper to delete when the retention ends.
-- Neither table holds the person's phone number or its hash: once erased, the person is not
-- linkable from here.

CREATE TABLE erasures (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    requested_at        timestamptz NOT NULL DEFAULT now(),
    -- {"user_facts": n, "scheduled_callbacks": n, ..., "weaviate": {...}}: what was removed
    removed             jsonb NOT NULL CHECK (jsonb_typeof(removed) = 'object'),
    -- how many objects were left under a legal hold (rows of erasure_retained_objects)
    retained_count      integer NOT NULL DEFAULT 0 CHECK (retained_count >= 0)
);

CREATE TABLE erasure_retained_objects (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    erasure_id          bigint NOT NULL REFERENCES erasures (id),
    call_id             text NOT NULL,
    bucket              text NOT NULL,
    key                 text NOT NULL,
    version_id          text NOT NULL DEFAULT '',   -- '' = unversioned / the only version
    lock_mode           text,                       -- COMPLIANCE / GOVERNANCE as S3 reported it
    retain_until        timestamptz,                -- NULL: no retention found (deleted right away)
    reason              text NOT NULL,
    queued_at           timestamptz NOT NULL DEFAULT now(),
    deleted_at          timestamptz,                -- set by the sweeper
    UNIQUE (bucket, key, version_id)
);

-- the sweeper's read: what is due
CREATE INDEX erasure_retained_objects_due_idx ON erasure_retained_objects (retain_until) WHERE deleted_at IS NULL;
