-- An audit event records the kind of key it names (a lock's key, or the
-- kind a request's identifiers make up) rather than leaving readers to
-- guess it from which identifier columns are empty. Events already stored
-- get the kind that guess gave them, so ListAuditEvents and alerts show
-- them as before.
--
-- A rolling upgrade across this migration: events written by replicas of
-- earlier versions while it runs and after have key_kind '' (an
-- unspecified key kind in ListAuditEvents), until the new version replaces
-- them. Nothing else changes for them.
ALTER TABLE security_event ADD COLUMN key_kind TEXT NOT NULL DEFAULT '';
UPDATE security_event SET key_kind = CASE
    WHEN password <> '' THEN 'password'
    WHEN user_id <> '' AND ip <> '' THEN 'user+ip'
    WHEN user_id <> '' THEN 'user'
    WHEN ip <> '' THEN 'ip'
    WHEN session_id <> '' THEN 'session'
    ELSE '' END;
