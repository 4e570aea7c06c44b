-- 0012: a person's relevant past conversations, computed once per analysed call (issue #8 §3: a
-- getUserContext request is indexed reads, not a fan-out). The context API's past-conversations
-- query is "the calls of this person nearest to their latest analysed call" (Weaviate, filtered on
-- the person's hash): it changes only when a call of the person is analysed. The stream processor
-- runs it right after it writes that call's Weaviate object and stores the answer here, in the
-- same transaction as the call's analysis; the context API reads it with the profile (same round
-- trip) and asks Weaviate itself only when this row is not about the profile's latest call.
--
-- The ranking the context API applies, similarity x 0.5 ** (age / half-life), orders two calls
-- the same at any time (both age alike), so an answer computed at analysis time stays right.
-- One row per person; a replayed older call never replaces the answer of a newer one.

CREATE TABLE person_past_conversations (
    -- keyed HMAC-SHA256 (hex) of the normalised phone number, never the number
    phone_number_hash   text PRIMARY KEY CHECK (phone_number_hash <> ''),
    -- the call the answer is about (the person's latest analysed call) and its Weaviate object
    anchor_call_id      text NOT NULL CHECK (anchor_call_id <> ''),
    anchor_weaviate_id  uuid NOT NULL,
    anchor_started_at   timestamptz NOT NULL,
    -- [{call_id, weaviate_id, phone_number_hash, summary, topics, emotion, started_at, distance}],
    -- nearest first, the anchor itself included (the reader leaves it out)
    items               jsonb NOT NULL CHECK (jsonb_typeof(items) = 'array'),
    computed_at         timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE person_past_conversations OWNER TO lupita_owner;
GRANT SELECT, INSERT, UPDATE ON person_past_conversations TO lupita_processor;
-- read with the profile; an erasure deletes the person's row
GRANT SELECT, DELETE ON person_past_conversations TO lupita_context_api;
