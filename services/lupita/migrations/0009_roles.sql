-- 0009: least-privilege Postgres roles (issue #8 §6), group roles without login that deployments
-- give to their login users (`CREATE ROLE svc LOGIN IN ROLE lupita_processor`, or
-- `options=-c role=lupita_processor` in a DSN whose user is a member):
--
--   lupita_owner        owns every table, sequence and function of the schema: what migrations
--                       run as (the user applying this migration is made a member)
--   lupita_processor    the stream processor (recorder, understanding sinks, replay): writes calls,
--                       consent records, utterances, alerts, facts; deletes only a call's stale
--                       utterances; no callbacks, VAPI rows, erasure records, no deletes of calls/facts
--   lupita_context_api  the context API: reads the profile and what the context shows; writes facts,
--                       callbacks, VAPI rows; an erasure deletes the person's rows and reduces a call
--                       kept by law to a stub (UPDATE only of the columns it clears); never inserts
--                       calls, utterances or alerts
--
-- Neither service role can read or change schema_migrations, or create anything. The profile
-- triggers run with the privileges of the writer, so both roles may write person_profiles.
-- Roles are cluster-wide and created once (a second schema migrated in the same cluster finds them);
-- grants are on the objects of the schema being migrated. The services' own DSNs are unchanged.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lupita_owner') THEN
        CREATE ROLE lupita_owner NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lupita_processor') THEN
        CREATE ROLE lupita_processor NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lupita_context_api') THEN
        CREATE ROLE lupita_context_api NOLOGIN;
    END IF;
    -- the migrating user administers the three (PostgreSQL 15 gives a CREATEROLE user no membership
    -- in the roles it creates): it owns through lupita_owner and may act as a service for checks
    IF NOT pg_has_role(current_user, 'lupita_owner', 'MEMBER') THEN
        EXECUTE format('GRANT lupita_owner TO %I', current_user);
    END IF;
    IF NOT pg_has_role(current_user, 'lupita_processor', 'MEMBER') THEN
        EXECUTE format('GRANT lupita_processor TO %I', current_user);
    END IF;
    IF NOT pg_has_role(current_user, 'lupita_context_api', 'MEMBER') THEN
        EXECUTE format('GRANT lupita_context_api TO %I', current_user);
    END IF;
END $$;

-- the owner owns the schema's objects (tables bring their identity sequences and triggers along)
DO $$
DECLARE
    r record;
BEGIN
    -- a new owner must be allowed to create in the schema (PostgreSQL 15+: nobody may in public by default)
    EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO lupita_owner', current_schema());
    FOR r IN SELECT c.relname FROM pg_class c
             WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') LOOP
        EXECUTE format('ALTER TABLE %I OWNER TO lupita_owner', r.relname);
    END LOOP;
    FOR r IN SELECT p.oid::regprocedure AS f FROM pg_proc p
             WHERE p.pronamespace = current_schema()::regnamespace AND p.proname LIKE 'lupita\_%' LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO lupita_owner', r.f);
    END LOOP;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO lupita_processor, lupita_context_api', current_schema());
END $$;

-- the stream processor
GRANT SELECT, INSERT, UPDATE ON companion_calls, consent_records, user_facts, user_fact_observations
    TO lupita_processor;
GRANT SELECT, INSERT, UPDATE, DELETE ON call_utterances TO lupita_processor;   -- a replay drops stale ones
GRANT SELECT, INSERT ON call_alerts TO lupita_processor;                        -- once per (call, cue)
GRANT SELECT, INSERT, UPDATE, DELETE ON person_profiles TO lupita_processor;   -- the profile triggers

-- the context API
GRANT SELECT ON companion_calls, call_utterances, call_alerts, consent_records, erasures, erasure_retained_objects
    TO lupita_context_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON user_facts, user_fact_observations, scheduled_callbacks, vapi_calls,
    person_profiles TO lupita_context_api;
-- erasure: the person's rows go; a call kept by law becomes a stub; the erasure is recorded
GRANT DELETE ON companion_calls, call_utterances, call_alerts, consent_records TO lupita_context_api;
GRANT UPDATE (phone_encrypted, phone_number_hash, summary, topics, emotion_primary, behavioral_codes_triggered,
              transcript, analysis, weaviate_id, s3_active_key, updated_at) ON companion_calls TO lupita_context_api;
GRANT UPDATE (phone_number_hash) ON consent_records TO lupita_context_api;
GRANT INSERT ON erasures TO lupita_context_api;
GRANT INSERT, UPDATE (deleted_at) ON erasure_retained_objects TO lupita_context_api;

-- identity columns: inserting draws from their sequences
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA %I TO lupita_processor, lupita_context_api',
                   current_schema());
END $$;
