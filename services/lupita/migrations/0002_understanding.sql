-- 0002: what the understanding stages store (issue #3, stage 7 "sinks") and the tables the
-- context API reads and writes. Applied once, inside a transaction, by `lupita migrate`.
-- Every table has a natural key, so a replayed Kafka record rewrites rows instead of adding.

-- companion_calls: the analysis columns of 0001 (weaviate_id, summary, topics,
-- emotion_primary, behavioral_codes_triggered, transcript) plus when they were stored and the
-- parts of the analysis that have no column of their own:
-- {"schema": "lupita.call-analysis/v1", "analyzer": "local", "emotion_trend":
--  [{"start_s": 1.2, "emotion": "positive"}], "notes": [...], "facts": [{type, key, value, confidence}]}
-- The recorder's upsert never writes these columns; the sink's upsert never writes the
-- recorder's (it inserts a 'pending' row if the recorder has not written the call yet).
ALTER TABLE companion_calls
    ADD COLUMN processed_at timestamptz,
    ADD COLUMN analysis     jsonb CHECK (analysis IS NULL OR jsonb_typeof(analysis) = 'object');

CREATE INDEX companion_calls_processed_at_idx ON companion_calls (processed_at);

-- What is known about a person. One ACTIVE row per (phone_number_hash, fact_type, fact_key):
-- the same value seen again updates confidence / source / observed_at in place; a new value
-- expires the active row (is_active false, expired_at set) and inserts a new active row, so the
-- history stays. An observation older than the active row's observed_at never replaces it
-- (replaying an old call must not bring back an outdated value).
CREATE TABLE user_facts (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- keyed HMAC-SHA256 (hex) of the normalised phone number, never the number
    phone_number_hash   text NOT NULL CHECK (phone_number_hash <> ''),
    fact_type           text NOT NULL CHECK (fact_type <> ''),    -- health, family, preference, routine...
    fact_key            text NOT NULL CHECK (fact_key <> ''),     -- medication, daughter_name...
    fact_value          text NOT NULL,
    confidence          double precision NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    -- the call it was learned in or last confirmed by. No foreign key: the voice agent saves
    -- facts (saveUserFact) while the call is live, before its companion_calls row exists.
    source_call_id      text,
    -- who established the value: the post-call analysis, the voice agent's tool call, a person
    source              text NOT NULL DEFAULT 'analysis' CHECK (source IN ('analysis', 'agent', 'manual')),
    -- {"leg", "seq", "start_s", "end_s", "text", "char_start", "char_end"} of the last confirmation
    evidence            jsonb,
    is_active           boolean NOT NULL DEFAULT true,
    valid_from          timestamptz NOT NULL DEFAULT now(),   -- first observation of this value
    observed_at         timestamptz NOT NULL DEFAULT now(),   -- latest observation confirming it
    expired_at          timestamptz,                          -- when a newer value replaced it
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (is_active = (expired_at IS NULL)),
    CHECK (observed_at >= valid_from)
);

CREATE UNIQUE INDEX user_facts_active_key ON user_facts (phone_number_hash, fact_type, fact_key) WHERE is_active;
CREATE INDEX user_facts_history_idx ON user_facts (phone_number_hash, fact_type, fact_key, valid_from);
CREATE INDEX user_facts_source_call_id_idx ON user_facts (source_call_id);

-- Callbacks the voice agent schedules (scheduleCallback), dispatched by a later scheduler.
CREATE TABLE scheduled_callbacks (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    phone_number_hash   text NOT NULL CHECK (phone_number_hash <> ''),
    call_id             text,   -- the call in which it was asked for (NULL: scheduled elsewhere)
    scheduled_for       timestamptz NOT NULL,
    reason              text,
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'dispatched', 'completed', 'cancelled', 'failed')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- a tool call the voice agent retries must not schedule the same callback twice
CREATE UNIQUE INDEX scheduled_callbacks_pending_key
    ON scheduled_callbacks (phone_number_hash, scheduled_for) WHERE status = 'pending';
CREATE INDEX scheduled_callbacks_due_idx ON scheduled_callbacks (scheduled_for) WHERE status = 'pending';
CREATE INDEX scheduled_callbacks_call_id_idx ON scheduled_callbacks (call_id);

-- The final transcript segments of a call, one row per (leg, segment seq). A replay replaces
-- the call's rows: same keys are updated, keys no longer present are deleted.
CREATE TABLE call_utterances (
    call_id             text NOT NULL REFERENCES companion_calls (call_id) ON DELETE CASCADE,
    leg                 text NOT NULL CHECK (leg IN ('lupita', 'person')),
    seq                 integer NOT NULL CHECK (seq >= 0),
    start_s             double precision NOT NULL,   -- call time, seconds from the call start
    end_s               double precision NOT NULL,
    text                text NOT NULL,
    confidence          double precision CHECK (confidence IS NULL OR (confidence >= 0 AND confidence <= 1)),
    PRIMARY KEY (call_id, leg, seq),
    CHECK (end_s >= start_s)
);

-- Distress / health-emergency cues raised during a call, once per (call, cue): the first
-- evidence and time are kept, a redelivered alert changes nothing. No foreign key: alerts are
-- written while the call is live, before its companion_calls row exists.
CREATE TABLE call_alerts (
    call_id             text NOT NULL CHECK (call_id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$'),
    cue_id              text NOT NULL CHECK (cue_id <> ''),
    severity            text NOT NULL CHECK (severity IN ('critical', 'high', 'medium', 'low')),
    -- {"leg", "seq", "start_s", "end_s", "text", "char_start", "char_end"}
    evidence            jsonb NOT NULL CHECK (jsonb_typeof(evidence) = 'object'),
    raised_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (call_id, cue_id)
);

CREATE INDEX call_alerts_raised_at_idx ON call_alerts (raised_at);
