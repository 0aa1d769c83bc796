-- The embedded default's dialect of migrations/postgres/0008_event_key_kind.sql:
-- an audit event records the kind of key it names; events already stored
-- get the kind their identifier columns gave them before.
ALTER TABLE security_event ADD COLUMN key_kind TEXT NOT NULL DEFAULT '';
UPDATE security_event SET key_kind = CASE
    WHEN password <> '' THEN 'password'
    WHEN user_id <> '' AND ip <> '' THEN 'user+ip'
    WHEN user_id <> '' THEN 'user'
    WHEN ip <> '' THEN 'ip'
    WHEN session_id <> '' THEN 'session'
    ELSE '' END;
