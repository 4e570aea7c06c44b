-- 0004: an alert raised although the word that would have dropped it (a negator, a past marker)
-- was doubtful, or a cue word was only approximately heard, is stored as one "to verify" with the
-- reason (issue #11: a mis-heard word must not silence a safety cue, nor pass for a sure one).
ALTER TABLE call_alerts
    ADD COLUMN to_verify     boolean NOT NULL DEFAULT false,
    ADD COLUMN verification  text CHECK (verification IS NULL OR length(verification) <= 500),
    ADD CONSTRAINT call_alerts_verification_only_when_to_verify CHECK (to_verify OR verification IS NULL);
