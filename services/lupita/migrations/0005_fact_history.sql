-- 0005: the bi-temporal fact store (issue #8 §2), written by lupita.facts for the analyzer
-- (stream processor) and the voice agent / JSON API (context API) alike.
--
-- A row of user_facts is one VALUE of one key of one person, with two time axes:
--   valid time    valid_from .. valid_to      when it became / stopped being true, as said in a call
--   record time   recorded_at .. superseded_at when we learned it / recorded that it no longer holds
-- Rows are never deleted by the fact rule (only by an erasure): a new value of a single-valued key
-- closes the old row (status 'superseded'), an explicit retraction closes just that value
-- ('retracted'). A protected key (medications, allergies, diagnoses, emergency contacts) is never
-- closed by the analyzer alone: its conflicting observation is kept as a row 'to_confirm' (a
-- question for the agent) until the agent or a person accepts ('current' / 'accepted') or
-- rejects ('rejected') it. Every observation of a value (a call, a tool call) is a row of
-- user_fact_observations: repeating a fact adds an observation — observation_count and the
-- combined confidence rise — instead of a duplicate row; a replay of the same call changes nothing.
--
-- Columns of 0002 keep their names and meaning: is_active (= status 'current'), valid_from,
-- observed_at (latest observation), expired_at (= valid_to of a closed row), source and
-- source_call_id (of the latest observation), evidence (its utterance span).

ALTER TABLE user_facts DROP CONSTRAINT user_facts_check;   -- is_active = (expired_at IS NULL)

-- A value as compared ("Metformina " = "metformína"): lower case, Spanish accents removed, runs
-- of white space made one space. The one definition: the generated column below and every
-- comparison lupita.facts makes call it.
CREATE FUNCTION lupita_fact_norm(value text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN translate(lower(regexp_replace(btrim(value), '\s+', ' ', 'g')),
                     'áéíóúüàèìòùÁÉÍÓÚÜÀÈÌÒÙ', 'aeiouuaeiouaeiouuaeiou');

ALTER TABLE user_facts
    ADD COLUMN status            text NOT NULL DEFAULT 'current'
        CHECK (status IN ('current', 'to_confirm', 'superseded', 'retracted', 'accepted', 'rejected')),
    -- the key holds several current values (children, medications): the stored key carries a slug
    -- of the value ("medication.metformina"), so one value never closes another
    ADD COLUMN multi_valued      boolean NOT NULL DEFAULT false,
    -- medications, allergies, diagnoses, emergency contacts: the analyzer alone never closes them
    ADD COLUMN protected         boolean NOT NULL DEFAULT false,
    -- the value as compared: lower case, Spanish accents removed, spaces collapsed
    ADD COLUMN value_norm        text GENERATED ALWAYS AS (lupita_fact_norm(fact_value)) STORED,
    ADD COLUMN valid_to          timestamptz,
    ADD COLUMN recorded_at       timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN superseded_at     timestamptz,
    ADD COLUMN superseded_by     bigint REFERENCES user_facts (id) ON DELETE SET NULL,
    -- who closed or resolved the row (analysis, agent, manual) and in which call
    ADD COLUMN closed_by_source  text CHECK (closed_by_source IS NULL OR closed_by_source IN ('analysis', 'agent', 'manual')),
    ADD COLUMN closed_by_call_id text,
    ADD COLUMN observation_count integer NOT NULL DEFAULT 1 CHECK (observation_count >= 1),
    -- the call it was first learned in (source_call_id is the latest confirming one)
    ADD COLUMN first_call_id     text,
    -- transcription confidence of the utterance the latest observation came from (NULL: none)
    ADD COLUMN asr_confidence    double precision CHECK (asr_confidence IS NULL OR (asr_confidence >= 0 AND asr_confidence <= 1)),
    -- a row 'to_confirm': a new value ('value') or the end of the current one ('retraction'),
    -- about the current row conflicts_with
    ADD COLUMN proposal          text CHECK (proposal IS NULL OR proposal IN ('value', 'retraction')),
    ADD COLUMN conflicts_with    bigint REFERENCES user_facts (id) ON DELETE SET NULL;

UPDATE user_facts SET
    status = CASE WHEN is_active THEN 'current' ELSE 'superseded' END,
    valid_to = expired_at,
    superseded_at = CASE WHEN is_active THEN NULL ELSE updated_at END,
    recorded_at = created_at,
    first_call_id = source_call_id,
    multi_valued = fact_key LIKE '%.%';

ALTER TABLE user_facts
    ADD CONSTRAINT user_facts_active_is_current CHECK (is_active = (status = 'current')),
    ADD CONSTRAINT user_facts_open_rows CHECK ((status IN ('current', 'to_confirm')) = (superseded_at IS NULL)),
    ADD CONSTRAINT user_facts_valid_to_closes CHECK (
        (valid_to IS NULL OR status IN ('superseded', 'retracted')) AND expired_at IS NOT DISTINCT FROM valid_to),
    ADD CONSTRAINT user_facts_valid_interval CHECK (valid_to IS NULL OR valid_to >= valid_from),
    ADD CONSTRAINT user_facts_to_confirm_has_proposal CHECK (status <> 'to_confirm' OR proposal IS NOT NULL);

-- user_facts_active_key (0002) stays: ONE current row per (person, type, key). Keys are
-- canonical (multi-valued ones carry the value's slug), so it is also one current row per value:
-- two writers racing on the same value cannot both insert. The same for open questions:
CREATE UNIQUE INDEX user_facts_to_confirm_key
    ON user_facts (phone_number_hash, fact_type, fact_key, proposal, value_norm) WHERE status = 'to_confirm';
-- the context read: a person's current facts and open questions, protected first
CREATE INDEX user_facts_live_idx
    ON user_facts (phone_number_hash, protected DESC, confidence DESC, observed_at DESC)
    WHERE status IN ('current', 'to_confirm');

-- Every observation of a fact value: which source saw it, in which call, where in the call, how
-- sure. Keyed by (fact, observation): "<source>:<call id>" — a replay of a call, or a retried tool
-- call, is the same observation and changes nothing.
CREATE TABLE user_fact_observations (
    fact_id             bigint NOT NULL REFERENCES user_facts (id) ON DELETE CASCADE,
    observation         text NOT NULL CHECK (observation <> '' AND length(observation) <= 200),
    source              text NOT NULL CHECK (source IN ('analysis', 'agent', 'manual')),
    call_id             text,
    observed_at         timestamptz NOT NULL,
    confidence          double precision NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    -- {"leg", "seq", "start_s", "end_s", "text", "char_start", "char_end"} of the utterance
    evidence            jsonb CHECK (evidence IS NULL OR jsonb_typeof(evidence) = 'object'),
    asr_confidence      double precision CHECK (asr_confidence IS NULL OR (asr_confidence >= 0 AND asr_confidence <= 1)),
    recorded_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fact_id, observation)
);

CREATE INDEX user_fact_observations_call_id_idx ON user_fact_observations (call_id);

-- the rows of 0002 had one observation each: the one they hold
INSERT INTO user_fact_observations (fact_id, observation, source, call_id, observed_at, confidence, evidence)
SELECT id, source || ':' || COALESCE(source_call_id, 'legacy-' || id::text), source, source_call_id, observed_at,
       confidence, evidence
FROM user_facts;
