-- 0010: the per-person profile (0008) refreshed once per transaction and person, at commit.
--
-- 0008's statement triggers refreshed a section of the profile after EVERY statement: a superseding
-- fact write (close the old row, insert the new one, its observation, ...) recomputed the facts
-- section 3-4 times in one transaction. Now a statement only marks the person (and the sections
-- it touched) in person_profile_pending, keyed by the writing transaction; the first mark of a
-- person in a transaction queues a deferred constraint trigger, which at commit refreshes every
-- person marked by the transaction, once each, in person order, and removes the marks.
--
-- Unchanged: the refresh itself (lupita_profile_refresh: the person's advisory lock, the fact
-- store's, then a recompute from a snapshot taken after the lock, so a concurrent transaction of
-- the same person that committed first is seen), every writer covered, no code change in any.
-- New: the lock is taken at commit, not at the first statement (a writer that does not take it
-- itself — the recorder — holds it for the refresh only), people are locked in one order for the
-- whole transaction, and a transaction that reads its person's profile before committing sees it
-- as it was before its own writes (SET CONSTRAINTS ALL IMMEDIATE refreshes at once). Marks never
-- outlive their transaction (removed by the refresh, or rolled back with it); the table is
-- UNLOGGED (nothing in it is ever committed, so nothing to log).

CREATE UNLOGGED TABLE person_profile_pending (
    xact              xid8    NOT NULL DEFAULT pg_current_xact_id(),
    phone_number_hash text    NOT NULL,
    facts             boolean NOT NULL DEFAULT false,
    calls             boolean NOT NULL DEFAULT false,
    alerts            boolean NOT NULL DEFAULT false,
    PRIMARY KEY (xact, phone_number_hash)
);

-- mark people (sorted, NULL and '' skipped) for a refresh of section s at commit
CREATE FUNCTION lupita_profile_mark(people text[], s text) RETURNS void
    LANGUAGE sql
BEGIN ATOMIC
    INSERT INTO person_profile_pending AS m (phone_number_hash, facts, calls, alerts)
    SELECT DISTINCT p, s = 'facts', s = 'calls', s = 'alerts' FROM unnest(people) AS p
    WHERE p IS NOT NULL AND p <> '' ORDER BY 1
    ON CONFLICT (xact, phone_number_hash) DO UPDATE SET
        facts = m.facts OR EXCLUDED.facts, calls = m.calls OR EXCLUDED.calls, alerts = m.alerts OR EXCLUDED.alerts
    WHERE (EXCLUDED.facts AND NOT m.facts) OR (EXCLUDED.calls AND NOT m.calls) OR (EXCLUDED.alerts AND NOT m.alerts);
END;

-- at commit (the first mark's deferred event; the others find nothing left): every person the
-- transaction marked, in order, with the sections it touched
CREATE FUNCTION lupita_profile_flush() RETURNS trigger
    LANGUAGE plpgsql
AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT phone_number_hash, facts, calls, alerts FROM person_profile_pending
             WHERE xact = pg_current_xact_id() ORDER BY phone_number_hash LOOP
        PERFORM lupita_profile_refresh(r.phone_number_hash,
            CASE WHEN r.facts AND (r.calls OR r.alerts) THEN 'all'
                 WHEN r.facts THEN 'facts'
                 WHEN r.calls THEN 'calls'
                 ELSE 'alerts' END);
    END LOOP;
    DELETE FROM person_profile_pending WHERE xact = pg_current_xact_id();
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER person_profile_pending_flush AFTER INSERT ON person_profile_pending
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION lupita_profile_flush();

-- the 0008 statement triggers' functions, now marking instead of refreshing (same people, same sections)
CREATE OR REPLACE FUNCTION lupita_profile_on_facts() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM lupita_profile_mark(ARRAY(SELECT phone_number_hash FROM new_rows), 'facts');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM lupita_profile_mark(ARRAY(SELECT phone_number_hash FROM old_rows), 'facts');
    ELSE
        PERFORM lupita_profile_mark(ARRAY(SELECT phone_number_hash FROM new_rows
                                          UNION SELECT phone_number_hash FROM old_rows), 'facts');
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION lupita_profile_on_calls() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM lupita_profile_mark(ARRAY(SELECT phone_number_hash FROM new_rows), 'calls');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM lupita_profile_mark(ARRAY(SELECT phone_number_hash FROM old_rows), 'calls');
    ELSE
        PERFORM lupita_profile_mark(ARRAY(
            SELECT unnest(ARRAY[o.phone_number_hash, n.phone_number_hash])
            FROM new_rows n JOIN old_rows o ON o.call_id = n.call_id
            WHERE (o.phone_number_hash, o.started_at, o.ended_at, o.summary, o.emotion_primary, o.topics,
                   o.behavioral_codes_triggered, o.analysis, o.weaviate_id)
                  IS DISTINCT FROM
                  (n.phone_number_hash, n.started_at, n.ended_at, n.summary, n.emotion_primary, n.topics,
                   n.behavioral_codes_triggered, n.analysis, n.weaviate_id)), 'calls');
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION lupita_profile_on_alerts() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM lupita_profile_mark(ARRAY(SELECT c.phone_number_hash FROM new_rows a
                                          JOIN companion_calls c ON c.call_id = a.call_id), 'alerts');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM lupita_profile_mark(ARRAY(SELECT c.phone_number_hash FROM old_rows a
                                          JOIN companion_calls c ON c.call_id = a.call_id), 'alerts');
    ELSE
        PERFORM lupita_profile_mark(ARRAY(SELECT c.phone_number_hash FROM new_rows a
                                          JOIN companion_calls c ON c.call_id = a.call_id
                                          UNION
                                          SELECT c.phone_number_hash FROM old_rows a
                                          JOIN companion_calls c ON c.call_id = a.call_id), 'alerts');
    END IF;
    RETURN NULL;
END;
$$;

-- 0009's roles: the owner owns the new objects; both writers' triggers mark and flush
ALTER TABLE person_profile_pending OWNER TO lupita_owner;
ALTER FUNCTION lupita_profile_mark(text[], text) OWNER TO lupita_owner;
ALTER FUNCTION lupita_profile_flush() OWNER TO lupita_owner;
GRANT SELECT, INSERT, UPDATE, DELETE ON person_profile_pending TO lupita_processor, lupita_context_api;
