-- The embedded default's dialect of migrations/postgres/0007_key_token.sql:
-- key_state's third identifier, a session id or a password fingerprint as
-- its kind says, is named `token`; a password key's events name it in a
-- column of their own.
ALTER TABLE key_state RENAME COLUMN session_id TO token;
DROP INDEX key_state_session_id;
CREATE INDEX key_state_token ON key_state (token) WHERE token <> '';

ALTER TABLE security_event ADD COLUMN password TEXT NOT NULL DEFAULT '';
UPDATE security_event SET password = substr(detail, 10), detail = ''
    WHERE kind IN ('lockout', 'permanent_lockout', 'lockout_expired')
      AND user_id = '' AND ip = '' AND session_id = '' AND detail LIKE 'password %';
