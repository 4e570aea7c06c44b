-- 0003: the voice agent's calls as VAPI reports them (context API, issue #8): one row per VAPI
-- call id, written by status-update and end-of-call-report messages. The end-of-call-report is
-- kept once: report_received_at is set by the first one, a redelivered report changes nothing.
-- No phone number in clear: only its keyed HMAC, as everywhere else.
CREATE TABLE vapi_calls (
    vapi_call_id        text PRIMARY KEY CHECK (vapi_call_id ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'),
    -- our call id (the media bridge's / companion_calls'), when VAPI passes it in the call's metadata
    call_id             text CHECK (call_id IS NULL OR call_id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$'),
    phone_number_hash   text CHECK (phone_number_hash IS NULL OR phone_number_hash <> ''),
    status              text CHECK (status IS NULL OR length(status) <= 64),
    ended_reason        text CHECK (ended_reason IS NULL OR length(ended_reason) <= 200),
    started_at          timestamptz,
    ended_at            timestamptz,
    duration_seconds    numeric(12, 3) CHECK (duration_seconds IS NULL OR duration_seconds >= 0),
    report_received_at  timestamptz,   -- the end-of-call-report (NULL: not received yet)
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX vapi_calls_phone_number_hash_idx ON vapi_calls (phone_number_hash);
CREATE INDEX vapi_calls_call_id_idx ON vapi_calls (call_id) WHERE call_id IS NOT NULL;
