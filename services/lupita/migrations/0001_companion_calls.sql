-- 0001: one row per call (written by the stream-processor recorder) and the consent records.
-- Applied once, inside a transaction, by `lupita migrate` (lupita.db.migrate).

CREATE TABLE companion_calls (
    call_id             text PRIMARY KEY
                        CHECK (call_id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$'),
    -- AES-256-GCM of the normalised phone number (nonce || ciphertext), never the clear number
    phone_encrypted     bytea,
    -- keyed HMAC-SHA256 (hex) of the normalised number: the only lookup form
    phone_number_hash   text,
    region              text,
    direction           text CHECK (direction IN ('outbound', 'inbound', 'unspecified')),
    recording_consent   boolean,
    consent_source      text,
    s3_legal_key        text,   -- audio-full.wav in the legal-archive bucket (NULL: not recorded)
    s3_active_key       text,   -- its processing copy in the active bucket
    s3_metadata_key     text,   -- metadata.json (always written, both buckets)
    recording_status    text NOT NULL CHECK (recording_status IN ('pending', 'recorded', 'skipped')),
    recording_skipped_reason text,
    started_at          timestamptz,
    ended_at            timestamptz,
    duration_seconds    numeric(12, 3) CHECK (duration_seconds >= 0),
    end_reason          text,
    -- filled by the analysis stages (later issues); NULL until then
    weaviate_id         uuid,
    summary             text,
    topics              jsonb,
    emotion_primary     text,
    behavioral_codes_triggered jsonb,
    transcript          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX companion_calls_phone_number_hash_idx ON companion_calls (phone_number_hash);
CREATE INDEX companion_calls_started_at_idx ON companion_calls (started_at);

CREATE TABLE consent_records (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- the call during which consent was given or refused (NULL: captured outside a call)
    call_id             text,
    phone_number_hash   text,
    recording_consent   boolean NOT NULL,
    consent_source      text,
    recorded_at         timestamptz NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);

-- one consent record per call: replays of the same call upsert instead of adding rows
CREATE UNIQUE INDEX consent_records_call_id_key ON consent_records (call_id) WHERE call_id IS NOT NULL;
CREATE INDEX consent_records_phone_number_hash_idx ON consent_records (phone_number_hash);
