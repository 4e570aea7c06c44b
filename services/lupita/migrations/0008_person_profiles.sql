-- 0008: a per-person profile (issue #8 §3): what getUserContext needs about a person, kept current
-- by the database itself in the SAME transaction as every write it derives from, so a context
-- request is one primary-key read (plus the pending callbacks) instead of a fan-out over
-- user_facts, companion_calls and call_alerts.
--
-- Kept current by statement-level triggers on user_facts (any fact write: the analyzer's sink, the
-- agent's saveUserFact/forgetUserFact, the JSON API, an erasure), companion_calls (the recorder's
-- rows, the analysis columns, deletes) and call_alerts (alerts written live). Each trigger
-- recomputes the changed SECTION of each touched person's row from the base tables (bounded
-- reads: at most 60 live facts, the last 50 calls, the last 20 alerts), under the person's
-- transaction-level advisory lock — the fact store's own lock (lupita.facts.FACT_LOCK_CLASS), so a
-- fact writer and a profile refresh never deadlock on two locks, and two transactions of one
-- person refresh one after the other: the second recomputes from a snapshot taken after the first
-- committed (READ COMMITTED: each statement of the function sees what committed before it), so no
-- write is ever missing from the profile. A person with nothing left (no calls, no live facts: an
-- erasure) has no profile row. Pending callbacks are NOT in the profile: the dispatcher marks rows
-- of many people in one transaction, and their time-window filter is relative to now — they stay
-- the second indexed read.
--
-- The profile holds (JSON, the shapes context_api.store reads):
--   facts             live facts and open questions ('to_confirm', with current_value), protected first
--   last_calls        the 10 most recent calls: ids, times, summary, emotion, topics, weaviate_id
--   recurring_topics  topics in >= 2 of the last 50 calls: [{topic, calls, last_at}]
--   behavioral_hints  {"worked": [{code, calls, good}]: codes present in calls that went well in at
--                      least half of their calls; "sensitive_topics": [{topic, calls, bad}]: topics of
--                      calls that went badly in more than half of their calls}
--   alerts            the 20 most recent alerts of the person's calls
-- "Went well / badly" is lupita_call_mood: the analyzer's primary emotion when it is a known one,
-- else the person's final running sentiment (analysis.conversation.sentiment, |s| >= 0.2).
--
-- Backfill: every person with calls or facts before this migration gets a row at the end of it.

CREATE TABLE person_profiles (
    -- keyed HMAC-SHA256 (hex) of the normalised phone number, never the number
    phone_number_hash   text PRIMARY KEY CHECK (phone_number_hash <> ''),
    facts               jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(facts) = 'array'),
    last_calls          jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(last_calls) = 'array'),
    recurring_topics    jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(recurring_topics) = 'array'),
    behavioral_hints    jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(behavioral_hints) = 'object'),
    alerts              jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(alerts) = 'array'),
    calls_count         integer NOT NULL DEFAULT 0 CHECK (calls_count >= 0),
    last_call_at        timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- the profile's call section reads a person's most recent calls
CREATE INDEX companion_calls_person_started_idx ON companion_calls (phone_number_hash, started_at DESC)
    WHERE phone_number_hash IS NOT NULL;

-- +1 a call that went well, -1 badly, 0 unknown / neutral
CREATE FUNCTION lupita_call_mood(emotion text, analysis jsonb) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE
        WHEN lower(emotion) IN ('alegria', 'alegría', 'positive', 'positivo', 'happy', 'joy', 'calma', 'tranquilidad')
            THEN 1
        WHEN lower(emotion) IN ('tristeza', 'miedo', 'enojo', 'soledad', 'ansiedad', 'sad', 'negative', 'negativo',
                                'angry', 'fear', 'lonely')
            THEN -1
        WHEN jsonb_typeof(analysis #> '{conversation,sentiment}') = 'number'
             AND abs((analysis #>> '{conversation,sentiment}')::float8) >= 0.2
            THEN sign((analysis #>> '{conversation,sentiment}')::float8)::integer
        ELSE 0
    END;

CREATE FUNCTION lupita_profile_facts(p text) RETURNS jsonb
    LANGUAGE sql STABLE
    RETURN (
        SELECT COALESCE(jsonb_agg(jsonb_build_object(
                   'id', f.id, 'fact_type', f.fact_type, 'fact_key', f.fact_key, 'fact_value', f.fact_value,
                   'status', f.status, 'confidence', f.confidence, 'observation_count', f.observation_count,
                   'protected', f.protected, 'source', f.source, 'observed_at', f.observed_at,
                   'proposal', f.proposal,
                   'current_value', (SELECT c.fact_value FROM user_facts c WHERE c.id = f.conflicts_with))
               ORDER BY f.protected DESC, f.confidence DESC, f.observed_at DESC, f.id DESC), '[]'::jsonb)
        FROM (SELECT * FROM user_facts
              WHERE phone_number_hash = p AND status IN ('current', 'to_confirm')
              ORDER BY protected DESC, confidence DESC, observed_at DESC, id DESC
              LIMIT 60) f
    );

CREATE FUNCTION lupita_profile_alerts(p text) RETURNS jsonb
    LANGUAGE sql STABLE
    RETURN (
        SELECT COALESCE(jsonb_agg(s.a ORDER BY s.raised_at DESC, s.cue_id), '[]'::jsonb)
        FROM (SELECT jsonb_build_object(
                         'call_id', a.call_id, 'cue_id', a.cue_id, 'severity', a.severity,
                         'text', a.evidence ->> 'text', 'raised_at', a.raised_at,
                         'to_verify', a.to_verify, 'verification', a.verification) AS a,
                     a.raised_at, a.cue_id
              FROM call_alerts a JOIN companion_calls c ON c.call_id = a.call_id
              WHERE c.phone_number_hash = p
              ORDER BY a.raised_at DESC, a.cue_id
              LIMIT 20) s
    );

-- {"last_calls", "recurring_topics", "behavioral_hints", "calls_count", "last_call_at"}
CREATE FUNCTION lupita_profile_calls(p text) RETURNS jsonb
    LANGUAGE sql STABLE
    BEGIN ATOMIC
        WITH recent AS (
            SELECT call_id, started_at, ended_at, summary, emotion_primary, topics, weaviate_id,
                   behavioral_codes_triggered AS codes, lupita_call_mood(emotion_primary, analysis) AS mood
            FROM companion_calls
            WHERE phone_number_hash = p AND started_at IS NOT NULL
            ORDER BY started_at DESC, call_id
            LIMIT 50
        ), topic_calls AS (
            SELECT DISTINCT r.call_id, r.started_at, r.mood, t.topic
            FROM recent r,
                 jsonb_array_elements_text(CASE WHEN jsonb_typeof(r.topics) = 'array' THEN r.topics ELSE '[]' END) t(topic)
        ), topics AS (
            SELECT topic, count(*) AS calls, count(*) FILTER (WHERE mood < 0) AS bad, max(started_at) AS last_at
            FROM topic_calls GROUP BY topic
        ), code_calls AS (
            SELECT DISTINCT r.call_id, r.mood, k.code
            FROM recent r,
                 jsonb_array_elements_text(CASE WHEN jsonb_typeof(r.codes) = 'array' THEN r.codes ELSE '[]' END) k(code)
        ), codes AS (
            SELECT code, count(*) AS calls, count(*) FILTER (WHERE mood > 0) AS good
            FROM code_calls GROUP BY code
        )
        SELECT jsonb_build_object(
            'last_calls', (
                SELECT COALESCE(jsonb_agg(jsonb_build_object(
                           'call_id', l.call_id, 'started_at', l.started_at, 'ended_at', l.ended_at,
                           'summary', l.summary, 'emotion_primary', l.emotion_primary, 'topics', l.topics,
                           'weaviate_id', l.weaviate_id)
                       ORDER BY l.started_at DESC, l.call_id), '[]'::jsonb)
                FROM (SELECT * FROM recent ORDER BY started_at DESC, call_id LIMIT 10) l),
            'recurring_topics', (
                SELECT COALESCE(jsonb_agg(jsonb_build_object('topic', x.topic, 'calls', x.calls, 'last_at', x.last_at)
                       ORDER BY x.calls DESC, x.last_at DESC, x.topic), '[]'::jsonb)
                FROM (SELECT * FROM topics WHERE calls >= 2 ORDER BY calls DESC, last_at DESC, topic LIMIT 8) x),
            'behavioral_hints', jsonb_build_object(
                'worked', (
                    SELECT COALESCE(jsonb_agg(jsonb_build_object('code', y.code, 'calls', y.calls, 'good', y.good)
                           ORDER BY y.good DESC, y.calls DESC, y.code), '[]'::jsonb)
                    FROM (SELECT * FROM codes WHERE good >= 1 AND good * 2 >= calls
                          ORDER BY good DESC, calls DESC, code LIMIT 5) y),
                'sensitive_topics', (
                    SELECT COALESCE(jsonb_agg(jsonb_build_object('topic', z.topic, 'calls', z.calls, 'bad', z.bad)
                           ORDER BY z.bad DESC, z.calls DESC, z.topic), '[]'::jsonb)
                    FROM (SELECT * FROM topics WHERE bad >= 1 AND bad * 2 > calls
                          ORDER BY bad DESC, calls DESC, topic LIMIT 5) z)),
            'calls_count', (SELECT count(*) FROM companion_calls WHERE phone_number_hash = p),
            'last_call_at', (SELECT max(started_at) FROM recent));
    END;

-- Recompute sections ('all', 'facts', 'calls', 'alerts') of person p's profile under the person's
-- lock; no calls and no live facts left: the row is removed.
CREATE FUNCTION lupita_profile_refresh(p text, sections text DEFAULT 'all') RETURNS void
    LANGUAGE plpgsql
AS $$
DECLARE
    c jsonb;
BEGIN
    IF p IS NULL OR p = '' THEN
        RETURN;
    END IF;
    -- the fact store's per-person lock (lupita.facts.FACT_LOCK_CLASS = 'lupf')
    PERFORM pg_advisory_xact_lock(1819635814, hashtext(p));
    IF NOT EXISTS (SELECT 1 FROM companion_calls WHERE phone_number_hash = p)
       AND NOT EXISTS (SELECT 1 FROM user_facts WHERE phone_number_hash = p AND status IN ('current', 'to_confirm')) THEN
        DELETE FROM person_profiles WHERE phone_number_hash = p;
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM person_profiles WHERE phone_number_hash = p) THEN
        sections := 'all';
    END IF;
    IF sections IN ('all', 'calls') THEN
        c := lupita_profile_calls(p);
    END IF;
    INSERT INTO person_profiles AS pp (phone_number_hash, facts, last_calls, recurring_topics, behavioral_hints,
                                       alerts, calls_count, last_call_at, updated_at)
    VALUES (p,
            CASE WHEN sections IN ('all', 'facts') THEN lupita_profile_facts(p) ELSE '[]' END,
            COALESCE(c -> 'last_calls', '[]'), COALESCE(c -> 'recurring_topics', '[]'),
            COALESCE(c -> 'behavioral_hints', '{}'),
            CASE WHEN sections IN ('all', 'calls', 'alerts') THEN lupita_profile_alerts(p) ELSE '[]' END,
            COALESCE((c ->> 'calls_count')::integer, 0), (c ->> 'last_call_at')::timestamptz, now())
    ON CONFLICT (phone_number_hash) DO UPDATE SET
        facts = CASE WHEN sections IN ('all', 'facts') THEN EXCLUDED.facts ELSE pp.facts END,
        last_calls = CASE WHEN c IS NOT NULL THEN EXCLUDED.last_calls ELSE pp.last_calls END,
        recurring_topics = CASE WHEN c IS NOT NULL THEN EXCLUDED.recurring_topics ELSE pp.recurring_topics END,
        behavioral_hints = CASE WHEN c IS NOT NULL THEN EXCLUDED.behavioral_hints ELSE pp.behavioral_hints END,
        calls_count = CASE WHEN c IS NOT NULL THEN EXCLUDED.calls_count ELSE pp.calls_count END,
        last_call_at = CASE WHEN c IS NOT NULL THEN EXCLUDED.last_call_at ELSE pp.last_call_at END,
        alerts = CASE WHEN sections IN ('all', 'calls', 'alerts') THEN EXCLUDED.alerts ELSE pp.alerts END,
        updated_at = now();
END;
$$;

-- user_facts: the facts section of every person a statement touched (people in a fixed order, so
-- two multi-person statements take the locks in the same order)
CREATE FUNCTION lupita_profile_on_facts() RETURNS trigger
    LANGUAGE plpgsql
AS $$
DECLARE
    p text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        FOR p IN SELECT DISTINCT phone_number_hash FROM new_rows ORDER BY 1 LOOP
            PERFORM lupita_profile_refresh(p, 'facts');
        END LOOP;
    ELSIF TG_OP = 'DELETE' THEN
        FOR p IN SELECT DISTINCT phone_number_hash FROM old_rows ORDER BY 1 LOOP
            PERFORM lupita_profile_refresh(p, 'facts');
        END LOOP;
    ELSE
        FOR p IN SELECT phone_number_hash FROM new_rows UNION SELECT phone_number_hash FROM old_rows ORDER BY 1 LOOP
            PERFORM lupita_profile_refresh(p, 'facts');
        END LOOP;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER person_profiles_facts_ins AFTER INSERT ON user_facts
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION lupita_profile_on_facts();
CREATE TRIGGER person_profiles_facts_upd AFTER UPDATE ON user_facts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION lupita_profile_on_facts();
CREATE TRIGGER person_profiles_facts_del AFTER DELETE ON user_facts
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION lupita_profile_on_facts();

-- companion_calls: the calls section (and alerts: a call row that names its person late brings its
-- alerts) of every person a statement touched in a column the profile shows
CREATE FUNCTION lupita_profile_on_calls() RETURNS trigger
    LANGUAGE plpgsql
AS $$
DECLARE
    p text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        FOR p IN SELECT DISTINCT phone_number_hash FROM new_rows WHERE phone_number_hash IS NOT NULL ORDER BY 1 LOOP
            PERFORM lupita_profile_refresh(p, 'calls');
        END LOOP;
    ELSIF TG_OP = 'DELETE' THEN
        FOR p IN SELECT DISTINCT phone_number_hash FROM old_rows WHERE phone_number_hash IS NOT NULL ORDER BY 1 LOOP
            PERFORM lupita_profile_refresh(p, 'calls');
        END LOOP;
    ELSE
        FOR p IN
            SELECT h FROM (
                SELECT unnest(ARRAY[o.phone_number_hash, n.phone_number_hash]) AS h
                FROM new_rows n JOIN old_rows o ON o.call_id = n.call_id
                WHERE (o.phone_number_hash, o.started_at, o.ended_at, o.summary, o.emotion_primary, o.topics,
                       o.behavioral_codes_triggered, o.analysis, o.weaviate_id)
                      IS DISTINCT FROM
                      (n.phone_number_hash, n.started_at, n.ended_at, n.summary, n.emotion_primary, n.topics,
                       n.behavioral_codes_triggered, n.analysis, n.weaviate_id)
            ) s WHERE h IS NOT NULL GROUP BY h ORDER BY h
        LOOP
            PERFORM lupita_profile_refresh(p, 'calls');
        END LOOP;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER person_profiles_calls_ins AFTER INSERT ON companion_calls
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION lupita_profile_on_calls();
CREATE TRIGGER person_profiles_calls_upd AFTER UPDATE ON companion_calls
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION lupita_profile_on_calls();
CREATE TRIGGER person_profiles_calls_del AFTER DELETE ON companion_calls
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION lupita_profile_on_calls();

-- call_alerts: the alerts section of the people whose calls got (or lost) an alert; an alert of a
-- call whose row has no person yet is picked up when the call row names its person
CREATE FUNCTION lupita_profile_on_alerts() RETURNS trigger
    LANGUAGE plpgsql
AS $$
DECLARE
    p text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        FOR p IN SELECT DISTINCT c.phone_number_hash FROM new_rows a JOIN companion_calls c ON c.call_id = a.call_id
                 WHERE c.phone_number_hash IS NOT NULL ORDER BY 1 LOOP
            PERFORM lupita_profile_refresh(p, 'alerts');
        END LOOP;
    ELSIF TG_OP = 'DELETE' THEN
        FOR p IN SELECT DISTINCT c.phone_number_hash FROM old_rows a JOIN companion_calls c ON c.call_id = a.call_id
                 WHERE c.phone_number_hash IS NOT NULL ORDER BY 1 LOOP
            PERFORM lupita_profile_refresh(p, 'alerts');
        END LOOP;
    ELSE
        FOR p IN SELECT c.phone_number_hash FROM new_rows a JOIN companion_calls c ON c.call_id = a.call_id
                 WHERE c.phone_number_hash IS NOT NULL
                 UNION
                 SELECT c.phone_number_hash FROM old_rows a JOIN companion_calls c ON c.call_id = a.call_id
                 WHERE c.phone_number_hash IS NOT NULL ORDER BY 1 LOOP
            PERFORM lupita_profile_refresh(p, 'alerts');
        END LOOP;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER person_profiles_alerts_ins AFTER INSERT ON call_alerts
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION lupita_profile_on_alerts();
CREATE TRIGGER person_profiles_alerts_upd AFTER UPDATE ON call_alerts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION lupita_profile_on_alerts();
CREATE TRIGGER person_profiles_alerts_del AFTER DELETE ON call_alerts
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION lupita_profile_on_alerts();

-- backfill: everyone with calls or facts before this migration
SELECT lupita_profile_refresh(p, 'all')
FROM (SELECT phone_number_hash AS p FROM companion_calls WHERE phone_number_hash IS NOT NULL
      UNION
      SELECT phone_number_hash FROM user_facts) people
ORDER BY p;
